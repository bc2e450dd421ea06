import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointError, loadCheckpoint } from '../model/checkpoint.ts';
import { GPT } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { getGeneration } from '../feedback/generations.ts';
import { EnsembleRewardSource, loadRewardEnsemble, rewardEnsemble, saveRewardEnsemble } from '../training/reward-ensemble.ts';
import type { RewardItem } from '../training/reward-source.ts';
import { poolSeed } from './chat-service.ts';
import { modelBytes } from './model-cache.ts';
import { loadServedModel, type Reranker, type ServedModel } from './model-host.ts';
import { makeTinyCheckpoint, startTestServer, TestClient, type TestServer } from './test-support.ts';

let sft: string;
let tok: Tokenizer;

/** A policy checkpoint whose run config names a reward ensemble (as the online loop writes one). */
function loopPolicy(runConfig: Record<string, unknown>): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'rerank-')), 'policy-1');
  cpSync(sft, dir, { recursive: true });
  const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8'));
  writeFileSync(join(dir, 'meta.json'), JSON.stringify({ ...meta, stage: 'policy', runConfig }));
  return dir;
}

let srv: TestServer;
const seen: RewardItem[][] = [];
let holds = 0;
let failNext = false;
// A reranker that prefers the reply with the most distinct characters, and records what it scored.
const fake: Reranker = {
  n: 4,
  version: 'reward-fake',
  bytes: 0,
  score: async (items) => {
    if (failNext) {
      failNext = false;
      throw new Error('reward_not_finite: score 2 is NaN');
    }
    seen.push([...items]);
    return items.map((it) => new Set(it.reply).size + it.reply.length / 1000);
  },
  hold: () => (holds++, () => holds--),
  dispose: () => {},
};

before(async () => {
  sft = await makeTinyCheckpoint({ blockSize: 128 });
  tok = Tokenizer.fromJSON(loadCheckpoint(sft, { kind: 'policy' }).tokenizer);
  const dir = join(mkdtempSync(join(tmpdir(), 'rerank-')), 'policy-2');
  cpSync(sft, dir, { recursive: true });
  const model: ServedModel = { ...(await loadServedModel(dir)), reranker: fake };
  srv = await startTestServer({ heartbeatMs: 60_000, adminToken: 'test-admin-token' }, { model });
});
after(async () => srv.close());

test('a policy that names its reward ensemble loads it as a reranker only when best-of-n is on, and a missing one fails the load', async () => {
  const config = loadCheckpoint(sft, { kind: 'policy' }).meta.config;
  const rmDir = join(mkdtempSync(join(tmpdir(), 'rerank-')), 'reward-1');
  // Reward models with non-zero score heads (a fresh head scores every reply 0).
  const member = async (seed: number) => {
    const w = await GPT.create(config, 'reward', seed).exportWeights();
    const flat = new Map([...w].map(([k, v]) => [k, k.startsWith('score.') ? v.data.map((_, i) => Math.sin(seed * 7 + i)) : v.data]));
    return GPT.fromWeights(config, 'reward', flat);
  };
  const e = rewardEnsemble([await member(1), await member(2)]);
  saveRewardEnsemble(rmDir, e, { tokenizer: tok, parent: null, step: 1 });
  e.dispose();
  const dir = loopPolicy({ reward: 'reward-1-abc', rewardDir: rmDir, pessimism: 1 });

  const plain = await loadServedModel(dir);
  assert.equal(plain.reranker, undefined, 'rerankN defaults to 1: no reranking');
  plain.gpt.dispose();
  const sftModel = await loadServedModel(sft, { rerankN: 4 });
  assert.equal(sftModel.reranker, undefined, 'a policy naming no reward ensemble samples one reply');
  sftModel.gpt.dispose();

  const m = await loadServedModel(dir, { rerankN: 3 });
  assert.equal(m.reranker?.n, 3);
  assert.equal(m.reranker?.version, 'reward-1-abc');
  assert.equal(modelBytes(m), 3 * 4 * m.gpt.numParams, 'the cache counts the policy and its two reward members (same shape)');
  const items: RewardItem[] = ['clear', 'the cat sat on the mat'].map((reply) => ({ prompt: [{ role: 'user', content: 'what does lucid mean?' }], reply, replyIds: tok.encode(reply) }));
  const scores = await m.reranker!.score(items);
  const direct = await new EnsembleRewardSource(loadRewardEnsemble(rmDir, tok).ensemble, tok, { pessimism: 1 }).score(items);
  assert.deepEqual(scores, direct, 'the reranker scores as the loop\'s reward did: mean − k·std with the policy\'s k');
  assert.ok(scores.every(Number.isFinite) && scores[0] !== scores[1], `scores ${scores}`);
  // A reply holding the reranker keeps it alive through a dispose (a hot swap), until it releases it.
  const release = m.reranker!.hold();
  m.reranker!.dispose();
  assert.deepEqual(await m.reranker!.score(items), scores);
  release();
  assert.throws(() => m.reranker!.score(items), /disposed/);
  m.gpt.dispose();

  const broken = loopPolicy({ reward: 'reward-gone', rewardDir: join(tmpdir(), 'no-such-reward-dir') });
  await assert.rejects(loadServedModel(broken, { rerankN: 2 }), (err: unknown) => err instanceof CheckpointError && err.code === 'checkpoint_missing');
});

test('pool seeds are distinct from each other and from the next reply\'s seed', () => {
  const seeds = [7, ...[1, 2, 3, 4, 5, 6, 7].map((j) => poolSeed(7, j))];
  assert.equal(new Set(seeds).size, seeds.length);
  assert.ok(!seeds.slice(1).includes(8));
  assert.ok(seeds.every((s) => Number.isInteger(s) && s >= 0 && s < 2 ** 31));
});

test('a reranked policy answers with the best of n samples by its reward, sent whole, and the store records the pick', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = (await c.request({ type: 'start' }, (m) => m.type === 'conversation')).conversationId as string;
  const from = c.messages.length;
  const reply = await c.request({ type: 'user_message', requestId: 'r1', conversationId: conv, content: 'what does lucid mean?', params: { maxTokens: 12, seed: 5, temperature: 1 } }, (m) => (m.type === 'reply' || m.type === 'error') && m.requestId === 'r1');
  assert.equal(reply.type, 'reply', JSON.stringify(reply));
  const scored = seen.at(-1)!;
  assert.equal(scored.length, 4, 'four samples scored');
  assert.ok(new Set(scored.map((s) => s.reply)).size > 1, 'the samples differ (distinct seeds)');
  assert.deepEqual(scored[0]!.prompt, [{ role: 'user', content: 'what does lucid mean?' }]);
  const scores = scored.map((it) => new Set(it.reply).size + it.reply.length / 1000);
  const best = scores.indexOf(Math.max(...scores));
  assert.equal(reply.content, scored[best]!.reply, 'the reply is the highest-scoring sample');
  const deltas = c.messages.slice(from).filter((m) => m.type === 'delta' && m.requestId === 'r1');
  assert.ok(deltas.length <= 1, 'the picked text goes out once, not token by token');
  assert.equal(deltas.map((d) => d.text).join(''), reply.content);
  const gen = await getGeneration(srv.chat()!.deps.store.db, String(reply.messageId));
  const params = JSON.parse(gen!.params_json);
  assert.equal(gen!.seed, 5, 'the first sample keeps the request seed');
  assert.equal(params.rerank.n, 4);
  assert.equal(params.rerank.reward, 'reward-fake');
  assert.equal(params.rerank.chosen, best);
  assert.equal(params.rerank.scores.length, 4);
  assert.ok(params.rerank.sampledTokens >= gen!.completion_tokens);
  assert.equal(holds, 0, 'the reply released its hold on the reranker');
  // The conversation goes on from the picked reply.
  const next = await c.request({ type: 'user_message', requestId: 'r2', conversationId: conv, content: 'and clear?', params: { maxTokens: 4 } }, (m) => (m.type === 'reply' || m.type === 'error') && m.requestId === 'r2');
  assert.equal(next.type, 'reply', JSON.stringify(next));
  const ctx = seen.at(-1)![0]!.prompt;
  assert.deepEqual(ctx.map((t) => t.content), ['what does lucid mean?', reply.content, 'and clear?']);
  c.close();
});

test('OpenAI choices are each the best of their own n samples', async () => {
  const before = seen.length;
  const r = await fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'champion', messages: [{ role: 'user', content: 'what does lucid mean?' }], n: 2, max_tokens: 8, seed: 11 }) });
  assert.equal(r.status, 200, await r.clone().text());
  const body = (await r.json()) as { choices: { index: number; message: { content: string } }[] };
  const rounds = seen.slice(before);
  assert.equal(rounds.length, 2, 'one scoring per choice');
  for (const [i, items] of rounds.entries()) assert.equal(items.length, 4, `choice ${i}: four samples`);
  const picks = rounds.map((items) => items.map((it) => new Set(it.reply).size + it.reply.length / 1000)).map((s, i) => rounds[i]![s.indexOf(Math.max(...s))]!.reply);
  assert.deepEqual(body.choices.map((c) => c.message.content).sort(), [...picks].sort());
});

test('a reranker that fails to score does not fail the reply: the first sample is kept and the failure recorded', async () => {
  const c = await TestClient.connect(srv.wsUrl);
  const conv = (await c.request({ type: 'start' }, (m) => m.type === 'conversation')).conversationId as string;
  failNext = true;
  const reply = await c.request({ type: 'user_message', requestId: 'f1', conversationId: conv, content: 'what does lucid mean?', params: { maxTokens: 8, seed: 9 } }, (m) => (m.type === 'reply' || m.type === 'error') && m.requestId === 'f1');
  assert.equal(reply.type, 'reply', JSON.stringify(reply));
  const params = JSON.parse((await getGeneration(srv.chat()!.deps.store.db, String(reply.messageId)))!.params_json);
  assert.equal(params.rerank.chosen, 0);
  assert.match(params.rerank.error, /reward_not_finite/);
  assert.equal(params.rerank.scores, undefined);
  assert.equal(holds, 0);
  c.close();
});

test('the admin view says which served versions answer best of n, and by which reward', async () => {
  const r = await fetch(`${srv.url}/admin/versions`, { headers: { authorization: 'Bearer test-admin-token' } });
  assert.equal(r.status, 200, await r.clone().text());
  const body = (await r.json()) as { serving: { rerank?: unknown } };
  assert.deepEqual(body.serving.rerank, { champion: { n: 4, reward: 'reward-fake' } });
});
