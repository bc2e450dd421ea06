/**
 * Throw-away stores for tests and benchmarks: a SQLite file in a fresh temporary directory, or a
 * fresh PostgreSQL schema. Closing one deletes it. Never touches the default data directory.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { dialectOf, openStore, type FeedbackStore, type StoreOptions } from './open-store.ts';

/** Options for {@link openTempStore}: `url` picks PostgreSQL (a server URL); default SQLite. */
export interface TempStoreOptions extends Omit<StoreOptions, 'url' | 'dataDir' | 'schema'> {
  url?: string;
  /** Prefix of the temporary schema or directory name (default `fb_tmp`). */
  prefix?: string;
}

/** Opens a fresh, migrated, empty store; its `close()` deletes it. */
export async function openTempStore(options: TempStoreOptions = {}): Promise<FeedbackStore> {
  const { url, prefix = 'fb_tmp', ...rest } = options;
  if (dialectOf(url) === 'postgres') {
    const schema = `${prefix}_${randomBytes(6).toString('hex')}`;
    const store = await openStore({ ...rest, url, schema });
    return {
      ...store,
      async close() {
        await store.close();
        await dropSchema(url!, schema);
      },
    };
  }
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
  const store = await openStore({ ...rest, url: `sqlite:${join(dir, 'feedback.sqlite')}` });
  return {
    ...store,
    async close() {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function dropSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`drop schema if exists "${schema}" cascade`);
  } finally {
    await client.end();
  }
}
