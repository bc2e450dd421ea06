import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ModelCache } from './model-cache.ts';
import type { ServedModel } from './model-host.ts';

/** A stand-in model: only its version and parameter count matter to the cache. */
const fake = (version: string, numParams = 100): ServedModel => ({ version, gpt: { numParams } } as unknown as ServedModel);

function cache(budgetBytes: number) {
  const loads: string[] = [];
  const released: string[] = [];
  const c = new ModelCache({
    budgetBytes,
    load: async (id) => {
      loads.push(id);
      await new Promise((r) => setImmediate(r));
      if (id === 'huge') return fake(id, 10_000);
      return fake(id);
    },
    release: (m) => released.push(m.version),
  });
  return { c, loads, released };
}

test('the least recently used version is evicted and released when a new one would go over the budget', async () => {
  const { c, loads, released } = cache(2 * 400 + 10); // two models of 400 bytes
  await c.load('a');
  await c.load('b');
  c.get('a'); // a is now more recent than b
  await c.load('c');
  assert.deepEqual(released, ['b']);
  assert.deepEqual(c.models.map((m) => m.version), ['c', 'a']);
  assert.equal(c.bytes, 800);
  assert.equal(c.get('b'), undefined);
  await c.load('a');
  assert.deepEqual(loads, ['a', 'b', 'c'], 'a loaded version is not loaded again');
});

test('concurrent requests for one version share one load; a version over the budget is refused and released', async () => {
  const { c, loads, released } = cache(1000);
  const [x, y] = await Promise.all([c.load('a'), c.load('a')]);
  assert.equal(x, y);
  assert.deepEqual(loads, ['a']);
  await assert.rejects(c.load('huge'), (e: { code?: string; param?: string }) => e.code === 'model_too_large' && e.param === 'model');
  assert.deepEqual(released, ['huge']);
  assert.deepEqual(c.models.map((m) => m.version), ['a']);
});

test('take removes a version without releasing it (it is being promoted); clear releases the rest', async () => {
  const { c, released } = cache(1000);
  await c.load('a');
  await c.load('b');
  assert.equal(c.take('a')?.version, 'a');
  assert.equal(c.take('a'), undefined);
  assert.deepEqual(released, []);
  c.clear();
  assert.deepEqual(released, ['b']);
  assert.equal(c.bytes, 0);
});
