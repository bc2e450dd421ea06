import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { GPT } from './gpt.ts';
import type { Tokenizer } from './tokenizer.ts';
import { tinyDecoder } from './test-support.ts';
import { endOfTurnId, renderChat } from './chat-template.ts';
import { DecodeSequence, generateBatch, promptLogprobs, type GenerateOptions } from './generate.ts';
import { sampleToken } from './sampling.ts';
import { createRng } from './random.ts';

let tok: Tokenizer;
let gpt: GPT;

before(async () => {
  ({ tok, gpt } = await tinyDecoder());
});

const prompt = () => renderChat(tok, [{ role: 'user', content: 'hello' }], { addGenerationPrompt: true }).ids;

test('the same seed gives the same text, another seed another text', () => {
  const opts = { temperature: 1, topK: 0, topP: 1, maxTokens: 20, seed: 11 };
  const a = generateBatch(gpt, tok, [prompt()], opts)[0]!;
  const b = generateBatch(gpt, tok, [prompt()], opts)[0]!;
  const c = generateBatch(gpt, tok, [prompt()], { ...opts, seed: 12 })[0]!;
  assert.deepEqual(a.ids, b.ids);
  assert.notDeepEqual(a.ids, c.ids);
});

test('max tokens ends a reply with finish reason "length"; the context window bounds it too', () => {
  const g = generateBatch(gpt, tok, [prompt()], { temperature: 1, maxTokens: 5, seed: 1 })[0]!;
  assert.ok(g.ids.length <= 5);
  if (g.finishReason === 'length') assert.equal(g.ids.length, 5);
  const long = generateBatch(gpt, tok, [prompt()], { temperature: 1, maxTokens: 1000, seed: 2 })[0]!;
  assert.ok(prompt().length + long.ids.length <= 48);
});

test('the end-of-turn token stops a reply with finish reason "stop" and no other special token is sampled', () => {
  const V = tok.vocabSize;
  const eot = endOfTurnId(tok);
  const { cache, logits } = gpt.prefill(prompt());
  const seq = new DecodeSequence(tok, cache, { temperature: 1, topK: 0, topP: 1, maxTokens: 10, seed: 0, stop: [] }, 48);
  const fake = new Float32Array(V).fill(-10);
  fake[tok.specialId('<|user|>')] = 50; // banned inside a reply
  fake[eot] = 10;
  seq.push(fake, 0, V);
  assert.equal(seq.ids[0], eot);
  assert.equal(seq.finishReason, 'stop');
  seq.dispose();
  void logits;
});

test('a stop string ends the reply before it, and streamed deltas never leak its start', () => {
  const V = tok.vocabSize;
  const { cache } = gpt.prefill(prompt());
  const seq = new DecodeSequence(tok, cache, { temperature: 0, topK: 0, topP: 1, maxTokens: 30, seed: 0, stop: ['fox'] }, 48);
  const words = tok.encode('the quick brown fox jumps');
  let streamed = '';
  for (const id of words) {
    const fake = new Float32Array(V).fill(-10);
    fake[id] = 10;
    streamed += seq.push(fake, 0, V);
    if (seq.done) break;
  }
  assert.equal(seq.finishReason, 'stop');
  assert.equal(seq.text, 'the quick brown ');
  assert.equal(streamed, 'the quick brown ');
  seq.dispose();
});

test('top-k 1 is greedy and top-p keeps only the nucleus', () => {
  const logits = new Float32Array([1, 5, 2, 4.9]);
  const rng = createRng(3);
  for (let i = 0; i < 20; i++) assert.equal(sampleToken(logits, 0, 4, { temperature: 1, topK: 1, topP: 1 }, rng), 1);
  const seen = new Set<number>();
  for (let i = 0; i < 200; i++) seen.add(sampleToken(logits, 0, 4, { temperature: 1, topK: 0, topP: 0.8 }, rng));
  assert.deepEqual([...seen].sort(), [1, 3]);
});

test('batched generation leaves no tensors behind', () => {
  const before = tf.memory().numTensors;
  generateBatch(gpt, tok, [prompt(), prompt().slice(0, 3), prompt()], { temperature: 1, maxTokens: 8, seed: 4 });
  assert.equal(tf.memory().numTensors, before);
});

/** Decodes one reply with `DecodeSequence` (as the server's scheduler does), collecting the streamed deltas and their log-probabilities. */
function decode(opts: GenerateOptions): { seq: DecodeSequence; deltas: { text: string; tokens: number[] }[] } {
  const V = gpt.config.vocabSize;
  const { cache, logits } = gpt.prefill(prompt());
  const seq = new DecodeSequence(tok, cache, opts, gpt.config.blockSize);
  const deltas: { text: string; tokens: number[] }[] = [];
  const take = (text: string) => deltas.push({ text, tokens: seq.takeLogprobs().map((t) => t.id) });
  take(seq.push(logits, 0, V));
  while (!seq.done) take(seq.push(gpt.decodeStep([cache], [seq.lastToken]), 0, V));
  seq.dispose();
  return { seq, deltas };
}

const base: GenerateOptions = { temperature: 1, topK: 0, topP: 0.9, maxTokens: 12, seed: 3, stop: [] };

test('with logprobs set, every token of the reply carries its log-probability and top tokens, and the text is unchanged', () => {
  const plain = decode(base).seq;
  const { seq, deltas } = decode({ ...base, logprobs: 3 });
  assert.equal(seq.text, plain.text);
  assert.deepEqual(seq.ids, plain.ids);
  const contentIds = seq.ids.filter((id) => id !== endOfTurnId(tok));
  assert.deepEqual(seq.logprobs.map((t) => t.id), contentIds);
  assert.equal(tok.decode(seq.logprobs.map((t) => t.id)), seq.text);
  for (const t of seq.logprobs) {
    assert.ok(t.logprob <= 0 && t.top.length >= 1 && t.top.length <= 3);
    assert.ok(t.top[0]!.logprob >= t.logprob, 'the most likely token is at least as likely as the sampled one');
  }
  // The tokens' spans tile the text (a token ending inside a UTF-8 character spans nothing).
  seq.logprobs.forEach((t, i) => assert.equal(t.start, i === 0 ? 0 : seq.logprobs[i - 1]!.end));
  assert.equal(seq.logprobs.at(-1)?.end ?? 0, seq.text.length);
  // Each streamed delta carries the tokens released with it, each once.
  assert.deepEqual(deltas.flatMap((d) => d.tokens), contentIds);
  assert.equal(deltas.map((d) => d.text).join(''), seq.text);
});

test('a stop string drops the tokens inside it from the log-probabilities', () => {
  const free = decode({ ...base, temperature: 0, maxTokens: 20 }).seq;
  const stop = free.text.slice(4, 6);
  assert.equal(stop.length, 2, `a greedy reply long enough to cut: ${JSON.stringify(free.text)}`);
  const cut = decode({ ...base, temperature: 0, maxTokens: 20, stop: [stop], logprobs: 0 }).seq;
  assert.equal(cut.text, free.text.slice(0, free.text.indexOf(stop)));
  assert.ok(cut.logprobs.every((t) => t.start < cut.text.length || cut.text.length === 0));
  assert.ok(tok.decode(cut.logprobs.map((t) => t.id)).startsWith(cut.text));
  assert.ok(cut.logprobs.every((t) => t.logprob === 0 && t.top.length === 0), 'greedy: a point mass, and no top tokens asked');
});

test('logit bias forces or bans a token, and a frequency penalty stops greedy repetition', () => {
  const forced = tok.encode(' fox')[0]!;
  const all = decode({ ...base, logitBias: [[forced, 100]], maxTokens: 5 }).seq;
  assert.deepEqual(all.ids, [forced, forced, forced, forced, forced]);
  const greedy = decode({ ...base, temperature: 0, maxTokens: 12 }).seq;
  const banned = greedy.ids[0]!;
  const without = decode({ ...base, temperature: 0, maxTokens: 12, logitBias: [[banned, -100]] }).seq;
  assert.ok(!without.ids.includes(banned));
  const penalised = decode({ ...base, temperature: 0, maxTokens: 12, logitBias: [[forced, 5]], frequencyPenalty: 2, presencePenalty: 2 }).seq;
  const repeats = decode({ ...base, temperature: 0, maxTokens: 12, logitBias: [[forced, 5]] }).seq;
  assert.ok(repeats.ids.filter((id) => id === forced).length > 1, 'without a penalty the biased token repeats');
  assert.ok(penalised.ids.filter((id) => id === forced).length < repeats.ids.filter((id) => id === forced).length);
});

test('promptLogprobs scores each token after its prefix with the model\'s own distribution', () => {
  const ids = tok.encode('the quick brown fox jumps');
  const scored = promptLogprobs(gpt, ids, 2);
  assert.equal(scored.length, ids.length);
  assert.equal(scored[0], null);
  const before = tf.memory().numTensors;
  for (const t of [1, ids.length - 1]) {
    const { cache, logits } = gpt.prefill(ids.slice(0, t), { path: 'tfjs' });
    cache.dispose();
    const max = Math.max(...logits);
    const logZ = max + Math.log(logits.reduce((a, l) => a + Math.exp(l - max), 0));
    assert.ok(Math.abs(scored[t]!.logprob - (logits[ids[t]!]! - logZ)) < 1e-4, `position ${t}`);
    const best = logits.indexOf(max);
    assert.equal(scored[t]!.top[0]!.id, best);
    assert.ok(scored[t]!.top[1]!.logprob <= scored[t]!.top[0]!.logprob);
  }
  promptLogprobs(gpt, ids, 1);
  assert.equal(tf.memory().numTensors, before);
});
