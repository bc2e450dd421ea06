/**
 * Native replacements for the wasm backend's `Exp`, `Sum` and `Add` kernels (float32).
 *
 * `Add` handles two float32 tensors of one shape (the residual stream's sums and the gradients
 * the tape adds up, on both cores when large); broadcasting and other dtypes go to the
 * original kernel. Its results are the same as the original's: one float32 addition each.
 *
 * `Sum` handles every reduction that, after dropping size-1 axes and merging neighbours, reads
 * as x[outer, reduce, inner] -> out[outer, inner]: the last axes (row sums), the leading axes
 * (bias gradients, which the original kernel does by transposing first) or one middle block.
 * Other axis patterns and other dtypes go to the original kernels. Deviation: sums accumulate
 * in several float32 lanes, so the rounding differs slightly from a sequential sum; `Exp`
 * flushes results below FLT_MIN (x < -87.34) to 0 where expf would return subnormals.
 */
import { util } from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import type { NativeAddon } from './native-addon.ts';
import { heapOf, offsetOf, type WasmHeapBackend } from './wasm-heap.ts';

export function nativeExp(addon: NativeAddon, original: KernelConfig): KernelConfig {
  const params = new Float64Array(3);
  const kernelFunc: KernelFunc = (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    if (x.dtype !== 'float32') return original.kernelFunc(args);
    const backend = args.backend as WasmHeapBackend;
    const out = backend.makeOutput([...x.shape], 'float32');
    params[0] = offsetOf(backend, x);
    params[1] = offsetOf(backend, out);
    params[2] = util.sizeFromShape(x.shape);
    addon.exp(heapOf(backend), params);
    return out;
  };
  return { ...original, kernelFunc };
}

/** [outer, reduce, inner] for a reduction of `shape` over `axes`, or undefined if not of that form. */
export function reductionBlocks(shape: number[], axes: number[]): [number, number, number] | undefined {
  const groups: { reduced: boolean; size: number }[] = [];
  shape.forEach((size, i) => {
    if (size === 1) return;
    const reduced = axes.includes(i);
    const last = groups[groups.length - 1];
    if (last && last.reduced === reduced) last.size *= size;
    else groups.push({ reduced, size });
  });
  const pattern = groups.map((g) => (g.reduced ? 'R' : 'K')).join('');
  const sizes = groups.map((g) => g.size);
  switch (pattern) {
    case '':
      return [1, 1, 1];
    case 'R':
      return [1, sizes[0]!, 1];
    case 'K':
      return [1, 1, sizes[0]!];
    case 'KR':
      return [sizes[0]!, sizes[1]!, 1];
    case 'RK':
      return [1, sizes[0]!, sizes[1]!];
    case 'KRK':
      return [sizes[0]!, sizes[1]!, sizes[2]!];
    default:
      return undefined;
  }
}

export function nativeSum(addon: NativeAddon, original: KernelConfig): KernelConfig {
  const params = new Float64Array(5);
  const kernelFunc: KernelFunc = (args) => {
    const { x } = args.inputs as { x: TensorInfo };
    const { axis, keepDims } = args.attrs as NamedAttrMap & { axis: number | number[]; keepDims: boolean };
    if (x.dtype !== 'float32') return original.kernelFunc(args);
    const axes = util.parseAxisParam(axis, x.shape);
    const blocks = reductionBlocks(x.shape, axes);
    if (!blocks) return original.kernelFunc(args);
    const outShape = keepDims
      ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
      : x.shape.filter((_, i) => !axes.includes(i));
    const backend = args.backend as WasmHeapBackend;
    const out = backend.makeOutput(outShape, 'float32');
    params[0] = offsetOf(backend, x);
    params[1] = offsetOf(backend, out);
    [params[2], params[3], params[4]] = blocks;
    addon.sum(heapOf(backend), params);
    return out;
  };
  return { ...original, kernelFunc };
}

export function nativeAdd(addon: NativeAddon, original: KernelConfig): KernelConfig {
  const add = addon.add;
  if (!add) return original;
  const params = new Float64Array(4);
  const kernelFunc: KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    if (a.dtype !== 'float32' || b.dtype !== 'float32' || !util.arraysEqual(a.shape, b.shape)) return original.kernelFunc(args);
    const backend = args.backend as WasmHeapBackend;
    const out = backend.makeOutput([...a.shape], 'float32');
    params[0] = offsetOf(backend, a);
    params[1] = offsetOf(backend, b);
    params[2] = offsetOf(backend, out);
    params[3] = util.sizeFromShape(a.shape);
    add.call(addon, heapOf(backend), params);
    return out;
  };
  return { ...original, kernelFunc };
}
