/**
 * Where a training step's time goes: one step run under `tf.profile`, every kernel's time
 * (measured synchronously around the kernel on the wasm backend) put in a class, the
 * optimizer timed on its own, and the rest of the step's wall time called framework overhead.
 *
 * Classes:
 * - `matmul`: matrix products of rank 2 (the linear layers and the LM head, forward and backward,
 *   `NkLinear` included, and `NkLinearGrad`, a linear layer's three gradients in one kernel, its
 *   bias's column sum with them);
 * - `attention`: every kernel on the per-head tensors (rank 4, or a batched product of rank 3):
 *   QKᵀ, scale, mask, softmax, ·V, the head transposes and their gradients, and any kernel
 *   whose name says attention (a fused one);
 * - `elementwise`: every other kernel (layer norm, GELU, bias and residual adds, the loss,
 *   reductions, gathers, layout copies);
 * - `optimizer`: the wall time of `AdamW.apply` (whatever it runs, kernels or not);
 * - custom-gradient ops (tf.logSoftmax, the embedding) are not counted as a whole: their kernels are;
 * - `overhead`: the step's unprofiled wall time minus all of the above: tfjs's tape and
 *   dispatch, tensor creation and disposal, and JS work between kernels (such as the
 *   embedding's scatter-add gradient). Native work done outside a registered kernel lands here too.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { AdamW } from '../model/adamw.ts';

export type StepClass = 'matmul' | 'attention' | 'elementwise' | 'optimizer' | 'overhead';

export interface StepProfile {
  /** Share of the step's time per class (sums to 1). */
  share: Record<StepClass, number>;
  /** Milliseconds per class, from the profiled step (overhead from `stepMs`). */
  ms: Record<StepClass, number>;
  /** The five kernels that took longest in total, with their milliseconds. */
  top: Record<string, number>;
  kernels: number;
}

interface KernelRecord {
  name: string;
  inputShapes: (number[] | null)[];
  outputShapes: number[][];
  kernelTimeMs: number | { error: string };
}

function classOf(k: KernelRecord): Exclude<StepClass, 'optimizer' | 'overhead'> {
  if (/attention/i.test(k.name)) return 'attention';
  const shapes = [...k.inputShapes, ...k.outputShapes].filter((s): s is number[] => Array.isArray(s));
  if (shapes.some((s) => s.length >= 4)) return 'attention';
  if (/MatMul|NkLinear/i.test(k.name)) {
    const batched = shapes.some((s) => s.length === 3 && s[0]! > 1);
    return batched ? 'attention' : 'matmul';
  }
  return 'elementwise';
}

/** One profiled call of `step`: its real kernels outside `opt.apply` in order, and the optimizer's wall time. */
async function profileOnce(step: () => void, opt: AdamW): Promise<{ kernels: { name: string; cls: ReturnType<typeof classOf>; ms: number }[]; optimizerMs: number }> {
  const engine = tf.engine() as unknown as { state: { activeProfile: { kernels: unknown[] } } };
  const apply = opt.apply;
  let optimizerMs = 0;
  let window: [number, number] | undefined;
  opt.apply = function (this: AdamW, ...args: Parameters<AdamW['apply']>) {
    const first = engine.state.activeProfile.kernels.length;
    const t0 = performance.now();
    try {
      return apply.apply(this, args);
    } finally {
      optimizerMs += performance.now() - t0;
      window = [first, engine.state.activeProfile.kernels.length];
    }
  };
  let info: Awaited<ReturnType<typeof tf.profile>>;
  try {
    info = await tf.profile(() => {
      step();
      return [];
    });
  } finally {
    opt.apply = apply;
  }
  if (!window) throw new Error('profileStep: the step never called AdamW.apply');
  const backend = tf.getBackend();
  const kernels = (info.kernels as unknown as KernelRecord[])
    // A custom-gradient op (tf.logSoftmax, the embedding) is recorded as a whole after the
    // kernels it ran, which are recorded too: count only real kernels.
    .filter((k, i) => (i < window![0] || i >= window![1]) && tf.getKernel(k.name, backend))
    .map((k) => ({ name: k.name, cls: classOf(k), ms: typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0 }));
  return { kernels, optimizerMs };
}

/**
 * Profiles `repeats` calls of `step` (a training step that calls `opt.apply` once) and keeps,
 * for each kernel of the step (the same sequence every call) and for the optimizer, the least
 * time any call took: a kernel preempted by another process on a shared machine does not count
 * the wait. `stepMs` is the step's unprofiled wall time (the least of several), measured by the
 * caller, against which the overhead and the shares are taken.
 */
export async function profileStep(step: () => void, opt: AdamW, stepMs: number, repeats = 3): Promise<StepProfile> {
  const runs = [];
  for (let r = 0; r < repeats; r++) runs.push(await profileOnce(step, opt));
  const first = runs[0]!;
  const same = runs.filter((r) => r.kernels.length === first.kernels.length && r.kernels.every((k, i) => k.name === first.kernels[i]!.name));
  const ms: Record<StepClass, number> = { matmul: 0, attention: 0, elementwise: 0, optimizer: Math.min(...runs.map((r) => r.optimizerMs)), overhead: 0 };
  const byName = new Map<string, number>();
  first.kernels.forEach((k, i) => {
    const t = Math.min(...same.map((r) => r.kernels[i]!.ms));
    ms[k.cls] += t;
    byName.set(k.name, (byName.get(k.name) ?? 0) + t);
  });
  const accounted = ms.matmul + ms.attention + ms.elementwise + ms.optimizer;
  ms.overhead = Math.max(0, stepMs - accounted);
  const total = accounted + ms.overhead;
  const round = (x: number, d: number) => +x.toFixed(d);
  const share = Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, round(v / total, 3)])) as Record<StepClass, number>;
  const top = Object.fromEntries([...byName].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, v]) => [k, round(v, 1)]));
  return { share, ms: Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, round(v, 1)])) as Record<StepClass, number>, top, kernels: first.kernels.length };
}
