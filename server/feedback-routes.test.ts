import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createApiKey } from '../feedback/api-keys.ts';
import { listThumbs } from '../feedback/judgement-queries.ts';
import { startTestServer, TestClient, type TestServer } from './test-support.ts';

type Json = Record<string, any>;

async function call(srv: TestServer, method: 'GET' | 'POST', path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: Json }> {
  const init: RequestInit = { method, headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers } };
  if (body !== undefined) init.body = typeof body === 'string' ? body : JSON.stringify(body);
  const r = await fetch(`${srv.url}${path}`, init);
  return { status: r.status, body: (await r.json()) as Json };
}
const feedback = (srv: TestServer, body: unknown, headers?: Record<string, string>) => call(srv, 'POST', '/v1/feedback', body, headers);
const mine = (srv: TestServer, messageId: string, headers?: Record<string, string>) => call(srv, 'GET', `/v1/feedback?message_id=${encodeURIComponent(messageId)}`, undefined, headers);

/** The `message_id`s of an `n`-choice completion. */
async function replies(srv: TestServer, n: number, headers: Record<string, string> = {}): Promise<string[]> {
  const r = await call(srv, 'POST', '/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'hello' }], max_tokens: 3, n }, headers);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.choices.map((c: { message_id: string }) => c.message_id);
}

/** Asserts an OpenAI-shaped error with this status, code and param. */
function refused(r: { status: number; body: Json }, status: number, code: string, param: string | null): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error.code, code, JSON.stringify(r.body));
  assert.equal(r.body.error.param, param, JSON.stringify(r.body));
  assert.equal(typeof r.body.error.message, 'string');
  assert.equal(r.body.error.type, status === 404 ? 'not_found_error' : status === 429 ? 'rate_limit_error' : 'invalid_request_error');
}

describe('local mode', () => {
  let srv: TestServer;
  before(async () => {
    srv = await startTestServer({ maxN: 3, judgementsPerMinute: 1000, requestsPerMinute: 1000, maxMessageBytes: 4096 });
  });
  after(async () => {
    await srv.close();
  });

  test('a thumb on a completion\'s message_id is stored once per idempotency key and read back; a later thumb replaces it', async () => {
    const [m] = await replies(srv, 1);
    const first = await feedback(srv, { type: 'thumb', message_id: m, value: 'up', idempotency_key: 'k-1' });
    assert.equal(first.status, 201, JSON.stringify(first.body));
    assert.deepEqual([first.body.object, first.body.type, first.body.duplicate], ['feedback', 'thumb', false]);
    const retry = await feedback(srv, { type: 'thumb', message_id: m, value: 'up' }, { 'Idempotency-Key': 'k-1' });
    assert.equal(retry.status, 200);
    assert.deepEqual([retry.body.id, retry.body.duplicate], [first.body.id, true]);
    refused(await feedback(srv, { type: 'thumb', message_id: m, value: 'down', idempotency_key: 'k-1' }), 400, 'idempotency_conflict', 'idempotency_key');

    let got = await mine(srv, m!);
    assert.equal(got.status, 200);
    assert.deepEqual(got.body.data.map((j: Json) => [j.type, j.id, j.value, j.message_id]), [['thumb', first.body.id, 'up', m]]);

    const down = await feedback(srv, { type: 'thumb', message_id: m, value: 'down', reason: 'not_factual', comment: 'wrong year' });
    assert.equal(down.status, 201);
    got = await mine(srv, m!);
    assert.deepEqual(got.body.data.map((j: Json) => [j.id, j.value, j.reason, j.comment]), [[down.body.id, 'down', 'not_factual', 'wrong year']]);
  });

  test('a comparison and a ranking of sibling choices are stored, and GET shows every judgement naming the message', async () => {
    const [a, b, c] = await replies(srv, 3);
    const cmp = await feedback(srv, { type: 'comparison', a, b, choice: 'both_bad', comment: 'neither' });
    assert.equal(cmp.status, 201, JSON.stringify(cmp.body));
    assert.equal(cmp.body.type, 'comparison');
    const rank = await feedback(srv, { type: 'ranking', candidates: [c, a, b] });
    assert.equal(rank.status, 201, JSON.stringify(rank.body));
    const onA = await mine(srv, a!);
    assert.deepEqual(
      onA.body.data.map((j: Json) => [j.type, j.id]),
      [['comparison', cmp.body.id], ['ranking', rank.body.id]],
    );
    assert.deepEqual([onA.body.data[0].a, onA.body.data[0].b, onA.body.data[0].choice], [a, b, 'both_bad']);
    assert.deepEqual(onA.body.data[1].candidates, [c, a, b]);
    assert.deepEqual((await mine(srv, c!)).body.data.map((j: Json) => j.type), ['ranking']);
  });

  test('bad bodies get a stable code and the field at fault, and store nothing', async () => {
    const [a, b] = await replies(srv, 2);
    const raw = (body: string, type = 'application/json') => fetch(`${srv.url}/v1/feedback`, { method: 'POST', headers: { 'content-type': type }, body }).then(async (r) => ({ status: r.status, body: (await r.json()) as Json }));
    refused(await raw('{"type":"thumb",'), 400, 'invalid_json', null);
    refused(await raw(JSON.stringify({ type: 'thumb', message_id: a, value: 'up' }), 'text/plain'), 415, 'unsupported_media_type', null);
    refused(await raw('[1,2]'), 400, 'invalid_request', 'type');
    refused(await feedback(srv, { message_id: a, value: 'up' }), 400, 'invalid_request', 'type');
    refused(await feedback(srv, { type: 'star', message_id: a }), 400, 'unknown_type', 'type');
    refused(await feedback(srv, { type: 'thumb', value: 'up' }), 400, 'invalid_request', 'message_id');
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'sideways' }), 400, 'invalid_thumb', 'value');
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'up', reason: 'unsafe' }), 400, 'invalid_reason', 'reason');
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'down', reason: 'boring' }), 400, 'invalid_reason', 'reason');
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'up', rater_id: 'someone-else' }), 400, 'invalid_request', 'rater_id');
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'up', messageId: a }), 400, 'invalid_request', 'messageId');
    refused(await feedback(srv, { type: 'thumb', message_id: 'no-such-message', value: 'up' }), 404, 'unknown_message', 'message_id');
    refused(await feedback(srv, { type: 'comparison', a, b, choice: 'c' }), 400, 'invalid_choice', 'choice');
    refused(await feedback(srv, { type: 'comparison', a, b: 'missing', choice: 'a' }), 404, 'unknown_message', 'b');
    refused(await feedback(srv, { type: 'comparison', a, b: a, choice: 'a' }), 400, 'duplicate_candidate', 'b');
    refused(await feedback(srv, { type: 'ranking', candidates: [a] }), 400, 'too_few_candidates', 'candidates');
    refused(await feedback(srv, { type: 'ranking', candidates: [a, b, a] }), 400, 'duplicate_candidate', 'candidates');
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'down', comment: 'x'.repeat(2001) }), 400, 'comment_too_long', 'comment');
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'up', idempotency_key: 'other' }, { 'Idempotency-Key': 'h' }), 400, 'invalid_request', 'idempotency_key');
    refused(await raw(JSON.stringify({ type: 'thumb', message_id: a, value: 'down', comment: 'x'.repeat(5000) })), 413, 'message_too_large', null);
    refused(await call(srv, 'GET', '/v1/feedback'), 400, 'invalid_request', 'message_id');
    refused(await mine(srv, 'no-such-message'), 404, 'unknown_message', 'message_id');
    assert.deepEqual((await mine(srv, a!)).body.data, []);
    assert.deepEqual((await mine(srv, b!)).body.data, []);
  });

  test('judgements spend the same per-identity meter as the WebSocket\'s', async () => {
    const limited = await startTestServer({ judgementsPerMinute: 2 }, { model: srv.model });
    try {
      const [m] = await replies(limited, 1);
      const codes: (string | number)[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await feedback(limited, { type: 'thumb', message_id: m, value: i % 2 ? 'up' : 'down' });
        codes.push(r.status === 201 ? 201 : r.body.error.code);
      }
      assert.deepEqual(codes, [201, 201, 'rate_limited']);
    } finally {
      await limited.close();
    }
  });
});

describe('with API keys', () => {
  let srv: TestServer;
  let alice: Record<string, string>;
  let bob: Record<string, string>;
  before(async () => {
    srv = await startTestServer({ maxN: 2, heartbeatMs: 60_000, judgementsPerMinute: 1000, requestsPerMinute: 1000 });
    const db = srv.chat()!.deps.store.db;
    alice = { authorization: `Bearer ${(await createApiKey(db, { userId: 'alice' })).key}` };
    bob = { authorization: `Bearer ${(await createApiKey(db, { userId: 'bob' })).key}` };
  });
  after(async () => {
    await srv.close();
  });

  test('a caller judges only the messages of its own threads: another user\'s ids are unknown, on POST and GET', async () => {
    const [a, b] = await replies(srv, 2, alice);
    refused(await feedback(srv, { type: 'thumb', message_id: a, value: 'up' }, bob), 404, 'unknown_message', 'message_id');
    refused(await feedback(srv, { type: 'comparison', a, b, choice: 'a' }, bob), 404, 'unknown_message', 'a');
    refused(await mine(srv, a!, bob), 404, 'unknown_message', 'message_id');
    const ok = await feedback(srv, { type: 'comparison', a, b, choice: 'a' }, alice);
    assert.equal(ok.status, 201, JSON.stringify(ok.body));
    assert.deepEqual((await mine(srv, a!, alice)).body.data.map((j: Json) => j.id), [ok.body.id]);
    const [own] = await replies(srv, 1, bob);
    refused(await feedback(srv, { type: 'comparison', a, b: own, choice: 'a' }, bob), 404, 'unknown_message', 'a');
  });

  test('the rater is the key\'s user, never a body field; a missing or wrong key is 401', async () => {
    const [m] = await replies(srv, 1, alice);
    refused(await feedback(srv, { type: 'thumb', message_id: m, value: 'up' }), 401, 'invalid_api_key', null);
    refused(await feedback(srv, { type: 'thumb', message_id: m, value: 'up' }, { authorization: 'Bearer rk_not-a-key' }), 401, 'invalid_api_key', null);
    refused(await mine(srv, m!, { authorization: 'Bearer rk_not-a-key' }), 401, 'invalid_api_key', null);
    const r = await feedback(srv, { type: 'thumb', message_id: m, value: 'up' }, alice);
    assert.equal(r.status, 201);
    const rows = await listThumbs(srv.chat()!.deps.store.db, m!);
    assert.deepEqual(rows.map((t) => [t.id, t.rater_id, t.key_id !== null]), [[r.body.id, 'alice', true]]);
  });

  test('a reply received over the WebSocket is judged over HTTP with the same key', async () => {
    const ws = await TestClient.connect(srv.wsUrl, alice);
    try {
      const conv = await ws.request({ type: 'start' }, (m) => m.type === 'conversation');
      const reply = await ws.request({ type: 'user_message', requestId: 'r1', conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 3 } }, (m) => (m.type === 'reply' || m.type === 'error') && m.requestId === 'r1');
      assert.equal(reply.type, 'reply', JSON.stringify(reply));
      const id = String(reply.messageId);
      refused(await feedback(srv, { type: 'thumb', message_id: id, value: 'down' }, bob), 404, 'unknown_message', 'message_id');
      const r = await feedback(srv, { type: 'thumb', message_id: id, value: 'down', reason: 'unhelpful' }, alice);
      assert.equal(r.status, 201, JSON.stringify(r.body));
      assert.deepEqual((await mine(srv, id, alice)).body.data.map((j: Json) => [j.id, j.reason]), [[r.body.id, 'unhelpful']]);
    } finally {
      ws.close();
    }
  });
});
