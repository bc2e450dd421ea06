/**
 * Abuse tests: one per attack the issue on trustworthy feedback lists, each from the attacker's
 * side, through the real server on 127.0.0.1. Each checks that the attack fails with its
 * documented code, that nothing it tried was written, and that everyone else is still served.
 *
 *  1. A forged `start.userId` (the victim's id) opens nothing of the victim's.
 *  2. Rating another user's reply (thumb, comparison, ranking) is `unknown_message`; the victim's
 *     judgement stays the one current row.
 *  3. Rotating bearer values on `/v1` escape no limit, and no bearer value is stored.
 *  4. A 64 KiB word costs milliseconds on both doors while another client's reply keeps streaming.
 *  5. A long stop string (and too many) is refused on both doors before anything is stored.
 *  6. A `text/plain` (or form) body on `/v1` is 415 and runs nothing: a cross-site form cannot chat.
 *  7. A foreign Origin cannot open the WebSocket.
 *  8. 1,000 sockets from one address: the per-address cap holds, another address is served.
 *  9. PostgreSQL stopped mid-run (a TCP proxy cut): chats are refused with `store_unavailable`
 *     before anything decodes, a judgement is acknowledged or refused (never lost after an
 *     acknowledgement), and chats work again once it is back.
 * 10. One identity hogging the batch (many conversations at once), flooding judgements, or
 *     parking a socket without `start`: `overloaded` past its in-flight cap while another person is
 *     served, `rate_limited` past its judgements (nothing more stored), closed 1008 after the timeout.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { createApiKey } from '../feedback/api-keys.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { requirePostgres, TEST_PG_URL } from '../feedback/test-support.ts';
import { CuttableProxy, startTestServer, TestClient, type TestServer } from './test-support.ts';

let srv: TestServer;
before(async () => {
  srv = await startTestServer({ heartbeatMs: 60_000, maxMessageBytes: 256 * 1024, requestsPerMinute: 10_000, judgementsPerMinute: 10_000, maxPromptTokens: 100_000 }, { modelConfig: { blockSize: 128 } });
});
after(async () => {
  await srv.close();
});

const db = () => srv.chat()!.deps.store.db;
const TERMINAL: Record<string, string> = { start: 'conversation', user_message: 'reply', regenerate: 'reply', compare: 'candidates', thumb: 'feedback_ack', comparison: 'feedback_ack', ranking: 'feedback_ack' };
let rid = 0;
/** Sends `msg` and waits for the message that ends it (or its error). */
const ask = (c: TestClient, msg: Record<string, unknown>, ms?: number) => {
  const requestId = `a${++rid}`;
  return c.request({ ...msg, requestId }, (m) => m.requestId === requestId && (m.type === 'error' || m.type === TERMINAL[String(msg.type)]), ms);
};
const userOf = (c: TestClient) => (c.messages.find((m) => m.type === 'ready')!.user as { id: string }).id;

/** A person with one conversation, one reply, and the pair of a comparison. */
async function victim(): Promise<{ c: TestClient; userId: string; conversationId: string; reply: string; pair: string[]; context: string }> {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await ask(c, { type: 'start' });
  const conversationId = String(conv.conversationId);
  const r = await ask(c, { type: 'user_message', conversationId, content: 'what does lucid mean?', params: { maxTokens: 3 } });
  assert.equal(r.type, 'reply', JSON.stringify(r));
  const cmp = await ask(c, { type: 'compare', conversationId, content: 'again', params: { maxTokens: 3 } });
  assert.equal(cmp.type, 'candidates', JSON.stringify(cmp));
  return { c, userId: userOf(c), conversationId, reply: String(r.messageId), pair: cmp.messageIds as string[], context: String(cmp.contextId) };
}

async function judgementRows(): Promise<number> {
  const [t, c, r] = await Promise.all((['thumbs', 'comparisons', 'rankings'] as const).map((table) => db().selectFrom(table).select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()));
  return Number(t!.n) + Number(c!.n) + Number(r!.n);
}
const conversationCount = async () => Number((await db().selectFrom('conversations').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()).n);

test('1. a forged start.userId (the victim\'s own id) opens none of the victim\'s conversations and makes the new one the attacker\'s', async () => {
  const v = await victim();
  const attacker = await TestClient.connect(srv.wsUrl);
  const forged = await ask(attacker, { type: 'start', userId: v.userId });
  assert.equal(forged.type, 'conversation');
  const row = await db().selectFrom('conversations').select('user_id').where('id', '=', String(forged.conversationId)).executeTakeFirstOrThrow();
  assert.equal(row.user_id, userOf(attacker), 'the new conversation is the attacker\'s, whatever userId said');
  for (const msg of [
    { type: 'start', userId: v.userId, conversationId: v.conversationId },
    { type: 'user_message', conversationId: v.conversationId, content: 'mine now' },
    { type: 'regenerate', conversationId: v.conversationId, messageId: v.reply },
    { type: 'compare', conversationId: v.conversationId, parentId: v.context },
  ]) {
    const r = await ask(attacker, msg);
    assert.deepEqual([r.type, r.code], ['error', 'unknown_conversation'], `${msg.type}: ${JSON.stringify(r)}`);
  }
  const messages = await db().selectFrom('messages').select('id').where('conversation_id', '=', v.conversationId).execute();
  assert.equal(messages.length, 5, 'the victim\'s conversation has its own 5 messages and no more');
  v.c.close();
  attacker.close();
});

test('2. rating another user\'s reply is unknown_message for every kind, and the victim\'s judgement stays the one current row', async () => {
  const v = await victim();
  const mine = await ask(v.c, { type: 'thumb', messageId: v.reply, value: 'up' });
  assert.equal(mine.type, 'feedback_ack');
  const attacker = await TestClient.connect(srv.wsUrl);
  const before = await judgementRows();
  for (const msg of [
    { type: 'thumb', messageId: v.reply, value: 'down', reason: 'unsafe' },
    { type: 'thumb', messageId: v.reply, value: 'down', idempotencyKey: 'k1' },
    { type: 'comparison', a: v.pair[0], b: v.pair[1], choice: 'b' },
    { type: 'ranking', candidates: [v.pair[1], v.pair[0]] },
  ]) {
    const r = await ask(attacker, msg);
    assert.deepEqual([r.type, r.code], ['error', 'unknown_message'], `${msg.type}: ${JSON.stringify(r)}`);
  }
  assert.equal(await judgementRows(), before, 'nothing was written');
  const rows = await db().selectFrom('thumbs').select(['rater_id', 'value', 'current']).where('message_id', '=', v.reply).execute();
  assert.deepEqual(rows, [{ rater_id: v.userId, value: 'up', current: 1 }]);
  v.c.close();
  attacker.close();
});

const completion = (headers: Record<string, string>, body: unknown, base = srv.url) =>
  fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
const hello = { model: 'x', messages: [{ role: 'user', content: 'hello' }], max_tokens: 2 };

test('3. rotating bearer values on /v1 escape no limit (local mode: the identity is the address; keys mode: 401, then 429), and no bearer value is stored', async () => {
  const limited = await startTestServer({ requestsPerMinute: 3 }, { model: srv.model });
  const bearers = Array.from({ length: 6 }, () => `sk-${randomBytes(12).toString('hex')}`);
  try {
    const statuses: number[] = [];
    for (const b of bearers) statuses.push((await completion({ authorization: `Bearer ${b}` }, hello, limited.url)).status);
    assert.deepEqual(statuses, [200, 200, 200, 429, 429, 429]);
    const users = (await limited.chat()!.deps.store.db.selectFrom('conversations').select('user_id').execute()).map((r) => r.user_id);
    assert.equal(users.length, 3);
    assert.equal(new Set(users).size, 1, 'one identity for every bearer value');
    for (const b of bearers) assert.ok(!users.some((u) => u.includes(b.slice(3))), 'no bearer value is stored as a user');
  } finally {
    await limited.close();
  }
  const keyed = await startTestServer({ authFailuresPerMinute: 4 }, { model: srv.model });
  try {
    const { key } = await createApiKey(keyed.chat()!.deps.store.db, { userId: 'paying-customer' });
    const codes: string[] = [];
    for (const b of bearers) {
      const r = await completion({ authorization: `Bearer ${b}` }, hello, keyed.url);
      codes.push(`${r.status} ${((await r.json()) as { error: { code: string } }).error.code}`);
    }
    assert.deepEqual(codes.slice(0, 4), Array(4).fill('401 invalid_api_key'));
    assert.deepEqual(codes.slice(4), Array(2).fill('429 rate_limited'));
    const conversations = await keyed.chat()!.deps.store.db.selectFrom('conversations').select('user_id').execute();
    assert.deepEqual(conversations, [], 'made-up keys stored nothing');
    assert.ok(key.length > 20);
  } finally {
    await keyed.close();
  }
});

/** Streams a long reply on its own socket and records the gaps between its deltas. */
async function bystanderStream(): Promise<{ gaps: () => number[]; stop: () => void }> {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await ask(c, { type: 'start' });
  const times: number[] = [];
  let running = true;
  c.ws.on('message', (d) => {
    const m = JSON.parse(String(d)) as Record<string, unknown>;
    if (m.type === 'delta') times.push(performance.now());
    if (m.type === 'reply' && running) c.send({ type: 'user_message', conversationId: conv.conversationId, content: 'more', params: { maxTokens: 100, temperature: 1 } });
  });
  c.send({ type: 'user_message', conversationId: conv.conversationId, content: 'tell me', params: { maxTokens: 100, temperature: 1 } });
  await c.next((m) => m.type === 'delta');
  return {
    gaps: () => times.slice(1).map((t, i) => t - times[i]!),
    stop: () => {
      running = false;
      c.close();
    },
  };
}

/** A word of 64 KiB of letters chosen to merge badly (no repeated pair to collapse cheaply). */
function expensiveWord(bytes = 64 * 1024): string {
  let s = '';
  for (let i = 0; s.length < bytes; i++) s += 'abcdefghijklmnopqrstuvwxyz'[(i * 7 + ((i / 26) | 0)) % 26];
  return s;
}

test('4. a 64 KiB word is answered in well under a second on both doors while another client\'s reply keeps streaming', async (t) => {
  const bystander = await bystanderStream();
  const word = expensiveWord();
  try {
    const t0 = performance.now();
    const r = await completion({}, { model: 'x', messages: [{ role: 'user', content: word }], max_tokens: 2 });
    const httpMs = performance.now() - t0;
    assert.equal(r.status, 400);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'context_length_exceeded');
    const c = await TestClient.connect(srv.wsUrl);
    const conv = await ask(c, { type: 'start' });
    const t1 = performance.now();
    const w = await ask(c, { type: 'user_message', conversationId: conv.conversationId, content: word });
    const wsMs = performance.now() - t1;
    assert.deepEqual([w.type, w.code], ['error', 'prompt_too_long']);
    c.close();
    assert.ok(httpMs < 1000 && wsMs < 1000, `the word took ${httpMs.toFixed(0)} ms on /v1 and ${wsMs.toFixed(0)} ms on /ws`);
    const worst = Math.max(...bystander.gaps());
    assert.ok(worst < 500, `the other stream stalled ${worst.toFixed(0)} ms`);
    t.diagnostic(`64 KiB word: ${httpMs.toFixed(0)} ms on /v1, ${wsMs.toFixed(0)} ms on /ws; the other stream's longest gap between deltas ${worst.toFixed(0)} ms`);
  } finally {
    bystander.stop();
  }
});

test('5. a long stop string, or too many, is refused on both doors before anything is stored', async () => {
  const before = await conversationCount();
  for (const stop of ['x'.repeat(10_000), ['a', 'b', 'c', 'd', 'e'], ['y'.repeat(65)]]) {
    const r = await completion({}, { ...hello, stop });
    assert.equal(r.status, 400, JSON.stringify(stop).slice(0, 40));
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'invalid_request');
  }
  assert.equal(await conversationCount(), before, '/v1 stored nothing for a refused request');
  const c = await TestClient.connect(srv.wsUrl);
  const conv = await ask(c, { type: 'start' });
  const messages = async () => (await db().selectFrom('messages').select('id').where('conversation_id', '=', String(conv.conversationId)).execute()).length;
  for (const stop of [['z'.repeat(65)], ['z'.repeat(10_000)], ['a', 'b', 'c', 'd', 'e']]) {
    const r = await ask(c, { type: 'user_message', conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 2, stop } });
    assert.deepEqual([r.type, r.code], ['error', 'invalid_request']);
  }
  assert.equal(await messages(), 0, 'the WebSocket stored nothing for a refused request');
  const ok = await ask(c, { type: 'user_message', conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 2, stop: ['s'.repeat(64), 'a', 'b', 'c'] } });
  assert.equal(ok.type, 'reply', 'four stops of up to 64 characters are fine');
  c.close();
});

test('6. a text/plain or form body on /v1 is 415 unsupported_media_type and runs nothing; the same body as JSON is served', async () => {
  const before = await conversationCount();
  const body = JSON.stringify(hello);
  for (const type of ['text/plain', 'text/plain;charset=UTF-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
    const r = await fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': type, origin: 'https://evil.example' }, body });
    assert.equal(r.status, 415, type);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'unsupported_media_type');
    assert.equal(r.headers.get('access-control-allow-origin'), null);
  }
  assert.equal(await conversationCount(), before, 'nothing stored, nothing generated');
  assert.equal((await completion({}, body)).status, 200);
});

/** The status of an upgrade attempt (101 when it opened). */
function upgrade(url: string, o: { headers?: Record<string, string>; localAddress?: string } = {}): Promise<{ status: number; body: string; ws?: WebSocket }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: o.headers, localAddress: o.localAddress });
    ws.on('open', () => resolve({ status: 101, body: '', ws }));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.on('error', (e) => resolve({ status: -1, body: e.message }));
  });
}

test('7. a foreign Origin cannot open the WebSocket (403 origin_not_allowed) and no connection is counted', async () => {
  const open = srv.ws.connections;
  for (const origin of ['https://evil.example', 'http://127.0.0.1.evil.example', 'null', `http://127.0.0.1:${srv.port + 1}`]) {
    const r = await upgrade(srv.wsUrl, { headers: { Origin: origin } });
    assert.equal(r.status, 403, origin);
    assert.match(r.body, /origin_not_allowed/);
  }
  assert.equal(srv.ws.connections, open);
  const same = await upgrade(srv.wsUrl, { headers: { Origin: `http://127.0.0.1:${srv.port}` } });
  assert.equal(same.status, 101);
  same.ws!.close();
});

test('8. 1,000 sockets from one address: the per-address cap holds (429 past it), another address is still served, and closing frees the slots', async (t) => {
  const capped = await startTestServer({ heartbeatMs: 60_000 }, { model: srv.model });
  try {
    const cap = capped.config.maxConnectionsPerAddress;
    const results: { status: number; ws?: WebSocket }[] = [];
    for (let i = 0; i < 1000; i += 100) results.push(...(await Promise.all(Array.from({ length: 100 }, () => upgrade(capped.wsUrl)))));
    const opened = results.filter((r) => r.status === 101);
    t.diagnostic(`1,000 upgrades from one address: ${opened.length} opened, ${results.filter((r) => r.status === 429).length} refused 429 too_many_connections`);
    assert.equal(opened.length, cap, `${opened.length} opened`);
    assert.equal(results.filter((r) => r.status === 429).length, 1000 - cap);
    assert.equal(capped.ws.connections, cap);
    const elsewhere = await upgrade(capped.wsUrl, { localAddress: '127.0.0.2' });
    assert.equal(elsewhere.status, 101, 'another address is served');
    elsewhere.ws!.close();
    for (const r of opened) r.ws!.close();
    const t0 = Date.now();
    while (capped.ws.connections > 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
    const again = await upgrade(capped.wsUrl);
    assert.equal(again.status, 101, 'closed sockets free their slots');
    again.ws!.close();
  } finally {
    await capped.close();
  }
});


test('9. PostgreSQL stopped mid-run: every chat is refused with store_unavailable and no reply is shown that was not stored; a judgement is acknowledged or refused as store_unavailable, every acknowledged one is stored, and chats work again once it is back', async (t) => {
  await requirePostgres();
  const target = new URL(TEST_PG_URL);
  const proxy = new CuttableProxy(target.hostname, Number(target.port || 5432));
  await proxy.open();
  const url = new URL(TEST_PG_URL);
  url.host = `127.0.0.1:${proxy.port}`;
  const store = await openTempStore({ url: url.href, prefix: 'abuse_pg', connectTimeoutMs: 500, healthProbeMs: 200, writer: { retryForMs: 30_000 }, log: () => {} });
  const pgSrv = await startTestServer({ heartbeatMs: 60_000, registryPollMs: 60_000, database: url.href, judgementsPerMinute: 10_000 }, { store, model: srv.model, log: () => {} });
  try {
    const c = await TestClient.connect(pgSrv.wsUrl);
    const conv = await ask(c, { type: 'start' });
    const conversationId = String(conv.conversationId);
    const first = await ask(c, { type: 'user_message', conversationId, content: 'hello', params: { maxTokens: 3 } });
    assert.equal(first.type, 'reply', JSON.stringify(first));
    const acked: string[] = [];
    const ack = await ask(c, { type: 'thumb', messageId: first.messageId, value: 'up' });
    assert.equal(ack.type, 'feedback_ack');
    acked.push(String(ack.id));

    proxy.cut();
    const shownDuringOutage: string[] = [];
    const codes: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await ask(c, { type: 'user_message', conversationId, content: `still there ${i}?`, params: { maxTokens: 3 } }, 20_000);
      if (r.type === 'reply') shownDuringOutage.push(String(r.messageId));
      else codes.push(String(r.code));
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.deepEqual(shownDuringOutage, [], 'no reply while the store is down');
    assert.deepEqual([...new Set(codes)], ['store_unavailable']);
    const health = await fetch(`${pgSrv.url}/healthz`);
    assert.equal(health.status, 503);
    assert.equal(((await health.json()) as { status: string }).status, 'degraded');
    // A judgement sent during the outage is acknowledged only if it will be stored; otherwise it is refused as store_unavailable.
    const during = [ask(c, { type: 'thumb', messageId: first.messageId, value: 'down', reason: 'unhelpful' }, 30_000), ask(c, { type: 'thumb', messageId: first.messageId, value: 'up' }, 30_000)];
    await new Promise((res) => setTimeout(res, 300));

    await proxy.open();
    for (const h of await Promise.all(during)) {
      if (h.type === 'feedback_ack') acked.push(String(h.id));
      else assert.equal(h.code, 'store_unavailable', JSON.stringify(h));
    }
    const t0 = Date.now();
    while ((await fetch(`${pgSrv.url}/healthz`)).status !== 200 && Date.now() - t0 < 10_000) await new Promise((res) => setTimeout(res, 100));
    const after = await ask(c, { type: 'user_message', conversationId, content: 'back?', params: { maxTokens: 3 } });
    assert.equal(after.type, 'reply', JSON.stringify(after));
    const stored = new Set((await store.db.selectFrom('thumbs').select('id').execute()).map((r) => r.id));
    assert.deepEqual(acked.filter((id) => !stored.has(id)), [], 'every acknowledged judgement is stored');
    c.close();
  } finally {
    await pgSrv.close();
    proxy.cut();
  }
});

test('10. one identity cannot take every batch slot, flood judgements, or park a socket without start: overloaded past its in-flight cap while another person is served, rate_limited past its judgements, closed 1008 after the start timeout', async () => {
  const small = await startTestServer({ heartbeatMs: 60_000, maxInFlightPerUser: 2, judgementsPerMinute: 5, startTimeoutMs: 300 }, { model: srv.model });
  try {
    const hog = await TestClient.connect(small.wsUrl);
    const convs = await Promise.all(Array.from({ length: 6 }, async () => String((await ask(hog, { type: 'start' })).conversationId)));
    const answers = convs.map((conversationId) => ask(hog, { type: 'user_message', conversationId, content: 'go on and on', params: { maxTokens: 100, temperature: 1 } }));
    const other = await TestClient.connect(small.wsUrl);
    const conv = await ask(other, { type: 'start' });
    const t0 = performance.now();
    const served = await ask(other, { type: 'user_message', conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 2 } });
    assert.equal(served.type, 'reply', JSON.stringify(served));
    const otherMs = performance.now() - t0;
    const codes = (await Promise.all(answers)).map((m) => (m.type === 'error' ? String(m.code) : 'reply'));
    assert.equal(codes.filter((c) => c === 'reply').length, 2, codes.join());
    assert.deepEqual([...new Set(codes.filter((c) => c !== 'reply'))], ['overloaded']);
    assert.ok(otherMs < 2000, `the other person waited ${otherMs.toFixed(0)} ms`);

    const reply = String(served.messageId);
    const before = await small.chat()!.deps.store.db.selectFrom('thumbs').select('id').execute();
    const judged = await Promise.all(Array.from({ length: 8 }, () => ask(other, { type: 'thumb', messageId: reply, value: 'up' })));
    const kinds = judged.map((m) => (m.type === 'feedback_ack' ? 'ack' : String(m.code)));
    assert.deepEqual(kinds, [...Array(5).fill('ack'), ...Array(3).fill('rate_limited')]);
    const after = await small.chat()!.deps.store.db.selectFrom('thumbs').select('id').execute();
    assert.equal(after.length - before.length, 5, 'only the metered judgements were stored');

    const idle = await TestClient.connect(small.wsUrl);
    const closed = await idle.waitClosed(3000);
    assert.equal(closed.code, 1008);
    hog.close();
    other.close();
  } finally {
    await small.close();
  }
});
