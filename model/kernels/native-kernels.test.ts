import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { loadNativeAddon } from './native-addon.ts';
import { wasmWithNativeAddon } from './test-support.ts';
import { registerNativeKernels, unregisterNativeKernels } from './native-kernels.ts';
import { reductionBlocks } from './reduce-exp.ts';

const ALL = ['BatchMatMul', '_FusedMatMul', 'Transpose', 'Exp', 'Sum', 'Add'];

before(async () => {
  await wasmWithNativeAddon();
});

after(() => unregisterNativeKernels());

/** Runs fn with the wasm backend's own kernels, then puts the native ones back. */
function withOriginals<T>(fn: () => T): T {
  unregisterNativeKernels();
  try {
    return fn();
  } finally {
    assert.deepEqual(registerNativeKernels(), ALL);
  }
}

function assertClose(got: tf.Tensor, want: tf.Tensor | Float32Array, label: string, tol = 1e-4): void {
  const g = got.dataSync();
  const w = want instanceof Float32Array ? want : want.dataSync();
  assert.equal(g.length, w.length, `${label}: size`);
  let scale = 1;
  for (const v of w) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < w.length; i++) {
    if (!(Math.abs(g[i]! - w[i]!) <= tol * scale)) {
      assert.fail(`${label}: element ${i} is ${g[i]}, expected ${w[i]} (scale ${scale})`);
    }
  }
}

/** Plain JS batched matmul with full broadcasting of the batch dims. */
function referenceMatMul(a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean): Float32Array {
  const [ad, bd] = [a.dataSync(), b.dataSync()];
  const [ar, br] = [a.shape.length, b.shape.length];
  const m = ta ? a.shape[ar - 1]! : a.shape[ar - 2]!;
  const k = ta ? a.shape[ar - 2]! : a.shape[ar - 1]!;
  const n = tb ? b.shape[br - 2]! : b.shape[br - 1]!;
  const outer = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const batchIndex = (shape: number[], flat: number): number => {
    const padded = [...new Array<number>(outer.length - shape.length).fill(1), ...shape];
    let index = 0;
    let rest = flat;
    let stride = 1;
    for (let d = outer.length - 1; d >= 0; d--) {
      const coord = rest % outer[d]!;
      rest = Math.floor(rest / outer[d]!);
      if (padded[d] !== 1) index += coord * stride;
      stride *= padded[d]!;
    }
    return index;
  };
  const batch = outer.reduce((x, y) => x * y, 1);
  const out = new Float32Array(batch * m * n);
  for (let bi = 0; bi < batch; bi++) {
    const ao = batchIndex(a.shape.slice(0, -2), bi) * m * k;
    const bo = batchIndex(b.shape.slice(0, -2), bi) * k * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) {
          s += ad[ao + (ta ? p * m + i : i * k + p)]! * bd[bo + (tb ? j * k + p : p * n + j)]!;
        }
        out[(bi * m + i) * n + j] = s;
      }
    }
  }
  return out;
}

function operandShapes(m: number, n: number, k: number, ta: boolean, tb: boolean): [number[], number[]] {
  return [ta ? [k, m] : [m, k], tb ? [n, k] : [k, n]];
}

test('registers BatchMatMul, _FusedMatMul, Transpose, Exp, Sum and Add when the addon loads', () => {
  assert.deepEqual(registerNativeKernels(), ALL);
  assert.deepEqual(registerNativeKernels(), ALL, 'registering twice is harmless');
  assert.match(loadNativeAddon().addon!.info().kernel, /\d+x\d+/);
});

test('the thread pool runs every task of every job exactly once, also while other threads compete for the cores', async () => {
  const addon = loadNativeAddon().addon!;
  // Two busy threads make the pool's workers get descheduled mid-job, as on a loaded machine;
  // a job that starts while a worker is still leaving the previous one is where a race shows
  // (a pool that let such a worker claim a task ran it twice or with the old job's context).
  const busy = Array.from({ length: 2 }, () => new Worker('const end = Date.now() + 4000; while (Date.now() < end);', { eval: true }));
  try {
    const total = { jobs: 0, duplicates: 0, outOfRange: 0, missing: 0 };
    const t0 = Date.now();
    while (Date.now() - t0 < 3000) {
      const r = addon.poolCheck(100_000);
      for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
    }
    assert.ok(total.jobs >= 100_000);
    assert.deepEqual({ duplicates: total.duplicates, outOfRange: total.outOfRange, missing: total.missing }, { duplicates: 0, outOfRange: 0, missing: 0 }, `over ${total.jobs} jobs`);
  } finally {
    await Promise.all(busy.map((w) => w.terminate()));
  }
});

/** op(A)·op(B) of m x k by k x n random operands, in all four transpose cases, against the original wasm kernel. */
function matchesOriginal(m: number, n: number, k: number): void {
  for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    tf.tidy(() => {
      const [sa, sb] = operandShapes(m, n, k, ta, tb);
      const a = tf.randomNormal(sa);
      const b = tf.randomNormal(sb);
      const want = withOriginals(() => tf.matMul(a, b, ta, tb));
      const got = tf.matMul(a, b, ta, tb);
      assert.deepEqual(got.shape, [m, n]);
      assertClose(got, want, `m=${m} n=${n} k=${k} ta=${ta} tb=${tb}`);
    });
  }
}

test('2-D matMul matches the original wasm kernel for odd sizes and all transposes', () => {
  for (const m of [1, 3, 17, 130]) for (const n of [1, 17, 130, 33]) for (const k of [1, 3, 130, 300]) matchesOriginal(m, n, k);
});

test('large and multi-threaded matMuls match the original kernel', () => {
  for (const [m, n, k] of [[1024, 384, 128], [128, 384, 1024], [16, 384, 128], [257, 2050, 129]] as const) matchesOriginal(m, n, k);
});

// A matrix cut into row slices reads all of B, one cut into column slices all of A. These shapes
// put that operand over several column blocks (n > 2048), depth slabs (k > 256) and row blocks,
// with ragged edges, and shared by a batch (stride 0) or not.
test('matMuls split into row or column slices over several blocks match the original kernel', () => {
  const plain: [number, number, number][] = [
    [1030, 2100, 300], // row slices; B over 2 column blocks and 2 depth slabs
    [150, 1030, 520], // column slices; A over 2 row blocks and 3 depth slabs
    [520, 40, 1030], // row slices, few columns: the weight gradient's shape
  ];
  for (const [m, n, k] of plain) matchesOriginal(m, n, k);
  const batched: [number[], number[], boolean, boolean][] = [
    [[3, 600, 200], [200, 300], false, false], // row slices, one B for the batch
    [[2, 600, 200], [2, 300, 200], false, true], // row slices, a B per matrix
    [[200, 300], [3, 300, 1500], false, false], // column slices, one A for the batch
    [[2, 300, 200], [2, 300, 1500], true, false], // column slices, an A per matrix
  ];
  for (const [sa, sb, ta, tb] of batched) {
    tf.tidy(() => {
      const a = tf.randomNormal(sa);
      const b = tf.randomNormal(sb);
      assertClose(tf.matMul(a, b, ta, tb), referenceMatMul(a, b, ta, tb), `${sa} x ${sb} ta=${ta} tb=${tb}`);
    });
  }
});

test('batched rank-3 and rank-4 matMuls broadcast batch dims like tf does', () => {
  const cases: [number[], number[], boolean, boolean][] = [
    [[4, 17, 3], [4, 3, 130], false, false],
    [[4, 3, 17], [4, 130, 3], true, true],
    [[2, 4, 130, 17], [2, 4, 130, 17], false, true], // attention scores [B,H,T,hs]·[B,H,T,hs]^T
    [[2, 4, 130, 130], [2, 4, 130, 17], true, false],
    [[2, 4, 33, 17], [1, 1, 17, 5], false, false], // a batch of 1 broadcast against many
    [[1, 17, 33], [3, 17, 5], true, false],
    [[3, 33, 17], [17, 5], false, false], // rank 3 x rank 2
    [[2, 1, 3, 5], [1, 3, 5, 4], false, false], // general broadcast (the original cannot)
    [[2, 1, 5, 3], [1, 3, 4, 5], true, true],
  ];
  for (const [sa, sb, ta, tb] of cases) {
    tf.tidy(() => {
      const a = tf.randomNormal(sa);
      const b = tf.randomNormal(sb);
      const got = tf.matMul(a, b, ta, tb);
      assertClose(got, referenceMatMul(a, b, ta, tb), `${sa} x ${sb} ta=${ta} tb=${tb}`);
    });
  }
});

const ACTIVATIONS = ['linear', 'relu', 'relu6', 'elu', 'sigmoid', 'leakyrelu'] as const;

function activate(name: (typeof ACTIVATIONS)[number], x: tf.Tensor): tf.Tensor {
  if (name === 'relu') return tf.relu(x);
  if (name === 'relu6') return tf.relu6(x);
  if (name === 'elu') return tf.elu(x);
  if (name === 'sigmoid') return tf.sigmoid(x);
  if (name === 'leakyrelu') return tf.leakyRelu(x, 0.3);
  return x;
}

// Against unfused ops: the original wasm _FusedMatMul (4.22) is wrong when a transpose is set.
test('fused matMul with bias and activations matches matMul, add and the activation', () => {
  for (const activation of ACTIVATIONS) {
    for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]] as const) {
      tf.tidy(() => {
        // One thread; row slices; column slices; a few rows in column slices (B read in place).
        for (const [m, n, k] of [[37, 130, 19], [300, 260, 300], [20, 700, 300], [3, 2100, 600]] as const) {
          const [sa, sb] = operandShapes(m, n, k, ta, tb);
          const a = tf.mul(tf.randomNormal(sa), 2);
          const b = tf.randomNormal(sb);
          const bias = tf.randomNormal([n]);
          const args = { a, b, transposeA: ta, transposeB: tb, bias, activation, leakyreluAlpha: 0.3 };
          const want = withOriginals(() => activate(activation, tf.add(tf.matMul(a, b, ta, tb), bias)));
          assertClose(tf.fused.matMul(args as Parameters<typeof tf.fused.matMul>[0]), want, `${activation} ${m}x${n}x${k} ta=${ta} tb=${tb}`);
        }
      });
    }
  }
});

test('transpose matches the original kernel for GPT and general permutations', () => {
  const cases: [number[], number[], 'float32' | 'int32'][] = [
    [[8, 17, 4, 32], [0, 2, 1, 3], 'float32'], // [B,T,H,hs] -> [B,H,T,hs]
    [[8, 4, 17, 32], [0, 2, 1, 3], 'float32'],
    [[130, 33], [1, 0], 'float32'],
    [[1, 130, 1, 33], [3, 2, 1, 0], 'float32'],
    [[3, 5, 7, 11], [3, 1, 0, 2], 'float32'],
    [[3, 5, 7, 11], [2, 3, 0, 1], 'int32'],
    [[2, 3, 4, 5, 6], [4, 0, 3, 1, 2], 'float32'],
    [[64, 64, 65], [2, 0, 1], 'float32'], // large enough to use both threads
  ];
  for (const [shape, perm, dtype] of cases) {
    tf.tidy(() => {
      const x = dtype === 'int32' ? tf.randomUniform(shape, -100, 100, 'int32') : tf.randomNormal(shape);
      const want = withOriginals(() => tf.transpose(x, perm));
      const got = tf.transpose(x, perm);
      assert.deepEqual(got.shape, want.shape);
      assert.deepEqual(Array.from(got.dataSync()), Array.from(want.dataSync()), `${shape} perm ${perm}`);
    });
  }
});

test('exp matches Math.exp to float32 precision, including extremes, NaN and infinities', () => {
  const special = [0, -0, 1, -1, 1e-8, -87, -87.5, -100, 88, 88.7, 89, 1000, NaN, Infinity, -Infinity];
  const values = new Float32Array([...special, ...Array.from({ length: 1000 }, (_, i) => (i - 500) * 0.173)]);
  tf.tidy(() => {
    const got = tf.exp(tf.tensor1d(values)).dataSync();
    values.forEach((v, i) => {
      const want = Math.fround(Math.exp(v));
      if (Number.isNaN(want)) assert.ok(Number.isNaN(got[i]!), `exp(${v})`);
      else if (!Number.isFinite(want) || want === 0) assert.equal(got[i], want, `exp(${v})`);
      else if (want < 1.2e-38) assert.ok(Math.abs(got[i]! - want) <= 1.2e-38, `exp(${v}) is below FLT_MIN: flushed to 0`);
      else assert.ok(Math.abs(got[i]! - want) <= 2e-7 * want, `exp(${v}) = ${got[i]}, expected ${want}`);
    });
  });
});

test('sum reduces leading, trailing and middle axes like the original kernel', () => {
  const cases: [number[], number[] | number, boolean][] = [
    [[1024, 130], [0], false], // bias gradient
    [[8, 128, 130], [0, 1], true],
    [[33, 2050], [1], false], // row sums
    [[3, 1, 5, 7], [-1], true],
    [[3, 5, 7], [1], false], // middle block
    [[3, 5, 7], [0, 2], false], // not a single block: the original kernel
    [[17], [0], false],
    [[4, 5], [0, 1], false],
  ];
  for (const [shape, axis, keepDims] of cases) {
    tf.tidy(() => {
      const x = tf.randomNormal(shape);
      const want = withOriginals(() => tf.sum(x, axis, keepDims));
      const got = tf.sum(x, axis, keepDims);
      assert.deepEqual(got.shape, want.shape, `${shape} axis ${axis}`);
      assertClose(got, want, `sum ${shape} axis ${axis}`, 1e-5);
    });
  }
  assert.deepEqual(reductionBlocks([3, 5, 7], [1]), [3, 5, 7]);
  assert.deepEqual(reductionBlocks([3, 1, 5, 7], [0, 1]), [1, 3, 35]);
  assert.equal(reductionBlocks([3, 5, 7], [0, 2]), undefined);
});

test('add of two float32 tensors of one shape equals the original kernel bit for bit; broadcasting and int32 go to it', () => {
  // Sizes below and above the split over the pool, and ones that leave a partial vector.
  for (const shape of [[7], [1024, 128], [3, 33, 1031], [2049]]) {
    tf.tidy(() => {
      const [a, b] = [tf.randomNormal(shape), tf.randomNormal(shape)];
      const want = withOriginals(() => tf.add(a, b));
      assert.deepEqual(tf.add(a, b).dataSync(), want.dataSync(), `add ${shape}`);
    });
  }
  tf.tidy(() => {
    const [a, row] = [tf.randomNormal([5, 6]), tf.randomNormal([6])];
    assert.deepEqual(tf.add(a, row).dataSync(), withOriginals(() => tf.add(a, row)).dataSync(), 'broadcast');
    assert.deepEqual(tf.add(tf.tensor1d([1, 2], 'int32'), tf.tensor1d([3, 4], 'int32')).dataSync(), Int32Array.from([4, 6]), 'int32');
  });
  const { addon } = loadNativeAddon();
  assert.throws(() => addon!.add!(new ArrayBuffer(64), new Float64Array([0, 0, 32, 16])), RangeError);
});

test('gradients through matMul and transpose match the original kernels', () => {
  const cases: [number[], number[], boolean, boolean][] = [
    [[17, 33], [33, 5], false, false],
    [[33, 17], [5, 33], true, true],
    [[2, 3, 17, 8], [2, 3, 17, 8], false, true],
    [[3, 8, 17], [3, 8, 4], true, false],
  ]; // tf's matMul gradient does not reduce broadcast batch dims, so none are broadcast here
  for (const [sa, sb, ta, tb] of cases) {
    tf.tidy(() => {
      const a = tf.randomNormal(sa);
      const b = tf.randomNormal(sb);
      const f = (x: tf.Tensor, y: tf.Tensor) => {
        const c = tf.matMul(x, y, ta, tb);
        const perm = c.shape.map((_, i) => c.shape.length - 1 - i);
        return tf.sum(tf.mul(tf.transpose(c, perm), tf.transpose(c, perm)));
      };
      const got = tf.grads(f)([a, b]);
      const want = withOriginals(() => tf.grads(f)([a, b]));
      assertClose(got[0]!, want[0]!, `dA ${sa} x ${sb}`);
      assertClose(got[1]!, want[1]!, `dB ${sa} x ${sb}`);
    });
  }
});

test('kernels leave no tensors behind', () => {
  const before = tf.memory().numTensors;
  tf.tidy(() => {
    const a = tf.randomNormal([2, 1, 9, 5]);
    tf.matMul(a, tf.randomNormal([1, 3, 5, 4]));
    const b = tf.randomNormal([3, 4, 5]);
    tf.transpose(a, [3, 2, 1, 0]);
    tf.fused.matMul({ a: tf.randomNormal([9, 5]), b: tf.randomNormal([5, 4]), bias: tf.ones([4]) });
    tf.grads((x: tf.Tensor) => tf.sum(tf.matMul(x, b, false, true)))([tf.randomNormal([3, 9, 5])]);
  });
  const [x, y] = [tf.ones([3, 3]), tf.ones([3, 3])];
  const c = tf.matMul(x, y);
  tf.dispose([x, y, c]);
  assert.equal(tf.memory().numTensors, before);
});

test('the addon rejects operands outside the heap instead of touching them', () => {
  const { addon } = loadNativeAddon();
  const heap = new ArrayBuffer(64);
  const params = new Float64Array([0, 0, 0, 1, 4, 4, 4, 0, 0, 16, 16, -1, 0, 0]);
  addon!.gemm(heap, params); // 4x4 fits in 64 bytes
  params[2] = 16;
  assert.throws(() => addon!.gemm(heap, params), RangeError);
  assert.throws(() => addon!.transpose(heap, new Float64Array([0, 0, 2, 4, 5, 1, 0])), RangeError);
});

test('TF_NATIVE_KERNELS=0 or a missing addon registers nothing and plain wasm still works', () => {
  unregisterNativeKernels();
  const original = tf.getKernel('BatchMatMul', 'wasm');
  const saved = { kernels: process.env.TF_NATIVE_KERNELS, addon: process.env.TF_NATIVE_ADDON };
  try {
    process.env.TF_NATIVE_KERNELS = '0';
    assert.deepEqual(registerNativeKernels(), []);
    delete process.env.TF_NATIVE_KERNELS;
    process.env.TF_NATIVE_ADDON = '/nonexistent/native_kernels.node';
    assert.deepEqual(registerNativeKernels(), []);
    assert.equal(tf.getKernel('BatchMatMul', 'wasm'), original);
    const c = tf.matMul(tf.ones([2, 3]), tf.ones([2, 3]), false, true);
    assert.deepEqual(Array.from(c.dataSync()), [3, 3, 3, 3]);
    c.dispose();
    delete process.env.TF_NATIVE_ADDON;
    process.env.TF_NATIVE_KERNELS = 'Transpose';
    assert.deepEqual(registerNativeKernels(), ['Transpose']);
    assert.equal(tf.getKernel('BatchMatMul', 'wasm'), original);
  } finally {
    for (const [key, value] of [['TF_NATIVE_KERNELS', saved.kernels], ['TF_NATIVE_ADDON', saved.addon]] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    unregisterNativeKernels();
    registerNativeKernels();
  }
});
