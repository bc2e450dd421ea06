import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { wasmWithNativeAddon } from './test-support.ts';
import { registerNativeKernels, unregisterNativeKernels } from './native-kernels.ts';
import { fusedEmbed, fusedLinear, registerTrainingOps, trainingOpsAvailable, unregisterTrainingOps } from './training-ops.ts';
import { GPT, type ForwardPath, type GPTConfig } from '../gpt.ts';
import { AdamW } from '../adamw.ts';
import { maskedCrossEntropy, tokenLogProbs } from '../losses.ts';

before(async () => {
  await wasmWithNativeAddon();
  registerNativeKernels();
  assert.deepEqual(registerTrainingOps(), ['NkLinear', 'NkLayerNorm', 'NkAttention', 'NkGelu', 'NkEmbed', 'NkTokenLogProbs', 'NkAdamW']);
});

after(() => {
  unregisterTrainingOps();
  unregisterNativeKernels();
});

// Head size 10 and width 40 are not multiples of a vector, so every kernel's tail code runs.
const SHAPES: Record<string, GPTConfig> = {
  odd: { nLayer: 2, nHead: 4, nEmbd: 40, blockSize: 24, vocabSize: 50 },
  even: { nLayer: 2, nHead: 2, nEmbd: 64, blockSize: 32, vocabSize: 96 },
};

/** A model whose every parameter (LayerNorm gains and biases too) is random, so no gradient is trivially zero. */
function randomModel(cfg: GPTConfig, seed: number): GPT {
  const gpt = GPT.create(cfg, 'policy', seed);
  let i = 0;
  for (const p of gpt.params.values()) {
    tf.tidy(() => p.assign(tf.add(p, tf.randomNormal(p.shape, 0, 0.1, 'float32', seed * 100 + i++))));
  }
  return gpt;
}

function batchFor(cfg: GPTConfig, B: number, T: number, seed: number) {
  let s = seed;
  const rand = () => (s = (s * 1103515245 + 12345) >>> 0) % cfg.vocabSize;
  const n = B * T;
  const weights = Float32Array.from({ length: n }, (_, i) => (i % 5 === 3 ? 0 : 1));
  return { B, T, inputs: Int32Array.from({ length: n }, rand), targets: Int32Array.from({ length: n }, rand), weights };
}

/** Runs fn on the reference path: the fused ops unregistered, so model, loss and optimizer run plain tfjs ops. */
function onReference<T>(fn: () => T): T {
  unregisterTrainingOps();
  try {
    assert.ok(!trainingOpsAvailable());
    return fn();
  } finally {
    registerTrainingOps();
  }
}

/** Loss and named gradients of one step, on the fused path or the reference path. */
function lossAndGrads(gpt: GPT, b: ReturnType<typeof batchFor>, path: ForwardPath): { loss: number; grads: Map<string, Float32Array> } {
  if (path === 'tfjs') return onReference(() => lossAndGradsNow(gpt, b, 'tfjs'));
  return lossAndGradsNow(gpt, b, path);
}

function lossAndGradsNow(gpt: GPT, b: ReturnType<typeof batchFor>, path: ForwardPath): { loss: number; grads: Map<string, Float32Array> } {
  const vars = gpt.trainableVariables().filter((v) => !v.name.startsWith('value.'));
  const idx = tf.tensor2d(b.inputs, [b.B, b.T], 'int32');
  const tgt = tf.tensor1d(b.targets, 'int32');
  const w = tf.tensor1d(b.weights);
  const { value, grads } = tf.variableGrads(() => maskedCrossEntropy(gpt.lmLogits(gpt.hidden(idx, path)), tgt, w), vars);
  const out = new Map<string, Float32Array>();
  for (const [name, p] of gpt.params) if (grads[p.name]) out.set(name, grads[p.name]!.dataSync() as Float32Array);
  const loss = value.dataSync()[0]!;
  tf.dispose([value, idx, tgt, w, ...Object.values(grads)]);
  return { loss, grads: out };
}

/** |got - want| <= tol * max(|want|) elementwise (tolerance relative to the tensor's scale). */
function assertClose(got: Float32Array, want: Float32Array, label: string, tol: number): void {
  assert.equal(got.length, want.length, `${label}: size`);
  let scale = 0;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  assert.ok(scale > 0, `${label}: the reference is all zeros, so the comparison proves nothing`);
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= tol * scale)) assert.fail(`${label}[${i}] is ${got[i]}, expected ${want[i]} (scale ${scale})`);
  }
}

for (const [shapeName, cfg] of Object.entries(SHAPES)) {
  for (const T of [cfg.blockSize, 7]) {
    test(`a train step's loss and every gradient match the tfjs path within 1e-4 (${shapeName}, T=${T})`, () => {
      assert.ok(trainingOpsAvailable());
      const gpt = randomModel(cfg, 3);
      const b = batchFor(cfg, 3, T, 11);
      const ref = lossAndGrads(gpt, b, 'tfjs');
      const got = lossAndGrads(gpt, b, 'native');
      assert.ok(Math.abs(got.loss - ref.loss) <= 1e-5 * Math.abs(ref.loss), `loss ${got.loss} vs ${ref.loss}`);
      assert.deepEqual([...got.grads.keys()], [...ref.grads.keys()]);
      assert.equal(got.grads.size, gpt.params.size - 2, 'every parameter but the value head has a gradient');
      for (const [name, g] of ref.grads) assertClose(got.grads.get(name)!, g, name, 1e-4);
      gpt.dispose();
    });
  }
}

test('the fused forward pass gives the same hidden states as the tfjs path', () => {
  const gpt = randomModel(SHAPES.odd!, 5);
  const idx = tf.tensor2d(batchFor(SHAPES.odd!, 2, 9, 4).inputs, [2, 9], 'int32');
  const [ref, got] = [gpt.hidden(idx, 'tfjs'), gpt.hidden(idx, 'native')];
  assertClose(got.dataSync() as Float32Array, ref.dataSync() as Float32Array, 'hidden', 1e-5);
  tf.dispose([idx, ref, got]);
  gpt.dispose();
});

test('the native AdamW update matches the tfjs one, with clipping and weight decay', () => {
  const cfg = SHAPES.odd!;
  const a = randomModel(cfg, 8);
  const b = a.clone();
  // A clip well below the gradient norm, so the clipping factor is exercised.
  const optA = new AdamW(a.params, { gradClip: 0.05, weightDecay: 0.1 });
  const optB = new AdamW(b.params, { gradClip: 0.05, weightDecay: 0.1 });
  for (let step = 0; step < 3; step++) {
    const batch = batchFor(cfg, 2, 10, 20 + step);
    const { grads } = lossAndGrads(a, batch, 'tfjs');
    const named = (gpt: GPT) => Object.fromEntries([...grads].map(([n, g]) => [n, tf.tensor(g, gpt.params.get(n)!.shape)]));
    const normA = optA.apply(named(a), 1e-2, 'native');
    const normB = onReference(() => optB.apply(named(b), 1e-2, 'tfjs'));
    assert.ok(normA > 0.05, 'the clip is active');
    assert.ok(Math.abs(normA - normB) <= 1e-5 * normB, `norm ${normA} vs ${normB}`);
  }
  for (const [name, p] of a.params) assertClose(p.dataSync() as Float32Array, b.params.get(name)!.dataSync() as Float32Array, name, 1e-5);
  optA.dispose();
  optB.dispose();
  a.dispose();
  b.dispose();
});

test('the in-place AdamW pass over all parameters gives the per-parameter kernel\'s values bit for bit, and leaves shared data alone', () => {
  const cfg = SHAPES.odd!;
  // Two models with the same values and data of their own (a clone would share its data).
  const [a, b] = [randomModel(cfg, 8), randomModel(cfg, 8)];
  const optA = new AdamW(a.params, { gradClip: 0.05, weightDecay: 0.1 });
  const optB = new AdamW(b.params, { gradClip: 0.05, weightDecay: 0.1 });
  for (let step = 0; step < 3; step++) {
    const { grads } = lossAndGrads(a, batchFor(cfg, 2, 10, 20 + step), 'tfjs');
    const named = (gpt: GPT) => Object.fromEntries([...grads].map(([n, g]) => [n, tf.tensor(g, gpt.params.get(n)!.shape)]));
    const before = new Map([...a.params].map(([n, p]) => [n, p.dataId]));
    optA.apply(named(a), 1e-2, 'native');
    // In place: every parameter keeps its memory.
    for (const [n, p] of a.params) if (grads.has(n)) assert.equal(p.dataId, before.get(n), `${n} was updated in place`);
    // A tensor sharing each parameter's data sends b's update down the per-parameter kernel,
    // which writes new tensors; the sharing tensors keep the old values.
    const shared = new Map([...b.params].map(([n, p]) => [n, { t: tf.clone(p), values: p.dataSync().slice() }]));
    optB.apply(named(b), 1e-2, 'native');
    for (const [n, p] of b.params) {
      const { t, values } = shared.get(n)!;
      if (grads.has(n)) assert.notEqual(p.dataId, t.dataId, `${n} was not updated in place`);
      assert.deepEqual(t.dataSync(), values, `${n}: the tensor sharing its data did not change`);
      t.dispose();
    }
  }
  for (const [name, p] of a.params) assert.deepEqual(p.dataSync(), b.params.get(name)!.dataSync(), name);
  optA.dispose();
  optB.dispose();
  a.dispose();
  b.dispose();
});

test('ten training steps on the fused path track the tfjs path', () => {
  const cfg = SHAPES.even!;
  const runs = (['native', 'tfjs'] as const).map((path) => {
    const gpt = randomModel(cfg, 9);
    const opt = new AdamW(gpt.params);
    const losses: number[] = [];
    for (let step = 0; step < 10; step++) {
      const b = batchFor(cfg, 4, cfg.blockSize, 100 + (step % 2));
      const { loss, grads } = lossAndGrads(gpt, b, path);
      losses.push(loss);
      const named = Object.fromEntries([...grads].map(([n, g]) => [n, tf.tensor(g, gpt.params.get(n)!.shape)]));
      if (path === 'tfjs') onReference(() => opt.apply(named, 3e-3, 'tfjs'));
      else opt.apply(named, 3e-3, 'native');
    }
    const weights = gpt.params.get('h.1.mlp.wfc')!.dataSync() as Float32Array;
    opt.dispose();
    gpt.dispose();
    return { losses, weights };
  });
  const [fused, ref] = runs as [(typeof runs)[0], (typeof runs)[0]];
  assert.ok(ref.losses[9]! < ref.losses[0]! - 0.1, `the reference learns (${ref.losses[0]} -> ${ref.losses[9]})`);
  fused.losses.forEach((l, i) => assert.ok(Math.abs(l - ref.losses[i]!) <= 1e-4 * ref.losses[i]!, `step ${i}: ${l} vs ${ref.losses[i]}`));
  assertClose(fused.weights, ref.weights, 'h.1.mlp.wfc after 10 steps', 1e-3);
});

test('a fused train step leaves no tensor behind', () => {
  const cfg = SHAPES.odd!;
  const gpt = randomModel(cfg, 2);
  const opt = new AdamW(gpt.params);
  const step = () => {
    const { grads } = lossAndGrads(gpt, batchFor(cfg, 2, 12, 1), 'native');
    opt.apply(Object.fromEntries([...grads].map(([n, g]) => [n, tf.tensor(g, gpt.params.get(n)!.shape)])), 1e-3, 'native');
  };
  step(); // creates the optimizer's moments
  const before = tf.memory().numTensors;
  step();
  assert.equal(tf.memory().numTensors, before);
  opt.dispose();
  gpt.dispose();
});

test('the fused log-probabilities and their gradient match the tfjs ops, and bad targets are refused', () => {
  const logits = tf.mul(tf.randomNormal([37, 45], 0, 1, 'float32', 7), 4) as tf.Tensor2D;
  const targets = tf.tensor1d(Array.from({ length: 37 }, (_, i) => (i * 7) % 45), 'int32');
  const weights = tf.randomUniform([37], 0, 1, 'float32', 3) as tf.Tensor1D;
  const f = (x: tf.Tensor) => tf.sum(tf.mul(tokenLogProbs(x as tf.Tensor2D, targets), weights));
  const [value, grad] = [f(logits), tf.grad(f)(logits)];
  const [refValue, refGrad] = onReference(() => [f(logits), tf.grad(f)(logits)]);
  assertClose(value.dataSync() as Float32Array, refValue!.dataSync() as Float32Array, 'sum of log-probabilities', 1e-5);
  assertClose(grad.dataSync() as Float32Array, refGrad!.dataSync() as Float32Array, 'gradient', 1e-5);
  const bad = tf.tensor1d(new Array(37).fill(45), 'int32');
  assert.throws(() => tokenLogProbs(logits, bad), /target 45 outside \[0, 45\)/);
  tf.dispose([logits, targets, weights, value, grad, refValue!, refGrad!, bad]);
});

// NkLinearGrad at sizes whose weight gradient runs on one thread, in row slices, in column
// slices, and over a depth of a few rows.
test('a linear layer\'s three gradients, from one kernel, match plain products and a column sum', () => {
  for (const [n, cin, cout] of [[40, 24, 30], [600, 300, 260], [600, 40, 700], [5, 700, 300]] as const) {
    tf.tidy(() => {
      const x = tf.randomNormal([n, cin], 0, 1, 'float32', n) as tf.Tensor2D;
      const w = tf.randomNormal([cin, cout], 0, 1, 'float32', cin) as tf.Tensor2D;
      const b = tf.randomNormal([cout], 0, 1, 'float32', cout) as tf.Tensor1D;
      const dy = tf.randomNormal([n, cout], 0, 1, 'float32', 7) as tf.Tensor2D;
      const [dx, dw, db] = tf.grads((xx: tf.Tensor, ww: tf.Tensor, bb: tf.Tensor) => fusedLinear(xx as tf.Tensor2D, ww as tf.Tensor2D, bb as tf.Tensor1D))([x, w, b], dy);
      const label = `${n}x${cin} -> ${cout}`;
      assertClose(dx!.dataSync() as Float32Array, tf.matMul(dy, w, false, true).dataSync() as Float32Array, `${label} dx`, 1e-5);
      assertClose(dw!.dataSync() as Float32Array, tf.matMul(x, dy, true, false).dataSync() as Float32Array, `${label} dw`, 1e-5);
      assertClose(db!.dataSync() as Float32Array, tf.sum(dy, 0).dataSync() as Float32Array, `${label} db`, 1e-5);
    });
  }
});

test('the fused embedding rejects a token id outside the vocabulary', () => {
  const wte = tf.zeros([10, 4]) as tf.Tensor2D;
  const wpe = tf.zeros([8, 4]) as tf.Tensor2D;
  const ids = tf.tensor1d([1, 10], 'int32');
  assert.throws(() => fusedEmbed(wte, wpe, ids, 1, 2), /token id 10 outside vocabulary \[0, 10\)/);
  assert.throws(() => fusedEmbed(wte, wpe, tf.tensor1d(new Array(9).fill(0), 'int32'), 1, 9), /exceeds blockSize 8/);
  tf.dispose([wte, wpe, ids]);
});

test('a clone shares memory with its source yet outlives it', () => {
  const x = tf.tensor1d([1, 2, 3]);
  const y = tf.clone(x);
  x.dispose();
  assert.deepEqual([...y.dataSync()], [1, 2, 3]);
  y.dispose();
});

test('TF_NATIVE_KERNELS=0 leaves the training ops off, so the model and optimizer take the tfjs path', () => {
  unregisterTrainingOps();
  const saved = process.env.TF_NATIVE_KERNELS;
  process.env.TF_NATIVE_KERNELS = '0';
  try {
    assert.deepEqual(registerTrainingOps(), []);
    assert.equal(trainingOpsAvailable(), false);
    const gpt = GPT.create(SHAPES.odd!, 'policy');
    assert.equal(gpt.forwardPath(), 'tfjs');
    gpt.dispose();
  } finally {
    if (saved === undefined) delete process.env.TF_NATIVE_KERNELS;
    else process.env.TF_NATIVE_KERNELS = saved;
    registerTrainingOps();
  }
  assert.equal(trainingOpsAvailable(), true);
});

test('a fused step leaves no tensor or buffer behind: saved tensors share memory and are freed with the tape', () => {
  const gpt = randomModel(SHAPES.even!, 8);
  const b = batchFor(SHAPES.even!, 2, 16, 5);
  lossAndGrads(gpt, b, 'native');
  const backend = tf.backend() as unknown as { numDataIds(): number };
  const [tensors, buffers] = [tf.memory().numTensors, backend.numDataIds()];
  for (let i = 0; i < 3; i++) lossAndGrads(gpt, b, 'native');
  assert.equal(tf.memory().numTensors, tensors);
  assert.equal(backend.numDataIds(), buffers);
  gpt.dispose();
});
