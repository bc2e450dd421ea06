/**
 * Native replacement for the wasm backend's `Transpose` kernel: any permutation of rank <= 8
 * for 4-byte dtypes (float32, int32). Identity permutations and other dtypes go to the original
 * kernel (which clones or handles them).
 */
import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import type { NativeAddon } from './native-addon.ts';
import { heapOf, offsetOf, type WasmHeapBackend } from './wasm-heap.ts';

export function nativeTranspose(addon: NativeAddon, original: KernelConfig): KernelConfig {
  const params = new Float64Array(3 + 16);
  const kernelFunc: KernelFunc = (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { perm } = args.attrs as NamedAttrMap & { perm: number[] };
    const rank = x.shape.length;
    const identity = perm.every((p, i) => p === i);
    if ((x.dtype !== 'float32' && x.dtype !== 'int32') || rank > 8 || identity) {
      return original.kernelFunc(args);
    }
    const backend = args.backend as WasmHeapBackend;
    const out = backend.makeOutput(
      perm.map((p) => x.shape[p]!),
      x.dtype,
    );
    params[0] = offsetOf(backend, x);
    params[1] = offsetOf(backend, out);
    params[2] = rank;
    for (let i = 0; i < rank; i++) {
      params[3 + i] = x.shape[i]!;
      params[3 + rank + i] = perm[i]!;
    }
    addon.transpose(heapOf(backend), params);
    return out;
  };
  return { ...original, kernelFunc };
}
