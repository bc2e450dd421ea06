import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { PpoTrainer, gae, KlController, formatPpoStats, replyLogProbs, sampleEpisodes, type PpoKnobs } from './ppo.ts';
import { RuleRewardSource } from './reward-source.ts';
import { toyConfig, toyPrompts, toyTokenizer } from './rlhf-fixture.ts';
import { endOfTurnId, renderChat } from '../model/chat-template.ts';

let tok: Tokenizer;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
});

const small: Partial<PpoKnobs> = { batchSize: 16, minibatchSize: 8, epochs: 2, maxTokens: 8, lr: 3e-3, minLr: 3e-3, steps: 100, seed: 1 };
const isLetter = (id: number) => id >= 97 && id < 123; // single lowercase-letter byte tokens
const letters = new RuleRewardSource('share of letter tokens', (it) => it.replyIds.filter(isLetter).length / it.replyIds.length);

test('GAE with γ = λ = 1 and zero values is the reward-to-go', () => {
  const rewards = Float32Array.from([0, 1, 2, 3, 0, 0, 0, 5]);
  const values = new Float32Array(8);
  const { adv, ret } = gae(rewards, values, [[1, 2, 3], [1, 3]], 4, 1, 1);
  assert.deepEqual([...adv], [0, 6, 5, 3, 0, 5, 0, 5]);
  assert.deepEqual([...ret], [...adv]);
  const discounted = gae(rewards, values, [[1, 2, 3]], 4, 0.5, 1).adv;
  assert.equal(discounted[1], 1 + 0.5 * 2 + 0.25 * 3);
});

test('the adaptive KL coefficient grows above the target and shrinks below it, at most 20% per horizon', () => {
  const c = new KlController(0.1, 1, 100);
  c.update(10, 100);
  assert.ok(Math.abs(c.value - 0.12) < 1e-12);
  c.update(0, 50);
  assert.ok(Math.abs(c.value - 0.12 * 0.9) < 1e-12);
  const fixed = new KlController(0.1, undefined, 100);
  fixed.update(10, 100);
  assert.equal(fixed.value, 0.1);
});

test('PPO with a rule reward raises the reward while the adaptive controller keeps KL near its target', async () => {
  const policy = GPT.create(toyConfig(tok), 'policy', 11);
  const reference = policy.clone('policy', false);
  const klTarget = 2;
  const ppo = new PpoTrainer({ policy, reference, tok, reward: letters, prompts: toyPrompts(8), knobs: { ...small, adaptiveKl: true, klCoef: 0.15, klTarget, klHorizon: 100, missingEotPenalty: 0 } });
  const hist = [];
  for (let i = 0; i < 30; i++) hist.push(await ppo.step());
  const first = hist.slice(0, 4).reduce((a, s) => a + s.score, 0) / 4;
  const last = hist.slice(-4).reduce((a, s) => a + s.score, 0) / 4;
  const lastKl = hist.slice(-4).reduce((a, s) => a + s.kl, 0) / 4;
  assert.ok(last > first + 0.08, `score ${first.toFixed(3)} → ${last.toFixed(3)}\n${hist.map((s) => formatPpoStats(s)).join('\n')}`);
  assert.ok(lastKl < 1.5 * klTarget, `KL ${lastKl.toFixed(3)} stays within 1.5× its target ${klTarget}\n${hist.map((s) => formatPpoStats(s)).join('\n')}`);
  assert.ok(hist.every((s) => s.approxKlByEpoch.length === 2 && s.clipFrac >= 0 && Number.isFinite(s.valueLoss) && s.entropy > 0 && s.replyLength > 0));
  ppo.dispose();
  policy.dispose();
  reference.dispose();
});

/** Exact KL(policy ‖ reference) of the first reply token's distribution, averaged over fixed prompts. */
function exactKl(policy: GPT, reference: GPT): number {
  const rows = toyPrompts(8, 9).map((p) => renderChat(tok, p, { addGenerationPrompt: true }).ids);
  const T = Math.min(...rows.map((r) => r.length));
  return tf.tidy(() => {
    const idx = tf.tensor2d(rows.flatMap((r) => r.slice(r.length - T)), [rows.length, T], 'int32');
    const lp = tf.logSoftmax(policy.lmLogits(policy.hidden(idx))); // [B*T, V]
    const lq = tf.logSoftmax(reference.lmLogits(reference.hidden(idx)));
    const kl = tf.reshape(tf.sum(tf.mul(tf.exp(lp), tf.sub(lp, lq)), 1), [rows.length, T]); // [B, T]
    return tf.mean(tf.slice(kl, [0, T - 1], [rows.length, 1])).dataSync()[0]!;
  });
}

test('a strong KL coefficient with no reward pulls a drifted policy back to the reference', async () => {
  const reference = GPT.create(toyConfig(tok), 'policy', 12);
  const policy = reference.clone();
  tf.tidy(() => {
    const w = policy.params.get('wte')!;
    w.assign(tf.add(w, tf.randomNormal(w.shape, 0, 0.1, 'float32', 3)));
  });
  const zero = new RuleRewardSource('zero', () => 0);
  const ppo = new PpoTrainer({ policy, reference, tok, reward: zero, prompts: toyPrompts(8), knobs: { ...small, klCoef: 1, missingEotPenalty: 0, seed: 2 } });
  const kls = [exactKl(policy, reference)];
  for (let i = 0; i < 16; i++) {
    await ppo.step();
    kls.push(exactKl(policy, reference));
  }
  assert.ok(kls[0]! > 0.05, `the drifted policy starts away from the reference (KL ${kls[0]})`);
  assert.ok(kls[16]! < 0.5 * kls[0]!, `exact KL per token over steps: ${kls.map((k) => k.toFixed(4)).join(' ')}`);
  ppo.dispose();
  policy.dispose();
  reference.dispose();
});

test('the missing end-of-turn penalty is charged exactly to the replies cut off by maxTokens', async () => {
  const policy = GPT.create(toyConfig(tok), 'policy', 14);
  const reference = policy.clone('policy', false);
  const zero = new RuleRewardSource('zero', () => 0);
  const ppo = new PpoTrainer({ policy, reference, tok, reward: zero, prompts: toyPrompts(8), knobs: { ...small, maxTokens: 2, klCoef: 0, missingEotPenalty: 0.7, seed: 3 } });
  const hist = [];
  for (let i = 0; i < 3; i++) hist.push(await ppo.step());
  for (const s of hist) {
    assert.equal(s.score, 0, 'the logged score is the reward source\'s, before the penalty');
    assert.ok(Math.abs(s.reward + 0.7 * (1 - s.eotRate)) < 1e-6, `reward ${s.reward} with ${s.eotRate} of replies closed`);
  }
  ppo.dispose();
  policy.dispose();
  reference.dispose();
});

test('a PPO step (with EMA and PPO-ptx) leaves the number of tensors unchanged', async () => {
  const policy = GPT.create(toyConfig(tok), 'policy', 13);
  const reference = policy.clone('policy', false);
  const ids = tok.encode(' apple pear plum grape lemon melon kiwi fig date lime'.repeat(4));
  const T = 16;
  const ptxBatchAt = () => ({ B: 2, T, inputs: Int32Array.from(ids.slice(0, 2 * T)), targets: Int32Array.from(ids.slice(1, 2 * T + 1)), weights: new Float32Array(2 * T).fill(1) });
  const ppo = new PpoTrainer({ policy, reference, tok, reward: letters, prompts: toyPrompts(4), knobs: { ...small, batchSize: 4, minibatchSize: 2, emaDecay: 0.9, ptxCoef: 0.5 }, ptxBatchAt });
  await ppo.step(); // the optimizer makes its moment slots on its first update
  const before = tf.memory().numTensors;
  const s = await ppo.step();
  assert.equal(tf.memory().numTensors, before);
  assert.ok(Number.isFinite(s.ptxLoss) && s.ptxLoss > 0);
  const emaW = ppo.shipped.params.get('lnf.b')!.dataSync();
  const polW = policy.params.get('lnf.b')!.dataSync();
  assert.notDeepEqual([...emaW], [...polW], 'the EMA lags the policy');
  assert.notEqual(ppo.shipped, policy);
  ppo.dispose();
  policy.dispose();
  reference.dispose();
});

/** Log-probabilities of each reply token under the distribution the sampler drew it from, replayed with the KV cache. */
function samplerLogProbs(model: GPT, promptIds: readonly number[], replyIds: readonly number[], T: number): number[] {
  const eot = endOfTurnId(tok);
  const V = model.config.vocabSize;
  let { cache, logits } = model.prefill(promptIds);
  const out: number[] = [];
  try {
    for (const id of replyIds) {
      let max = -Infinity;
      for (let v = 0; v < V; v++) if (!(tok.isSpecial(v) && v !== eot)) max = Math.max(max, logits[v]! / T);
      let z = 0;
      for (let v = 0; v < V; v++) if (!(tok.isSpecial(v) && v !== eot)) z += Math.exp(logits[v]! / T - max);
      out.push(logits[id]! / T - max - Math.log(z));
      logits = model.decodeStep([cache], [id]);
    }
  } finally {
    cache.dispose();
  }
  return out;
}

for (const T of [1, 0.7]) {
  test(`training log-probabilities at temperature ${T} are those of the distribution the replies were sampled from`, () => {
    const model = GPT.create(toyConfig(tok), 'policy', 15);
    const eps = sampleEpisodes(model, tok, toyPrompts(6, 4), { maxTokens: 8, temperature: T, seed: 9 });
    const train = replyLogProbs(model, tok, eps, T);
    const other = replyLogProbs(model, tok, eps, T === 1 ? 0.7 : 1);
    let worst = 0;
    let gap = 0;
    eps.forEach((e, i) => {
      const want = samplerLogProbs(model, e.promptIds, e.replyIds, T);
      assert.equal(train[i]!.length, e.replyIds.length);
      want.forEach((w, t) => {
        worst = Math.max(worst, Math.abs(train[i]![t]! - w));
        gap = Math.max(gap, Math.abs(other[i]![t]! - w));
      });
    });
    assert.ok(worst < 1e-4, `largest difference to the sampler's log-probability ${worst}`);
    assert.ok(gap > 1e-2, `log-probabilities at another temperature differ (${gap}), so the check can fail`);
    model.dispose();
  });
}

/** A copy of `model` with noise on its token embeddings (a policy that has drifted from it). */
function drifted(model: GPT, seed: number): GPT {
  const out = model.clone();
  tf.tidy(() => {
    const w = out.params.get('wte')!;
    w.assign(tf.add(w, tf.randomNormal(w.shape, 0, 0.1, 'float32', seed)));
  });
  return out;
}

test('the reward carries −β times the k1 KL (not k3), and the KL to a separate SFT model is reported beside it', async () => {
  const reference = GPT.create(toyConfig(tok), 'policy', 16);
  const policy = drifted(reference, 5);
  const sft = drifted(reference, 6);
  const zero = new RuleRewardSource('zero', () => 0);
  const beta = 0.3;
  const ppo = new PpoTrainer({ policy, reference, klReference: sft, tok, reward: zero, prompts: toyPrompts(8), knobs: { ...small, epochs: 1, temperature: 0.7, klCoef: beta, missingEotPenalty: 0 } });
  const s = await ppo.step();
  assert.ok(Math.abs(s.kl) > 0.05, `the drifted policy has a KL to its reference (${s.kl})`);
  assert.ok(Math.abs(s.reward + beta * s.kl) < 1e-5, `reward ${s.reward} = −β·kl ${-beta * s.kl}`);
  assert.ok(Math.abs(s.reward + beta * s.klK3 * s.replyLength) > 1e-3, 'a k3 reward would differ');
  assert.ok(s.klSft !== undefined && Math.abs(s.klSft - s.kl) > 1e-3, `kl to SFT ${s.klSft} is measured against the SFT model, not the reference (${s.kl})`);
  assert.equal(s.klCoef, beta);
  assert.equal(ppo.klCoef, beta, 'a fixed β stays');
  ppo.dispose();
  policy.dispose();
  reference.dispose();
  sft.dispose();
});

test('the adaptive β is exposed and a new trainer can start from it', async () => {
  const policy = GPT.create(toyConfig(tok), 'policy', 17);
  const reference = drifted(policy, 7);
  const ppo = new PpoTrainer({ policy, reference, tok, reward: letters, prompts: toyPrompts(8), knobs: { ...small, epochs: 1, adaptiveKl: true, klCoef: 0.1, klTarget: 0.01, klHorizon: 16 } });
  await ppo.step();
  assert.ok(ppo.klCoef > 0.1, `β grew above the target KL (${ppo.klCoef})`);
  const next = new PpoTrainer({ policy, reference, tok, reward: letters, prompts: toyPrompts(8), knobs: { ...small, klCoef: ppo.klCoef } });
  assert.equal(next.klCoef, ppo.klCoef);
  ppo.dispose();
  next.dispose();
  policy.dispose();
  reference.dispose();
});
