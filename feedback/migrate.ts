/** Runs the store's migrations up (on open) or down (to tear a schema apart in tests). */
import { Migrator, NO_MIGRATIONS, type Kysely, type MigrationResultSet } from 'kysely';
import { migrationProvider } from './migrations/index.ts';
import type { Database, DialectName } from './schema.ts';

function migrator(db: Kysely<Database>, dialect: DialectName, schema?: string): Migrator {
  return new Migrator({
    db,
    provider: migrationProvider(dialect),
    // Kysely looks for its bookkeeping table in every schema unless told which one is ours.
    ...(schema ? { migrationTableSchema: schema } : {}),
  });
}

function check(result: MigrationResultSet): MigrationResultSet {
  if (result.error) {
    const failed = result.results?.find((r) => r.status === 'Error')?.migrationName ?? '?';
    throw new Error(`feedback store migration ${failed} failed: ${String(result.error)}`, { cause: result.error });
  }
  return result;
}

/** Applies every pending migration. */
export async function migrateToLatest(db: Kysely<Database>, dialect: DialectName, schema?: string): Promise<MigrationResultSet> {
  return check(await migrator(db, dialect, schema).migrateToLatest());
}

/** Reverts every applied migration (each `down`, newest first). */
export async function migrateToEmpty(db: Kysely<Database>, dialect: DialectName, schema?: string): Promise<MigrationResultSet> {
  return check(await migrator(db, dialect, schema).migrateTo(NO_MIGRATIONS));
}
