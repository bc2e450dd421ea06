import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { getGeneration, } from '../feedback/generations.ts';
import { startServer } from './server.ts';
import { startTestServer, watchedSteps, TestClient, type TestServer } from './test-support.ts';

let srv: TestServer;
/** The same model with a decode step slowed to ≥ 3 ms, so a reply lasts long enough to be interrupted. */
let slow: TestServer;

before(async () => {
  srv = await startTestServer({ heartbeatMs: 60_000 });
  slow = await startTestServer({ heartbeatMs: 60_000 }, { model: watchedSteps(srv.model, { busyMs: 3 }) });
});
after(async () => {
  await srv.close();
  await slow.close();
});

const isReply = (rid: string) => (m: Record<string, unknown>) => (m.type === 'reply' || m.type === 'error') && m.requestId === rid;

async function startConversation(c: TestClient, system?: string): Promise<string> {
  const m = await c.request({ type: 'start', ...(system ? { system } : {}) }, (x) => x.type === 'conversation');
  return m.conversationId as string;
}

test('a user message streams deltas that add up to the final reply, which carries its id, version, finish reason and usage', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c);
  const from = c.messages.length;
  const reply = await c.request({ type: 'user_message', requestId: 'a1', conversationId: conv, content: 'what does lucid mean?', params: { maxTokens: 12, seed: 3 } }, isReply('a1'));
  assert.equal(reply.type, 'reply', JSON.stringify(reply));
  const mine = c.messages.slice(from).filter((m) => m.requestId === 'a1');
  assert.equal(mine[0]!.type, 'reply_start');
  const deltas = mine.filter((m) => m.type === 'delta').map((m) => m.text).join('');
  assert.equal(deltas, reply.content);
  assert.match(String(reply.messageId), /^[0-9A-Z]{26}$/);
  assert.equal(reply.modelVersion, srv.model.version);
  assert.ok(['stop', 'length'].includes(String(reply.finishReason)));
  const usage = reply.usage as { promptTokens: number; completionTokens: number; totalTokens: number };
  assert.ok(usage.promptTokens > 0 && usage.completionTokens > 0 && usage.completionTokens <= 12);
  assert.equal(usage.totalTokens, usage.promptTokens + usage.completionTokens);
  const gen = await getGeneration(srv.chat()!.deps.store.db, String(reply.messageId));
  assert.equal(gen?.model_version_id, srv.model.version);
  assert.equal(gen?.seed, 3);
  assert.equal(JSON.parse(gen!.params_json).maxTokens, 12);
  c.close();
});

test('regenerate makes a sibling reply and compare makes two candidates decoded side by side', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c);
  const first = await c.request({ type: 'user_message', requestId: 'b1', conversationId: conv, content: 'hello', params: { maxTokens: 6 } }, isReply('b1'));
  const again = await c.request({ type: 'regenerate', requestId: 'b2', conversationId: conv, messageId: first.messageId, params: { maxTokens: 6 } }, isReply('b2'));
  assert.equal(again.type, 'reply', JSON.stringify(again));
  assert.equal(again.parentId, first.parentId);
  assert.notEqual(again.messageId, first.messageId);
  const from = c.messages.length;
  const cands = await c.request({ type: 'compare', requestId: 'b3', conversationId: conv, content: 'use it in a sentence', params: { maxTokens: 6 } }, (m) => m.requestId === 'b3' && (m.type === 'candidates' || m.type === 'error'));
  assert.equal(cands.type, 'candidates', JSON.stringify(cands));
  const replies = c.messages.slice(from).filter((m) => m.type === 'reply' && m.requestId === 'b3');
  assert.deepEqual(replies.map((r) => r.candidate).sort(), [0, 1]);
  assert.deepEqual(cands.messageIds, replies.sort((a, b) => Number(a.candidate) - Number(b.candidate)).map((r) => r.messageId));
  assert.ok(replies.every((r) => r.parentId === cands.contextId));
  c.close();
});

test('thumbs, comparisons and rankings are stored through the feedback store and acknowledged', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c);
  const cands = await c.request({ type: 'compare', requestId: 'c1', conversationId: conv, content: 'hi', params: { maxTokens: 4 } }, (m) => m.requestId === 'c1' && (m.type === 'candidates' || m.type === 'error'));
  const [a, b] = cands.messageIds as string[];
  const thumb = await c.request({ type: 'thumb', requestId: 'f1', messageId: a, value: 'down', reason: 'unhelpful' }, (m) => m.requestId === 'f1');
  assert.equal(thumb.type, 'feedback_ack', JSON.stringify(thumb));
  const cmp = await c.request({ type: 'comparison', requestId: 'f2', a, b, choice: 'b' }, (m) => m.requestId === 'f2');
  assert.equal(cmp.type, 'feedback_ack', JSON.stringify(cmp));
  const rank = await c.request({ type: 'ranking', requestId: 'f3', candidates: [b, a] }, (m) => m.requestId === 'f3');
  assert.equal(rank.type, 'feedback_ack', JSON.stringify(rank));
  const bad = await c.request({ type: 'thumb', requestId: 'f4', messageId: a, value: 'up', reason: 'unhelpful' }, (m) => m.requestId === 'f4');
  assert.deepEqual([bad.type, bad.code], ['error', 'invalid_reason']);
  const unknown = await c.request({ type: 'thumb', requestId: 'f5', messageId: 'NOPE', value: 'up' }, (m) => m.requestId === 'f5');
  assert.deepEqual([unknown.type, unknown.code], ['error', 'unknown_message']);
  const db = srv.chat()!.deps.store.db;
  assert.equal((await db.selectFrom('thumbs').selectAll().where('message_id', '=', a).execute()).length, 1);
  assert.equal((await db.selectFrom('comparisons').selectAll().where('id', '=', String(cmp.id)).execute()).length, 1);
  assert.equal((await db.selectFrom('rankings').selectAll().where('id', '=', String(rank.id)).execute()).length, 1);
  c.close();
});

test('cancel stops a reply in flight: it ends with finish reason "cancelled" and is still stored', async () => {
  const c = await TestClient.connect(slow.wsUrl);
  const conv = await startConversation(c);
  c.send({ type: 'user_message', requestId: 'd1', conversationId: conv, content: 'tell me everything', params: { maxTokens: 200, temperature: 1, seed: 1 } });
  await c.next((m) => m.type === 'reply_start' && m.requestId === 'd1');
  c.send({ type: 'cancel', requestId: 'd1' });
  const reply = await c.next(isReply('d1'));
  assert.equal(reply.finishReason, 'cancelled', JSON.stringify(reply));
  assert.ok((reply.usage as { completionTokens: number }).completionTokens < 40);
  const gen = await getGeneration(slow.chat()!.deps.store.db, String(reply.messageId));
  assert.equal(gen?.finish_reason, 'cancelled');
  const late = await c.request({ type: 'cancel', requestId: 'd1' }, (m) => m.type === 'error');
  assert.equal(late.code, 'unknown_request');
  c.close();
});

test('a second request in a conversation while one is in flight is refused with "busy"', async () => {
  const c = await TestClient.connect(slow.wsUrl);
  const conv = await startConversation(c);
  c.send({ type: 'user_message', requestId: 'e1', conversationId: conv, content: 'one', params: { maxTokens: 200, temperature: 1, seed: 1 } });
  const busy = await c.request({ type: 'user_message', requestId: 'e2', conversationId: conv, content: 'two' }, isReply('e2'));
  assert.equal(busy.code, 'busy');
  c.send({ type: 'cancel', requestId: 'e1' });
  await c.next(isReply('e1'));
  c.close();
});

test('a conversation is rebuilt from the store after a reconnect and after a server restart', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c, 'You are terse.');
  const r1 = await c.request({ type: 'user_message', requestId: 'g1', conversationId: conv, content: 'first question', params: { maxTokens: 5 } }, isReply('g1'));
  c.close();
  // The same browser (its anonymous cookie) reconnects.
  const cookie = { Cookie: c.cookie! };
  const c2 = await TestClient.connect(srv.wsUrl, cookie);
  const resumed = await c2.request({ type: 'start', conversationId: conv }, (m) => m.type === 'conversation' || m.type === 'error');
  assert.equal(resumed.resumed, true);
  assert.deepEqual((resumed.messages as { role: string }[]).map((m) => m.role), ['system', 'user', 'assistant']);
  assert.equal((resumed.messages as { id: string }[])[2]!.id, r1.messageId);
  c2.close();
  const strangerSocket = await TestClient.connect(srv.wsUrl);
  const stranger = await strangerSocket.request({ type: 'start', conversationId: conv }, (m) => m.type === 'error');
  assert.equal(stranger.code, 'unknown_conversation');
  strangerSocket.close();

  // A second server on the same store (a restart) knows nothing in memory and rebuilds the branch.
  const other = await startServer({ ...srv.config, port: 0 }, { model: srv.model, store: srv.chat()!.deps.store, ownStore: false, defaultMetrics: false, log: () => {} });
  await other.ready;
  try {
    const c3 = await TestClient.connect(`ws://127.0.0.1:${other.port}/ws`, cookie);
    const back = await c3.request({ type: 'start', conversationId: conv }, (m) => m.type === 'conversation' || m.type === 'error');
    assert.deepEqual((back.messages as { content: string }[]).map((m) => m.content), ['You are terse.', 'first question', String(r1.content)]);
    const r2 = await c3.request({ type: 'user_message', requestId: 'g2', conversationId: conv, content: 'second', params: { maxTokens: 5 } }, isReply('g2'));
    assert.equal(r2.type, 'reply');
    const db = srv.chat()!.deps.store.db;
    const user2 = await db.selectFrom('messages').selectAll().where('id', '=', String(r2.parentId)).executeTakeFirstOrThrow();
    assert.equal(user2.parent_id, r1.messageId, 'the new turn follows the stored branch');
    c3.close();
  } finally {
    await other.close();
  }
});

test('when a conversation outgrows the context window the oldest turns are dropped, the system prompt kept, and the reply says so', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c, 'sys');
  const block = srv.model.gpt.config.blockSize;
  let last: Record<string, unknown> = {};
  for (let i = 0; i < 6 && !last.contextTruncated; i++) {
    last = await c.request({ type: 'user_message', requestId: `h${i}`, conversationId: conv, content: 'the cat sat on the mat and the dog sat on the log', params: { maxTokens: 8 } }, isReply(`h${i}`));
    assert.equal(last.type, 'reply', JSON.stringify(last));
    assert.ok((last.usage as { promptTokens: number }).promptTokens + 1 <= block);
  }
  assert.ok(last.contextTruncated, 'some turn was truncated');
  assert.ok((last.contextTruncated as { droppedMessages: number }).droppedMessages >= 2);
  const chat = srv.chat()!;
  const state = chat.deps.sessions.get(conv)!;
  const prompt = chat.prompt(state.path.slice(0, -1).map((t) => ({ role: t.role, content: t.content })), 8);
  assert.equal(prompt.ids[0], srv.model.tok.specialId('<|system|>'), 'the system prompt is kept');
  c.close();
});

test('the KV cache of a conversation is kept between turns, holding a prefix of the next turn\'s prompt', async () => {
  const chat = srv.chat()!;
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c);
  const r = await c.request({ type: 'user_message', requestId: 'k1', conversationId: conv, content: 'hi', params: { maxTokens: 4, temperature: 0 } }, isReply('k1'));
  assert.equal(r.type, 'reply');
  const state = chat.deps.sessions.get(conv)!;
  assert.ok(state.kv, 'a finished reply leaves its KV cache in the session cache');
  assert.equal(state.kv.cache.length, state.kv.ids.length);
  const next = chat.prompt([...state.path, { id: '', role: 'user' as const, content: 'more' }], 4).ids;
  const p = (r.usage as { promptTokens: number }).promptTokens;
  assert.equal(state.kv.ids.length, p + (r.usage as { completionTokens: number }).completionTokens - 1);
  assert.deepEqual(next.slice(0, p), state.kv.ids.slice(0, p), 'the cached context starts the next prompt');
  assert.ok(chat.deps.sessions.bytes > 0);
  c.close();
});

test('deltas arriving within deltaCoalesceMs of a reply\'s previous frame are sent as one frame, in order, adding up to the reply; 0 sends one frame per delta', async () => {
  const frames = async (server: TestServer, rid: string) => {
    const c = await TestClient.connect(server.wsUrl);
    const conv = await startConversation(c);
    const from = c.messages.length;
    // Greedy over a model whose end-of-turn is unlikely: the reply runs to maxTokens.
    const reply = await c.request({ type: 'user_message', requestId: rid, conversationId: conv, content: 'hello there', params: { maxTokens: 24, seed: 1, temperature: 0 } }, isReply(rid));
    const mine = c.messages.slice(from).filter((m) => m.requestId === rid);
    c.close();
    const deltas = mine.filter((m) => m.type === 'delta');
    assert.equal(deltas.map((m) => m.text).join(''), reply.content);
    assert.equal(mine[mine.length - 1]!.type, 'reply', 'no delta after the reply');
    return { deltas: deltas.length, tokens: (reply.usage as { completionTokens: number }).completionTokens, content: reply.content };
  };
  // One decode step per turn, so each token comes to the socket as a delta of its own (in slices,
  // the scheduler already hands a reply's tokens of a slice over as one delta).
  const held = await startTestServer({ heartbeatMs: 60_000, deltaCoalesceMs: 10_000, decodeSliceMs: 0 }, { model: srv.model });
  const each = await startTestServer({ heartbeatMs: 60_000, deltaCoalesceMs: 0, decodeSliceMs: 0 }, { model: srv.model });
  try {
    const a = await frames(held, 'co1');
    const b = await frames(each, 'co2');
    assert.equal(a.content, b.content, 'the same text either way');
    assert.ok(a.deltas <= 2, `${a.deltas} delta frames for ${a.tokens} tokens: the first at once, the rest held until the reply`);
    assert.ok(b.deltas > a.deltas && b.deltas >= b.tokens / 2, `${b.deltas} delta frames for ${b.tokens} tokens without coalescing`);
  } finally {
    await held.close();
    await each.close();
  }
});
