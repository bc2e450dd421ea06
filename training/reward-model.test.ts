import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { evaluateRewardModel, normaliseScores, pairStatistics, rewardLoss, scoreExchanges, trainRewardModel } from './reward-model.ts';
import { rankingGroup, type PreferenceGroup } from './preferences.ts';
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
  const r = trainRewardModel({ rm, tok, train: { groups: [], unpaired }, val: toyPreferenceGroups(30, 77), cfg: { ...cfg, epochs: 5, groupsPerBatch: 1, unpairedPerBatch: 16, unpairedCoef: 1 }, log: () => {} });
  assert.ok(r.heldOut.accuracy > 0.8, `held-out accuracy from thumbs only ${r.heldOut.accuracy}`);
  rm.dispose();
});

/** A reward model with a random (nonzero) head, so different replies score differently. */
function randomHead(seed: number): GPT {
  const rm = GPT.create(toyConfig(tok), 'reward', seed);
  tf.tidy(() => rm.params.get('score.w')!.assign(tf.randomNormal([32, 1], 0, 1, 'float32', seed)));
  return rm;
}
const softplus = (x: number) => Math.log1p(Math.exp(x));
const nll = (d: number) => softplus(-d); // −log σ(d)
const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) < 1e-4, `${what}: ${a} vs ${b}`);

test('a ranking counts as one judgement: its loss is the mean of its 6 pair losses and it weighs as much as one pick', () => {
  const rm = randomHead(11);
  const prompt = [{ role: 'user' as const, content: 'name a fruit' }];
  const ranking = rankingGroup(prompt, ['banana', 'apple pear', 'plum', 'kiwi fig date']);
  const pick: PreferenceGroup = { prompt, replies: ['lime', 'banana melon'], pairs: [[0, 1]], weight: 1, source: 'comparison' };
  const r = scoreExchanges(rm, tok, ranking.replies.map((reply) => ({ prompt, reply })));
  const p = scoreExchanges(rm, tok, pick.replies.map((reply) => ({ prompt, reply })));
  const pairLosses = ranking.pairs.map(([w, l]) => nll(r[w]! - r[l]!));
  assert.ok(Math.max(...pairLosses) - Math.min(...pairLosses) > 1e-3, 'pair losses differ, so a wrong weighting would show');
  const rankingLoss = pairLosses.reduce((a, b) => a + b, 0) / 6;
  const opts = { unpairedCoef: 0 };
  close(rewardLoss(rm, tok, [ranking], [], opts), rankingLoss, 'ranking alone');
  close(rewardLoss(rm, tok, [ranking, pick], [], opts), (rankingLoss + nll(p[0]! - p[1]!)) / 2, 'ranking beside a pick: each one judgement');
  close(rewardLoss(rm, tok, [ranking, pick], [], { ...opts, omega: [2, 1] }), (2 * rankingLoss + nll(p[0]! - p[1]!)) / 3, 'sample weights scale judgements');
  close(rewardLoss(rm, tok, [ranking, pick], [], { ...opts, omega: [0, 1] }), nll(p[0]! - p[1]!), 'weight 0 leaves a judgement out');
  // The statistics weigh the same way.
  const s = pairStatistics([1, 1, 1, 1, 1, -1, 2], [1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1]);
  assert.ok(Math.abs(s.accuracy - 6 / 7) < 1e-9);
  assert.ok(Math.abs(s.weightedAccuracy - (5 / 6 + 1) / 2) < 1e-9);
  rm.dispose();
});

test('a tie is Bradley–Terry with target ½ weighted by tieWeight, and the margin shifts the pair loss', () => {
  const rm = randomHead(12);
  const prompt = [{ role: 'user' as const, content: 'one fruit please' }];
  const tie: PreferenceGroup = { prompt, replies: ['banana', 'apple pear plum'], pairs: [], ties: [[0, 1]], weight: 1, source: 'tie' };
  const pick: PreferenceGroup = { prompt, replies: ['banana', 'apple pear plum'], pairs: [[0, 1]], weight: 1, source: 'comparison' };
  const [a, b] = scoreExchanges(rm, tok, tie.replies.map((reply) => ({ prompt, reply })));
  const d = a! - b!;
  assert.ok(Math.abs(d) > 1e-2, `the replies score apart (Δ = ${d})`);
  const tieLoss = 0.5 * nll(d) + 0.5 * nll(-d);
  assert.ok(tieLoss > Math.log(2), 'a tie is cheapest when the scores are equal');
  close(rewardLoss(rm, tok, [tie], [], { unpairedCoef: 0, tieWeight: 1 }), tieLoss, 'tie');
  close(rewardLoss(rm, tok, [tie], [], { unpairedCoef: 0, tieWeight: 0.25 }), 0.25 * tieLoss, 'tie weight');
  close(rewardLoss(rm, tok, [tie], [], { unpairedCoef: 0, tieWeight: 0 }), 0, 'ties off');
  close(rewardLoss(rm, tok, [pick], [], { unpairedCoef: 0, margin: 0.7 }), nll(d - 0.7), 'margin');
  close(rewardLoss(rm, tok, [pick, tie], [], { unpairedCoef: 0, tieWeight: 1 }), (nll(d) + tieLoss) / 2, 'a tie is one judgement beside a pick');
  rm.dispose();
});

test('early stopping keeps the best held-out weights: with held-out labels that contradict training it stops and restores the start', () => {
  const sft = GPT.create(toyConfig(tok), 'policy', 4);
  const rm = sft.clone('reward');
  const flipped = toyPreferenceGroups(24, 99).map((g) => ({ ...g, pairs: [[1, 0]] as [number, number][] }));
  const logs: string[] = [];
  const r = trainRewardModel({ rm, tok, train: { groups: toyPreferenceGroups(64, 5), unpaired: [] }, val: flipped, cfg: { ...cfg, epochs: 6, patience: 2, evalEvery: 4 }, log: (l) => logs.push(l) });
  assert.ok(r.stoppedEarly, logs.join('\n'));
  assert.ok(r.steps < 6 * 8, `stopped after ${r.steps} of 48 steps`);
  assert.equal(r.bestStep, 0);
  close(r.heldOut.loss, Math.log(2), 'the kept weights are the initial ones (zero head)');
  close(evaluateRewardModel(rm, tok, flipped).loss, Math.log(2), 'and they are what the model holds');
  sft.dispose();
  rm.dispose();
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
