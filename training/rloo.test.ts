import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { RlooTrainer, formatRlooStats, leaveOneOutAdvantages, type RlooKnobs } from './rloo.ts';
import { RuleRewardSource } from './reward-source.ts';
import { toyConfig, toyPrompts, toyTokenizer } from './rlhf-fixture.ts';

let tok: Tokenizer;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
});

const small: Partial<RlooKnobs> = { batchSize: 16, minibatchSize: 8, epochs: 2, rlooK: 4, maxTokens: 8, lr: 3e-3, minLr: 3e-3, steps: 100, seed: 1 };
const isLetter = (id: number) => id >= 97 && id < 123; // single lowercase-letter byte tokens
const letters = new RuleRewardSource('share of letter tokens', (it) => it.replyIds.filter(isLetter).length / it.replyIds.length);

test('the leave-one-out baseline of each reply is the mean reward of the other replies to its prompt', () => {
  const { baseline, advantage } = leaveOneOutAdvantages([1, 2, 3, 6, 0, 0, 4, 4], 4);
  const want = [11 / 3, 10 / 3, 3, 2, 8 / 3, 8 / 3, 4 / 3, 4 / 3];
  baseline.forEach((b, i) => assert.ok(Math.abs(b - want[i]!) < 1e-12, `baseline ${i}: ${b} vs ${want[i]}`));
  const wantAdv = [-8 / 3, -4 / 3, 0, 4, -8 / 3, -8 / 3, 8 / 3, 8 / 3];
  advantage.forEach((a, i) => assert.ok(Math.abs(a - wantAdv[i]!) < 1e-12, `advantage ${i}: ${a} vs ${wantAdv[i]}`));
  assert.ok(Math.abs(advantage.slice(0, 4).reduce((a, b) => a + b, 0)) < 1e-12, 'advantages of a prompt sum to zero');
  assert.deepEqual(leaveOneOutAdvantages([5, 5], 2).advantage, [0, 0]);
  assert.throws(() => leaveOneOutAdvantages([1, 2, 3], 2), /not groups of 2/);
  assert.throws(() => leaveOneOutAdvantages([1], 1), /k ≥ 2/);
});

test('RLOO with a rule reward raises the reward within a few steps, without a value head', async () => {
  const policy = GPT.create(toyConfig(tok), 'policy', 11);
  const reference = policy.clone('policy', false);
  const valueBefore = policy.params.get('value.w')?.dataSync().slice();
  const rloo = new RlooTrainer({ policy, reference, tok, reward: letters, prompts: toyPrompts(8), knobs: { ...small, klCoef: 0.05, missingEotPenalty: 0 } });
  assert.equal(rloo.rolloutsPerStep, 16);
  const hist = [];
  for (let i = 0; i < 24; i++) hist.push(await rloo.step());
  const first = hist.slice(0, 4).reduce((a, s) => a + s.score, 0) / 4;
  const last = hist.slice(-4).reduce((a, s) => a + s.score, 0) / 4;
  assert.ok(last > first + 0.08, `score ${first.toFixed(3)} → ${last.toFixed(3)}\n${hist.map((s) => formatRlooStats(s)).join('\n')}`);
  assert.ok(hist.every((s) => s.approxKlByEpoch.length === 2 && s.clipFrac >= 0 && s.entropy > 0 && s.replyLength > 0 && Number.isFinite(s.kl)));
  if (valueBefore) assert.deepEqual(policy.params.get('value.w')!.dataSync(), valueBefore, 'the value head is not trained');
  rloo.dispose();
  policy.dispose();
  reference.dispose();
});

test('an RLOO step charges −β·k1 to each reply and leaves the number of tensors unchanged', async () => {
  const reference = GPT.create(toyConfig(tok), 'policy', 12);
  const policy = reference.clone();
  tf.tidy(() => {
    const w = policy.params.get('wte')!;
    w.assign(tf.add(w, tf.randomNormal(w.shape, 0, 0.1, 'float32', 3)));
  });
  const zero = new RuleRewardSource('zero', () => 0);
  const beta = 0.2;
  const rloo = new RlooTrainer({ policy, reference, tok, reward: zero, prompts: toyPrompts(4), knobs: { ...small, batchSize: 8, minibatchSize: 4, rlooK: 2, klCoef: beta, missingEotPenalty: 0, emaDecay: 0.9 } });
  await rloo.step();
  const before = tf.memory().numTensors;
  const s = await rloo.step();
  assert.equal(tf.memory().numTensors, before);
  assert.ok(Math.abs(s.kl) > 0.05, `the drifted policy has a KL (${s.kl})`);
  assert.ok(Math.abs(s.reward + beta * s.kl) < 1e-5, `reward ${s.reward} = −β·kl ${-beta * s.kl}`);
  assert.notEqual(rloo.shipped, policy, 'the EMA is shipped');
  rloo.dispose();
  policy.dispose();
  reference.dispose();
});
