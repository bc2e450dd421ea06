/**
 * Initial schema: conversations and messages (a tree), generations, thumbs, comparisons,
 * rankings, idempotency keys, model versions, aliases, the append-only promotion log, training
 * runs and their metrics. See `../schema.ts` for the column conventions.
 */
import { sql, type Kysely } from 'kysely';
import type { DialectName } from '../schema.ts';

const judgementTables = ['thumbs', 'comparisons', 'rankings'] as const;

function oneOf(column: string, values: readonly string[]) {
  return sql`${sql.ref(column)} in (${sql.join(values.map((v) => sql.lit(v)))})`;
}

export async function up(db: Kysely<any>, dialect: DialectName): Promise<void> {
  await db.schema
    .createTable('conversations')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('user_id', 'text', (c) => c.notNull())
    .addColumn('session_id', 'text')
    .addColumn('title', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('conversations_user').on('conversations').columns(['user_id', 'created_at']).execute();

  await db.schema
    .createTable('messages')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('conversation_id', 'text', (c) => c.notNull().references('conversations.id').onDelete('cascade'))
    .addColumn('parent_id', 'text', (c) => c.references('messages.id').onDelete('cascade'))
    .addColumn('role', 'text', (c) => c.notNull().check(oneOf('role', ['system', 'user', 'assistant'])))
    .addColumn('content', 'text', (c) => c.notNull())
    .addColumn('token_count', 'integer')
    .addColumn('user_id', 'text')
    .addColumn('session_id', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('messages_conversation').on('messages').columns(['conversation_id', 'created_at']).execute();
  await db.schema.createIndex('messages_parent').on('messages').column('parent_id').execute();

  await db.schema
    .createTable('generations')
    .addColumn('message_id', 'text', (c) => c.primaryKey().references('messages.id').onDelete('cascade'))
    .addColumn('model_version_id', 'text', (c) => c.notNull())
    .addColumn('params_json', 'text', (c) => c.notNull())
    .addColumn('seed', 'double precision')
    .addColumn('finish_reason', 'text', (c) => c.notNull().check(oneOf('finish_reason', ['stop', 'length', 'cancelled'])))
    .addColumn('prompt_tokens', 'integer', (c) => c.notNull())
    .addColumn('completion_tokens', 'integer', (c) => c.notNull())
    .addColumn('latency_ms', 'double precision', (c) => c.notNull())
    .addColumn('ttft_ms', 'double precision')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('generations_model_version').on('generations').column('model_version_id').execute();

  const judgement = (table: (typeof judgementTables)[number]) =>
    db.schema
      .createTable(table)
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('rater_id', 'text', (c) => c.notNull())
      .addColumn('session_id', 'text')
      .addColumn('comment', 'text')
      .addColumn('subject_key', 'text', (c) => c.notNull())
      .addColumn('current', 'integer', (c) => c.notNull().check(sql`current in (0, 1)`))
      .addColumn('created_at', 'text', (c) => c.notNull());

  await judgement('thumbs')
    .addColumn('message_id', 'text', (c) => c.notNull().references('messages.id').onDelete('cascade'))
    .addColumn('value', 'text', (c) => c.notNull().check(oneOf('value', ['up', 'down'])))
    .addColumn('reason', 'text', (c) =>
      c.check(sql`reason is null or ${oneOf('reason', ['not_factual', 'unhelpful', 'unsafe', 'too_long', 'other'])}`),
    )
    .execute();
  await db.schema.createIndex('thumbs_message').on('thumbs').column('message_id').execute();

  await judgement('comparisons')
    .addColumn('context_id', 'text', (c) => c.notNull().references('messages.id').onDelete('cascade'))
    .addColumn('a_id', 'text', (c) => c.notNull().references('messages.id').onDelete('cascade'))
    .addColumn('b_id', 'text', (c) => c.notNull().references('messages.id').onDelete('cascade'))
    .addColumn('choice', 'text', (c) => c.notNull().check(oneOf('choice', ['a', 'b', 'tie', 'both_bad'])))
    .addCheckConstraint('comparisons_distinct', sql`a_id <> b_id`)
    .execute();
  await db.schema.createIndex('comparisons_context').on('comparisons').column('context_id').execute();

  await judgement('rankings')
    .addColumn('context_id', 'text', (c) => c.notNull().references('messages.id').onDelete('cascade'))
    .addColumn('k', 'integer', (c) => c.notNull().check(sql`k >= 2`))
    .addColumn('not_rankable', 'integer', (c) => c.notNull().check(sql`not_rankable in (0, 1)`))
    .execute();
  await db.schema.createIndex('rankings_context').on('rankings').column('context_id').execute();

  for (const table of judgementTables) {
    await db.schema.createIndex(`${table}_subject`).on(table).column('subject_key').execute();
    // One current judgement per subject. SQLite serialises writers, and the repository keeps
    // this invariant inside each write transaction; PostgreSQL writers run concurrently, so
    // there the database enforces it. (Fewer indexes = fewer pages written per group commit.)
    if (dialect === 'postgres') {
      await db.schema
        .createIndex(`${table}_current_subject`)
        .on(table)
        .column('subject_key')
        .unique()
        .where(sql.ref('current'), '=', 1)
        .execute();
    }
  }

  await db.schema
    .createTable('ranking_items')
    .addColumn('ranking_id', 'text', (c) => c.notNull().references('rankings.id').onDelete('cascade'))
    .addColumn('position', 'integer', (c) => c.notNull())
    .addColumn('message_id', 'text', (c) => c.notNull().references('messages.id').onDelete('cascade'))
    .addPrimaryKeyConstraint('ranking_items_pk', ['ranking_id', 'position'])
    .addUniqueConstraint('ranking_items_unique_message', ['ranking_id', 'message_id'])
    .execute();

  await db.schema
    .createTable('idempotency_keys')
    .addColumn('key', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('judgement_id', 'text', (c) => c.notNull())
    .addColumn('payload_hash', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('model_versions')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull().check(oneOf('kind', ['policy', 'reward'])))
    .addColumn('parent_id', 'text', (c) => c.references('model_versions.id'))
    .addColumn('checkpoint', 'text', (c) => c.notNull())
    .addColumn('config_json', 'text', (c) => c.notNull())
    .addColumn('metrics_json', 'text', (c) => c.notNull())
    .addColumn('notes', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('model_aliases')
    .addColumn('alias', 'text', (c) => c.primaryKey())
    .addColumn('version_id', 'text', (c) => c.notNull().references('model_versions.id'))
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('promotion_log')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('alias', 'text', (c) => c.notNull())
    .addColumn('from_version_id', 'text', (c) => c.references('model_versions.id'))
    .addColumn('to_version_id', 'text', (c) => c.notNull().references('model_versions.id'))
    .addColumn('action', 'text', (c) => c.notNull().check(oneOf('action', ['promote', 'rollback'])))
    .addColumn('actor', 'text')
    .addColumn('reason', 'text')
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('promotion_log_alias').on('promotion_log').columns(['alias', 'id']).execute();
  await appendOnly(db, dialect, 'promotion_log');

  await db.schema
    .createTable('training_runs')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('kind', 'text', (c) => c.notNull().check(oneOf('kind', ['pretrain', 'sft', 'reward', 'ppo', 'loop', 'eval'])))
    .addColumn('status', 'text', (c) => c.notNull().check(oneOf('status', ['running', 'succeeded', 'failed', 'cancelled'])))
    .addColumn('config_json', 'text', (c) => c.notNull())
    .addColumn('base_version_id', 'text', (c) => c.references('model_versions.id'))
    .addColumn('output_version_id', 'text', (c) => c.references('model_versions.id'))
    .addColumn('error', 'text')
    .addColumn('started_at', 'text', (c) => c.notNull())
    .addColumn('finished_at', 'text')
    .execute();

  await db.schema
    .createTable('run_metrics')
    .addColumn('run_id', 'text', (c) => c.notNull().references('training_runs.id').onDelete('cascade'))
    .addColumn('step', 'integer', (c) => c.notNull())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('value', 'double precision', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('run_metrics_pk', ['run_id', 'name', 'step'])
    .execute();
}

/** Refuses UPDATE and DELETE on `table` (the promotion log is history, never rewritten). */
async function appendOnly(db: Kysely<any>, dialect: DialectName, table: string): Promise<void> {
  if (dialect === 'sqlite') {
    for (const op of ['update', 'delete']) {
      await sql
        .raw(`create trigger ${table}_no_${op} before ${op} on ${table} begin select raise(abort, '${table} is append-only'); end`)
        .execute(db);
    }
    return;
  }
  await sql
    .raw(
      `create function ${table}_append_only() returns trigger language plpgsql as $$ ` +
        `begin raise exception '${table} is append-only'; end $$`,
    )
    .execute(db);
  await sql
    .raw(`create trigger ${table}_append_only before update or delete on ${table} for each row execute function ${table}_append_only()`)
    .execute(db);
}

export async function down(db: Kysely<any>, dialect: DialectName): Promise<void> {
  const tables = [
    'run_metrics',
    'training_runs',
    'promotion_log',
    'model_aliases',
    'model_versions',
    'idempotency_keys',
    'ranking_items',
    'rankings',
    'comparisons',
    'thumbs',
    'generations',
    'messages',
    'conversations',
  ];
  for (const table of tables) await db.schema.dropTable(table).execute();
  if (dialect === 'postgres') await sql.raw('drop function promotion_log_append_only()').execute(db);
}
