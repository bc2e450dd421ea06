import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { cacheBytes } from '../model/gpt.ts';
import type { ServedModel } from './model-host.ts';
import { SessionCache, type ConversationState } from './session-cache.ts';
import { tinyModel } from './test-support.ts';

let model: ServedModel;
before(async () => {
  model = await tinyModel();
});

function withKv(id: string, tokens: number): ConversationState {
  const ids = Array.from({ length: tokens }, (_, i) => 10 + i);
  const { cache } = model.gpt.prefill(ids);
  return { id, userId: 'u', path: [{ id: `${id}-m`, role: 'user', content: 'hi' }], kv: { ids, cache, version: model.version } };
}

test('the session cache is bounded by bytes, counting KV caches, and frees the caches it evicts', () => {
  const tensors = tf.memory().numTensors;
  const probe = withKv('probe', 20);
  const measure = new SessionCache(1e9);
  measure.put(probe);
  const entry = measure.bytes;
  assert.ok(entry > cacheBytes(probe.kv!.cache), 'an entry counts its KV cache');
  const cache = new SessionCache(entry * 3.5);
  const states = Array.from({ length: 10 }, (_, i) => withKv(`c${i}`, 20));
  const caches = states.map((s) => s.kv!.cache);
  for (const s of states) cache.put(s);
  assert.ok(cache.bytes <= cache.maxBytes, `${cache.bytes} ≤ ${cache.maxBytes}`);
  assert.equal(cache.size, 3, 'three conversations with KV caches fit, not ten');
  assert.equal(cache.get('c0'), undefined, 'the least recently used went first');
  assert.ok(cache.get('c9')?.kv);
  assert.equal(states.slice(0, 7).filter((s) => s.kv).length, 0, 'evicted states lost their KV caches');
  cache.clear();
  // Only the probe's cache (still held by `measure`) is alive.
  assert.equal(caches.filter((c) => !c.disposed).length, 0);
  assert.equal(probe.kv!.cache.disposed, false);
  const tensorsPerCache = probe.kv!.cache.kind === 'tfjs' ? 2 * model.gpt.config.nLayer : 0;
  assert.equal(tf.memory().numTensors - tensors, tensorsPerCache);
});

test('many conversations without KV caches fit where a few with caches did', () => {
  const cache = new SessionCache(64 * 1024);
  for (let i = 0; i < 50; i++) cache.put({ id: `t${i}`, userId: 'u', path: [{ id: 'm', role: 'user', content: 'short' }] });
  assert.equal(cache.size, 50);
});

test('taking a KV cache moves its ownership out: eviction no longer frees it', () => {
  const cache = new SessionCache(1e9);
  const s = withKv('own', 8);
  cache.put(s);
  const before = cache.bytes;
  const kv = cache.takeKv(s)!;
  assert.ok(cache.bytes < before, 're-measured without the cache');
  cache.clear();
  assert.equal(kv.cache.disposed, false);
  cache.giveKv(s, kv);
  assert.ok(cache.bytes >= before);
  cache.clear();
  assert.equal(kv.cache.disposed, true, 'given back, it is freed with the conversation');
});
