/**
 * Native replacements for the wasm backend's `BatchMatMul` and `_FusedMatMul` kernels.
 *
 * Same contract as the originals: C = op(A)·op(B) over the broadcast batch dims, for float32.
 * Deviations: general batch broadcasting (e.g. [2,1,m,k] x [1,3,k,n]) is supported, where the
 * original wasm kernel only handles equal batches or a batch of 1; anything else (other dtypes,
 * prelu, a bias that is not one value per output column) goes to the original kernel.
 */
import { broadcast_util, util } from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import type { NativeAddon } from './native-addon.ts';
import { heapOf, offsetOf, type WasmHeapBackend } from './wasm-heap.ts';

/** Must match `nk::Activation` in native/src/gemm.h. */
const ACTIVATIONS: Readonly<Record<string, number>> = {
  linear: 0,
  relu: 1,
  relu6: 2,
  leakyrelu: 4,
  sigmoid: 5,
  elu: 6,
};

interface Epilogue {
  bias?: TensorInfo;
  activation: number;
  alpha: number;
}

/** C = op(A)·op(B) (+ bias, activation) on the addon, into a new output of the backend (`params`: 14 slots of scratch). */
export function matMul(
  addon: NativeAddon,
  params: Float64Array,
  backend: WasmHeapBackend,
  a: TensorInfo,
  b: TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
  epilogue: Epilogue,
): TensorInfo {
  const aRank = a.shape.length;
  const bRank = b.shape.length;
  const k = transposeA ? a.shape[aRank - 2]! : a.shape[aRank - 1]!;
  const kB = transposeB ? b.shape[bRank - 1]! : b.shape[bRank - 2]!;
  const m = transposeA ? a.shape[aRank - 1]! : a.shape[aRank - 2]!;
  const n = transposeB ? b.shape[bRank - 2]! : b.shape[bRank - 1]!;
  util.assert(
    k === kB,
    () =>
      `Error in matMul: inner shapes (${k}) and (${kB}) of Tensors with shapes ${a.shape} and ` +
      `${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
  );
  const outerA = a.shape.slice(0, -2);
  const outerB = b.shape.slice(0, -2);
  const outer = broadcast_util.assertAndGetBroadcastShape(outerA, outerB);
  const batch = util.sizeFromShape(outer);
  const batchA = util.sizeFromShape(outerA);
  const batchB = util.sizeFromShape(outerB);
  const out = backend.makeOutput([...outer, m, n], 'float32');
  params[0] = offsetOf(backend, a);
  params[1] = offsetOf(backend, b);
  params[2] = offsetOf(backend, out);
  params[4] = m;
  params[5] = n;
  params[6] = k;
  params[7] = transposeA ? 1 : 0;
  params[8] = transposeB ? 1 : 0;
  params[11] = epilogue.bias ? offsetOf(backend, epilogue.bias) : -1;
  params[12] = epilogue.activation;
  params[13] = epilogue.alpha;
  const heap = heapOf(backend);
  if ((batchA === batch || batchA === 1) && (batchB === batch || batchB === 1)) {
    params[3] = batch;
    params[9] = batchA === 1 ? 0 : m * k;
    params[10] = batchB === 1 ? 0 : k * n;
    addon.gemm(heap, params);
    return out;
  }
  // General broadcasting: one call per output matrix.
  const aIndex = broadcastIndex(outer, outerA);
  const bIndex = broadcastIndex(outer, outerB);
  const [aBase, bBase, cBase] = [params[0]!, params[1]!, params[2]!];
  params[3] = 1;
  params[9] = 0;
  params[10] = 0;
  for (let i = 0; i < batch; i++) {
    params[0] = aBase + aIndex[i]! * m * k * 4;
    params[1] = bBase + bIndex[i]! * k * n * 4;
    params[2] = cBase + i * m * n * 4;
    addon.gemm(heap, params);
  }
  return out;
}

/** For each flat index of `outShape`, the flat index of the operand of shape `shape` it reads. */
function broadcastIndex(outShape: number[], shape: number[]): Int32Array {
  const size = util.sizeFromShape(outShape);
  const rank = outShape.length;
  const padded = [...new Array<number>(rank - shape.length).fill(1), ...shape];
  const strides = new Array<number>(rank);
  for (let d = rank - 1, s = 1; d >= 0; d--) {
    strides[d] = padded[d] === 1 ? 0 : s;
    s *= padded[d]!;
  }
  const index = new Int32Array(size);
  for (let i = 0; i < size; i++) {
    let rest = i;
    let at = 0;
    for (let d = rank - 1; d >= 0; d--) {
      at += (rest % outShape[d]!) * strides[d]!;
      rest = Math.floor(rest / outShape[d]!);
    }
    index[i] = at;
  }
  return index;
}

/** A `BatchMatMul` kernel for the wasm backend that runs on the addon. */
export function nativeBatchMatMul(addon: NativeAddon, original: KernelConfig): KernelConfig {
  const params = new Float64Array(14);
  const kernelFunc: KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    const attrs = args.attrs as NamedAttrMap & { transposeA: boolean; transposeB: boolean };
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return original.kernelFunc(args);
    const backend = args.backend as WasmHeapBackend;
    const epilogue = { activation: 0, alpha: 0 };
    return matMul(addon, params, backend, a, b, !!attrs.transposeA, !!attrs.transposeB, epilogue);
  };
  return { ...original, kernelFunc };
}

/** A `_FusedMatMul` kernel (bias + activation in the same pass) that runs on the addon. */
export function nativeFusedMatMul(addon: NativeAddon, original: KernelConfig): KernelConfig {
  const params = new Float64Array(14);
  const kernelFunc: KernelFunc = (args) => {
    const { a, b, bias, preluActivationWeights } = args.inputs as {
      a: TensorInfo;
      b: TensorInfo;
      bias?: TensorInfo;
      preluActivationWeights?: TensorInfo;
    };
    const attrs = args.attrs as NamedAttrMap & {
      transposeA: boolean;
      transposeB: boolean;
      activation?: string;
      leakyreluAlpha?: number;
    };
    const activation = ACTIVATIONS[attrs.activation ?? 'linear'];
    const n = attrs.transposeB ? b.shape[b.shape.length - 2]! : b.shape[b.shape.length - 1]!;
    const supported =
      a.dtype === 'float32' &&
      b.dtype === 'float32' &&
      activation !== undefined &&
      preluActivationWeights == null &&
      (bias == null || (bias.dtype === 'float32' && util.sizeFromShape(bias.shape) === n));
    if (!supported) return original.kernelFunc(args);
    const backend = args.backend as WasmHeapBackend;
    const epilogue = { bias: bias ?? undefined, activation, alpha: attrs.leakyreluAlpha ?? 0 };
    return matMul(addon, params, backend, a, b, !!attrs.transposeA, !!attrs.transposeB, epilogue);
  };
  return { ...original, kernelFunc };
}
