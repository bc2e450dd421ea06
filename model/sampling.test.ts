import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRng } from './random.ts';
import { sampleToken, type SamplingParams } from './sampling.ts';

/** The sampler written the obvious way: sort the candidates (when top-k or top-p cut them) with a comparator. */
function reference(logits: Float32Array, V: number, params: SamplingParams, rng: () => number, banned?: ReadonlySet<number>): number {
  const ok = (i: number) => !banned?.has(i);
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i]! > max && ok(i)) max = logits[i]!;
  let idx: number[] = [];
  for (let i = 0; i < V; i++) if (logits[i]! >= max - 30 * params.temperature && ok(i)) idx.push(i);
  if (params.topK > 0 || params.topP < 1) idx.sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (params.topK > 0 && params.topK < idx.length) idx = idx.slice(0, params.topK);
  let probs = idx.map((i) => Math.exp((logits[i]! - max) / params.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (params.topP < 1) {
    let acc = 0;
    const keep = probs.findIndex((p) => (acc += p / total) >= params.topP) + 1 || probs.length;
    probs = probs.slice(0, keep);
    idx = idx.slice(0, keep);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let r = rng() * total;
  for (let j = 0; j < probs.length; j++) if ((r -= probs[j]!) <= 0) return idx[j]!;
  return idx[idx.length - 1]!;
}

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
