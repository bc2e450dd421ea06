/**
 * Test helpers: run a suite against both dialects, each test file in its own temporary SQLite
 * file or PostgreSQL schema, and seed a context with candidate replies.
 *
 * PostgreSQL comes from `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
 * When it is unreachable the PostgreSQL suites are skipped with a message, except under `CI`,
 * where they fail.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import type { FeedbackStore } from './open-store.ts';
import type { DialectName } from './schema.ts';
import { openTempStore } from './temp-store.ts';

export { seedContext, type SeededContext } from './seed-context.ts';

/** The PostgreSQL server the tests use. */
export const TEST_PG_URL = process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';

let reachable: Promise<string | null> | undefined;

/** Null when PostgreSQL answers, else why not. */
export function postgresProblem(): Promise<string | null> {
  reachable ??= (async () => {
    const client = new pg.Client({ connectionString: TEST_PG_URL, connectionTimeoutMillis: 2000 });
    try {
      await client.connect();
      await client.query('select 1');
      return null;
    } catch (err) {
      return String((err as Error).message || err);
    } finally {
      await client.end().catch(() => {});
    }
  })();
  return reachable;
}

/**
 * For a single PostgreSQL test: fails it with the reason when PostgreSQL does not answer
 * (PostgreSQL is part of every machine the suite runs on, CI's included).
 * @example
 * test('…on PostgreSQL', async () => { await requirePostgres(); … });
 */
export async function requirePostgres(): Promise<void> {
  const problem = await postgresProblem();
  if (problem !== null) throw new Error(`PostgreSQL must be reachable at ${TEST_PG_URL}: ${problem}`);
}

/** What a dialect suite gets. */
export interface DialectContext {
  dialect: DialectName;
  /** The suite's shared store (opened before the first test, deleted after the last). */
  store(): FeedbackStore;
  /** A fresh store of this dialect; the caller closes it. */
  openFresh(): Promise<FeedbackStore>;
}

function url(dialect: DialectName): string | undefined {
  return dialect === 'postgres' ? TEST_PG_URL : undefined;
}

/** Declares `body` once per dialect, as `title [sqlite]` and `title [postgres]`. */
export async function describeEachDialect(title: string, body: (ctx: DialectContext) => void): Promise<void> {
  const problem = await postgresProblem();
  for (const dialect of ['sqlite', 'postgres'] as const) {
    const name = `${title} [${dialect}]`;
    if (dialect === 'postgres' && problem !== null) {
      // PostgreSQL is part of every machine the suite runs on: its absence fails, never skips.
      test(`${name}: PostgreSQL must be reachable`, () => assert.fail(`PostgreSQL at ${TEST_PG_URL}: ${problem}`));
      continue;
    }
    describe(name, () => {
      let shared: FeedbackStore | undefined;
      const ctx: DialectContext = {
        dialect,
        store: () => shared ?? assert.fail('store not open yet'),
        openFresh: () => openTempStore({ url: url(dialect), prefix: 'fb_test' }),
      };
      before(async () => {
        shared = await ctx.openFresh();
      });
      after(async () => {
        await shared?.close();
      });
      body(ctx);
    });
  }
}
