import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { GPT } from '../gpt.ts';
import type { Tokenizer } from '../tokenizer.ts';
import { tinyDecoder } from '../test-support.ts';
import { renderChat } from '../chat-template.ts';
import { DecodeSequence, finishSamples, generateBatch, planSamples, plainSampling, sampleBatch, type GenerateOptions } from '../generate.ts';
import { createRng } from '../random.ts';
import { expWeight } from '../sampling.ts';
import { nativeSampleRows } from './native-sampler.ts';
import { loadNativeAddon } from './native-addon.ts';

const native = nativeSampleRows();
const skip = native ? false : 'the native addon with the sampler is not built (npm ci without a compiler): the JS sampler runs';

let tok: Tokenizer;
let gpt: GPT;

before(async () => {
  ({ tok, gpt } = await tinyDecoder());
});

const base: GenerateOptions = { temperature: 1, topK: 0, topP: 1, maxTokens: 20, seed: 0, stop: [] };

/** Rows of logits shaped like a model's: a spread of values, ties, a few far above the rest. */
function rows(n: number, V: number, seed: number): Float32Array {
  const rng = createRng(seed);
  const out = new Float32Array(n * V);
  for (let i = 0; i < out.length; i++) out[i] = Math.round((rng() - 0.5) * 8 * 16) / 16; // ties are common
  for (let r = 0; r < n; r++) for (let j = 0; j < 3; j++) out[r * V + rng.int(V)] = 6 + rng() * 4;
  return out;
}

/**
 * Samples `logits` (n rows of V) `steps` times with the native and the JS sampler, each through
 * its own sequences made with `optsOf(r)`, and asserts the two pick the same tokens every step;
 * returns the rows compared.
 */
function sameTokens(logits: Float32Array, n: number, V: number, optsOf: (r: number) => Partial<GenerateOptions>, steps: number, label: string): number {
  const mk = () => Array.from({ length: n }, (_, r) => new DecodeSequence(tok, gpt.prefill([1, 2]).cache, { ...base, ...optsOf(r) }, 48));
  const a = mk();
  const b = mk();
  const idsNative = new Int32Array(n);
  const idsJs = new Int32Array(n);
  for (let step = 0; step < steps; step++) {
    sampleBatch(a, logits, V, idsNative, 'native');
    sampleBatch(b, logits, V, idsJs, 'js');
    assert.deepEqual([...idsNative], [...idsJs], `${label} step ${step}`);
  }
  for (const s of [...a, ...b]) s.dispose();
  return n * steps;
}

// Parity is exact: the same single-precision weights (the same exponential, operation for
// operation) made integers whose sums are exact in any order, and the same uniform draw.
test('the native batched sampler picks the same tokens as sampleToken, row by row, for every kind of option', { skip }, () => {
  const variants: Partial<GenerateOptions>[] = [
    { temperature: 0 },
    { temperature: 1 },
    { temperature: 0.7, topP: 0.9 },
    { temperature: 1.3, topK: 5 },
    { temperature: 0.8, topK: 40, topP: 0.95 },
    { temperature: 0.05, topP: 0.5 },
  ];
  let compared = 0;
  for (let round = 0; round < 60; round++) {
    const n = 1 + (round % 17);
    const V = round % 2 ? 2048 : tok.vocabSize; // rows wider than the tokenizer, as a model's may be
    compared += sameTokens(rows(n, V, round), n, V, (r) => ({ ...variants[(r + round) % variants.length], seed: round * 100 + r }), 3, `round ${round}`);
  }
  assert.ok(compared >= 1000, `compared ${compared} rows`);
});

// Plain rows (no top-k, no top-p) take a vectorised path that adds the weights lane by lane and
// skips whole blocks in the draw: whole batches of them, on widths with and without a tail past
// the last full vector.
test('batches of plain rows pick the same tokens natively as sampleToken, at every batch size and width', { skip }, () => {
  const temperatures = [1, 0.7, 1.3, 0.05, 2];
  let compared = 0;
  for (let round = 0; round < 40; round++) {
    const n = 1 + (round % 20);
    const V = [2048, tok.vocabSize, 2045, 13][round % 4]!;
    compared += sameTokens(rows(n, V, 1000 + round), n, V, (r) => ({ temperature: temperatures[(r + round) % temperatures.length]!, seed: round * 100 + r }), 4, `round ${round} (n ${n}, V ${V})`);
  }
  assert.ok(compared >= 1000, `compared ${compared} rows`);
});

// The cut path (top-k, top-p: a radix select of the boundary, not a sort) at its edges: every
// logit tied (the order is then the ids'), or thousands of distinct logits bunched within 1e-3
// under one far above them.
test('rows whose logits all tie or bunch tightly below one outlier pick the same tokens natively with top-k and top-p', { skip }, () => {
  const V = 2048;
  const rng = createRng(5);
  const shapes: ((i: number) => number)[] = [
    () => 1.5, // every logit ties
    (i) => (i === 77 ? 40 : 2 + rng() * 1e-3), // one outlier, the rest within 1e-3 of each other
    (i) => (i % 97 === 0 ? 8 + (i % 3) : Math.round(rng() * 4) / 4), // a few high, five values shared by the rest
  ];
  const variants: Partial<GenerateOptions>[] = [{ temperature: 1, topP: 0.9 }, { temperature: 40, topP: 0.5 }, { temperature: 0.7, topK: 300 }, { temperature: 2, topK: 1500, topP: 0.99 }];
  let compared = 0;
  for (const [si, shape] of shapes.entries()) {
    const n = 8;
    const logits = new Float32Array(n * V);
    for (let r = 0; r < n; r++) for (let i = 0; i < V; i++) logits[r * V + i] = shape(i);
    compared += sameTokens(logits, n, V, (r) => ({ ...variants[r % variants.length], seed: si * 100 + r }), 25, `shape ${si}`);
  }
  assert.ok(compared >= 600, `compared ${compared} rows`);
});

// The scheduler hands its plan to the step (`decodeStep(caches, tokens, plan)`): each row is
// sampled by the thread that computed it, inside the step (split by sequences from 8 rows).
test('rows sampled inside the native decode step get the tokens of the step followed by sampleBatch', { skip }, () => {
  const variants: Partial<GenerateOptions>[] = [{ temperature: 1 }, { temperature: 0.8, topP: 0.9 }, { temperature: 0 }, { temperature: 1.2, topK: 7 }, { temperature: 1, logitBias: [[5, 3]] }];
  const V = gpt.config.vocabSize;
  let compared = 0;
  for (const n of [3, 8, 16, 20]) {
    const prompts = Array.from({ length: n }, (_, r) => Array.from({ length: 2 + (r % 5) }, (_, j) => 1 + ((r * 7 + j * 3) % 200)));
    // Each sequence's first token comes from its prefill's logits, as in the scheduler.
    const mk = () =>
      prompts.map((p, r) => {
        const { cache, logits } = gpt.prefill(p);
        const seq = new DecodeSequence(tok, cache, { ...base, ...variants[r % variants.length], seed: n * 100 + r }, 48);
        seq.push(logits, 0, V);
        return seq;
      });
    const fused = mk();
    const apart = mk();
    const idsFused = new Int32Array(n);
    const idsApart = new Int32Array(n);
    for (let step = 0; step < 6; step++) {
      const plan = planSamples(fused, V, 'native');
      const logitsFused = gpt.decodeStep(fused.map((s) => s.cache), fused.map((s) => s.lastToken), plan);
      finishSamples(fused, logitsFused, V, idsFused, plan);
      const logitsApart = gpt.decodeStep(apart.map((s) => s.cache), apart.map((s) => s.lastToken));
      sampleBatch(apart, logitsApart, V, idsApart, 'native');
      assert.deepEqual([...idsFused], [...idsApart], `batch ${n} step ${step}`);
      for (let r = 0; r < n; r++) {
        const id = idsFused[r]!;
        if (id >= 0) {
          fused[r]!.accept(id);
          apart[r]!.accept(id);
        } else {
          fused[r]!.push(logitsFused, r * V, V);
          apart[r]!.push(logitsApart, r * V, V);
        }
      }
      compared += n;
    }
    for (const s of [...fused, ...apart]) s.dispose();
  }
  assert.ok(compared >= 250, `compared ${compared} rows`);
});

test('banned specials are never sampled natively, even when they hold the best logit', { skip }, () => {
  const V = tok.vocabSize;
  const user = tok.specialId('<|user|>');
  const logits = new Float32Array(4 * V).fill(-5);
  for (let r = 0; r < 4; r++) logits[r * V + user] = 50;
  const seqs = [0, 1, 0.5, 2].map((t, i) => new DecodeSequence(tok, gpt.prefill([1]).cache, { ...base, temperature: t, seed: i }, 48));
  const ids = new Int32Array(4);
  sampleBatch(seqs, logits, V, ids, 'native');
  for (const id of ids) assert.ok(!tok.isSpecial(id) || id !== user, `picked banned ${id}`);
  seqs.forEach((s) => s.dispose());
});

test('requests with logit adjustments or log-probabilities are left to push, which samples them in JS', () => {
  assert.equal(plainSampling(base), true);
  assert.equal(plainSampling({ ...base, presencePenalty: 0, logitBias: [] }), true, 'neutral values keep the fast path');
  assert.equal(plainSampling({ ...base, presencePenalty: 0.5 }), false);
  assert.equal(plainSampling({ ...base, logitBias: [[5, 100]] }), false);
  assert.equal(plainSampling({ ...base, logprobs: 0 }), false);
  const seq = new DecodeSequence(tok, gpt.prefill([1]).cache, { ...base, frequencyPenalty: 1 }, 48);
  const ids = new Int32Array(1);
  sampleBatch([seq], rows(1, tok.vocabSize, 3), tok.vocabSize, ids, native ? 'native' : 'js');
  assert.equal(ids[0], -1);
  assert.throws(() => seq.accept(5), /use push/);
  seq.dispose();
});

test('a batch mixing plain and adjusted sequences gives each the tokens of push alone and keeps every generator in step', { skip }, () => {
  const V = tok.vocabSize;
  const opts: GenerateOptions[] = [base, { ...base, frequencyPenalty: 1, logprobs: 2 }, { ...base, temperature: 0.6, topK: 8 }, { ...base, logitBias: [[7, 5]] }];
  const mk = () => opts.map((o, i) => new DecodeSequence(tok, gpt.prefill([3]).cache, { ...o, maxTokens: 40, seed: 40 + i }, 48));
  const batched = mk();
  const alone = mk();
  const ids = new Int32Array(opts.length);
  for (let step = 0; step < 8; step++) {
    const logits = rows(opts.length, V, 100 + step);
    sampleBatch(batched, logits, V, ids, 'native');
    batched.forEach((s, r) => (ids[r]! >= 0 ? s.accept(ids[r]!) : s.push(logits, r * V, V)));
    alone.forEach((s, r) => s.push(logits, r * V, V));
  }
  batched.forEach((s, r) => {
    assert.deepEqual(s.ids, alone[r]!.ids, `sequence ${r}`);
    assert.deepEqual(s.logprobs, alone[r]!.logprobs);
  });
  [...batched, ...alone].forEach((s) => s.dispose());
});

test('generateBatch gives the same replies with the native and the JS sampler (greedy and seeded sampling)', { skip }, () => {
  const prompts = ['hello', 'the quick', 'lazy dog'].map((c) => renderChat(tok, [{ role: 'user', content: c }], { addGenerationPrompt: true }).ids);
  for (const o of [{ temperature: 0 }, { temperature: 1, seed: 3 }, { temperature: 0.8, topP: 0.9, seed: 9 }]) {
    const a = generateBatch(gpt, tok, prompts, { ...o, maxTokens: 30 }, undefined, 'native');
    const b = generateBatch(gpt, tok, prompts, { ...o, maxTokens: 30 }, undefined, 'js');
    assert.deepEqual(a, b);
  }
});

test('the native sampler\'s exponential is sampling.ts\'s expWeight bit for bit over the weights it takes', { skip }, () => {
  const { addon } = loadNativeAddon();
  const exp = (addon as unknown as { expWeight: (xs: Float32Array) => Float32Array }).expWeight;
  const rng = createRng(17);
  const xs = new Float32Array(400_003); // a tail past the last full vector
  for (let i = 0; i < xs.length; i++) {
    const band = i % 4;
    // Small values, both sides of each multiple of ln 2 / 2 (where the reduction's k steps), the rest.
    xs[i] = band === 0 ? -rng() * 2 ** -20 : band === 1 ? -(Math.LN2 / 2) * (1 + (i % 60)) + (rng() - 0.5) * 1e-6 : -rng() * 30;
    if (xs[i]! > 0) xs[i] = 0;
    if (xs[i]! < -30) xs[i] = -30;
  }
  xs[0] = 0;
  xs[1] = -0;
  xs[2] = -30;
  const out = exp(xs);
  let differ = 0;
  for (let i = 0; i < xs.length; i++) if (out[i] !== expWeight(xs[i]!)) differ++;
  assert.equal(differ, 0, `${differ} of ${xs.length} values differ from expWeight`);
  assert.throws(() => exp(Float32Array.of(0.5)), /\[-30, 0\]/);
});
