import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import WebSocket from 'ws';
import { startTestServer, TestClient, type TestServer } from './test-support.ts';

let srv: TestServer;

before(async () => {
  srv = await startTestServer({ maxMessageBytes: 4096, messagesPerSecond: 20, floodCloseAfter: 60, requestsPerMinute: 1000, heartbeatMs: 150 });
});
after(async () => {
  await srv.close();
});

const errorFor = (c: TestClient, frame: unknown) => c.request(frame, (m) => m.type === 'error');

test('malformed JSON, unknown types, missing fields and wrong types each get their error code and the socket stays usable', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  assert.equal((await errorFor(c, '{"type": "start",')).code, 'invalid_json');
  assert.equal((await errorFor(c, '[1,2]')).code, 'invalid_request');
  assert.equal((await errorFor(c, '{"hello": 1}')).code, 'invalid_request');
  const unknown = await errorFor(c, { type: 'launch_rockets', requestId: 'x1' });
  assert.deepEqual([unknown.code, unknown.requestId], ['unknown_type', 'x1']);
  assert.equal((await errorFor(c, { type: 'user_message', content: 'no conversation' })).code, 'invalid_request');
  assert.equal((await errorFor(c, { type: 'user_message', conversationId: 42, content: 'x' })).code, 'invalid_request');
  // Judgements are validated by the store's one schema, with its codes.
  assert.equal((await errorFor(c, { type: 'thumb', messageId: 'm', value: 'sideways' })).code, 'invalid_thumb');
  assert.equal((await errorFor(c, { type: 'thumb', messageId: 'm', value: 'up', comment: 'x'.repeat(2001) })).code, 'comment_too_long');
  assert.equal((await errorFor(c, { type: 'ranking', candidates: ['a'] })).code, 'too_few_candidates');
  assert.equal((await errorFor(c, { type: 'ranking', candidates: Array.from({ length: 17 }, (_, i) => `m${i}`) })).code, 'too_many_candidates');
  assert.equal((await errorFor(c, { type: 'start', extra: true })).code, 'invalid_request');
  assert.equal((await errorFor(c, { type: 'user_message', conversationId: 'NOPE', content: 'x' })).code, 'unknown_conversation');
  const conv = await c.request({ type: 'start' }, (m) => m.type === 'conversation');
  assert.equal((await errorFor(c, { type: 'user_message', conversationId: conv.conversationId, content: 'x', params: { maxTokens: 100_000 } })).code, 'max_tokens_too_large');
  assert.equal((await errorFor(c, { type: 'user_message', conversationId: conv.conversationId, content: 'lucid '.repeat(400) })).code, 'prompt_too_long');
  const pong = await c.request({ type: 'ping', requestId: 'p' }, (m) => m.type === 'pong');
  assert.equal(pong.requestId, 'p');
  c.close();
});

test('a binary frame gets "binary_not_supported" and the socket stays open', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const from = c.messages.length;
  c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
  const e = await c.next((m) => m.type === 'error', 5000, from);
  assert.equal(e.code, 'binary_not_supported');
  await c.request({ type: 'ping' }, (m) => m.type === 'pong');
  c.close();
});

test('an oversized frame closes the socket with 1009 while other clients keep being served', async () => {
  const bystander = await TestClient.connect(srv.wsUrl);
  const c = await TestClient.connect(srv.wsUrl);
  c.send({ type: 'ping', requestId: 'x'.repeat(5000) });
  const closed = await c.waitClosed();
  assert.equal(closed.code, 1009);
  await bystander.request({ type: 'ping' }, (m) => m.type === 'pong');
  bystander.close();
});

test('a flood of messages is throttled with "rate_limited", and a socket that keeps flooding is closed with 1008', async () => {
  const bystander = await TestClient.connect(srv.wsUrl);
  const c = await TestClient.connect(srv.wsUrl);
  for (let i = 0; i < 200; i++) c.send({ type: 'ping' });
  const closed = await c.waitClosed();
  assert.equal(closed.code, 1008);
  assert.ok(c.messages.some((m) => m.type === 'error' && m.code === 'rate_limited'));
  assert.ok(c.messages.filter((m) => m.type === 'pong').length <= 45, 'most of the flood was not processed');
  await bystander.request({ type: 'ping' }, (m) => m.type === 'pong');
  bystander.close();
});

test('a client that disconnects mid-stream frees its batch slot within a decode step and others are still served', async () => {
  const chat = srv.chat()!;
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await c.request({ type: 'start' }, (m) => m.type === 'conversation');
  c.send({ type: 'user_message', requestId: 'z', conversationId: conv.conversationId, content: 'go on', params: { maxTokens: 200, temperature: 1 } });
  await c.next((m) => m.type === 'delta' || (m.type === 'reply' && m.requestId === 'z'));
  c.ws.terminate();
  const t0 = Date.now();
  while (chat.deps.scheduler.activeCount > 0 && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 5));
  assert.equal(chat.deps.scheduler.activeCount, 0);
  const other = await TestClient.connect(srv.wsUrl);
  const conv2 = await other.request({ type: 'start' }, (m) => m.type === 'conversation');
  const r = await other.request({ type: 'user_message', requestId: 'o', conversationId: conv2.conversationId, content: 'hi', params: { maxTokens: 4 } }, (m) => m.type === 'reply' || m.type === 'error');
  assert.equal(r.type, 'reply');
  other.close();
});

test('a peer that stops answering pings is terminated by the heartbeat', async () => {
  const ws = new WebSocket(srv.wsUrl);
  await once(ws, 'open');
  // Stop reading: pings are never answered.
  (ws as unknown as { _socket: { pause(): void } })._socket.pause();
  const t0 = Date.now();
  while (srv.ws.connections > 0 && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
  assert.equal(srv.ws.connections, 0);
  ws.terminate();
});

test('generation requests past the per-client limit per minute get "rate_limited"', async () => {
  // Three a minute: the start (a new conversation counts too) and two replies.
  const limited = await startTestServer({ requestsPerMinute: 3 }, { model: srv.model });
  try {
    const c = await TestClient.connect(limited.wsUrl);
    const conv = await c.request({ type: 'start' }, (m) => m.type === 'conversation');
    const codes: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await c.request({ type: 'user_message', requestId: `q${i}`, conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 2 } }, (m) => m.requestId === `q${i}` && (m.type === 'reply' || m.type === 'error'));
      codes.push(r.type === 'error' ? String(r.code) : 'ok');
    }
    assert.deepEqual(codes, ['ok', 'ok', 'rate_limited']);
    c.close();
  } finally {
    await limited.close();
  }
});

test('a request to another path is refused at the upgrade', async () => {
  const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/elsewhere`);
  const [err] = (await once(ws, 'error')) as [Error];
  assert.match(err.message, /404/);
});
