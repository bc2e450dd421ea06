import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { createApiKey } from '../feedback/api-keys.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { defaultServerConfig } from './config.ts';
import { startServer } from './server.ts';
import { startTestServer, watchedSteps, TestClient, tinyModel, type TestServer } from './test-support.ts';

const ADMIN = 'admin-token-for-tests-0123456789';

/** The status of a refused upgrade (or 101 when it opened). */
function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on('open', () => {
      ws.terminate();
      resolve({ status: 101, body: '' });
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.on('error', (e) => reject(e));
  });
}

const isReply = (rid: string) => (m: Record<string, unknown>) => (m.type === 'reply' || m.type === 'error') && m.requestId === rid;

async function chatOnce(c: TestClient, rid: string): Promise<{ conversationId: string; messageId: string }> {
  const conv = await c.request({ type: 'start' }, (m) => m.type === 'conversation');
  const r = await c.request({ type: 'user_message', requestId: rid, conversationId: conv.conversationId, content: 'hello', params: { maxTokens: 3 } }, isReply(rid));
  assert.equal(r.type, 'reply', JSON.stringify(r));
  return { conversationId: String(conv.conversationId), messageId: String(r.messageId) };
}

describe('local mode (no API key)', () => {
  let srv: TestServer;
  before(async () => {
    srv = await startTestServer({ heartbeatMs: 60_000, judgementsPerMinute: 3, requestsPerMinute: 1000 });
  });
  after(async () => {
    await srv.close();
  });

  test('two sockets without each other\'s cookie are two people; the cookie is HttpOnly and SameSite=Strict and brings the same person back', async () => {
    const a = await TestClient.connect(srv.wsUrl);
    const b = await TestClient.connect(srv.wsUrl);
    const ua = (a.messages[0]!.user as { id: string; anonymous: boolean });
    const ub = (b.messages[0]!.user as { id: string });
    assert.equal(ua.anonymous, true);
    assert.notEqual(ua.id, ub.id);
    assert.ok(a.cookie?.startsWith('rlhf_anon='));
    const again = await TestClient.connect(srv.wsUrl, { Cookie: a.cookie! });
    assert.equal((again.messages[0]!.user as { id: string }).id, ua.id);
    assert.equal(again.cookie, undefined, 'a known browser gets no new cookie');
    const raw = await new Promise<string>((resolve) => {
      const ws = new WebSocket(srv.wsUrl);
      ws.on('upgrade', (res) => resolve(String(res.headers['set-cookie']?.[0])));
    });
    assert.match(raw, /HttpOnly/);
    assert.match(raw, /SameSite=Strict/);
    for (const c of [a, b, again]) c.close();
  });

  test('a forged start.userId is ignored: it neither opens another user\'s conversation nor makes the new one theirs', async () => {
    const a = await TestClient.connect(srv.wsUrl);
    const mine = await chatOnce(a, 'f1');
    const aId = (a.messages[0]!.user as { id: string }).id;
    const b = await TestClient.connect(srv.wsUrl);
    const resume = await b.request({ type: 'start', userId: aId, conversationId: mine.conversationId }, (m) => m.type === 'conversation' || m.type === 'error');
    assert.deepEqual([resume.type, resume.code], ['error', 'unknown_conversation']);
    const fresh = await b.request({ type: 'start', userId: aId }, (m) => m.type === 'conversation');
    const row = await srv.chat()!.deps.store.db.selectFrom('conversations').selectAll().where('id', '=', String(fresh.conversationId)).executeTakeFirstOrThrow();
    assert.equal(row.user_id, (b.messages[0]!.user as { id: string }).id);
    const send = await b.request({ type: 'user_message', requestId: 'f2', conversationId: mine.conversationId, content: 'mine now?' }, isReply('f2'));
    assert.equal(send.code, 'unknown_conversation');
    a.close();
    b.close();
  });

  test('nobody can rate a reply shown to someone else: unknown_message, and nothing is written', async () => {
    const a = await TestClient.connect(srv.wsUrl);
    const conv = await a.request({ type: 'start' }, (m) => m.type === 'conversation');
    const cands = await a.request({ type: 'compare', requestId: 'p1', conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 3 } }, (m) => m.requestId === 'p1' && (m.type === 'candidates' || m.type === 'error'));
    const [x, y] = cands.messageIds as string[];
    const b = await TestClient.connect(srv.wsUrl);
    const db = srv.chat()!.deps.store.db;
    const thumb = await b.request({ type: 'thumb', requestId: 'j1', messageId: x, value: 'down' }, (m) => m.requestId === 'j1');
    const cmp = await b.request({ type: 'comparison', requestId: 'j2', a: x, b: y, choice: 'a' }, (m) => m.requestId === 'j2');
    const rank = await b.request({ type: 'ranking', requestId: 'j3', candidates: [y, x] }, (m) => m.requestId === 'j3');
    assert.deepEqual([thumb.code, cmp.code, rank.code], ['unknown_message', 'unknown_message', 'unknown_message']);
    assert.equal((await db.selectFrom('thumbs').selectAll().where('message_id', '=', x).execute()).length, 0);
    assert.equal((await db.selectFrom('comparisons').selectAll().where('a_id', '=', x).execute()).length, 0);
    // The owner can, and the rows name the owner as rater.
    const own = await a.request({ type: 'comparison', requestId: 'j4', a: x, b: y, choice: 'a' }, (m) => m.requestId === 'j4');
    assert.equal(own.type, 'feedback_ack', JSON.stringify(own));
    const row = await db.selectFrom('comparisons').selectAll().where('id', '=', String(own.id)).executeTakeFirstOrThrow();
    assert.equal(row.rater_id, (a.messages[0]!.user as { id: string }).id);
    a.close();
    b.close();
  });

  test('idempotency keys are per rater: the same key from two people writes two judgements; judgements are metered per identity', async () => {
    const a = await TestClient.connect(srv.wsUrl);
    const b = await TestClient.connect(srv.wsUrl);
    const ma = await chatOnce(a, 'i1');
    const mb = await chatOnce(b, 'i2');
    const ja = await a.request({ type: 'thumb', requestId: 'k1', messageId: ma.messageId, value: 'up', idempotencyKey: 'same' }, (m) => m.requestId === 'k1');
    const jb = await b.request({ type: 'thumb', requestId: 'k2', messageId: mb.messageId, value: 'up', idempotencyKey: 'same' }, (m) => m.requestId === 'k2');
    assert.deepEqual([ja.duplicate, jb.duplicate], [false, false]);
    assert.notEqual(ja.id, jb.id);
    const codes: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await a.request({ type: 'thumb', requestId: `k${3 + i}`, messageId: ma.messageId, value: i % 2 ? 'up' : 'down' }, (m) => m.requestId === `k${3 + i}`);
      codes.push(r.type === 'error' ? String(r.code) : 'ok');
    }
    assert.deepEqual(codes, ['ok', 'ok', 'rate_limited'], 'three judgements a minute, the first spent above');
    const other = await b.request({ type: 'thumb', requestId: 'k9', messageId: mb.messageId, value: 'down' }, (m) => m.requestId === 'k9');
    assert.equal(other.type, 'feedback_ack', 'another identity has its own allowance');
    a.close();
    b.close();
  });

  test('on /v1 a rotating bearer value escapes no limit: the identity is the address', async () => {
    const limited = await startTestServer({ requestsPerMinute: 2 }, { model: srv.model });
    try {
      const codes: (string | number)[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await fetch(`${limited.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer rotating-${i}` },
          body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
        });
        codes.push(r.status === 200 ? 200 : ((await r.json()) as { error: { code: string } }).error.code);
      }
      assert.deepEqual(codes, [200, 200, 'rate_limited']);
      const users = await limited.chat()!.deps.store.db.selectFrom('conversations').select('user_id').distinct().execute();
      assert.equal(users.length, 1, 'one identity, whatever the bearer said');
      assert.ok(!users[0]!.user_id.includes('rotating'), 'the bearer value is never stored');
    } finally {
      await limited.close();
    }
  });

  test('no CORS: an answer carries no Access-Control-Allow-Origin and a preflight finds no route', async () => {
    const r = await fetch(`${srv.url}/v1/models`, { headers: { Origin: 'https://evil.example' } });
    assert.equal(r.headers.get('access-control-allow-origin'), null);
    const pre = await fetch(`${srv.url}/v1/chat/completions`, { method: 'OPTIONS', headers: { Origin: 'https://evil.example', 'Access-Control-Request-Method': 'POST' } });
    assert.equal(pre.headers.get('access-control-allow-origin'), null);
    assert.equal(pre.status, 404);
  });

  test('GET /session tells the page no key is needed and who it is', async () => {
    const r = await fetch(`${srv.url}/session`);
    const body = (await r.json()) as { keysRequired: boolean; user: { id: string; anonymous: boolean } };
    assert.equal(body.keysRequired, false);
    assert.equal(body.user.anonymous, true);
    const cookie = r.headers.get('set-cookie')!.split(';')[0]!;
    const c = await TestClient.connect(srv.wsUrl, { Cookie: cookie });
    assert.equal((c.messages[0]!.user as { id: string }).id, body.user.id, 'the page and its socket are one person');
    c.close();
  });
});

describe('the door: Origin, connection caps, start timeout, in-flight cap', () => {
  let srv: TestServer;
  before(async () => {
    srv = await startTestServer({ heartbeatMs: 60_000, maxConnectionsPerAddress: 3, maxConnections: 5, startTimeoutMs: 300, maxInFlightPerUser: 1, messagesPerSecond: 5 });
  });
  after(async () => {
    await srv.close();
  });

  test('a foreign Origin gets 403 on the upgrade; the same origin and no Origin connect; ALLOWED_ORIGINS widens the list', async () => {
    const host = `127.0.0.1:${srv.port}`;
    assert.equal((await upgradeStatus(srv.wsUrl, { Origin: 'https://evil.example' })).status, 403);
    assert.match((await upgradeStatus(srv.wsUrl, { Origin: 'https://evil.example' })).body, /origin_not_allowed/);
    assert.equal((await upgradeStatus(srv.wsUrl, { Origin: `http://${host}` })).status, 101);
    assert.equal((await upgradeStatus(srv.wsUrl)).status, 101);
    const open = await startTestServer({ allowedOrigins: 'https://app.example' }, { model: srv.model });
    try {
      assert.equal((await upgradeStatus(open.wsUrl, { Origin: 'https://app.example' })).status, 101);
      assert.equal((await upgradeStatus(open.wsUrl, { Origin: 'https://evil.example' })).status, 403);
    } finally {
      await open.close();
    }
  });

  test('past the per-address cap the upgrade gets 429, and a closed socket frees its slot', async () => {
    const held = await Promise.all([0, 1, 2].map(() => TestClient.connect(srv.wsUrl)));
    const refused = await upgradeStatus(srv.wsUrl);
    assert.equal(refused.status, 429);
    assert.match(refused.body, /too_many_connections/);
    held[0]!.close();
    await held[0]!.waitClosed();
    let status = 0;
    for (let i = 0; i < 50 && status !== 101; i++) {
      status = (await upgradeStatus(srv.wsUrl)).status;
      if (status !== 101) await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(status, 101);
    for (const c of held.slice(1)) c.close();
    await Promise.all(held.slice(1).map((c) => c.waitClosed()));
  });

  test('past the total cap the upgrade gets 503', async () => {
    const small = await startTestServer({ maxConnections: 2, maxConnectionsPerAddress: 10 }, { model: srv.model });
    try {
      const held = await Promise.all([0, 1].map(() => TestClient.connect(small.wsUrl)));
      assert.equal((await upgradeStatus(small.wsUrl)).status, 503);
      held.forEach((c) => c.close());
    } finally {
      await small.close();
    }
  });

  test('a socket that never sends start is closed with 1008', async () => {
    const c = await TestClient.connect(srv.wsUrl);
    const closed = await c.waitClosed(3000);
    assert.equal(closed.code, 1008);
    const d = await TestClient.connect(srv.wsUrl);
    await d.request({ type: 'start' }, (m) => m.type === 'conversation');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(d.closed, undefined, 'a started socket stays');
    d.close();
  });

  test('frames are metered per identity: a second socket of the same person shares the allowance', async () => {
    const a = await TestClient.connect(srv.wsUrl);
    const b = await TestClient.connect(srv.wsUrl, { Cookie: a.cookie! });
    for (let i = 0; i < 10; i++) a.send({ type: 'ping' }); // the burst (2 s worth)
    await a.next((m) => m.type === 'error' || a.messages.filter((x) => x.type === 'pong').length >= 10, 2000).catch(() => undefined);
    const r = await b.request({ type: 'ping', requestId: 'shared' }, (m) => m.type === 'error' || m.type === 'pong');
    assert.equal(r.code, 'rate_limited');
    a.close();
    b.close();
  });

  test('starting conversations counts against the identity\'s requests per minute', async () => {
    const limited = await startTestServer({ requestsPerMinute: 2 }, { model: srv.model });
    try {
      const a = await TestClient.connect(limited.wsUrl);
      const codes: string[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await a.request({ type: 'start', requestId: `s${i}` }, (m) => m.requestId === `s${i}`);
        codes.push(r.type === 'conversation' ? 'ok' : String(r.code));
      }
      assert.deepEqual(codes, ['ok', 'ok', 'rate_limited']);
      const b = await TestClient.connect(limited.wsUrl);
      assert.equal((await b.request({ type: 'start', requestId: 'b' }, (m) => m.requestId === 'b')).type, 'conversation');
      a.close();
      b.close();
    } finally {
      await limited.close();
    }
  });

  test('one identity has at most maxInFlightPerUser requests in flight; others are "overloaded"', async () => {
    const slow = await startTestServer({ maxInFlightPerUser: 1, heartbeatMs: 60_000 }, { model: watchedSteps(srv.model, { busyMs: 3 }) });
    try {
      const a = await TestClient.connect(slow.wsUrl);
      const c1 = await a.request({ type: 'start' }, (m) => m.type === 'conversation');
      const c2 = await a.request({ type: 'start' }, (m) => m.type === 'conversation');
      a.send({ type: 'user_message', requestId: 'long', conversationId: c1.conversationId, content: 'go on', params: { maxTokens: 60, temperature: 1 } });
      await a.next((m) => m.type === 'reply_start' && m.requestId === 'long');
      const second = await a.request({ type: 'user_message', requestId: 'more', conversationId: c2.conversationId, content: 'and this', params: { maxTokens: 3 } }, isReply('more'));
      assert.equal(second.code, 'overloaded');
      const b = await TestClient.connect(slow.wsUrl);
      const other = await chatOnce(b, 'other');
      assert.ok(other.messageId, 'another identity is served meanwhile');
      a.send({ type: 'cancel', requestId: 'long' });
      await a.next(isReply('long'));
      const after = await a.request({ type: 'user_message', requestId: 'again', conversationId: c2.conversationId, content: 'now', params: { maxTokens: 3 } }, isReply('again'));
      assert.equal(after.type, 'reply', 'the slot is given back');
      a.close();
      b.close();
    } finally {
      await slow.close();
    }
  });
});

describe('keys mode', () => {
  let srv: TestServer;
  const admin = (path: string, init: RequestInit = {}) => fetch(`${srv.url}/admin${path}`, { ...init, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json', ...(init.headers as Record<string, string>) } });
  let alice: { key: string; info: { id: string; userId: string } };
  let bob: { key: string; info: { id: string; userId: string } };
  before(async () => {
    srv = await startTestServer({ adminToken: ADMIN, heartbeatMs: 60_000 });
    alice = (await (await admin('/keys', { method: 'POST', body: JSON.stringify({ userId: 'alice', name: 'laptop' }) })).json()) as typeof alice;
    bob = (await (await admin('/keys', { method: 'POST', body: JSON.stringify({ userId: 'bob' }) })).json()) as typeof bob;
  });
  after(async () => {
    await srv.close();
  });
  const complete = (headers: Record<string, string>) =>
    fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }) });

  test('/admin/keys shows a key once and lists keys without it', async () => {
    assert.match(alice.key, /^rk_/);
    const list = (await (await admin('/keys')).json()) as { keys: { id: string; userId: string }[] };
    assert.ok(list.keys.some((k) => k.id === alice.info.id && k.userId === 'alice'));
    assert.ok(!JSON.stringify(list).includes(alice.key));
    assert.equal((await fetch(`${srv.url}/admin/keys`)).status, 401);
  });

  test('/admin/keys takes JSON bodies only, and its actor is the admin credential, never a body field', async () => {
    const plain = await fetch(`${srv.url}/admin/keys`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'text/plain' }, body: JSON.stringify({ userId: 'mallory' }) });
    assert.equal(plain.status, 415);
    const carol = (await (await admin('/keys', { method: 'POST', body: JSON.stringify({ userId: 'carol' }) })).json()) as { info: { id: string } };
    const forged = await admin(`/keys/${carol.info.id}/revoke`, { method: 'POST', body: JSON.stringify({ actor: 'someone-else' }) });
    assert.equal(forged.status, 400);
    const ok = await admin(`/keys/${carol.info.id}/revoke`, { method: 'POST', body: JSON.stringify({ reason: 'left' }) });
    assert.equal(ok.status, 200, await ok.clone().text());
    assert.equal(((await ok.json()) as { info: { revokedBy: string } }).info.revokedBy, 'admin');
  });

  test('/v1 needs a key (401 invalid_api_key in OpenAI\'s shape); with one, the conversation is the key\'s user and records the key id', async () => {
    const none = await complete({});
    assert.equal(none.status, 401);
    const err = ((await none.json()) as { error: { code: string; type: string } }).error;
    assert.deepEqual([err.code, err.type], ['invalid_api_key', 'invalid_request_error']);
    const ok = await complete({ authorization: `Bearer ${alice.key}` });
    assert.equal(ok.status, 200);
    const db = srv.chat()!.deps.store.db;
    const row = await db.selectFrom('conversations').selectAll().orderBy('id', 'desc').limit(1).executeTakeFirstOrThrow();
    assert.deepEqual([row.user_id, row.key_id], ['alice', alice.info.id]);
    assert.equal((await fetch(`${srv.url}/v1/models`)).status, 401);
  });

  test('rotating made-up bearer values gets 401s, then rate_limited from that address, while a real key still works', async () => {
    const guarded = await startTestServer({ authFailuresPerMinute: 3 }, { model: srv.model });
    try {
      const { key } = await createApiKey(guarded.chat()!.deps.store.db, { userId: 'dora' });
      const call = (bearer: string) =>
        fetch(`${guarded.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}` }, body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }) });
      const codes: string[] = [];
      for (let i = 0; i < 5; i++) codes.push(((await (await call(`rk_guess${i}`)).json()) as { error: { code: string } }).error.code);
      assert.deepEqual(codes, ['invalid_api_key', 'invalid_api_key', 'invalid_api_key', 'rate_limited', 'rate_limited']);
      assert.equal((await call(key)).status, 200);
    } finally {
      await guarded.close();
    }
  });

  test('the WebSocket takes its identity from the key (header or a session cookie), never from start.userId', async () => {
    assert.equal((await upgradeStatus(srv.wsUrl)).status, 401);
    const byHeader = await TestClient.connect(srv.wsUrl, { Authorization: `Bearer ${bob.key}` });
    assert.deepEqual(byHeader.messages[0]!.user, { id: 'bob', anonymous: false });
    const conv = await byHeader.request({ type: 'start', userId: 'alice' }, (m) => m.type === 'conversation');
    const db = srv.chat()!.deps.store.db;
    const row = await db.selectFrom('conversations').selectAll().where('id', '=', String(conv.conversationId)).executeTakeFirstOrThrow();
    assert.deepEqual([row.user_id, row.key_id], ['bob', bob.info.id]);

    const bad = await fetch(`${srv.url}/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ apiKey: 'rk_wrong' }) });
    assert.equal(bad.status, 401);
    const s = await fetch(`${srv.url}/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ apiKey: alice.key }) });
    assert.equal(s.status, 200);
    const setCookie = s.headers.get('set-cookie')!;
    assert.match(setCookie, /^rlhf_session=[\w-]{43}; Path=\/; HttpOnly; SameSite=Strict/);
    assert.ok(!setCookie.includes(alice.key));
    const cookie = setCookie.split(';')[0]!;
    const who = (await (await fetch(`${srv.url}/session`, { headers: { Cookie: cookie } })).json()) as { keysRequired: boolean; user: { id: string } };
    assert.deepEqual([who.keysRequired, who.user.id], [true, 'alice']);
    const byCookie = await TestClient.connect(srv.wsUrl, { Cookie: cookie });
    assert.deepEqual(byCookie.messages[0]!.user, { id: 'alice', anonymous: false });
    // Bob's conversation is not Alice's to resume.
    const theirs = await byCookie.request({ type: 'start', conversationId: conv.conversationId }, (m) => m.type === 'error' || m.type === 'conversation');
    assert.equal(theirs.code, 'unknown_conversation');
    byHeader.close();
    byCookie.close();
    const anonymous = (await (await fetch(`${srv.url}/session`)).json()) as { keysRequired: boolean; user: null };
    assert.deepEqual(anonymous, { keysRequired: true, user: null });
  });

  test('revoking a key stops it and its sessions; with excludeFromTraining its judgements are marked out, and it is audited', async () => {
    const carol = (await (await admin('/keys', { method: 'POST', body: JSON.stringify({ userId: 'carol' }) })).json()) as typeof alice;
    const c = await TestClient.connect(srv.wsUrl, { Authorization: `Bearer ${carol.key}` });
    const m = await chatOnce(c, 'r1');
    const ack = await c.request({ type: 'thumb', requestId: 't1', messageId: m.messageId, value: 'up' }, (x) => x.requestId === 't1');
    assert.equal(ack.type, 'feedback_ack');
    const db = srv.chat()!.deps.store.db;
    const before = await db.selectFrom('thumbs').selectAll().where('id', '=', String(ack.id)).executeTakeFirstOrThrow();
    assert.deepEqual([before.rater_id, before.key_id, before.excluded_from_training], ['carol', carol.info.id, 0]);
    const session = (await fetch(`${srv.url}/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ apiKey: carol.key }) })).headers.get('set-cookie')!.split(';')[0]!;
    const r = await admin(`/keys/${carol.info.id}/revoke`, { method: 'POST', body: JSON.stringify({ reason: 'poisoning', excludeFromTraining: true }) });
    const body = (await r.json()) as { excludedJudgements: number; info: { revokedAt: string | null; excludedFromTraining: boolean } };
    assert.equal(body.excludedJudgements, 1);
    assert.ok(body.info.revokedAt && body.info.excludedFromTraining);
    const after = await db.selectFrom('thumbs').selectAll().where('id', '=', String(ack.id)).executeTakeFirstOrThrow();
    assert.equal(after.excluded_from_training, 1);
    assert.equal((await complete({ authorization: `Bearer ${carol.key}` })).status, 401);
    assert.equal((await upgradeStatus(srv.wsUrl, { Cookie: session })).status, 401);
    c.close();
    assert.equal((await admin('/keys/key_nope', { method: 'DELETE' })).status, 404);
  });
});

test('listening beyond loopback with no API key refuses to start, and says so, unless --allow-anonymous', async () => {
  const store = await openTempStore({ prefix: 'srv-anon' });
  try {
    const cfg = defaultServerConfig({ port: 0, host: '0.0.0.0' });
    await assert.rejects(startServer(cfg, { store, ownStore: false, defaultMetrics: false, log: () => {} }), (e: Error & { code?: string }) => e.code === 'anonymous_refused' && /--allow-anonymous/.test(e.message));
    const lines: string[] = [];
    const srv = await startServer({ ...cfg, allowAnonymous: true }, { store, ownStore: false, defaultMetrics: false, log: (l) => lines.push(l), model: await tinyModel() });
    await srv.ready;
    assert.ok(lines.some((l) => /--allow-anonymous/.test(l)));
    await srv.close();
  } finally {
    await store.close();
  }
});
