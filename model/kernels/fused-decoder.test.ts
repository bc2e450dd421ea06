import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../backend.ts';
import { GPT, cacheBytes, disposeCache, type DecodePath, type KVCache } from '../gpt.ts';
import { NativeKVCache, fusedDecoderAvailable } from './fused-decoder.ts';
import { loadNativeAddon } from './native-addon.ts';
import { nativeSampleRows } from './native-sampler.ts';

// hs = 16, and 3C, 4C multiples of the vector width, as in the real shapes.
const cfg = { nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 40, vocabSize: 64 };
before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  // npm ci builds the addon; these tests are about it, so its absence is a failure, not a skip.
  if (!fusedDecoderAvailable()) throw new Error('native addon with the fused decoder not built: run `node native/build.mjs` (needs g++ and Node headers)');
});

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function lastLogits(gpt: GPT, ids: number[]): Float32Array {
  const all = tf.tidy(() => gpt.forward(tf.tensor2d([ids], [1, ids.length], 'int32'))).dataSync() as Float32Array;
  return all.slice((ids.length - 1) * cfg.vocabSize);
}

/** Prefills prompts of different lengths, decodes 6 batched steps, continues one cache by 3 tokens. */
function run(gpt: GPT, path: DecodePath): { logits: Float32Array[]; seqs: number[][] } {
  const prompts = [[1], [2, 3, 4, 5, 6], Array.from({ length: 20 }, (_, i) => (i * 7) % 64)];
  const states = prompts.map((p) => gpt.prefill(p, { path }));
  states.forEach((s) => assert.equal(s.cache.kind, path));
  const logits = states.map((s) => s.logits);
  const seqs = prompts.map((p) => [...p]);
  for (let step = 0; step < 6; step++) {
    const tokens = seqs.map((_, i) => 10 + step * 3 + i);
    logits.push(gpt.decodeStep(states.map((s) => s.cache), tokens));
    tokens.forEach((t, i) => seqs[i]!.push(t));
  }
  const more = [40, 41, 42];
  const cont = gpt.prefill(more, { cache: states[1]!.cache });
  assert.equal(cont.cache, states[1]!.cache, 'continuation advances the same cache');
  assert.equal(cont.cache.length, seqs[1]!.length + 3);
  seqs[1]!.push(...more);
  logits.push(cont.logits);
  states.forEach((s) => disposeCache(s.cache));
  return { logits, seqs };
}

test('native and tfjs decoding agree with each other and the full forward pass, across lengths and a continued cache', () => {
  const gpt = GPT.create(cfg, 'policy', 11);
  lastLogits(gpt, [1]); // warm up kernels so tensor counts are stable
  const before = tf.memory().numTensors;
  const native = run(gpt, 'native');
  assert.equal(tf.memory().numTensors, before, 'native decoding makes no tensors');
  const tfjs = run(gpt, 'tfjs');
  assert.equal(tf.memory().numTensors, before, 'tfjs decoding leaks no tensors');
  native.logits.forEach((l, i) => assert.ok(maxAbsDiff(l, tfjs.logits[i]!) < 1e-4, `output ${i}: ${maxAbsDiff(l, tfjs.logits[i]!)}`));
  // The last batched step and the continuation against the full forward pass.
  const V = cfg.vocabSize;
  const step = native.logits[native.logits.length - 2]!;
  const lengths = native.seqs.map((s) => s.length);
  lengths[1] -= 3;
  native.seqs.forEach((s, i) => {
    const want = lastLogits(gpt, s.slice(0, lengths[i]));
    assert.ok(maxAbsDiff(step.subarray(i * V, (i + 1) * V), want) < 1e-4, `sequence ${i}`);
  });
  assert.ok(maxAbsDiff(native.logits.at(-1)!, lastLogits(gpt, native.seqs[1]!)) < 1e-4, 'continuation');
  gpt.dispose();
});

test('the native decoder reads the current weights: an assign is seen by the next call', () => {
  const a = GPT.create(cfg, 'policy', 1);
  const b = GPT.create(cfg, 'policy', 2);
  const ids = [3, 1, 4, 1, 5];
  const first = a.prefill(ids, { path: 'native' });
  a.assign(b);
  const second = a.prefill(ids, { path: 'native' });
  assert.ok(maxAbsDiff(first.logits, second.logits) > 1e-3, 'different weights give different logits');
  assert.ok(maxAbsDiff(second.logits, lastLogits(b, ids)) < 1e-4);
  [first, second].forEach((s) => disposeCache(s.cache));
  a.dispose();
  b.dispose();
});

test('native caches report their bytes, free them on dispose, and reject misuse without corrupting state', () => {
  const gpt = GPT.create(cfg, 'policy', 5);
  const { cache } = gpt.prefill([1, 2, 3], { path: 'native' });
  const hs = cfg.nEmbd / cfg.nHead;
  assert.ok(cacheBytes(cache) >= cfg.nLayer * 2 * cfg.nHead * 3 * hs * 4, `${cacheBytes(cache)} bytes`);
  const tensorCache: KVCache = gpt.prefill([1, 2, 3], { path: 'tfjs' }).cache;
  assert.throws(() => gpt.decodeStep([cache, tensorCache], [1, 2]), /different decode paths/);
  assert.throws(() => gpt.decodeStep([cache, cache], [1, 2]), /same cache twice/);
  assert.throws(() => gpt.decodeStep([cache], [cfg.vocabSize]), /token id out of range/);
  assert.throws(() => gpt.prefill(new Array<number>(cfg.blockSize).fill(1), { cache }), /exceeds blockSize/);
  assert.equal(cache.length, 3, 'a rejected call leaves the cache as it was');
  const after = gpt.decodeStep([cache], [4]);
  assert.ok(maxAbsDiff(after, lastLogits(gpt, [1, 2, 3, 4])) < 1e-4);
  disposeCache(cache);
  disposeCache(tensorCache);
  assert.equal(cache.disposed, true);
  assert.equal(cacheBytes(cache), 0);
  assert.throws(() => gpt.decodeStep([cache], [1]), /disposed/);
  disposeCache(cache); // idempotent
  gpt.dispose();
});

// The second shape's widths (48, 144, 192 floats) leave an odd number of vectors to each of
// the pool's column slices, so the kernel's narrower remainder tiles run too.
for (const wide of [{ ...cfg, vocabSize: 70 }, { ...cfg, nEmbd: 48, vocabSize: 70 }]) test(`wide batches (6, 16 and 20 sequences), a long prompt and a vocabulary off the tile size decode like the full forward pass (width ${wide.nEmbd})`, () => {
  const gpt = GPT.create(wide, 'policy', 4);
  const full = (ids: number[]) =>
    (tf.tidy(() => gpt.forward(tf.tensor2d([ids], [1, ids.length], 'int32'))).dataSync() as Float32Array).slice((ids.length - 1) * wide.vocabSize);
  const long = Array.from({ length: 36 }, (_, i) => (i * 5) % 70);
  const { cache, logits } = gpt.prefill(long, { path: 'native' });
  assert.ok(maxAbsDiff(logits, full(long)) < 1e-4, 'prompt longer than the unpacked GEMM handles');
  disposeCache(cache);
  for (const n of [6, 16, 20]) {
    const seqs = Array.from({ length: n }, (_, i) => Array.from({ length: 1 + (i % 5) }, (_, j) => (i * 3 + j) % 70));
    const caches = seqs.map((s) => gpt.prefill(s, { path: 'native' }).cache);
    const tokens = seqs.map((_, i) => (i * 11) % 70);
    const out = gpt.decodeStep(caches, tokens);
    seqs.forEach((s, i) => {
      const got = out.subarray(i * wide.vocabSize, (i + 1) * wide.vocabSize);
      assert.ok(maxAbsDiff(got, full([...s, tokens[i]!])) < 1e-4, `batch ${n}, sequence ${i}`);
    });
    caches.forEach(disposeCache);
  }
  gpt.dispose();
});

test('decodeStepAsync gives the logits of decodeStep, and the rows it samples in the same job are the native sampler\'s', async () => {
  const gpt = GPT.create(cfg, 'policy', 11);
  try {
    const prompts = [[1], [2, 3, 4, 5, 6], Array.from({ length: 20 }, (_, i) => (i * 7) % 64)];
    const sync = prompts.map((p) => gpt.prefill(p).cache);
    const off = prompts.map((p) => gpt.prefill(p).cache);
    assert.ok(gpt.decodesAsync());
    for (let step = 0; step < 4; step++) {
      const tokens = prompts.map((_, i) => 10 + step * 3 + i);
      const expected = gpt.decodeStep(sync, tokens);
      const params = new Float64Array(prompts.flatMap((_, i) => [0.7 + 0.2 * i, i === 2 ? 5 : 0, i === 1 ? 0.8 : 1, (0.1 + 0.3 * i + 0.05 * step) % 1]));
      const ids = new Int32Array(prompts.length);
      const logits = await gpt.decodeStepAsync(off, tokens, [params, null, ids]);
      assert.deepEqual(logits, expected, `step ${step}`);
      const reference = new Int32Array(prompts.length);
      nativeSampleRows()!(expected, cfg.vocabSize, params, null, reference);
      assert.deepEqual(ids, reference);
      off.forEach((c, i) => assert.equal(c.length, sync[i]!.length));
    }
    [...sync, ...off].forEach(disposeCache);
  } finally {
    gpt.dispose();
  }
});

test('while its step runs, a cache refuses another step, a dispose frees it when the step ends, and the GPT keeps its weights until then', async () => {
  const gpt = GPT.create(cfg, 'policy', 12);
  const twin = GPT.create(cfg, 'policy', 12);
  const addon = loadNativeAddon().addon!;
  const a = gpt.prefill([1, 2, 3]).cache as NativeKVCache;
  const b = gpt.prefill([4, 5]).cache as NativeKVCache;
  const ref = [twin.prefill([1, 2, 3]).cache, twin.prefill([4, 5]).cache];
  const running = gpt.decodeStepAsync([a, b], [7, 8]);
  assert.throws(() => gpt.decodeStep([a], [9]), /in a running step/);
  disposeCache(b);
  assert.ok(b.disposed && addon.cacheBytes!(b.handle) > 0, 'disposed, memory kept for the step');
  const tensors = tf.memory().numTensors;
  gpt.dispose();
  assert.equal(tf.memory().numTensors, tensors, 'the weights wait for the step');
  const logits = await running;
  assert.ok(tf.memory().numTensors < tensors, 'and are freed after it');
  assert.deepEqual(logits, twin.decodeStep(ref, [7, 8]), 'the weights were alive for the whole step');
  assert.equal(addon.cacheBytes!(b.handle), 0, 'freed when the step ended');
  assert.equal(a.length, 4);
  disposeCache(a);
  ref.forEach(disposeCache);
  twin.dispose();
});
