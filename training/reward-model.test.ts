import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { evaluateRewardModel, normaliseScores, pairStatistics, scoreExchanges, trainRewardModel } from './reward-model.ts';
import { rankingGroup } from './preferences.ts';
import { toyConfig, toyPreferenceGroups, toyTokenizer } from './rlhf-fixture.ts';

let tok: Tokenizer;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
});

const cfg = { epochs: 4, groupsPerBatch: 8, unpairedPerBatch: 0, unpairedCoef: 0, lr: 3e-3, minLr: 3e-4, warmup: 5, weightDecay: 0, gradClip: 1, seed: 1 };

test('Bradley–Terry training learns to prefer replies with the target word (held-out accuracy > 0.9)', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const rm = sft.clone('reward');
  const val = toyPreferenceGroups(40, 99);
  const before = evaluateRewardModel(rm, tok, val);
  assert.equal(before.accuracy, 0.5, 'a zero head scores every reply 0: chance');
  const n0 = tf.memory().numTensors;
  const r = trainRewardModel({ rm, tok, train: { groups: toyPreferenceGroups(96, 5), unpaired: [] }, val, cfg, log: () => {} });
  assert.equal(tf.memory().numTensors - n0, 0, `leaked ${tf.memory().numTensors - n0} tensors over ${r.steps} steps`);
  assert.ok(r.heldOut.accuracy > 0.9, `held-out accuracy ${r.heldOut.accuracy}`);
  assert.ok(r.heldOut.loss < Math.log(2), `held-out loss ${r.heldOut.loss} below chance`);
  assert.ok(r.heldOut.ece >= 0 && r.heldOut.ece < 0.5);
  sft.dispose();
  rm.dispose();
});

test('unpaired thumbs alone teach the sign of the score', () => {
  const rm = GPT.create(toyConfig(tok), 'reward', 6);
  const groups = toyPreferenceGroups(48, 8);
  const unpaired = groups.flatMap((g) => [
    { prompt: g.prompt, reply: g.replies[0]!, label: true, weight: 1 },
    { prompt: g.prompt, reply: g.replies[1]!, label: false, weight: 1 },
  ]);
  const r = trainRewardModel({ rm, tok, train: { groups: [], unpaired }, val: toyPreferenceGroups(30, 77), cfg: { ...cfg, epochs: 30, groupsPerBatch: 1, unpairedPerBatch: 16, unpairedCoef: 1 }, log: () => {} });
  assert.ok(r.heldOut.accuracy > 0.8, `held-out accuracy from thumbs only ${r.heldOut.accuracy}`);
  rm.dispose();
});

test('a ranking counts as one judgement: its 6 pairs weigh as much as one pick', () => {
  const s = pairStatistics([1, 1, 1, 1, 1, -1, 2], [1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1]);
  assert.equal(s.pairs, 7);
  assert.ok(Math.abs(s.accuracy - 6 / 7) < 1e-9);
  assert.ok(Math.abs(s.weightedAccuracy - (5 / 6 + 1) / 2) < 1e-9);
  const g = rankingGroup([{ role: 'user', content: 'x' }], ['a', 'b', 'c', 'd']);
  assert.equal(g.pairs.length * g.weight, 1);
});

test('ECE is 0 for calibrated confident predictions and large for confidently wrong ones', () => {
  assert.ok(pairStatistics([10, 10, 10], [1, 1, 1]).ece < 1e-3);
  assert.ok(pairStatistics([-10, -10], [1, 1]).ece > 0.99);
});

test('normalisation makes the given replies average 0', () => {
  const rm = GPT.create(toyConfig(tok), 'reward', 3);
  tf.tidy(() => rm.params.get('score.w')!.assign(tf.randomNormal([32, 1], 0, 1, 'float32', 1)));
  const items = toyPreferenceGroups(6, 3).flatMap((g) => g.replies.map((reply) => ({ prompt: g.prompt, reply })));
  const { scoreOffset } = normaliseScores(rm, tok, items);
  assert.notEqual(scoreOffset, 0);
  const after = scoreExchanges(rm, tok, items);
  assert.ok(Math.abs(after.reduce((a, b) => a + b, 0) / after.length) < 1e-4);
  rm.dispose();
});
