import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { DpoOptimizer, evaluateDpo, formatDpoStats, trainDpo } from './dpo.ts';
import { toyConfig, toyPreferenceGroups, toyTokenizer } from './rlhf-fixture.ts';

let tok: Tokenizer;
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = toyTokenizer();
});

const knobs = { beta: 0.5, labelSmoothing: 0, epochs: 3, groupsPerBatch: 8, lr: 3e-3, minLr: 3e-4, warmup: 3, weightDecay: 0, gradClip: 1, seed: 1 };

test('DPO raises the held-out implicit reward margin of the preferred replies', () => {
  const reference = GPT.create(toyConfig(tok), 'policy', 21);
  const policy = reference.clone();
  const val = toyPreferenceGroups(30, 42);
  const before = evaluateDpo(policy, reference, tok, val, knobs.beta);
  assert.equal(before.margin, 0, 'the policy starts as its reference: zero margin');
  const n0 = tf.memory().numTensors;
  const r = trainDpo({ policy, reference, tok, train: toyPreferenceGroups(64, 7), val, knobs, log: () => {} });
  assert.equal(tf.memory().numTensors - n0, 0, 'training leaves no tensors behind');
  assert.ok(r.heldOut.margin > 0.5, `held-out margin ${r.heldOut.margin}`);
  assert.ok(r.heldOut.accuracy > 0.8, `held-out accuracy ${r.heldOut.accuracy}`);
  const firstLoss = r.history[0]!.loss;
  const lastLoss = r.history[r.history.length - 1]!.loss;
  assert.ok(lastLoss < firstLoss, `training loss ${firstLoss} → ${lastLoss}`);
  policy.dispose();
  reference.dispose();
});

test('the reference stays frozen and a larger β gives the same log-ratio a larger margin', () => {
  const reference = GPT.create(toyConfig(tok), 'policy', 22);
  const refBefore = reference.params.get('wte')!.dataSync().slice();
  const policy = reference.clone();
  trainDpo({ policy, reference, tok, train: toyPreferenceGroups(16, 3), val: [], knobs: { ...knobs, epochs: 1 }, log: () => {} });
  assert.deepEqual(reference.params.get('wte')!.dataSync(), refBefore);
  const val = toyPreferenceGroups(10, 4);
  const a = evaluateDpo(policy, reference, tok, val, 0.1);
  const b = evaluateDpo(policy, reference, tok, val, 0.2);
  assert.ok(Math.abs(b.margin - 2 * a.margin) < 1e-4 * Math.max(1, Math.abs(a.margin)));
  policy.dispose();
  reference.dispose();
});

test('the step-wise DPO optimiser lowers its loss on a toy preference set and measures the KL of sampled replies', async () => {
  const reference = GPT.create(toyConfig(tok), 'policy', 23);
  const policy = reference.clone();
  const val = toyPreferenceGroups(30, 42);
  const dpo = new DpoOptimizer({ policy, reference, tok, data: { groups: toyPreferenceGroups(64, 7), unpaired: [] }, knobs: { beta: 0.5, groupsPerStep: 8, steps: 24, lr: 3e-3, minLr: 3e-4, warmup: 3, klSamples: 4, maxTokens: 6, seed: 1 } });
  assert.equal(dpo.stepsPerEpoch, 8);
  await dpo.step();
  const n0 = tf.memory().numTensors;
  const hist = [await dpo.step()];
  assert.equal(tf.memory().numTensors, n0, 'a step leaves no tensors behind');
  for (let i = 2; i < 24; i++) hist.push(await dpo.step());
  const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = avg(hist.slice(0, 4).map((s) => s.loss));
  const last = avg(hist.slice(-4).map((s) => s.loss));
  assert.ok(last < first - 0.1, `loss ${first.toFixed(4)} → ${last.toFixed(4)}\n${hist.map((s) => formatDpoStats(s)).join('\n')}`);
  assert.equal(hist[hist.length - 1]!.epoch, 2, 'three passes over 8 minibatches');
  assert.ok(hist.every((s) => Number.isFinite(s.kl) && s.replyLength > 0 && s.pairs === 8));
  assert.ok(evaluateDpo(policy, reference, tok, val, 0.5).accuracy > 0.8, 'the held-out implicit reward orders the pairs');
  dpo.dispose();
  policy.dispose();
  reference.dispose();
});

test('the step-wise DPO optimiser refuses data without a single pair', () => {
  const reference = GPT.create(toyConfig(tok), 'policy', 24);
  assert.throws(() => new DpoOptimizer({ policy: reference, reference, tok, data: [{ prompt: [{ role: 'user', content: 'x' }], replies: ['a', 'b'], pairs: [], weight: 1, source: 'tie' }] }), /at least one judgement/);
  reference.dispose();
});
