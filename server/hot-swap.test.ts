import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { registerModelVersion } from '../feedback/model-versions.ts';
import { makeTinyCheckpoint, startTestServer, TestClient, type TestServer } from './test-support.ts';

const TOKEN = 'test-admin-token';
let srv: TestServer;
let other: { dir: string; id: string };

async function register(dir: string, kind: 'policy' | 'reward' = 'policy'): Promise<string> {
  const meta = readCheckpointMeta(dir);
  const id = versionId(dir, meta.sha256);
  await registerModelVersion(srv.chat()!.deps.store.db, { id, kind, checkpoint: dir, stage: meta.stage, sha256: meta.sha256, metrics: { seed: 1 } });
  return id;
}

function admin(path: string, init: { method?: string; body?: unknown; token?: string } = {}): Promise<Response> {
  return fetch(`${srv.url}/admin${path}`, {
    method: init.method ?? (init.body ? 'POST' : 'GET'),
    headers: { authorization: `Bearer ${init.token ?? TOKEN}`, 'content-type': 'application/json' },
    body: init.body ? JSON.stringify(init.body) : undefined,
  });
}

before(async () => {
  // One decode step per event-loop turn: in slices, the tiny model's long replies would end
  // within a few turns, before the promotion below is read (swaps happen between turns either
  // way). Replies of up to 480 tokens: the promotion (a checkpoint loaded from disk) answers some
  // 40 ms after the first delta, and the longest of the four replies below (seed 1, which runs
  // to its limit) decodes for some 90 ms; at 250 tokens it ended 15-25 ms after the promotion, and
  // a slow moment of a loaded machine could close that gap.
  srv = await startTestServer({ adminToken: TOKEN, registryPollMs: 50, decodeSliceMs: 0, maxTokens: 480 }, { modelConfig: { blockSize: 512 } });
  // A second policy with other weights (same tokenizer and shape), in a directory of its own name.
  const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'ppo-1');
  cpSync(await makeTinyCheckpoint({ blockSize: 512 }, 99), dir, { recursive: true });
  other = { dir, id: await register(dir) };
});
after(async () => srv.close());

test('start-up registers the served checkpoint and points champion and sft at it', async () => {
  const r = await (await admin('/versions')).json();
  assert.equal(r.aliases.champion, srv.model.version);
  assert.equal(r.aliases.sft, srv.model.version);
  assert.equal(r.versions.find((v: { id: string }) => v.id === srv.model.version).stage, 'sft');
});

test('a promotion swaps the champion between steps: replies in flight finish on their version, the next reply uses the new one', async () => {
  const before = srv.model.version;
  const clients = await Promise.all(Array.from({ length: 4 }, () => TestClient.connect(srv.wsUrl)));
  const convs = await Promise.all(clients.map((c) => c.request({ type: 'start', userId: 'u' }, (m) => m.type === 'conversation')));
  const replies = clients.map((c, i) =>
    c.request({ type: 'user_message', requestId: `r${i}`, conversationId: convs[i]!.conversationId, content: 'what does lucid mean?', params: { maxTokens: 480, temperature: 1, seed: i, stop: [] } }, (m) => m.type === 'reply' || m.type === 'error', 30_000),
  );
  await clients[0]!.next((m) => m.type === 'delta'); // streams are in flight
  const res = await admin('/promote', { body: { versionId: other.id, reason: 'test' } });
  assert.equal(res.status, 200, await res.clone().text());
  const serving = (await res.json()).serving;
  assert.equal(serving.champion, other.id);
  assert.ok(serving.liveVersions.includes(before), `replies of ${before} were still decoding at the swap: ${JSON.stringify(serving)}`);
  for (const r of await Promise.all(replies)) {
    assert.equal(r.type, 'reply', JSON.stringify(r));
    assert.equal(r.modelVersion, before, 'a reply in flight finishes on the version it started with');
  }
  const next = await clients[0]!.request({ type: 'user_message', requestId: 'n', conversationId: convs[0]!.conversationId, content: 'and again?', params: { maxTokens: 4 } }, (m) => m.type === 'reply' || m.type === 'error', 30_000);
  assert.equal(next.modelVersion, other.id);
  clients.forEach((c) => c.close());
  const log = await (await admin('/promotions?alias=champion')).json();
  const last = log.promotions.at(-1);
  assert.deepEqual([last.from_version_id, last.to_version_id, last.action, last.actor, last.reason], [before, other.id, 'promote', 'admin', 'test']);
  assert.deepEqual(last.metrics, { seed: 1 });
  // Roll back in one call.
  const rb = await (await admin('/rollback', { body: { reason: 'worse' } })).json();
  assert.equal(rb.serving.champion, before);
  assert.equal(rb.promotion.action, 'rollback');
});

test('20 swaps leak no tensor', async () => {
  const champion = srv.chat()!.model.version;
  const base = tf.memory().numTensors;
  for (let i = 0; i < 20; i++) {
    const to = i % 2 === 0 ? other.id : champion;
    const r = await admin('/promote', { body: { versionId: to } });
    assert.equal(r.status, 200);
    assert.equal(srv.chat()!.model.version, to);
  }
  assert.equal(tf.memory().numTensors, base);
});

test('admin refuses an unknown version, a reward model and a corrupt file with stable codes, and changes nothing', async () => {
  const champion = srv.chat()!.model.version;
  const unknown = await admin('/promote', { body: { versionId: 'nope-000000000000' } });
  assert.equal(unknown.status, 404);
  assert.equal((await unknown.json()).error.code, 'unknown_model_version');

  const rmDir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'reward-1');
  cpSync(await makeTinyCheckpoint({ blockSize: 512 }, 5), rmDir, { recursive: true });
  const rmId = await register(rmDir, 'reward');
  const reward = await admin('/promote', { body: { versionId: rmId } });
  assert.equal(reward.status, 409);
  assert.equal((await reward.json()).error.code, 'not_a_policy');

  const badDir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'ppo-bad');
  cpSync(await makeTinyCheckpoint({ blockSize: 512 }, 6), badDir, { recursive: true });
  const badId = await register(badDir);
  const w = readFileSync(join(badDir, 'model.safetensors'));
  w[w.length - 1] ^= 0xff;
  writeFileSync(join(badDir, 'model.safetensors'), w);
  const bad = await admin('/promote', { body: { versionId: badId } });
  assert.equal(bad.status, 409);
  assert.equal((await bad.json()).error.code, 'checkpoint_corrupt');

  const invalid = await admin('/promote', { body: { version: 'x' } });
  assert.equal((await invalid.json()).error.code, 'invalid_request');
  assert.equal(srv.chat()!.model.version, champion);
  const log = await (await admin('/promotions?alias=champion')).json();
  assert.ok(log.promotions.every((p: { to_version_id: string }) => p.to_version_id !== badId && p.to_version_id !== rmId));
});

test('without ADMIN_TOKEN the admin routes are disabled', async () => {
  const lines: string[] = [];
  const plain = await startTestServer({}, { log: (l) => lines.push(l) });
  try {
    const r = await fetch(`${plain.url}/admin/versions`, { headers: { authorization: 'Bearer x' } });
    assert.equal(r.status, 404);
    assert.equal((await r.json()).error.code, 'admin_disabled');
    assert.ok(lines.some((l) => l.includes('admin routes disabled')), lines.join('\n'));
  } finally {
    await plain.close();
  }
});

test('admin needs the bearer token', async () => {
  assert.equal((await admin('/versions', { token: 'wrong' })).status, 401);
  const none = await fetch(`${srv.url}/admin/versions`);
  assert.equal(none.status, 401);
  assert.equal((await none.json()).error.code, 'unauthorized');
});

test('canary: the configured share of conversations is decoded by the candidate', async () => {
  assert.equal((await admin('/promote', { body: { versionId: other.id, alias: 'candidate' } })).status, 200);
  const r = await (await admin('/canary', { method: 'PUT', body: { share: 0.5 } })).json();
  assert.equal(r.serving.candidate, other.id);
  const c = await TestClient.connect(srv.wsUrl);
  const versions: string[] = [];
  for (let i = 0; i < 12; i++) {
    const conv = await c.request({ type: 'start', userId: 'u' }, (m) => m.type === 'conversation');
    const rep = await c.request({ type: 'user_message', conversationId: conv.conversationId, content: 'hi', params: { maxTokens: 2 } }, (m) => m.type === 'reply' && m.conversationId === conv.conversationId, 30_000);
    versions.push(rep.modelVersion as string);
  }
  c.close();
  const onCandidate = versions.filter((v) => v === other.id).length;
  assert.ok(onCandidate >= 1 && onCandidate <= 11, `${onCandidate} of 12 on the candidate`);
  await admin('/canary', { method: 'PUT', body: { share: 0 } });
  const fb = await (await admin('/feedback')).json();
  assert.ok(Array.isArray(fb.bradleyTerry.strengths));
});

test('pause and resume the loop: a flag in the store', async () => {
  assert.deepEqual(await (await admin('/loop/pause', { body: {} })).json(), { loopPaused: true });
  assert.equal((await (await admin('/loop')).json()).loopPaused, true);
  assert.deepEqual(await (await admin('/loop/resume', { body: {} })).json(), { loopPaused: false });
});
