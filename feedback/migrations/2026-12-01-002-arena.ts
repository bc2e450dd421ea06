/**
 * Arena: the promotion log also records an alias being unset, as 'reject' (the arena refused the
 * candidate) or 'clear' (the candidate alias emptied because its version was promoted). The
 * initial schema's CHECK allowed 'promote' and 'rollback' only. SQLite cannot alter a CHECK, so
 * there the log is rebuilt (rows copied, index and append-only triggers recreated; DROP TABLE
 * fires no triggers); PostgreSQL replaces the constraint.
 */
import { sql, type Kysely } from 'kysely';
import type { DialectName } from '../schema.ts';

const BEFORE = ['promote', 'rollback'];
const AFTER = ['promote', 'rollback', 'reject', 'clear'];
const COLUMNS = 'id, alias, from_version_id, to_version_id, action, actor, reason, created_at, metrics_json';

function list(values: readonly string[]): string {
  return values.map((v) => `'${v}'`).join(', ');
}

async function rebuildSqlite(db: Kysely<any>, actions: readonly string[]): Promise<void> {
  await sql
    .raw(
      `create table promotion_log_next (` +
        `id text primary key, alias text not null, ` +
        `from_version_id text references model_versions(id), to_version_id text not null references model_versions(id), ` +
        `action text not null check (action in (${list(actions)})), actor text, reason text, created_at text not null, metrics_json text)`,
    )
    .execute(db);
  await sql.raw(`insert into promotion_log_next (${COLUMNS}) select ${COLUMNS} from promotion_log where action in (${list(actions)})`).execute(db);
  await sql.raw('drop table promotion_log').execute(db);
  await sql.raw('alter table promotion_log_next rename to promotion_log').execute(db);
  await sql.raw('create index promotion_log_alias on promotion_log (alias, id)').execute(db);
  for (const op of ['update', 'delete']) {
    await sql
      .raw(`create trigger promotion_log_no_${op} before ${op} on promotion_log begin select raise(abort, 'promotion_log is append-only'); end`)
      .execute(db);
  }
}

async function replacePostgres(db: Kysely<any>, actions: readonly string[], valid: boolean): Promise<void> {
  await sql.raw('alter table promotion_log drop constraint if exists promotion_log_action_check').execute(db);
  await sql
    .raw(`alter table promotion_log add constraint promotion_log_action_check check (action in (${list(actions)}))${valid ? '' : ' not valid'}`)
    .execute(db);
}

export async function up(db: Kysely<any>, dialect: DialectName): Promise<void> {
  if (dialect === 'sqlite') await rebuildSqlite(db, AFTER);
  else await replacePostgres(db, AFTER, true);
}

/** Down drops the 'reject' / 'clear' rows on SQLite; PostgreSQL keeps them (the log refuses deletes) under a NOT VALID constraint. */
export async function down(db: Kysely<any>, dialect: DialectName): Promise<void> {
  if (dialect === 'sqlite') await rebuildSqlite(db, BEFORE);
  else await replacePostgres(db, BEFORE, false);
}
