/**
 * The admin door's hardening: a short token refuses to start, wrong tokens are throttled per
 * address, the actor comes from the credential, X-Forwarded-For is trusted only when configured,
 * JSON bodies only, and the token never reaches the log.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createApp } from './app.ts';
import { defaultServerConfig } from './config.ts';
import { ServerMetrics } from './metrics.ts';
import { Auth, Meter } from './auth.ts';
import { startTestServer, type TestServer } from './test-support.ts';

const TOKEN = 'hardening-admin-token-0123';
const lines: string[] = [];
let srv: TestServer;
before(async () => {
  srv = await startTestServer({ adminToken: TOKEN, registryPollMs: 50 }, { log: (l) => lines.push(l) });
});
after(() => srv.close());

const admin = (path: string, init: { token?: string; body?: string; type?: string; headers?: Record<string, string> } = {}) =>
  fetch(`${srv.url}/admin${path}`, {
    method: init.body !== undefined ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${init.token ?? TOKEN}`, 'content-type': init.type ?? 'application/json', ...init.headers },
    body: init.body,
  });

test('an ADMIN_TOKEN shorter than 16 characters refuses to start', () => {
  const config = defaultServerConfig();
  const deps = { config, metrics: new ServerMetrics({ defaultMetrics: false }), auth: new Auth({ store: () => undefined, config }), meter: new Meter(config), chat: () => undefined };
  assert.throws(() => createApp({ ...deps, admin: { token: 'short-token', registry: () => undefined, store: () => undefined, log: () => {} } }), /ADMIN_TOKEN is 11 characters; use at least 16/);
});

test('the actor of a promotion is the credential, not a field of the request; X-Forwarded-For is not trusted by default', async () => {
  const version = srv.model.version;
  const forged = await admin('/promote', { body: JSON.stringify({ versionId: version, actor: 'someone-else' }) });
  assert.equal(forged.status, 400, 'an actor field is refused');
  const ok = await admin('/promote', { body: JSON.stringify({ versionId: version, reason: 'same again' }), headers: { 'x-forwarded-for': '203.0.113.9' } });
  assert.equal(ok.status, 200, await ok.clone().text());
  assert.equal(((await ok.json()) as { promotion: { actor: string } }).promotion.actor, 'admin');
  const line = lines.find((l) => l.startsWith('admin: promote'))!;
  assert.match(line, /by admin .* from 127\.0\.0\.1$|by admin .* from ::ffff:127\.0\.0\.1$/);
  assert.ok(!line.includes('203.0.113.9'));
});

test('admin bodies must be application/json (415)', async () => {
  const r = await admin('/promote', { body: JSON.stringify({ versionId: srv.model.version }), type: 'text/plain' });
  assert.equal(r.status, 415);
  assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'unsupported_media_type');
});

test('wrong tokens are throttled per address: after 5 refusals the door answers 429 without looking at the token; the token is never logged', async () => {
  const codes: number[] = [];
  for (let i = 0; i < 7; i++) codes.push((await admin('/versions', { token: `wrong-${i}` })).status);
  assert.deepEqual(codes, [401, 401, 401, 401, 401, 429, 429]);
  const right = await admin('/versions');
  assert.equal(right.status, 429, 'even the right token waits out the throttle');
  assert.ok(right.headers.get('retry-after'));
  assert.ok(!lines.some((l) => l.includes(TOKEN) || l.includes('wrong-0')), 'no token in the log');
});
