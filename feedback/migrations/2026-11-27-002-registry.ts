/**
 * Registry additions: a version's stage, weights sha256 and producing run; the metrics of the
 * target version at the moment of each promotion; shared registry settings (canary share, loop
 * paused). On PostgreSQL every alias move and settings change sends `NOTIFY registry_changed`
 * (payload: the schema name) so every server process sharing the store reacts at once.
 */
import { sql, type Kysely } from 'kysely';
import type { DialectName } from '../schema.ts';

export async function up(db: Kysely<any>, dialect: DialectName): Promise<void> {
  await db.schema.alterTable('model_versions').addColumn('stage', 'text').execute();
  await db.schema.alterTable('model_versions').addColumn('sha256', 'text').execute();
  await db.schema.alterTable('model_versions').addColumn('run_id', 'text').execute();
  await db.schema.alterTable('promotion_log').addColumn('metrics_json', 'text').execute();
  await db.schema
    .createTable('registry_settings')
    .addColumn('key', 'text', (c) => c.primaryKey())
    .addColumn('value_json', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();
  if (dialect === 'postgres') {
    await sql
      .raw(`create function registry_notify() returns trigger language plpgsql as $$ begin perform pg_notify('registry_changed', TG_TABLE_SCHEMA); return null; end $$`)
      .execute(db);
    for (const table of ['model_aliases', 'registry_settings']) {
      await sql.raw(`create trigger ${table}_notify after insert or update on ${table} for each row execute function registry_notify()`).execute(db);
    }
  }
}

export async function down(db: Kysely<any>, dialect: DialectName): Promise<void> {
  if (dialect === 'postgres') {
    for (const table of ['model_aliases', 'registry_settings']) await sql.raw(`drop trigger ${table}_notify on ${table}`).execute(db);
    await sql.raw('drop function registry_notify()').execute(db);
  }
  await db.schema.dropTable('registry_settings').execute();
  await db.schema.alterTable('promotion_log').dropColumn('metrics_json').execute();
  for (const c of ['run_id', 'sha256', 'stage']) await db.schema.alterTable('model_versions').dropColumn(c).execute();
}
