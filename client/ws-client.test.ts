import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { startTestServer, type TestServer } from '../server/test-support.ts';
import { authHeaders, WsClient, WsError } from './ws-client.ts';

let srv: TestServer;
before(async () => {
  srv = await startTestServer({}, { modelConfig: { blockSize: 128 } });
});
after(async () => srv.close());

test('ready, a conversation, a streamed reply, a sibling, a pair to compare and a thumb, typed end to end', async () => {
  const c = await WsClient.connect(srv.wsUrl);
  try {
    assert.equal(c.ready.type, 'ready');
    assert.equal(typeof c.ready.modelVersion, 'string');
    const conv = await c.start({ userId: 'ws-client-test' });
    assert.equal(conv.resumed, false);
    let streamed = '';
    const reply = await c.say(conv.conversationId, 'What does lucid mean?', { maxTokens: 8, seed: 3 }, { onMessage: (m) => void (m.type === 'delta' && (streamed += m.text)) });
    assert.equal(reply.type, 'reply');
    assert.equal(reply.content, streamed, 'the deltas add up to the reply');
    const sibling = await c.regenerate(conv.conversationId, reply.messageId, { maxTokens: 8, seed: 4 });
    assert.equal(sibling.parentId, reply.parentId);
    const { replies, candidates } = await c.compare(conv.conversationId, { parentId: reply.parentId }, { maxTokens: 8 });
    assert.deepEqual(replies.map((r) => r.messageId), candidates.messageIds);
    const ack = await c.feedback({ type: 'thumb', messageId: reply.messageId, value: 'up' });
    assert.deepEqual([ack.type, ack.kind, ack.duplicate], ['feedback_ack', 'thumb', false]);
  } finally {
    c.close();
  }
});

test('a refusal rejects with the server\'s stable code; the socket stays usable', async () => {
  const c = await WsClient.connect(srv.wsUrl);
  try {
    await assert.rejects(c.feedback({ type: 'thumb', messageId: 'NOPE', value: 'up' }), (e: unknown) => e instanceof WsError && e.code === 'unknown_message');
    assert.equal((await c.start()).type, 'conversation');
  } finally {
    c.close();
  }
});

test('timeout and close reject pending requests with their own codes; overloaded is retried', async () => {
  // A fake server: ready, then silence for `start`, `overloaded` twice then an ack for thumbs.
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  let thumbs = 0;
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ type: 'ready', modelVersion: 'fake', limits: {}, heartbeatMs: 1000 }));
    ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as { type: string; requestId: string };
      if (m.type === 'thumb') {
        thumbs++;
        ws.send(JSON.stringify(thumbs <= 2 ? { type: 'error', requestId: m.requestId, code: 'overloaded', message: 'busy' } : { type: 'feedback_ack', requestId: m.requestId, kind: 'thumb', id: 'j1', duplicate: false }));
      }
      if (m.type === 'ping') ws.close();
    });
  });
  const url = `ws://127.0.0.1:${(wss.address() as { port: number }).port}`;
  const c = await WsClient.connect(url);
  try {
    await assert.rejects(c.request({ type: 'start' }, (m) => m.type === 'conversation', { timeoutMs: 50 }), (e: unknown) => e instanceof WsError && e.code === 'timeout');
    assert.equal((await c.feedback({ type: 'thumb', messageId: 'm', value: 'up' })).id, 'j1');
    assert.equal(thumbs, 3, 'two overloaded answers, retried, then the ack');
    await assert.rejects(c.request({ type: 'ping' }, (m) => m.type === 'pong'), (e: unknown) => e instanceof WsError && e.code === 'closed');
    assert.equal(c.closed, true);
    await assert.rejects(c.start(), (e: unknown) => e instanceof WsError && e.code === 'closed');
  } finally {
    c.close();
    await new Promise<void>((r) => wss.close(() => r()));
  }
});

test('an API key from the environment rides on the upgrade request', async () => {
  assert.equal(authHeaders({}), undefined);
  assert.equal(authHeaders({ RLHF_API_KEY: '  ' }), undefined);
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  let seen: string | undefined;
  wss.on('connection', (ws, req) => {
    seen = req.headers.authorization;
    ws.send(JSON.stringify({ type: 'ready', modelVersion: 'fake', limits: {}, heartbeatMs: 1000, user: { id: 'key-user', anonymous: false } }));
  });
  try {
    const c = await WsClient.connect(`ws://127.0.0.1:${(wss.address() as { port: number }).port}`, { headers: authHeaders({ RLHF_API_KEY: 'rk_secret' })! });
    assert.equal(seen, 'Bearer rk_secret');
    assert.equal(c.identity, 'key-user');
    c.close();
  } finally {
    await new Promise<void>((r) => wss.close(() => r()));
  }
});
