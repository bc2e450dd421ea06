import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { renderChat } from '../model/chat-template.ts';
import { generateBatch, type GenerateOptions } from '../model/generate.ts';
import { ChatError } from './errors.ts';
import type { ServedModel } from './model-host.ts';
import { Scheduler, type Job, type SchedulerOptions } from './scheduler.ts';
import { cacheBytes, type KVCache } from '../model/gpt.ts';
import { NativeKVCache } from '../model/kernels/fused-decoder.ts';
import { loadNativeAddon } from '../model/kernels/native-addon.ts';
import { tinyModel, watchedSteps } from './test-support.ts';

let model: ServedModel;
before(async () => {
  model = await tinyModel({ blockSize: 64 });
});

/** Bytes the native side still holds for a cache (0 once really freed). */
const nativeBytes = (c: KVCache) => loadNativeAddon().addon!.cacheBytes!((c as NativeKVCache).handle);

const OPTS: SchedulerOptions = { maxBatch: 8, maxQueue: 4, prefillTokensPerStep: 1000, retryAfterSeconds: 2 };
const greedy = (maxTokens: number, seed = 1): GenerateOptions => ({ temperature: 0, topK: 0, topP: 1, maxTokens, seed, stop: [] });
const prompt = (text: string) => renderChat(model.tok, [{ role: 'user', content: text }], { addGenerationPrompt: true }).ids;

/** The model with its decode steps wrapped to record batch sizes. */
function spied(): { m: ServedModel; sizes: number[] } {
  const sizes: number[] = [];
  return { m: watchedSteps(model, { onStep: (n) => sizes.push(n) }), sizes };
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

test('with the step off the event loop (asyncStep), every reply gets the tokens of the step on it: greedy, sampled, top-k/top-p and logit bias', async () => {
  const offThread: boolean[] = [];
  const m = watchedSteps(model, { onStep: (_, off) => offThread.push(off) });
  const opts: GenerateOptions[] = [greedy(12), { ...greedy(12), temperature: 1, seed: 3 }, { ...greedy(12), temperature: 0.8, topK: 5, topP: 0.9, seed: 4 }, { ...greedy(12), temperature: 1, seed: 5, logitBias: [[7, 5]] }, { ...greedy(12), stop: ['e'] }];
  const texts = ['hello', 'the cat', 'what does lucid mean?', 'dog', 'a mat'];
  const serve = async (asyncStep: boolean) => {
    const s = new Scheduler(m, { ...OPTS, asyncStep, asyncMinRows: 1 });
    return await Promise.all(texts.map((t, i) => s.submit({ promptIds: prompt(t), opts: opts[i]! }).result));
  };
  const on = await serve(false);
  assert.ok(offThread.length > 0 && !offThread.some(Boolean), 'asyncStep off: every step on the event loop');
  offThread.length = 0;
  const off = await serve(true);
  assert.ok(offThread.length > 0 && offThread.every(Boolean), 'asyncStep on: every step off the event loop');
  off.forEach((r, i) => {
    assert.deepEqual(r.ids, on[i]!.ids, `reply ${i}`);
    assert.equal(r.text, on[i]!.text);
    assert.equal(r.finishReason, on[i]!.finishReason);
  });
});

test('with asyncStep, a reply cancelled while its step runs ends at once, its cache is freed when the step lands, and the others go on', async () => {
  const before = tf.memory().numTensors;
  let s!: Scheduler;
  let victim: Job | undefined;
  let held: KVCache | undefined;
  const gpt = Object.create(model.gpt) as typeof model.gpt;
  gpt.decodeStepAsync = (caches, tokens, sample) => {
    const running = model.gpt.decodeStepAsync(caches, tokens, sample);
    if (victim && !held && caches.length === 2) {
      held = caches[0];
      victim.cancel();
      assert.equal(s.activeCount, 1, 'the slot is free at once');
      assert.ok(cacheBytes(held!) === 0 && nativeBytes(held!) > 0, 'disposed, but its memory kept for the running step');
    }
    return running;
  };
  s = new Scheduler({ ...model, gpt }, { ...OPTS, asyncStep: true, asyncMinRows: 1 });
  victim = s.submit({ promptIds: prompt('a'), opts: { ...greedy(40), temperature: 1 } });
  const other = s.submit({ promptIds: prompt('b'), opts: greedy(10) });
  const [cancelled, done] = await Promise.all([victim.result, other.result]);
  assert.ok(held, 'a step ran with both replies');
  assert.equal(cancelled.finishReason, 'cancelled');
  assert.equal(nativeBytes(held), 0, 'freed once the step landed');
  assert.deepEqual(done.ids, generateBatch(model.gpt, model.tok, [prompt('b')], greedy(10))[0]!.ids);
  assert.equal(tf.memory().numTensors, before);
});

test('with asyncStep, a step that fails fails its replies with its error, and the next replies are served', async () => {
  let failures = 1;
  const gpt = Object.create(model.gpt) as typeof model.gpt;
  gpt.decodeStepAsync = (caches, tokens, sample) => (failures-- > 0 ? Promise.reject(new Error('step broke')) : model.gpt.decodeStepAsync(caches, tokens, sample));
  const s = new Scheduler({ ...model, gpt }, { ...OPTS, asyncStep: true, asyncMinRows: 1 });
  const failed = await Promise.allSettled([s.submit({ promptIds: prompt('a'), opts: greedy(5) }).result]);
  assert.equal(failed[0]!.status, 'rejected');
  assert.match(String((failed[0] as PromiseRejectedResult).reason), /step broke/);
  assert.equal(s.activeCount, 0);
  const next = await s.submit({ promptIds: prompt('a'), opts: greedy(5) }).result;
  assert.deepEqual(next.ids, generateBatch(model.gpt, model.tok, [prompt('a')], greedy(5))[0]!.ids);
});

test('with asyncStep, a hot swap while a step runs lets the old model finish its reply, then disposes it', async () => {
  const [first, next] = [await tinyModel({ blockSize: 64 }), await tinyModel({ blockSize: 64 })];
  const expected = generateBatch(first.gpt, first.tok, [prompt('a')], greedy(8))[0]!.ids;
  const disposed: ServedModel[] = [];
  const s = new Scheduler(first, { ...OPTS, asyncStep: true, asyncMinRows: 1, onDispose: (m) => disposed.push(m) });
  const old = s.submit({ promptIds: prompt('a'), opts: greedy(8) });
  while (s.activeCount === 0) await new Promise((r) => setImmediate(r));
  s.setModel(next);
  assert.equal(disposed.length, 0, 'not while its reply decodes');
  const fresh = s.submit({ promptIds: prompt('a'), opts: greedy(8) });
  const [r1, r2] = await Promise.all([old.result, fresh.result]);
  assert.equal(r1.version, first.version);
  assert.equal(r2.version, next.version);
  assert.deepEqual(r1.ids, expected, 'the old model decoded its reply to the end');
  while (!disposed.includes(first)) await new Promise((r) => setImmediate(r));
  next.gpt.dispose();
});

test('with asyncStep, replies whose batch shrinks below asyncMinRows go on on the event loop with their text in order', async () => {
  const offThread: boolean[] = [];
  const m = watchedSteps(model, { onStep: (_, off) => offThread.push(off) });
  const lengths = [4, 8, 12, 16, 24];
  const serve = async (asyncStep: boolean, asyncMinRows: number) => {
    const s = new Scheduler(m, { ...OPTS, asyncStep, asyncMinRows });
    const streamed = lengths.map((): string[] => []);
    const results = await Promise.all(lengths.map((n, i) => s.submit({ promptIds: prompt(`reply ${i}`), opts: { ...greedy(n), temperature: 1, seed: i }, onDelta: (t) => streamed[i]!.push(t) }).result));
    return { results, streamed };
  };
  const reference = await serve(false, 1);
  for (const minRows of [2, 3, 4]) {
    offThread.length = 0;
    const mixed = await serve(true, minRows);
    assert.ok(offThread.includes(true) && offThread.includes(false), `steps ran off the event loop while ${minRows} or more replies were live, on it after`);
    mixed.results.forEach((r, i) => {
      assert.deepEqual(r.ids, reference.results[i]!.ids, `reply ${i}`);
      assert.deepEqual(mixed.streamed[i], reference.streamed[i], `reply ${i}: the same deltas in the same order`);
      assert.equal(mixed.streamed[i]!.join(''), r.text);
    });
  }
});

test('with decodeSliceMs, steps run back to back and each reply\'s text of a slice goes out at once, with the tokens of one step a turn', async () => {
  const turns: number[] = [0];
  const m = watchedSteps(model, { busyMs: 1, onStep: () => turns[turns.length - 1]!++ });
  const opts: GenerateOptions[] = [
    greedy(24),
    { ...greedy(24), temperature: 1, seed: 3 },
    { ...greedy(24), temperature: 0.8, topK: 5, topP: 0.9, seed: 4 },
    { ...greedy(24), temperature: 1, seed: 5, logitBias: [[7, 5]], logprobs: 2 },
    { ...greedy(24), temperature: 1, seed: 6, stop: ['e'] },
  ];
  const texts = ['hello', 'the cat', 'what does lucid mean?', 'dog', 'a mat'];
  const serve = async (decodeSliceMs: number) => {
    const s = new Scheduler(m, { ...OPTS, decodeSliceMs });
    const streamed = texts.map((): string[] => []);
    const streamedLogprobs = texts.map((): number[] => []);
    turns.length = 0;
    turns.push(0);
    let counting = true;
    const count = () => {
      turns.push(0);
      if (counting) setImmediate(count);
    };
    setImmediate(count);
    const results = await Promise.all(
      texts.map((t, i) =>
        s.submit({
          promptIds: prompt(t),
          opts: opts[i]!,
          onDelta: (d, lps) => {
            streamed[i]!.push(d);
            streamedLogprobs[i]!.push(...lps.map((lp) => lp.id));
          },
        }).result,
      ),
    );
    counting = false;
    return { results, streamed, streamedLogprobs, mostStepsInATurn: Math.max(...turns) };
  };
  const one = await serve(0);
  const sliced = await serve(8);
  assert.ok(one.mostStepsInATurn <= 1, `one step a turn without a slice (${one.mostStepsInATurn})`);
  assert.ok(sliced.mostStepsInATurn >= 3, `an 8 ms slice of 1 ms steps runs several steps a turn (${sliced.mostStepsInATurn})`);
  sliced.results.forEach((r, i) => {
    assert.deepEqual(r.ids, one.results[i]!.ids, `reply ${i}`);
    assert.equal(r.text, one.results[i]!.text);
    assert.equal(r.finishReason, one.results[i]!.finishReason);
    assert.deepEqual(r.logprobs, one.results[i]!.logprobs);
    assert.equal(sliced.streamed[i]!.join(''), r.text, `reply ${i}: the streamed text is the reply`);
    assert.deepEqual(sliced.streamedLogprobs[i], one.streamedLogprobs[i], `reply ${i}: every log-probability streamed once, in order`);
  });
  const deltas = (x: typeof one) => x.streamed.reduce((n, d) => n + d.length, 0);
  assert.ok(deltas(sliced) < deltas(one), `fewer deltas in slices (${deltas(sliced)} against ${deltas(one)})`);
  assert.equal(one.results[4]!.finishReason, 'stop', 'the stop string ended a reply mid-slice');
});

test('with decodeSliceMs, a slice ends when a reply ends, so its result and its slot do not wait for the slice', async () => {
  const s = new Scheduler(watchedSteps(model, { busyMs: 1 }), { ...OPTS, decodeSliceMs: 60_000 });
  const long = s.submit({ promptIds: prompt('long'), opts: { ...greedy(40), temperature: 1, seed: 1, logitBias: [[model.tok.specialId('<|end|>'), -100]] } });
  const short = await s.submit({ promptIds: prompt('short'), opts: greedy(2) }).result;
  assert.equal(short.completionTokens, 2);
  assert.equal(s.activeCount, 1, 'the long reply is still decoding when the short one resolves');
  const next = await s.submit({ promptIds: prompt('next'), opts: greedy(2) }).result;
  assert.equal(next.completionTokens, 2, 'a request submitted meanwhile got the free slot and ended');
  assert.equal(s.activeCount, 1);
  long.cancel();
  assert.equal((await long.result).finishReason, 'cancelled');
});
