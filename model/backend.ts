/**
 * Tensor backend selection. The best backend that loads wins, in this order:
 * `tensorflow` (from @tensorflow/tfjs-node-gpu, then @tensorflow/tfjs-node; both optional
 * dependencies that may be absent), then `wasm`, then `cpu`. `TF_BACKEND` forces one.
 *
 * On `wasm`, native kernels (model/kernels) are registered when their addon was built; they
 * replace the slow paths of the wasm backend without changing any model code, and the fused
 * training ops (model/kernels/training-ops.ts) become available to the model and optimizer.
 */
import * as tf from '@tensorflow/tfjs-core';
import { registerAllGradients } from './tfjs-gradients.ts';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';

export interface BackendInfo {
  /** The backend tfjs now runs on. */
  readonly name: BackendName;
  /** Native kernels that replace the backend's own (empty when none were loaded). */
  readonly nativeKernels: readonly string[];
  /** Fused native training ops now in use (empty when none: the model runs plain tfjs ops). */
  readonly trainingOps: readonly string[];
  /** Backends that were tried and failed, with the reason. */
  readonly skipped: readonly { name: BackendName; reason: string }[];
}

let current: Promise<BackendInfo> | undefined;

const ORDER: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];

async function tryTensorflow(): Promise<void> {
  // Optional dependencies: imported by name at run time so a missing package is just a skip.
  const names = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'];
  let lastError: unknown;
  for (const pkg of names) {
    try {
      await import(pkg);
      return;
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

async function load(name: BackendName): Promise<void> {
  if (name === 'tensorflow') await tryTensorflow();
  else if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  else await import('@tensorflow/tfjs-backend-cpu');
  if (!(await tf.setBackend(name))) throw new Error(`tf.setBackend('${name}') returned false`);
  await tf.ready();
}

function parseForced(value: string | undefined): BackendName | undefined {
  if (value === undefined || value === '' || value === 'auto') return undefined;
  if (!(ORDER as readonly string[]).includes(value)) {
    throw new Error(`TF_BACKEND=${value} is not one of ${ORDER.join(', ')}, auto`);
  }
  return value as BackendName;
}

async function select(forcedName: string | undefined, log: (line: string) => void): Promise<BackendInfo> {
  registerAllGradients();
  const forced = parseForced(forcedName);
  const skipped: { name: BackendName; reason: string }[] = [];
  for (const name of forced ? [forced] : ORDER) {
    try {
      await load(name);
    } catch (err) {
      const reason = err instanceof Error ? err.message.split('\n')[0]! : String(err);
      skipped.push({ name, reason });
      continue;
    }
    let nativeKernels: string[] = [];
    let trainingOps: string[] = [];
    if (name === 'wasm' && process.env.TF_NATIVE_KERNELS !== '0') {
      const { registerNativeKernels } = await import('./kernels/native-kernels.ts');
      const { registerTrainingOps } = await import('./kernels/training-ops.ts');
      nativeKernels = registerNativeKernels();
      trainingOps = registerTrainingOps();
    }
    const info: BackendInfo = Object.freeze({ name, nativeKernels, trainingOps, skipped });
    const fused = trainingOps.length ? `; fused training ops: ${trainingOps.join(', ')}` : '';
    const native = nativeKernels.length ? ` with native kernels: ${nativeKernels.join(', ')}${fused}` : '';
    const why = skipped.length ? ` (skipped ${skipped.map((s) => s.name).join(', ')})` : '';
    log(`tensor backend: ${name}${native}${why}`);
    return info;
  }
  throw new Error(
    `no tensor backend could be loaded: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`,
  );
}

/**
 * Selects the tensor backend once per process and returns what was chosen.
 *
 * @example
 *   const info = await initBackend();   // logs "tensor backend: wasm ..."
 */
export function initBackend(
  opts: { backend?: string; log?: (line: string) => void } = {},
): Promise<BackendInfo> {
  current ??= select(opts.backend ?? process.env.TF_BACKEND, opts.log ?? ((l) => console.error(l)));
  return current;
}
