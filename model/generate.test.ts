import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from './backend.ts';
import { GPT } from './gpt.ts';
import { Tokenizer } from './tokenizer.ts';
import { endOfTurnId, renderChat } from './chat-template.ts';
import { DecodeSequence, generateBatch } from './generate.ts';
import { sampleToken } from './sampling.ts';
import { createRng } from './random.ts';

let tok: Tokenizer;
let gpt: GPT;

before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  tok = Tokenizer.train('hello world, the quick brown fox jumps over the lazy dog. '.repeat(20), { vocabSize: 300 });
  gpt = GPT.create({ nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 48, vocabSize: tok.vocabSize }, 'policy', 5);
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
