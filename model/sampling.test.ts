import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRng } from './random.ts';
import { adjustLogits, expWeight, sampledLogprobs, sampleToken, weightBits, type SamplingParams } from './sampling.ts';

/**
 * The candidates of a row and their integer weights, written the obvious way (the definition in
 * sampling.ts): sorted by logit with a comparator when top-k or top-p cut them, then cut.
 */
function referenceKept(logits: Float32Array, V: number, params: SamplingParams, banned?: ReadonlySet<number>): { idx: number[]; weight: number[] } {
  const ok = (i: number) => !banned?.has(i);
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i]! > max && ok(i)) max = logits[i]!;
  const invT = Math.fround(1 / params.temperature);
  const q = (i: number) => {
    const x = Math.fround(Math.fround(logits[i]! - max) * invT);
    return x >= -30 ? Math.trunc(expWeight(x) * 2 ** weightBits(V)) : 0;
  };
  let idx: number[] = [];
  for (let i = 0; i < V; i++) if (ok(i) && q(i) > 0) idx.push(i);
  if (params.topK > 0 || params.topP < 1) idx.sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (params.topK > 0 && params.topK < idx.length) idx = idx.slice(0, params.topK);
  if (params.topP < 1) {
    const target = params.topP * idx.reduce((a, i) => a + q(i), 0);
    let acc = 0;
    const keep = idx.findIndex((i) => (acc += q(i)) >= target) + 1 || idx.length;
    idx = idx.slice(0, keep);
  }
  idx.sort((a, b) => a - b);
  return { idx, weight: idx.map(q) };
}

/** The sampler written the obvious way: the kept tokens walked in id order with the draw. */
function reference(logits: Float32Array, V: number, params: SamplingParams, rng: () => number, banned?: ReadonlySet<number>): number {
  const { idx, weight } = referenceKept(logits, V, params, banned);
  const total = weight.reduce((a, b) => a + b, 0);
  const r = Math.min(Math.floor(rng() * total), total - 1);
  let acc = 0;
  for (let j = 0; j < idx.length; j++) if ((acc += weight[j]!) > r) return idx[j]!;
  return -1;
}

test('the weights\' exponential is e^x within 2e-7 relative over [-30, 0], never decreasing, 1 at 0', () => {
  assert.equal(expWeight(0), 1);
  const rng = createRng(12);
  let prev = 0;
  for (let i = 0; i <= 200_000; i++) {
    const x = Math.fround(-30 + (30 * i) / 200_000);
    const e = expWeight(x);
    assert.ok(Math.abs(e - Math.exp(x)) <= 2e-7 * Math.exp(x), `e^${x}: ${e} against ${Math.exp(x)}`);
    assert.ok(e >= prev, `e^${x} = ${e} below the value before it, ${prev}`);
    prev = e;
    const y = Math.fround(-rng() * 30);
    assert.ok(Math.abs(expWeight(y) - Math.exp(y)) <= 2e-7 * Math.exp(y));
  }
  assert.equal(weightBits(2048), 40);
  assert.equal(weightBits(50_257), 37);
  assert.ok(50_257 * 2 ** weightBits(50_257) <= 2 ** 53);
});

test('sampling picks exactly the token of the obvious reference sampler, with ties, negatives, bans, top-k and top-p', () => {
  const V = 300;
  const gen = createRng(9);
  const settings: SamplingParams[] = [
    { temperature: 1, topK: 0, topP: 1 },
    { temperature: 0.8, topK: 0, topP: 0.95 },
    { temperature: 0.7, topK: 20, topP: 0.9 },
    { temperature: 2, topK: 5, topP: 1 },
  ];
  for (let trial = 0; trial < 60; trial++) {
    const spread = [0.01, 1, 20][trial % 3]!;
    // Coarse values make ties; the sign of zero must not matter.
    const logits = Float32Array.from({ length: V }, () => Math.round((gen() - 0.5) * spread * 8) / 8 || (gen() < 0.5 ? -0 : 0));
    const banned = trial % 4 === 0 ? new Set([0, 1, 2, Math.floor(gen() * V)]) : undefined;
    for (const params of settings) {
      const seed = trial * 10 + settings.indexOf(params);
      const got = sampleToken(logits, 0, V, params, createRng(seed), banned);
      const want = reference(logits, V, params, createRng(seed), banned);
      assert.equal(got, want, `trial ${trial} ${JSON.stringify(params)}`);
    }
  }
});

test('sampling reads the row at the offset and never returns a banned token', () => {
  const V = 8;
  const logits = new Float32Array(3 * V).fill(-50);
  logits[2 * V + 5] = 10;
  logits[2 * V + 6] = 9.5;
  const rng = createRng(1);
  for (let i = 0; i < 50; i++) {
    const t = sampleToken(logits, 2 * V, V, { temperature: 1, topK: 0, topP: 1 }, rng, new Set([5]));
    assert.equal(t, 6);
  }
});

/** The distribution the reference sampler draws from, as probabilities by token id (0 outside it). */
function referenceDistribution(logits: Float32Array, V: number, params: SamplingParams): Map<number, number> {
  const { idx, weight } = referenceKept(logits, V, params);
  const total = weight.reduce((a, b) => a + b, 0);
  return new Map(idx.map((id, j) => [id, weight[j]! / total]));
}

test('sampledLogprobs gives the distribution actually sampled from: after temperature, top-k and top-p, renormalised', () => {
  const V = 200;
  const gen = createRng(4);
  const settings: SamplingParams[] = [
    { temperature: 1, topK: 0, topP: 1 },
    { temperature: 0.5, topK: 0, topP: 0.8 },
    { temperature: 1.5, topK: 7, topP: 1 },
    { temperature: 0.9, topK: 30, topP: 0.6 },
  ];
  for (let trial = 0; trial < 20; trial++) {
    const logits = Float32Array.from({ length: V }, () => (gen() - 0.5) * 6);
    for (const params of settings) {
      const want = referenceDistribution(logits, V, params);
      const id = sampleToken(logits, 0, V, params, createRng(trial));
      const { logprob, top } = sampledLogprobs(logits, 0, V, params, id, 20);
      assert.ok(Math.abs(logprob - Math.log(want.get(id)!)) < 1e-9, `${JSON.stringify(params)}: sampled token ${id}`);
      const ranked = [...want].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, 20);
      assert.deepEqual(top.map((t) => t.id), ranked.map(([i]) => i));
      for (const [j, t] of top.entries()) assert.ok(Math.abs(Math.exp(t.logprob) - ranked[j]![1]) < 1e-9);
      if (want.size <= 20) assert.ok(Math.abs(top.reduce((a, t) => a + Math.exp(t.logprob), 0) - 1) < 1e-9, 'the kept tokens carry all the probability');
    }
  }
});

test('sampled tokens follow the reported probabilities', () => {
  const V = 6;
  const logits = Float32Array.from([2, 1.5, 1, 0, -1, -3]);
  const params = { temperature: 0.8, topK: 0, topP: 0.9 };
  const rng = createRng(3);
  const counts = new Array<number>(V).fill(0);
  const draws = 20_000;
  for (let i = 0; i < draws; i++) counts[sampleToken(logits, 0, V, params, rng)]!++;
  const { top } = sampledLogprobs(logits, 0, V, params, 0, V);
  for (const t of top) assert.ok(Math.abs(counts[t.id]! / draws - Math.exp(t.logprob)) < 0.015, `token ${t.id}: ${counts[t.id]! / draws} vs ${Math.exp(t.logprob)}`);
  const outside = counts.reduce((a, c, id) => a + (top.some((t) => t.id === id) ? 0 : c), 0);
  assert.equal(outside, 0, 'no token outside the nucleus is ever drawn');
});

test('greedy decoding reports a point mass on the greedy token', () => {
  const logits = Float32Array.from([0.1, 3, 2.9, -1]);
  const params = { temperature: 0, topK: 0, topP: 1 };
  assert.deepEqual(sampledLogprobs(logits, 0, 4, params, 1, 3), { logprob: 0, top: [{ id: 1, logprob: 0 }] });
  assert.throws(() => sampledLogprobs(logits, 0, 4, params, 2, 3), /greedy decoding picks 1/);
});

test('adjustLogits adds the bias, bans at -100, and subtracts frequency × count + presence for tokens already sampled', () => {
  const logits = Float32Array.from([9, 1, 2, 3, 4, 5, 6, 7]);
  const out = new Float32Array(6);
  const counts = new Map([[2, 3], [3, 1]]);
  adjustLogits(logits, 2, 6, { logitBias: [[0, 1.5], [5, -100], [9, 50]], presencePenalty: 0.5, frequencyPenalty: 0.25 }, counts, out, new Set([1]));
  assert.equal(out[0], 3.5);
  assert.ok(Number.isNaN(out[1]!), 'banned by the caller');
  assert.equal(out[2], 4 - 0.75 - 0.5);
  assert.equal(out[3], 5 - 0.25 - 0.5);
  assert.equal(out[4], 6);
  assert.ok(Number.isNaN(out[5]!), 'a bias of -100 bans');
  const rng = createRng(1);
  for (let i = 0; i < 200; i++) assert.notEqual(sampleToken(out, 0, 6, { temperature: 2, topK: 0, topP: 1 }, rng), 5);
});
