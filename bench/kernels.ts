/**
 * Kernel micro-benchmark: GFLOP/s of `tf.matMul` (2-D with every transpose, batched attention
 * shapes, a decoding-size matmul) and GB/s of `tf.transpose`, on the wasm backend with the
 * native kernels and with the backend's own kernels, one line per (shape, backend).
 *
 * Runnable alone: `node --import tsx bench/kernels.ts`. Each figure is the best of several
 * timed calls (the machines are shared and noisy); the wasm baseline of shapes whose slow path
 * would take seconds is skipped.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import {
  nativeKernelsRegistered,
  nativeKernelsStatus,
  registerNativeKernels,
  unregisterNativeKernels,
} from '../model/kernels/native-kernels.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';

type Line = Record<string, unknown>;

interface GemmCase {
  a: number[];
  b: number[];
  transA: boolean;
  transB: boolean;
  /** Skip the plain wasm run (its slow path would take too long). */
  nativeOnly?: boolean;
}

const GEMMS: GemmCase[] = [
  { a: [1024, 1024], b: [1024, 1024], transA: false, transB: false },
  { a: [1024, 1024], b: [1024, 1024], transA: false, transB: true, nativeOnly: true },
  { a: [1024, 128], b: [128, 384], transA: false, transB: false }, // qkv projection
  { a: [1024, 128], b: [384, 128], transA: false, transB: true }, // its input gradient
  { a: [1024, 128], b: [1024, 384], transA: true, transB: false }, // its weight gradient
  { a: [128, 1024], b: [384, 128], transA: true, transB: true },
  { a: [1024, 128], b: [2048, 128], transA: false, transB: true }, // tied lm head
  { a: [16, 128], b: [128, 384], transA: false, transB: false }, // decoding, batch 16
  { a: [1, 128], b: [128, 384], transA: false, transB: false }, // decoding, batch 1
  { a: [8, 4, 128, 32], b: [8, 4, 128, 32], transA: false, transB: true }, // attention scores
  { a: [8, 4, 128, 128], b: [8, 4, 128, 32], transA: false, transB: false }, // attention · V
  { a: [8, 4, 128, 128], b: [8, 4, 128, 32], transA: true, transB: false }, // dV
];

const TRANSPOSES: { shape: number[]; perm: number[] }[] = [
  { shape: [8, 128, 4, 32], perm: [0, 2, 1, 3] },
  { shape: [8, 256, 8, 32], perm: [0, 2, 1, 3] },
  { shape: [1024, 384], perm: [1, 0] },
];

/** Best seconds per call of fn, over at least `minCalls` calls and ~`budgetMs` of work. */
function bestSeconds(fn: () => void, budgetMs = 150, minCalls = 3): number {
  fn();
  let best = Infinity;
  const start = performance.now();
  for (let i = 0; i < minCalls || performance.now() - start < budgetMs; i++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, performance.now() - t0);
    if (i > 1000) break;
  }
  return best / 1000;
}

function dims(c: GemmCase): { m: number; n: number; k: number; batch: number } {
  const [ra, rb] = [c.a.length, c.b.length];
  const m = c.transA ? c.a[ra - 1]! : c.a[ra - 2]!;
  const k = c.transA ? c.a[ra - 2]! : c.a[ra - 1]!;
  const n = c.transB ? c.b[rb - 2]! : c.b[rb - 1]!;
  const batch = c.a.slice(0, -2).reduce((x, y) => x * y, 1);
  return { m, n, k, batch };
}

function runAll(backend: string, native: boolean, budgetMs: number): Line[] {
  const out: Line[] = [];
  for (const c of GEMMS) {
    if (!native && c.nativeOnly) continue;
    const { m, n, k, batch } = dims(c);
    const a = tf.randomNormal(c.a);
    const b = tf.randomNormal(c.b);
    const s = bestSeconds(() => tf.matMul(a, b, c.transA, c.transB).dispose(), budgetMs);
    tf.dispose([a, b]);
    const gflops = +((2 * batch * m * n * k) / s / 1e9).toFixed(2);
    out.push({ bench: 'gemm', batch, m, n, k, transA: c.transA, transB: c.transB, gflops, us: +(s * 1e6).toFixed(1), backend });
  }
  for (const t of TRANSPOSES) {
    const x = tf.randomNormal(t.shape);
    const s = bestSeconds(() => tf.transpose(x, t.perm).dispose(), budgetMs);
    const gbps = +((2 * 4 * x.size) / s / 1e9).toFixed(2);
    x.dispose();
    out.push({ bench: 'transpose', shape: t.shape, perm: t.perm, gbps, us: +(s * 1e6).toFixed(1), backend });
  }
  return out;
}

/**
 * The project's GEMM roof: the best GFLOP/s of a 1024³ float32 `tf.matMul` over the four
 * transpose cases, with the native kernels when they load (else the wasm backend's own), on the
 * backend in use. Training MFU is model FLOP/s over this figure, measured in the same run.
 */
export function gemmRoof(budgetMs = 150): { gflops: number; backend: string } {
  const native = nativeKernelsRegistered().length > 0;
  const a = tf.randomNormal([1024, 1024]);
  const b = tf.randomNormal([1024, 1024]);
  let best = 0;
  for (const [ta, tb] of [[false, false], [false, true], [true, false], [true, true]] as const) {
    const s = bestSeconds(() => tf.matMul(a, b, ta, tb).dispose(), budgetMs);
    best = Math.max(best, (2 * 1024 ** 3) / s / 1e9);
    if (!native) break; // the plain wasm slow path (transposed) takes seconds and is never the best
  }
  tf.dispose([a, b]);
  return { gflops: +best.toFixed(1), backend: tf.getBackend() + (native ? '+native' : '') };
}

/**
 * Lines for wasm with native kernels (when the addon loads) and for plain wasm (unless
 * `baseline` is false, or the addon does not load); `budgetMs` of timed calls per case.
 */
export async function benchKernels(opts: { budgetMs?: number; baseline?: boolean } = {}): Promise<Line[]> {
  const budgetMs = opts.budgetMs ?? 150;
  const previous = tf.getBackend();
  if (previous !== 'wasm') {
    if (!(await tf.setBackend('wasm'))) throw new Error('the wasm backend does not load');
    await tf.ready();
  }
  const hadNative = nativeKernelsRegistered().length > 0;
  const lines: Line[] = [];
  try {
    if (registerNativeKernels().length > 0) lines.push(...runAll('wasm+native', true, budgetMs));
    else console.error(`bench kernels: native kernels ${nativeKernelsStatus()}`);
    unregisterNativeKernels();
    if (opts.baseline !== false || !lines.length) lines.push(...runAll('wasm', false, budgetMs));
  } finally {
    if (hadNative) registerNativeKernels();
    else unregisterNativeKernels();
    if (previous && previous !== 'wasm') await tf.setBackend(previous);
  }
  return lines;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx bench/kernels.ts [--json]', schema: z.object(jsonOption), envPrefix: 'BENCH' }, async ({ json }) => {
    console.error(`native kernels: ${nativeKernelsStatus()}`);
    printFigures(await benchKernels(), json);
  });
}
