/**
 * Two protocol bugs, fixed: resuming after `compare` continues from candidate 0 (as documented),
 * and a `cancel` or a close that arrives before the request is registered still cancels it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, TestClient, type TestServer } from './test-support.ts';

let srv: TestServer;
before(async () => {
  srv = await startTestServer({ heartbeatMs: 60_000 });
});
after(() => srv.close());

const endOf = (rid: string) => (m: Record<string, unknown>) => (m.type === 'reply' || m.type === 'error' || m.type === 'candidates') && m.requestId === rid;

/** Makes loading a conversation take `ms` (a slow store) while `fn` runs. */
async function withSlowLoad<T>(ms: number, fn: () => Promise<T>): Promise<T> {
  const chat = srv.chat()!;
  const load = chat.load;
  chat.load = async (...args) => {
    await new Promise((r) => setTimeout(r, ms));
    return load.apply(chat, args);
  };
  try {
    return await fn();
  } finally {
    chat.load = load;
  }
}

async function startConversation(c: TestClient): Promise<string> {
  const m = await c.request({ type: 'start' }, (x) => x.type === 'conversation');
  return m.conversationId as string;
}

test('a conversation resumed from the store after compare continues from candidate 0', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c);
  const cands = await c.request({ type: 'compare', requestId: 'k1', conversationId: conv, content: 'hello', params: { maxTokens: 4, seed: 1 } }, (m) => (m.type === 'candidates' || m.type === 'error') && m.requestId === 'k1');
  assert.equal(cands.type, 'candidates', JSON.stringify(cands));
  const [first, second] = cands.messageIds as string[];
  srv.chat()!.deps.sessions.clear(); // forget the live state: the next start rebuilds it from the store
  const resumed = await c.request({ type: 'start', conversationId: conv }, (x) => x.type === 'conversation' || x.type === 'error');
  const ids = (resumed.messages as { id: string }[]).map((m) => m.id);
  assert.equal(ids[ids.length - 1], first, `the active branch ends at candidate 0, not candidate 1 (${second})`);
  c.close();
});

test('a cancel sent right behind its request, before the request is registered, cancels the reply', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c);
  // The cancel arrives while the request still awaits the store.
  const end = await withSlowLoad(200, async () => {
    c.send({ type: 'user_message', requestId: 'e1', conversationId: conv, content: 'hello', params: { maxTokens: 32, seed: 5, temperature: 1 } });
    c.send({ type: 'cancel', requestId: 'e1' });
    return c.next(endOf('e1'));
  });
  assert.equal(end.type, 'reply', JSON.stringify(end));
  assert.equal(end.finishReason, 'cancelled');
  assert.equal((end.usage as { completionTokens: number }).completionTokens, 0);
  assert.ok(!c.messages.some((m) => m.type === 'error' && m.code === 'unknown_request'), 'the cancel found its request');
  c.close();
});

test('a socket closed right behind its request, before the request is registered, decodes nothing', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await startConversation(c);
  const { db } = srv.chat()!.deps.store;
  await withSlowLoad(300, async () => {
    c.send({ type: 'user_message', requestId: 'e2', conversationId: conv, content: 'hello there', params: { maxTokens: 32, seed: 5, temperature: 1 } });
    c.close();
    await c.waitClosed();
    await new Promise((r) => setTimeout(r, 400)); // the request is submitted after the close
  });
  let gen: { finish_reason: string; completion_tokens: number } | undefined;
  for (let i = 0; i < 200 && !gen; i++) {
    gen = await db
      .selectFrom('generations')
      .innerJoin('messages', 'messages.id', 'generations.message_id')
      .select(['generations.finish_reason', 'generations.completion_tokens'])
      .where('messages.conversation_id', '=', conv)
      .executeTakeFirst();
    if (!gen) await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(gen, 'the request was stored');
  assert.equal(gen.finish_reason, 'cancelled');
  assert.equal(gen.completion_tokens, 0);
});
