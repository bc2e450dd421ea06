/**
 * Limits of the OpenAI door: JSON bodies only (415), bounded stop strings (also on the
 * WebSocket), and an overloaded server stores nothing of a refused request.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, watchedSteps, TestClient, type TestServer } from './test-support.ts';

let srv: TestServer;
before(async () => {
  const base = await startTestServer({ heartbeatMs: 60_000, maxBatch: 1, maxQueue: 0 });
  await base.close();
  // One slot, no queue, and a decode step slowed to ≥ 5 ms so a reply holds its slot for a while.
  const model = base.model;
  srv = await startTestServer({ heartbeatMs: 60_000, maxBatch: 1, maxQueue: 0, maxTokens: 200 }, { model: watchedSteps(model, { busyMs: 5 }) });
});
after(() => srv.close());

const post = (body: unknown, type = 'application/json') =>
  fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': type }, body: typeof body === 'string' ? body : JSON.stringify(body) });
const user = [{ role: 'user', content: 'hello' }];
const code = async (r: Response) => ((await r.json()) as { error: { code: string } }).error.code;
const conversations = async () => Number((await srv.chat()!.deps.store.db.selectFrom('conversations').select((e) => e.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

test('a body that is not application/json is refused with 415 before anything runs (a cross-site form cannot post one)', async () => {
  const before = await conversations();
  for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
    const r = await post({ model: 'x', messages: user, max_tokens: 2 }, type);
    assert.equal(r.status, 415, type);
    assert.equal(await code(r), 'unsupported_media_type');
  }
  assert.equal((await post({ model: 'x', messages: user, max_tokens: 2 }, 'application/json; charset=utf-8')).status, 200);
  assert.equal(await conversations(), before + 1);
});

test('stop strings are bounded in count and length, on /v1 and on the WebSocket', async () => {
  const long = 's'.repeat(65);
  for (const stop of [long, [long], ['a', 'b', 'c', 'd', 'e']]) {
    const r = await post({ model: 'x', messages: user, max_tokens: 2, stop });
    assert.equal(r.status, 400, JSON.stringify(stop).slice(0, 40));
    assert.equal(await code(r), 'invalid_request');
  }
  assert.equal((await post({ model: 'x', messages: user, max_tokens: 2, stop: ['s'.repeat(64), 'a', 'b', 'c'] })).status, 200);
  const c = await TestClient.connect(srv.wsUrl);
  const conv = (await c.request({ type: 'start' }, (m) => m.type === 'conversation')).conversationId;
  const e = await c.request({ type: 'user_message', requestId: 's1', conversationId: conv, content: 'hi', params: { maxTokens: 2, stop: [long] } }, (m) => m.type === 'error' || m.type === 'reply');
  assert.equal(e.type, 'error');
  assert.equal(e.code, 'invalid_request');
  c.close();
});

test('an overloaded server answers 429 and stores nothing of the refused request', async () => {
  const busy = post({ model: 'x', messages: user, max_tokens: 150, temperature: 0 }); // holds the only slot
  for (let i = 0; i < 200 && srv.chat()!.deps.scheduler.activeCount === 0; i++) await new Promise((r) => setTimeout(r, 5));
  const before = await conversations();
  const r = await post({ model: 'x', messages: user, max_tokens: 2 });
  assert.equal(r.status, 429);
  assert.equal(await code(r), 'overloaded');
  assert.equal(await conversations(), before, 'no conversation or message rows for the refused request');
  assert.equal((await busy).status, 200);
});
