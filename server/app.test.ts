import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createApp } from './app.ts';
import { defaultServerConfig, loadServerConfig } from './config.ts';
import { ServerMetrics } from './metrics.ts';
import { Auth, Meter } from './auth.ts';
import { startTestServer, TestClient } from './test-support.ts';

test('/healthz says not ready (503) until a model is loaded, and the API answers not_ready', async () => {
  const config = defaultServerConfig();
  const app = createApp({ chat: () => undefined, config, metrics: new ServerMetrics(), auth: new Auth({ store: () => undefined, config }), meter: new Meter(config) });
  const h = await app.request('/healthz');
  assert.equal(h.status, 503);
  assert.deepEqual(await h.json(), { status: 'loading' });
  const r = await app.request('/v1/models');
  assert.equal(r.status, 503);
  assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'not_ready');
});

test('/healthz is ready with the model version, and /metrics exposes the serving figures in Prometheus format', async () => {
  const srv = await startTestServer();
  try {
    const h = await fetch(`${srv.url}/healthz`);
    const health = (await h.json()) as Record<string, any>;
    assert.deepEqual([health.status, health.modelVersion, health.store.state, health.store.dialect], ['ok', srv.model.version, 'ok', 'sqlite']);
    const c = await TestClient.connect(srv.wsUrl);
    const conv = await c.request({ type: 'start' }, (m) => m.type === 'conversation');
    await c.request({ type: 'user_message', requestId: 'm', conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 3 } }, (m) => m.type === 'reply' || m.type === 'error');
    await c.request({ type: 'nope' }, (m) => m.type === 'error');
    const res = await fetch(`${srv.url}/metrics`);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const text = await res.text();
    for (const name of ['chat_time_to_first_token_seconds_count', 'chat_generated_tokens_total', 'chat_decode_tokens_per_second', 'chat_queue_depth', 'chat_active_conversations', 'chat_websocket_connections 1', 'store_up 1', 'store_judgement_queue_depth 0', 'store_wal_checkpointer_restarts_total 0']) {
      assert.ok(text.includes(name), `${name} in /metrics`);
    }
    assert.ok(text.includes(`chat_model_info{version="${srv.model.version}"} 1`));
    assert.ok(text.includes('chat_errors_total{code="unknown_type"} 1'));
    c.close();
  } finally {
    await srv.close();
  }
});

test('the server config reads unprefixed environment variables and rejects unknown options', async () => {
  const { loadServerConfig } = await import('./config.ts');
  const cfg = loadServerConfig(['--max-batch', '4'], { PORT: '9001', MODEL_DIR: '/tmp/m' });
  assert.deepEqual([cfg.port, cfg.modelDir, cfg.maxBatch], [9001, '/tmp/m', 4]);
  assert.throws(() => loadServerConfig(['--bogus', '1'], {}), /unknown option/);
  assert.ok(Object.isFrozen(cfg));
});

test('the server takes its secrets from the environment only: --admin-token and a --database with a password are refused', () => {
  assert.throws(() => loadServerConfig(['--admin-token', 'a-token-of-twenty-chars'], {}), /--admin-token holds a secret: set it in the environment \(ADMIN_TOKEN\)/);
  assert.throws(() => loadServerConfig(['--database', 'postgres://app:pw@127.0.0.1:5432/test'], {}), /--database holds a secret.*DATABASE_URL/);
  assert.equal(loadServerConfig([], { ADMIN_TOKEN: 'a-token-of-twenty-chars' }).adminToken, 'a-token-of-twenty-chars');
  assert.equal(loadServerConfig(['--database', 'sqlite:/tmp/x.sqlite'], {}).database, 'sqlite:/tmp/x.sqlite');
  assert.equal(loadServerConfig([], { DATABASE_URL: 'postgres://app:pw@127.0.0.1:5432/test' }).database, 'postgres://app:pw@127.0.0.1:5432/test');
  assert.equal(loadServerConfig([], {}).database, 'default');
});
