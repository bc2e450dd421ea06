import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { renderChat } from '../model/chat-template.ts';
import { generateBatch, type GenerateOptions } from '../model/generate.ts';
import type { KVCache } from '../model/gpt.ts';
import { ChatError } from './errors.ts';
import type { ServedModel } from './model-host.ts';
import { Scheduler, type SchedulerOptions } from './scheduler.ts';
import { tinyModel } from './test-support.ts';

let model: ServedModel;
before(async () => {
  model = await tinyModel({ blockSize: 64 });
});

const OPTS: SchedulerOptions = { maxBatch: 8, maxQueue: 4, prefillTokensPerStep: 1000, retryAfterSeconds: 2 };
const greedy = (maxTokens: number, seed = 1): GenerateOptions => ({ temperature: 0, topK: 0, topP: 1, maxTokens, seed, stop: [] });
const prompt = (text: string) => renderChat(model.tok, [{ role: 'user', content: text }], { addGenerationPrompt: true }).ids;

/** The model with decodeStep wrapped to record batch sizes. */
function spied(): { m: ServedModel; sizes: number[] } {
  const sizes: number[] = [];
  const gpt = model.gpt;
  const proxy = Object.create(gpt) as typeof gpt;
  proxy.decodeStep = (caches: readonly KVCache[], tokens: readonly number[]) => {
    sizes.push(caches.length);
    return gpt.decodeStep(caches, tokens);
  };
  return { m: { ...model, gpt: proxy }, sizes };
}

test('concurrent replies are decoded together, one batched step for all, with the text of decoding each alone', async () => {
  const { m, sizes } = spied();
  const s = new Scheduler(m, OPTS);
  const texts = ['hello', 'the cat', 'what does lucid mean?', 'dog'];
  const jobs = texts.map((t) => s.submit({ promptIds: prompt(t), opts: greedy(10) }));
  const results = await Promise.all(jobs.map((j) => j.result));
  assert.equal(Math.max(...sizes), 4, 'all four sequences shared a step');
  assert.ok(sizes.length <= 10, `${sizes.length} steps for 4 replies of ≤ 10 tokens`);
  results.forEach((r, i) => {
    const alone = generateBatch(model.gpt, model.tok, [prompt(texts[i]!)], greedy(10))[0]!;
    assert.deepEqual(r.ids, alone.ids, `reply ${i}`);
    assert.equal(r.finishReason, alone.finishReason);
  });
});

test('sequences join and leave between steps (continuous batching)', async () => {
  const { m, sizes } = spied();
  const s = new Scheduler(m, OPTS);
  const long = s.submit({ promptIds: prompt('a'), opts: { ...greedy(30), temperature: 1, seed: 5 } });
  for (let i = 0; i < 10_000 && sizes.length < 2; i++) await new Promise((r) => setImmediate(r));
  assert.equal(sizes.length, 2, 'the first reply is decoding alone');
  const short = s.submit({ promptIds: prompt('b'), opts: greedy(3) });
  const [a, b] = await Promise.all([long.result, short.result]);
  assert.ok(b.completionTokens <= 3);
  assert.ok(a.completionTokens > b.completionTokens + 2, `the long reply has ${a.completionTokens} tokens (seeded: deterministic)`);
  assert.equal(sizes[0], 1, 'the first started alone');
  assert.ok(sizes.includes(2), 'the second joined the first');
  assert.equal(sizes[sizes.length - 1], 1, 'the first went on alone after the second left');
});

test('a full queue refuses new work with "overloaded" and a Retry-After', async () => {
  const s = new Scheduler(model, { ...OPTS, maxBatch: 1, maxQueue: 1 });
  const a = s.submit({ promptIds: prompt('a'), opts: greedy(5) });
  const b = s.submit({ promptIds: prompt('b'), opts: greedy(5) });
  assert.throws(
    () => s.submit({ promptIds: prompt('c'), opts: greedy(5) }),
    (e: unknown) => e instanceof ChatError && e.code === 'overloaded' && e.status === 429 && e.retryAfter === 2,
  );
  await Promise.all([a.result, b.result]);
  await s.submit({ promptIds: prompt('c'), opts: greedy(2) }).result;
});

test('cancelling frees the slot at once, waiting or decoding, and leaks no tensors', async () => {
  const before = tf.memory().numTensors;
  const s = new Scheduler(model, { ...OPTS, maxBatch: 1 });
  const running = s.submit({ promptIds: prompt('a'), opts: { ...greedy(50), temperature: 1 } });
  const waiting = s.submit({ promptIds: prompt('b'), opts: greedy(50) });
  while (s.activeCount === 0) await new Promise((r) => setImmediate(r));
  waiting.cancel();
  assert.equal(s.queueDepth, 0);
  running.cancel();
  assert.equal(s.activeCount, 0);
  const [r1, r2] = await Promise.all([running.result, waiting.result]);
  assert.equal(r1.finishReason, 'cancelled');
  assert.deepEqual([r2.finishReason, r2.completionTokens], ['cancelled', 0]);
  await s.submit({ promptIds: prompt('c'), opts: greedy(5) }).result;
  assert.equal(tf.memory().numTensors, before);
});

test('a kept context, extended with the new prompt tokens, gives the same reply as a fresh prefill', async () => {
  const s = new Scheduler(model, { ...OPTS, reuse: 'always' });
  const first = prompt('hello');
  const r1 = await s.submit({ promptIds: first, opts: greedy(6), keepContext: true }).result;
  assert.ok(r1.context);
  assert.equal(r1.context.cache.length, r1.context.ids.length);
  const next = [...r1.context.ids, ...model.tok.encode(' and more')];
  const reused = await s.submit({ promptIds: next, opts: greedy(6), reuse: r1.context }).result;
  assert.equal(reused.reusedContext, true);
  const fresh = await new Scheduler(model, { ...OPTS, reuse: 'never' }).submit({ promptIds: next, opts: greedy(6) }).result;
  assert.equal(fresh.reusedContext, false);
  assert.deepEqual(reused.ids, fresh.ids);
});

test('a cached context from another model version is not reused', async () => {
  const s = new Scheduler(model, { ...OPTS, reuse: 'always' });
  const r1 = await s.submit({ promptIds: prompt('x'), opts: greedy(3), keepContext: true }).result;
  const stale = { ...r1.context!, version: 'other-000000000000' };
  const r2 = await s.submit({ promptIds: [...stale.ids, 5], opts: greedy(3), reuse: stale }).result;
  assert.equal(r2.reusedContext, false);
});

test('prompts admitted together are prefilled in one pass, and a prompt too long for the context fails alone', async () => {
  const s = new Scheduler(model, OPTS);
  const texts = ['hello', 'the cat sat', 'dog'];
  const tooLong = Array.from({ length: model.gpt.config.blockSize + 1 }, () => prompt('a')[0]!);
  const jobs = [...texts.map((t) => s.submit({ promptIds: prompt(t), opts: greedy(6) })), s.submit({ promptIds: tooLong, opts: greedy(6) })];
  const settled = await Promise.allSettled(jobs.map((j) => j.result));
  assert.equal(settled[3]!.status, 'rejected');
  assert.match(String((settled[3] as PromiseRejectedResult).reason), /exceeds blockSize/);
  settled.slice(0, 3).forEach((r, i) => {
    assert.equal(r.status, 'fulfilled', `reply ${i}`);
    const alone = generateBatch(model.gpt, model.tok, [prompt(texts[i]!)], greedy(6))[0]!;
    assert.deepEqual((r as PromiseFulfilledResult<{ ids: number[] }>).value.ids, alone.ids, `reply ${i} matches decoding alone`);
  });
});
