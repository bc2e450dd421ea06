/**
 * Native kernels for the wasm backend: replaces the slow paths of @tensorflow/tfjs-backend-wasm
 * (transposed and batched matmuls, transposes, exp, sums over leading axes, same-shape adds) with kernels from a C++ addon that work on the
 * wasm heap in place, so model code stays plain tfjs.
 *
 * `registerNativeKernels()` swaps the wasm kernels in the tfjs kernel registry and returns the
 * names it registered; it returns [] (and changes nothing) when TF_NATIVE_KERNELS=0 or the
 * addon is not built or fails to load. TF_NATIVE_KERNELS may also name a subset
 * (e.g. `BatchMatMul,Transpose`). The original kernels are kept: the replacements fall back to
 * them for cases they do not handle, and `unregisterNativeKernels()` puts them back.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig } from '@tensorflow/tfjs-core';
import { loadNativeAddon, type NativeAddon } from './native-addon.ts';
import { nativeBatchMatMul, nativeFusedMatMul } from './mat-mul.ts';
import { nativeTranspose } from './transpose.ts';
import { nativeAdd, nativeExp, nativeSum } from './reduce-exp.ts';

type Factory = (addon: NativeAddon, original: KernelConfig) => KernelConfig;

const FACTORIES: Readonly<Record<string, Factory>> = {
  BatchMatMul: nativeBatchMatMul,
  _FusedMatMul: nativeFusedMatMul,
  Transpose: nativeTranspose,
  Exp: nativeExp,
  Sum: nativeSum,
  Add: nativeAdd,
};

/** Originals of the kernels currently replaced, by name. */
const originals = new Map<string, KernelConfig>();

function wanted(setting: string | undefined): string[] {
  if (setting === '0') return [];
  if (setting === undefined || setting === '' || setting === '1') return Object.keys(FACTORIES);
  return setting
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s in FACTORIES);
}

/**
 * Registers the native kernels on the wasm backend and returns their names ([] when off).
 *
 * @example
 *   await tf.setBackend('wasm');
 *   registerNativeKernels(); // ['BatchMatMul', '_FusedMatMul', 'Transpose', 'Exp', 'Sum', 'Add']
 */
export function registerNativeKernels(): string[] {
  const names = wanted(process.env.TF_NATIVE_KERNELS);
  if (names.length === 0) return [];
  const { addon } = loadNativeAddon();
  if (!addon) return [];
  const registered: string[] = [];
  for (const name of names) {
    if (!originals.has(name)) {
      const original = tf.getKernel(name, 'wasm');
      if (!original) continue;
      const replacement = FACTORIES[name]!(addon, original);
      // A factory hands back the original when the addon lacks its function (an older build).
      if (replacement === original) continue;
      tf.unregisterKernel(name, 'wasm');
      tf.registerKernel(replacement);
      originals.set(name, original);
    }
    registered.push(name);
  }
  return registered;
}

/** Puts the wasm backend's own kernels back (for tests and benchmarks). */
export function unregisterNativeKernels(): void {
  for (const [name, original] of originals) {
    tf.unregisterKernel(name, 'wasm');
    tf.registerKernel(original);
  }
  originals.clear();
}

/** Names of the native kernels currently registered. */
export function nativeKernelsRegistered(): string[] {
  return [...originals.keys()];
}

/** Why native kernels are off, or the compiled micro-kernel and thread count when on. */
export function nativeKernelsStatus(): string {
  if (process.env.TF_NATIVE_KERNELS === '0') return 'off (TF_NATIVE_KERNELS=0)';
  const { addon, error } = loadNativeAddon();
  if (!addon) return `off (${error})`;
  const { kernel, threads } = addon.info();
  return `on (${kernel}, ${threads} threads)`;
}
