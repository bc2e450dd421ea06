/**
 * Identity: API keys (stored as a sha256 of the key, never the key), and who said what. A
 * conversation records the key it was made with (`key_id`); a judgement records its key and
 * whether it is excluded from training (`excluded_from_training`, set when an admin disables a
 * key as a poisoning response; every training and export query filters on it).
 */
import type { Kysely } from 'kysely';
import type { DialectName } from '../schema.ts';

const judgementTables = ['thumbs', 'comparisons', 'rankings'] as const;

export async function up(db: Kysely<any>, _dialect: DialectName): Promise<void> {
  await db.schema
    .createTable('api_keys')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('user_id', 'text', (c) => c.notNull())
    .addColumn('name', 'text')
    .addColumn('key_hash', 'text', (c) => c.notNull().unique())
    .addColumn('prefix', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('revoked_at', 'text')
    .addColumn('revoked_by', 'text')
    .addColumn('revoke_reason', 'text')
    .addColumn('excluded_from_training', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
  await db.schema.alterTable('conversations').addColumn('key_id', 'text').execute();
  for (const table of judgementTables) {
    await db.schema.alterTable(table).addColumn('key_id', 'text').execute();
    await db.schema.alterTable(table).addColumn('excluded_from_training', 'integer', (c) => c.notNull().defaultTo(0)).execute();
    await db.schema.createIndex(`${table}_key`).on(table).column('key_id').execute();
  }
}

export async function down(db: Kysely<any>, _dialect: DialectName): Promise<void> {
  for (const table of judgementTables) {
    await db.schema.dropIndex(`${table}_key`).execute();
    await db.schema.alterTable(table).dropColumn('excluded_from_training').execute();
    await db.schema.alterTable(table).dropColumn('key_id').execute();
  }
  await db.schema.alterTable('conversations').dropColumn('key_id').execute();
  await db.schema.dropTable('api_keys').execute();
}
