import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { sql } from 'kysely';
import { openStore } from './open-store.ts';
import { isStoreUnavailable, StoreBusyError, StoreHealth, StoreUnavailableError } from './store-health.ts';
import { openTempStore } from './temp-store.ts';
import { requirePostgres, TEST_PG_URL } from './test-support.ts';


test('health turns degraded on a failure, says why, and ok again on a probe that succeeds', async () => {
  let up = false;
  const lines: string[] = [];
  const h = new StoreHealth(async () => {
    if (!up) throw new Error('connect ECONNREFUSED');
  }, { probeMs: 0, log: (l) => lines.push(l) });
  assert.equal(h.state().state, 'ok');
  await h.check();
  assert.deepEqual([h.state().state, h.state().lastError, h.state().failures], ['degraded', 'connect ECONNREFUSED', 1]);
  up = true;
  await h.check();
  assert.equal(h.state().state, 'ok');
  assert.equal(lines.length, 2, lines.join('\n'));
});

test('errors that mean "not now" are told from errors that mean "not this"', () => {
  assert.ok(isStoreUnavailable(Object.assign(new Error('x'), { code: 'ECONNREFUSED' })));
  assert.ok(isStoreUnavailable(Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014' })));
  assert.ok(isStoreUnavailable(Object.assign(new Error('terminating connection'), { code: '57P01' })));
  assert.ok(isStoreUnavailable(new Error('timeout exceeded when trying to connect')));
  assert.ok(isStoreUnavailable(new StoreUnavailableError('queue full')));
  assert.ok(!isStoreUnavailable(Object.assign(new Error('duplicate key'), { code: '23505' })));
  assert.ok(!isStoreUnavailable(new Error('invalid_choice')));
});

test('a statement over statementTimeoutMs is cancelled, as store_unavailable', async () => {
  await requirePostgres();
  const store = await openTempStore({ url: TEST_PG_URL, prefix: 'fb_health', statementTimeoutMs: 200, healthProbeMs: 0 });
  try {
    const t0 = Date.now();
    const err = await sql`select pg_sleep(5)`.execute(store.db).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof Error && (err as { code?: string }).code === '57014', String(err));
    assert.ok(isStoreUnavailable(err));
    assert.ok(Date.now() - t0 < 2000);
  } finally {
    await store.close();
  }
});

test('a PostgreSQL that accepts connections and never answers is given up after connectTimeoutMs', async () => {
  const sockets: Socket[] = [];
  const blackhole = createServer((s) => sockets.push(s.on('error', () => {})));
  await new Promise<void>((r) => blackhole.listen(0, '127.0.0.1', r));
  const port = (blackhole.address() as { port: number }).port;
  try {
    const t0 = Date.now();
    const err = await openStore({ url: `postgres://postgres@127.0.0.1:${port}/test`, connectTimeoutMs: 300, healthProbeMs: 0 }).then(
      async (s) => (await s.close(), undefined),
      (e: unknown) => e,
    );
    assert.ok(err instanceof Error, 'opening failed');
    assert.ok(isStoreUnavailable(err), String(err));
    assert.ok(Date.now() - t0 < 3000, `gave up after ${Date.now() - t0} ms`);
  } finally {
    for (const s of sockets) s.destroy();
    blackhole.close();
  }
});

test('a full pool whose connections keep coming back is busy (overloaded), not down; one whose connections are all stuck is down', async () => {
  await requirePostgres();
  const store = await openTempStore({ url: TEST_PG_URL, prefix: 'fb_busy', poolSize: 1, connectTimeoutMs: 200, healthProbeMs: 0 });
  const outcome = (p: Promise<unknown>) => p.then(() => 'ok', (e: unknown) => e);
  try {
    // Stuck: the only connection sleeps for 1 s, and nothing comes back to the pool while a query waits.
    const long = sql`select pg_sleep(1)`.execute(store.db);
    await new Promise((r) => setTimeout(r, 250));
    const stuck = await outcome(sql`select 1`.execute(store.db));
    assert.ok(isStoreUnavailable(stuck) && !(stuck instanceof StoreBusyError), String(stuck));
    assert.equal(store.health.state().state, 'degraded');
    await long;
    // Saturated: twelve 50 ms queries on one connection; the later ones wait past 200 ms while the earlier ones finish.
    const results = await Promise.all(Array.from({ length: 12 }, () => outcome(sql`select pg_sleep(0.05)`.execute(store.db))));
    const busy = results.filter((r) => r instanceof StoreBusyError);
    assert.ok(results.includes('ok') && busy.length > 0, results.map(String).join(', '));
    assert.ok(busy.every((e) => !isStoreUnavailable(e)));
    assert.equal(store.health.state().state, 'ok', 'saturation leaves the health ok');
  } finally {
    await store.close();
  }
});
