import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { getGeneration } from '../feedback/generations.ts';
import { clearAlias, registerModelVersion } from '../feedback/model-versions.ts';
import { makeTinyCheckpoint, startTestServer, TestClient, type TestServer } from './test-support.ts';

const TOKEN = 'test-admin-token';
let srv: TestServer;
let candidate: string;
let champion: string;

function admin(path: string, init: { method?: string; body?: unknown } = {}): Promise<Response> {
  return fetch(`${srv.url}/admin${path}`, {
    method: init.method ?? (init.body ? 'POST' : 'GET'),
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: init.body ? JSON.stringify(init.body) : undefined,
  });
}

before(async () => {
  srv = await startTestServer({ adminToken: TOKEN, registryPollMs: 50, heartbeatMs: 60_000 }, { modelConfig: { blockSize: 128 } });
  champion = srv.model.version;
  const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'ppo-arena');
  cpSync(await makeTinyCheckpoint({ blockSize: 128 }, 99), dir, { recursive: true });
  const meta = readCheckpointMeta(dir);
  candidate = versionId(dir, meta.sha256);
  await registerModelVersion(srv.chat()!.deps.store.db, { id: candidate, kind: 'policy', checkpoint: dir, stage: meta.stage, sha256: meta.sha256 });
  const r = await admin('/promote', { body: { versionId: candidate, alias: 'candidate' } });
  assert.equal(r.status, 200, await r.text());
});
after(async () => srv.close());

const isDone = (rid: string) => (m: Record<string, unknown>) => (m.type === 'candidates' || m.type === 'error') && m.requestId === rid;

async function compare(c: TestClient, conv: string, rid: string) {
  const from = c.messages.length;
  const end = await c.request({ type: 'compare', requestId: rid, conversationId: conv, content: 'what does lucid mean?', params: { maxTokens: 6 } }, isDone(rid), 30_000);
  assert.equal(end.type, 'candidates', JSON.stringify(end));
  const replies = c.messages.slice(from).filter((m) => m.type === 'reply' && m.requestId === rid);
  return { end, replies, frames: c.messages.slice(from) };
}

test('with a candidate and arena share 1, a compare is champion against candidate, blind, and the ack reveals them', async () => {
  const put = await admin('/arena', { method: 'PUT', body: { share: 1 } });
  assert.equal(put.status, 200, await put.clone().text());
  assert.equal((await put.json()).serving.candidate, candidate, 'the arena share loads the candidate');
  const c = await TestClient.connect(srv.wsUrl);
  const conv = (await c.request({ type: 'start', userId: 'arena-u' }, (m) => m.type === 'conversation')).conversationId as string;
  const { end, replies, frames } = await compare(c, conv, 'k1');
  assert.equal(end.arena, true);
  assert.equal(replies.length, 2);
  for (const r of replies) assert.deepEqual([r.arena, r.modelVersion], [true, 'hidden']);
  assert.ok(!c.messages.some((m) => JSON.stringify(m).includes(candidate)), 'no frame before the judgement names the candidate');
  const db = srv.chat()!.deps.store.db;
  const [a, b] = end.messageIds as string[];
  const gens = await Promise.all([a!, b!].map((id) => getGeneration(db, id)));
  assert.deepEqual(gens.map((g) => g!.model_version_id).sort(), [champion, candidate].sort(), 'one reply of each version');
  for (const g of gens) assert.equal(JSON.parse(g!.params_json).source, 'arena');
  assert.ok(frames.some((m) => m.type === 'delta' && m.candidate === 1));

  const ack = await c.request({ type: 'comparison', requestId: 'j1', a, b, choice: 'a' }, (m) => m.requestId === 'j1');
  assert.equal(ack.type, 'feedback_ack', JSON.stringify(ack));
  assert.deepEqual(ack.revealed, { a: gens[0]!.model_version_id, b: gens[1]!.model_version_id });
  c.close();

  const view = await (await admin('/arena')).json();
  assert.equal(view.share, 1);
  assert.deepEqual([view.summary.candidate, view.summary.champion, view.summary.n, view.summary.decision], [candidate, champion, 1, 'continue']);
  assert.equal(view.summary.wins, gens[0]!.model_version_id === candidate ? 1 : 0);
  assert.equal(view.history.length, 1);
  assert.ok(view.history[0].low <= view.history[0].p && view.history[0].p <= view.history[0].high);
  assert.deepEqual(view.thumbs.map((t: { versionId: string }) => t.versionId), [champion, candidate]);
  assert.deepEqual(view.thumbs[1], { versionId: candidate, up: 0, down: 0, upRate: null });
});

test('the arena draws its order at random and only the selected share of compares', async () => {
  const chat = srv.chat()!;
  const state = await chat.start('order-u');
  const context = await chat.addUserMessage(state, 'hi');
  const opts = chat.options({ maxTokens: 2 });
  const versionsOf = async (draws: number[]) => {
    const run = chat.compareArena(undefined, state.id, context, opts, undefined, () => draws.shift()!);
    return run && (await run.done).map((r) => r.result.version);
  };
  assert.deepEqual(await versionsOf([0.2, 0.3]), [champion, candidate]);
  assert.deepEqual(await versionsOf([0.2, 0.7]), [candidate, champion]);
  await admin('/arena', { method: 'PUT', body: { share: 0.5 } });
  assert.equal(await versionsOf([0.6]), undefined, 'a draw above the share is an ordinary compare');
  assert.deepEqual((await versionsOf([0.4, 0.1]))?.length, 2);
});

test('with arena share 0 a compare is two champion replies with their versions, and the ack reveals nothing', async () => {
  await admin('/arena', { method: 'PUT', body: { share: 0 } });
  const c = await TestClient.connect(srv.wsUrl);
  const conv = (await c.request({ type: 'start', userId: 'plain-u' }, (m) => m.type === 'conversation')).conversationId as string;
  const { end, replies } = await compare(c, conv, 'k2');
  assert.equal(end.arena, undefined);
  assert.deepEqual(replies.map((r) => [r.modelVersion, r.arena]), [[champion, undefined], [champion, undefined]]);
  const [a, b] = end.messageIds as string[];
  const ack = await c.request({ type: 'comparison', requestId: 'j2', a, b, choice: 'tie' }, (m) => m.requestId === 'j2');
  assert.equal(ack.type, 'feedback_ack');
  assert.equal(ack.revealed, undefined);
  c.close();
});

test('PUT /admin/arena refuses a share outside [0, 1] and changes nothing', async () => {
  await admin('/arena', { method: 'PUT', body: { share: 0.25 } });
  for (const share of [1.5, -0.1, 'half']) {
    const r = await admin('/arena', { method: 'PUT', body: { share } });
    assert.equal(r.status, 400);
    assert.equal((await r.json()).error.code, 'invalid_request');
  }
  assert.equal((await (await admin('/arena')).json()).share, 0.25);
  assert.equal((await (await admin('/versions')).json()).serving.arenaShare, 0.25);
});

test('GET /admin/arena without a candidate has no summary', async () => {
  const db = srv.chat()!.deps.store.db;
  await clearAlias(db, 'candidate', { actor: 'test', reason: 'done' });
  const view = await (await admin('/arena')).json();
  assert.deepEqual([view.summary, view.history, view.thumbs.map((t: { versionId: string }) => t.versionId)], [null, [], [champion]]);
});
