import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { evaluateDpo, trainDpo } from './dpo.ts';
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
