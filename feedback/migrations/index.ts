/**
 * The migration list, imported statically (no folder scan), for Kysely's Migrator.
 * To add a migration: create `YYYY-MM-DD-NNN-name.ts` exporting `up(db, dialect)` and
 * `down(db, dialect)`, and add it below; names sort in the order they run.
 */
import type { Kysely, Migration, MigrationProvider } from 'kysely';
import type { DialectName } from '../schema.ts';
import * as initial from './2026-11-27-001-initial.ts';
import * as registry from './2026-11-27-002-registry.ts';
import * as arena from './2026-12-01-002-arena.ts';

interface DialectMigration {
  up(db: Kysely<any>, dialect: DialectName): Promise<void>;
  down(db: Kysely<any>, dialect: DialectName): Promise<void>;
}

const all: Record<string, DialectMigration> = {
  '2026-11-27-001-initial': initial,
  '2026-11-27-002-registry': registry,
  '2026-12-01-002-arena': arena,
};

/** A provider handing Kysely every migration, bound to the dialect it runs on. */
export function migrationProvider(dialect: DialectName): MigrationProvider {
  return {
    async getMigrations(): Promise<Record<string, Migration>> {
      const out: Record<string, Migration> = {};
      for (const [name, m] of Object.entries(all)) {
        out[name] = { up: (db) => m.up(db, dialect), down: (db) => m.down(db, dialect) };
      }
      return out;
    },
  };
}
