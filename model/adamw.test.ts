import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { ADAMW_DEFAULTS, AdamW } from './adamw.ts';

const params = () => new Map<string, tf.Variable>([['w', tf.variable(tf.tensor2d([[1, -2], [3, 0.5]]))], ['b', tf.variable(tf.tensor1d([0.25]))]]);

test('AdamW takes a partial config and fills the rest with the defaults', () => {
  const ps = params();
  const opt = new AdamW(ps, { weightDecay: 0.01 });
  assert.deepEqual({ ...opt.config }, { ...ADAMW_DEFAULTS, weightDecay: 0.01 });
  assert.ok(Object.isFrozen(opt.config));
  assert.deepEqual({ ...new AdamW(ps).config }, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1 });
  ps.forEach((p) => p.dispose());
});

test('AdamW rejects unknown settings and out-of-range values', () => {
  const ps = params();
  assert.throws(() => new AdamW(ps, { lr: 1e-3 } as never), /unrecognized key/i);
  assert.throws(() => new AdamW(ps, { beta1: 1 }), /beta1/);
  assert.throws(() => new AdamW(ps, { eps: 0 }), /eps/);
  ps.forEach((p) => p.dispose());
});

test('one AdamW step equals the update written out by hand (clipping, decay of matrices only)', () => {
  assert.equal(tf.getBackend(), 'cpu', 'on cpu the tfjs arithmetic runs (the fused update has its own test)');
  const ps = params();
  const opt = new AdamW(ps, { gradClip: 1, weightDecay: 0.1 });
  const gw = [0.5, -1, 2, 0];
  const gb = [1];
  const norm = opt.apply({ w: tf.tensor2d(gw, [2, 2]), b: tf.tensor1d(gb) }, 0.01);
  const want = Math.sqrt([...gw, ...gb].reduce((s, g) => s + g * g, 0));
  assert.ok(Math.abs(norm - want) < 1e-5);
  const scale = 1 / (want + 1e-6);
  // Step 1: m = 0.1 g', v = 0.05 g'^2, bias-corrected m/(1-0.9) = g', v/(1-0.95) = g'^2.
  const step = (p: number, g: number, decay: boolean) => {
    const gs = g * scale;
    const update = (0.1 * gs) / 0.1 / (Math.sqrt((0.05 * gs * gs) / 0.05) + 1e-8);
    return p * (decay ? 1 - 0.01 * 0.1 : 1) - 0.01 * update;
  };
  const w = ps.get('w')!.dataSync();
  [1, -2, 3, 0.5].forEach((p, i) => assert.ok(Math.abs(w[i]! - step(p, gw[i]!, true)) < 1e-6, `w[${i}]`));
  assert.ok(Math.abs(ps.get('b')!.dataSync()[0]! - step(0.25, 1, false)) < 1e-6, 'b (a vector: no decay)');
  opt.dispose();
  ps.forEach((p) => p.dispose());
});
