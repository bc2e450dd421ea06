/**
 * PostgreSQL going away under a running server, through a TCP proxy the test cuts (the real
 * server keeps running): chats answer 503 `store_unavailable` with Retry-After before anything is
 * decoded, `/healthz` says `degraded`, a judgement submitted meanwhile is held and committed when
 * the database is back, LISTEN comes back by itself (a promotion is followed through NOTIFY with
 * polling all but off), and chats work again.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { promote, registerModelVersion } from '../feedback/model-versions.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { postgresProblem, requirePostgres, TEST_PG_URL } from '../feedback/test-support.ts';
import type { FeedbackStore } from '../feedback/open-store.ts';
import { CuttableProxy, makeTinyCheckpoint, startTestServer, TestClient, type TestServer } from './test-support.ts';


// PostgreSQL is part of every machine the suite runs on: its absence fails the test, never skips it.
const problem = await postgresProblem();
const target = new URL(TEST_PG_URL);
const proxy = new CuttableProxy(target.hostname, Number(target.port || 5432));
let srv: TestServer;
let store: FeedbackStore;
const logs: string[] = [];

before(async () => {
  if (problem !== null) return;
  await proxy.open();
  const url = new URL(TEST_PG_URL);
  url.host = `127.0.0.1:${proxy.port}`;
  store = await openTempStore({ url: url.href, prefix: 'srv_outage', connectTimeoutMs: 500, healthProbeMs: 200, writer: { retryForMs: 30_000 }, log: (l) => logs.push(l) });
  srv = await startTestServer({ heartbeatMs: 60_000, registryPollMs: 60_000, database: url.href }, { store, log: (l) => logs.push(l) });
});
after(async () => {
  if (problem !== null) return;
  await srv.close(); // closes (and drops) the store
  proxy.cut();
});

const chat = () =>
  fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hello' }], max_tokens: 4 }) });
const health = async () => {
  const r = await fetch(`${srv.url}/healthz`);
  return { status: r.status, body: (await r.json()) as Record<string, any> };
};
async function until<T>(what: string, f: () => Promise<T | undefined | false>, ms = 10_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > ms) assert.fail(`${what} within ${ms} ms; log: ${logs.slice(-5).join(' | ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
const accepted = async () => (await srv.metrics.requests.get()).values.reduce((a, v) => a + v.value, 0);

test('PostgreSQL going away: 503 store_unavailable before decoding, degraded health, held judgements, recovery', async () => {
  await requirePostgres();
  const { db } = store;
  // A second version to promote while LISTEN is the only fast path.
  const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'outage-next');
  cpSync(await makeTinyCheckpoint({}, 99), dir, { recursive: true });
  const meta = readCheckpointMeta(dir);
  const next = versionId(dir, meta.sha256);
  await registerModelVersion(db, { id: next, kind: 'policy', checkpoint: dir, stage: meta.stage, sha256: meta.sha256 });

  const ok = await chat();
  assert.equal(ok.status, 200, await ok.clone().text());
  const messageId = ((await ok.json()) as { choices: { message_id: string }[] }).choices[0]!.message_id;
  const first = await store.writer.submit({ kind: 'thumb', messageId, raterId: 'before', value: 'up' });
  assert.ok(first.ok);
  const ws = await TestClient.connect(srv.wsUrl);
  const conv = (await ws.request({ type: 'start' }, (m) => m.type === 'conversation')).conversationId;
  assert.equal((await health()).body.status, 'ok');

  proxy.cut();
  const held = store.writer.submit({ kind: 'thumb', messageId, raterId: 'during', value: 'down' });
  const down = await until('degraded health', async () => {
    const h = await health();
    return h.status === 503 && h.body.status === 'degraded' && h;
  });
  assert.equal(down.body.store.state, 'degraded');
  const before = await accepted();
  const refused = await chat();
  assert.equal(refused.status, 503);
  assert.ok(Number(refused.headers.get('retry-after')) > 0, 'Retry-After is set');
  assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'store_unavailable');
  const wsRefused = await ws.request({ type: 'user_message', requestId: 'o1', conversationId: conv, content: 'hi', params: { maxTokens: 4 } }, (m) => m.requestId === 'o1' && (m.type === 'error' || m.type === 'reply'));
  assert.equal(wsRefused.code, 'store_unavailable', JSON.stringify(wsRefused));
  assert.equal(await accepted(), before, 'nothing was submitted for decoding');
  await until('LISTEN retried while down', async () => logs.filter((l) => /LISTEN again in/.test(l)).length >= 2);

  await proxy.open(); // the same port
  const second = await held;
  assert.ok(second.ok, 'the judgement held during the outage is committed');
  await until('ok health', async () => (await health()).status === 200);
  const again = await chat();
  assert.equal(again.status, 200, await again.clone().text());
  const wsAgain = await ws.request({ type: 'user_message', requestId: 'o2', conversationId: conv, content: 'hi', params: { maxTokens: 4 } }, (m) => m.requestId === 'o2' && (m.type === 'error' || m.type === 'reply'));
  assert.equal(wsAgain.type, 'reply', JSON.stringify(wsAgain));

  // With polling every 60 s, only NOTIFY on a re-made LISTEN connection brings the promotion this fast.
  await until('LISTEN re-made', async () => logs.some((l) => /LISTEN again in/.test(l)) && (await health()).status === 200);
  await new Promise((r) => setTimeout(r, 1500)); // the LISTEN retry backoff elapses
  await promote(db, { alias: 'champion', versionId: next, actor: 'test' });
  await until('the promotion followed through NOTIFY', async () => (await health()).body.modelVersion === next, 20_000);

  const raters = (await db.selectFrom('thumbs').select('rater_id').where('message_id', '=', messageId).execute()).map((r) => r.rater_id).sort();
  assert.deepEqual(raters, ['before', 'during'], 'no acknowledged judgement is missing');
  ws.close();
});
