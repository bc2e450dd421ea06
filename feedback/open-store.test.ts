import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { sql } from 'kysely';
import { migrateToEmpty, migrateToLatest } from './migrate.ts';
import SqliteDatabase from 'better-sqlite3';
import { STATEMENT_CACHE, dialectOf, openStore, sqliteSynchronous, withStatementCache } from './open-store.ts';
import { openTempStore } from './temp-store.ts';
import { describeEachDialect } from './test-support.ts';

test('with no URL the store is a WAL SQLite file under the data dir, synced at commit level NORMAL', async () => {
  const saved = process.env.DATABASE_URL;
  delete process.env.DATABASE_URL;
  const dir = mkdtempSync(join(tmpdir(), 'fb-open-'));
  try {
    const store = await openStore({ dataDir: join(dir, 'data') });
    assert.equal(store.dialect, 'sqlite');
    assert.equal(store.location, join(dir, 'data', 'feedback.sqlite'));
    const pragma = async (name: string) => Object.values((await sql.raw(`pragma ${name}`).execute(store.db)).rows[0] as object)[0];
    assert.equal(await pragma('journal_mode'), 'wal');
    assert.equal(await pragma('synchronous'), 1);
    assert.equal(await pragma('foreign_keys'), 1);
    assert.equal(await pragma('busy_timeout'), 5000);
    await store.close();
    assert.ok(existsSync(join(dir, 'data', 'feedback.sqlite')));
  } finally {
    if (saved !== undefined) process.env.DATABASE_URL = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SQLITE_SYNCHRONOUS=full syncs the WAL on every commit; the option wins over it; other values are refused', async () => {
  assert.equal(sqliteSynchronous(undefined, undefined), 'NORMAL');
  assert.equal(sqliteSynchronous(undefined, 'FULL'), 'FULL');
  assert.equal(sqliteSynchronous('normal', 'full'), 'NORMAL');
  assert.throws(() => sqliteSynchronous(undefined, 'off'), /SQLITE_SYNCHRONOUS must be normal or full/);
  const saved = process.env.SQLITE_SYNCHRONOUS;
  process.env.SQLITE_SYNCHRONOUS = 'full';
  try {
    const store = await openTempStore({ prefix: 'fb_sync' });
    assert.equal(Object.values((await sql.raw('pragma synchronous').execute(store.db)).rows[0] as object)[0], 2);
    await store.close();
  } finally {
    if (saved === undefined) delete process.env.SQLITE_SYNCHRONOUS;
    else process.env.SQLITE_SYNCHRONOUS = saved;
  }
});

test('the URL picks the dialect, and unknown schemes are refused', async () => {
  assert.equal(dialectOf('postgres://u@h/db'), 'postgres');
  assert.equal(dialectOf('postgresql://u@h/db'), 'postgres');
  assert.equal(dialectOf('sqlite:/tmp/x.sqlite'), 'sqlite');
  assert.equal(dialectOf(undefined), 'sqlite');
  await assert.rejects(openStore({ url: 'mysql://u@h/db' }), /unsupported database URL scheme/);
  await assert.rejects(openStore({ url: 'postgres://u@h/db', schema: 'Bad-Name' }), /invalid PostgreSQL schema name/);
});

test('reopening a migrated SQLite file keeps its data and runs nothing twice', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fb-reopen-'));
  const url = `sqlite:${join(dir, 'f.sqlite')}`;
  try {
    const a = await openStore({ url });
    await a.db.insertInto('conversations').values({ id: 'c1', user_id: 'u', session_id: null, title: null, created_at: 'x' }).execute();
    await a.close();
    const b = await openStore({ url });
    assert.equal((await b.db.selectFrom('conversations').selectAll().execute()).length, 1);
    await b.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

await describeEachDialect('migrations', (ctx) => {
  test('go down to an empty schema and up again', async () => {
    const store = await ctx.openFresh();
    try {
      const schema = store.dialect === 'postgres' ? store.location : undefined;
      const tables = async () =>
        (await store.db.introspection.getTables())
          .filter((t) => schema === undefined || t.schema === schema)
          .map((t) => t.name)
          .sort();
      const full = await tables();
      assert.ok(full.includes('thumbs') && full.includes('promotion_log') && full.includes('run_metrics'), full.join());
      await migrateToEmpty(store.db, store.dialect, schema);
      assert.deepEqual(await tables(), []);
      await migrateToLatest(store.db, store.dialect, schema);
      assert.deepEqual(await tables(), full);
    } finally {
      await store.close();
    }
  });
});

test('SQLite statements are prepared once per text, a busy one is not shared, and the least recently used text goes first', () => {
  const database = new SqliteDatabase(':memory:');
  let prepared = 0;
  const prepare = database.prepare.bind(database);
  database.prepare = ((text: string) => (prepared++, prepare(text))) as typeof database.prepare;
  const db = withStatementCache(database);
  db.prepare('create table t (x integer)').run([]);
  const insert = db.prepare('insert into t (x) values (?)');
  for (let i = 0; i < 5; i++) assert.equal(db.prepare('insert into t (x) values (?)'), insert);
  insert.run([1]);
  insert.run([2]);
  assert.equal(prepared, 2);
  // A select still iterating is busy: the same text gets a statement of its own meanwhile.
  const select = db.prepare('select x from t order by x');
  const rows = select.iterate([]);
  assert.deepEqual(rows.next().value, { x: 1 });
  const other = db.prepare('select x from t order by x');
  assert.notEqual(other, select);
  assert.deepEqual(other.all([]), [{ x: 1 }, { x: 2 }]);
  assert.deepEqual(rows.next().value, { x: 2 });
  rows.return?.();
  assert.equal(db.prepare('select x from t order by x'), select, 'the kept statement once it is done');
  // Fill the cache with other texts: the insert, used again meanwhile, stays; the select goes.
  const before = prepared;
  for (let i = 0; i < STATEMENT_CACHE; i++) {
    db.prepare(`select ${i} as n`);
    if (i === STATEMENT_CACHE - 10) db.prepare('insert into t (x) values (?)');
  }
  assert.equal(prepared, before + STATEMENT_CACHE);
  assert.equal(db.prepare('insert into t (x) values (?)'), insert);
  assert.equal(prepared, before + STATEMENT_CACHE);
  assert.notEqual(db.prepare('select x from t order by x'), select);
  assert.equal(prepared, before + STATEMENT_CACHE + 1, 'a text least recently used was prepared again');
  db.close();
  assert.equal(database.open, false);
});
