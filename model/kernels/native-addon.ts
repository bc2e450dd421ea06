/**
 * Loads the native kernels addon (`native/build/Release/native_kernels.node`, built at install
 * time by `native/build.mjs`). Returns `undefined` when it is not built or fails to load, so
 * callers fall back to the wasm backend's own kernels. `TF_NATIVE_ADDON` overrides the path.
 *
 * The addon works in place on the wasm heap; see `native/src/addon.cc` for the parameter
 * layouts of its functions.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  /** C = act(op(A)·op(B) + bias) on the heap; `params` as documented in addon.cc. */
  gemm(heap: ArrayBuffer, params: Float64Array): void;
  /** Axis permutation of 4-byte elements on the heap. */
  transpose(heap: ArrayBuffer, params: Float64Array): void;
  /** out = exp(x), float32. */
  exp(heap: ArrayBuffer, params: Float64Array): void;
  /** Sum of x viewed as [outer, reduce, inner] over its middle axis, float32. */
  sum(heap: ArrayBuffer, params: Float64Array): void;
  /** out = a + b for float32 arrays of one size (absent from addons built before it). */
  add?(heap: ArrayBuffer, params: Float64Array): void;
  /** The compiled micro-kernel and the size of the thread pool. */
  info(): { kernel: string; threads: number };
  /** Runs `jobs` short parallel jobs of changing sizes; counts tasks run twice, outside their job, or never (all 0 for a correct pool). */
  poolCheck(jobs: number): { jobs: number; duplicates: number; outOfRange: number; missing: number };
  /** A new, empty native KV cache (absent from addons built before the fused decoder). */
  cacheNew?(nLayer: number, nHead: number, headSize: number, blockSize: number): NativeCacheHandle;
  /** Releases a cache's memory now (it is also released when the handle is collected). */
  cacheFree?(cache: NativeCacheHandle): void;
  /** Bytes a cache holds. */
  cacheBytes?(cache: NativeCacheHandle): number;
  /**
   * One fused forward pass of N sequences against their caches; writes N*V logits, and with
   * `sample` each row's next token (`sampleRows` of that row, by the thread that computed it).
   */
  decode?(heap: ArrayBuffer, params: Float64Array, caches: NativeCacheHandle[], logits: Float32Array, sample?: NativeSampleArgs | null): void;
  /**
   * `decode` on a worker thread, then (with `sample`) `sampleRows` of its logits there; settles when
   * both are done. Meanwhile its caches refuse other decodes and `cacheFree` of them waits for it.
   */
  decodeAsync?(heap: ArrayBuffer, params: Float64Array, caches: NativeCacheHandle[], logits: Float32Array, sample: NativeSampleArgs | null): Promise<void>;
  // Fused training kernels (absent from addons built before them); layouts in addon.cc.
  layerNorm?(heap: ArrayBuffer, params: Float64Array): void;
  layerNormGrad?(heap: ArrayBuffer, params: Float64Array): void;
  attention?(heap: ArrayBuffer, params: Float64Array): void;
  attentionGrad?(heap: ArrayBuffer, params: Float64Array): void;
  gelu?(heap: ArrayBuffer, params: Float64Array): void;
  geluGrad?(heap: ArrayBuffer, params: Float64Array): void;
  embed?(heap: ArrayBuffer, params: Float64Array): void;
  embedGrad?(heap: ArrayBuffer, params: Float64Array): void;
  tokenLogProbs?(heap: ArrayBuffer, params: Float64Array): void;
  tokenLogProbsGrad?(heap: ArrayBuffer, params: Float64Array): void;
  /** Sum of squares of every value of the listed float32 arrays. */
  sumSquares?(heap: ArrayBuffer, params: Float64Array): number;
  adamw?(heap: ArrayBuffer, params: Float64Array): void;
  adamwAll?(heap: ArrayBuffer, params: Float64Array): void;
}

/** Rows to sample in the native job right after a step: per row [temperature, topK, topP, u], the banned mask (V bytes), the sampled ids out. */
export type NativeSampleArgs = [params: Float64Array, banned: Uint8Array | null, ids: Int32Array];

/** An opaque native KV cache (an N-API external). */
export type NativeCacheHandle = { readonly __nativeKVCache: unique symbol };

export const DEFAULT_ADDON_PATH = fileURLToPath(
  new URL('../../native/build/Release/native_kernels.node', import.meta.url),
);

const cache = new Map<string, { addon?: NativeAddon; error?: string }>();

/** The addon at `path` (default: the built one), or an error message saying why not. */
export function loadNativeAddon(
  path: string = process.env.TF_NATIVE_ADDON || DEFAULT_ADDON_PATH,
): { addon?: NativeAddon; error?: string } {
  let entry = cache.get(path);
  if (!entry) {
    try {
      const addon = createRequire(import.meta.url)(path) as NativeAddon;
      if (typeof addon.gemm !== 'function' || typeof addon.sum !== 'function') {
        throw new Error('not the native kernels addon');
      }
      entry = { addon };
    } catch (err) {
      entry = { error: err instanceof Error ? err.message.split('\n')[0]! : String(err) };
    }
    cache.set(path, entry);
  }
  return entry;
}
