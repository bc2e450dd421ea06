import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from './backend.ts';
import { GPT, disposeCache } from './gpt.ts';
import { AdamW } from './adamw.ts';
import { maskedCrossEntropy } from './losses.ts';

const cfg = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 64 };

before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
});

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function fullLogits(gpt: GPT, ids: number[]): Float32Array {
  return tf.tidy(() => gpt.forward(tf.tensor2d([ids], [1, ids.length], 'int32'))).dataSync() as Float32Array;
}

test('KV-cache decoding of sequences of different lengths matches the full forward pass to 1e-4', () => {
  const gpt = GPT.create(cfg, 'policy', 7);
  const V = cfg.vocabSize;
  const prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4]];
  const continuations = [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]];
  const states = prompts.map((p) => gpt.prefill(p));
  states.forEach((s, i) => {
    const ref = fullLogits(gpt, prompts[i]!);
    assert.ok(maxAbsDiff(s.logits, ref.subarray((prompts[i]!.length - 1) * V)) < 1e-4, 'prefill logits');
  });
  const seqs = prompts.map((p) => [...p]);
  for (let step = 0; step < 4; step++) {
    const tokens = continuations.map((c) => c[step]!);
    const logits = gpt.decodeStep(states.map((s) => s.cache), tokens);
    tokens.forEach((t, i) => {
      seqs[i]!.push(t);
      const ref = fullLogits(gpt, seqs[i]!);
      const got = logits.subarray(i * V, (i + 1) * V);
      const want = ref.subarray((seqs[i]!.length - 1) * V);
      assert.ok(maxAbsDiff(got, want) < 1e-4, `step ${step} sequence ${i}: ${maxAbsDiff(got, want)}`);
    });
  }
  states.forEach((s) => disposeCache(s.cache));
  gpt.dispose();
});

test('a train step and a generation leave tf.memory().numTensors unchanged', () => {
  const gpt = GPT.create(cfg, 'policy', 1);
  const opt = new AdamW(gpt.params);
  const idx = tf.tensor2d([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], [2, 6], 'int32');
  const tgt = tf.tensor1d([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], 'int32');
  const w = tf.ones([12]) as tf.Tensor1D;
  const step = () => {
    const { value, grads } = tf.variableGrads(() =>
      maskedCrossEntropy(gpt.lmLogits(gpt.hidden(idx)), tgt, w),
    gpt.trainableVariables().filter((v) => !v.name.startsWith('value.')));
    const named: Record<string, tf.Tensor> = {};
    for (const [name, p] of gpt.params) if (grads[p.name]) named[name] = grads[p.name]!;
    opt.apply(named, 1e-3);
    const loss = value.dataSync()[0]!;
    value.dispose();
    return loss;
  };
  step(); // creates the optimizer's moment slots
  const before = tf.memory().numTensors;
  const first = step();
  for (let i = 0; i < 5; i++) step();
  const last = step();
  assert.equal(tf.memory().numTensors, before, 'train step leaks tensors');
  assert.ok(last < first, `loss should fall on a fixed batch: ${first} -> ${last}`);

  const { cache } = gpt.prefill([1, 2, 3]);
  for (let i = 0; i < 3; i++) gpt.decodeStep([cache], [4 + i]);
  disposeCache(cache);
  assert.equal(tf.memory().numTensors, before, 'generation leaks tensors');
  tf.dispose([idx, tgt, w]);
  opt.dispose();
  gpt.dispose();
});
