/**
 * Fused native GPT decoding on the wasm backend: one addon call runs N sequences, each feeding one
 * or more tokens, through the whole model against KV caches held in native memory, and returns
 * the next-token logits of each sequence (`native/src/decoder.cc`).
 *
 * The weights are not copied: every call passes the current heap offsets of the model's tfjs
 * variables, so an optimizer step or a hot swap is seen by the next call. The caches are opaque
 * handles (`NativeKVCache`) freed by `dispose()` (or, as a safety net, when collected).
 *
 * `runAsync` runs the same step on a worker thread while the JS thread goes on, and can sample
 * the step's rows there too (the native sampler, `sampleRows`). Until it settles its caches
 * refuse another step, and disposing one of them frees its memory when the step ends.
 *
 * Available when the backend is `wasm`, the addon is built with the decoder, and
 * `TF_NATIVE_KERNELS` is not `0` (a list of kernel names turns it on only if it names `Decoder`).
 */
import * as tf from '@tensorflow/tfjs-core';
import { loadNativeAddon, type NativeAddon, type NativeCacheHandle, type NativeSampleArgs } from './native-addon.ts';
import { heapOf, offsetOf, type WasmHeapBackend } from './wasm-heap.ts';

/** Model dimensions the decoder needs (a subset of GPTConfig). */
export interface DecoderConfig {
  readonly nLayer: number;
  readonly nHead: number;
  readonly nEmbd: number;
  readonly blockSize: number;
  readonly vocabSize: number;
}

type DecoderAddon = Required<Pick<NativeAddon, 'cacheNew' | 'cacheFree' | 'cacheBytes' | 'decode'>> & Pick<NativeAddon, 'decodeAsync'>;

function decoderAddon(): DecoderAddon | undefined {
  const setting = process.env.TF_NATIVE_KERNELS;
  if (setting === '0') return undefined;
  if (setting && setting !== '1' && !setting.split(',').some((s) => s.trim() === 'Decoder')) return undefined;
  const { addon } = loadNativeAddon();
  if (!addon?.decode || !addon.cacheNew || !addon.cacheFree || !addon.cacheBytes) return undefined;
  return addon as DecoderAddon;
}

/** True when `FusedDecoder` can run on the current backend. */
export function fusedDecoderAvailable(): boolean {
  return tf.getBackend() === 'wasm' && decoderAddon() !== undefined;
}

/** A sequence's keys and values in native memory. */
export class NativeKVCache {
  readonly kind = 'native';
  #disposed = false;
  /** Tokens already in the cache (the position of the next token). */
  length = 0;

  constructor(
    private readonly addon: DecoderAddon,
    /** @internal */ readonly handle: NativeCacheHandle,
  ) {}

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Bytes of native memory held. */
  get bytes(): number {
    return this.#disposed ? 0 : this.addon.cacheBytes(this.handle);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.length = 0;
    this.addon.cacheFree(this.handle);
  }
}

/**
 * Runs decoding for one model's shape.
 *
 * @example
 *   const dec = new FusedDecoder(gpt.config);
 *   const cache = dec.newCache();
 *   const logits = dec.run(weights, [cache], [ids.length], ids);   // [1 * V]
 */
export class FusedDecoder {
  readonly #addon: DecoderAddon;
  readonly #cfg: DecoderConfig;
  readonly #nWeights: number;
  #seen: { backend: WasmHeapBackend; ids: object[]; offsets: Float64Array } | undefined;

  constructor(cfg: DecoderConfig) {
    const addon = decoderAddon();
    if (!addon) throw new Error('fused decoder: the native addon with a decoder is not available');
    this.#addon = addon;
    this.#cfg = cfg;
    this.#nWeights = 4 + 12 * cfg.nLayer;
  }

  newCache(): NativeKVCache {
    const { nLayer, nHead, nEmbd, blockSize } = this.#cfg;
    return new NativeKVCache(this.#addon, this.#addon.cacheNew(nLayer, nHead, nEmbd / nHead, blockSize));
  }

  /**
   * Feeds `rows[i]` tokens (taken in order from `tokens`) to `caches[i]` and returns the logits
   * after each sequence's last token, `N * V` values row by row.
   *
   * `weights`: wte, wpe, the 12 parameters of each block in checkpoint order, lnf.g, lnf.b —
   * float32 tensors on the wasm backend. With `sample`, its rows are sampled in the same call
   * (`sampleRows`, ids written to `sample[2]`), each by the thread that computed its logits.
   */
  run(weights: readonly tf.Tensor[], caches: readonly NativeKVCache[], rows: readonly number[], tokens: readonly number[], sample?: NativeSampleArgs): Float32Array {
    const { heap, params, handles, logits } = this.#call(weights, caches, rows, tokens);
    this.#addon.decode(heap, params, handles, logits, sample ?? null);
    for (let i = 0; i < caches.length; i++) caches[i]!.length += rows[i]!;
    return logits;
  }

  /** Whether the addon has `runAsync` (addons built before it have `run` only). */
  get canRunAsync(): boolean {
    return typeof this.#addon.decodeAsync === 'function';
  }

  /**
   * `run` on a worker thread: resolves with the logits once the step is done. With `sample`, its
   * rows are sampled in the same job (`sampleRows`, ids written to `sample[2]`). Arguments are
   * checked before it starts (a bad call rejects and nothing runs); the caches advance when it
   * resolves.
   */
  async runAsync(weights: readonly tf.Tensor[], caches: readonly NativeKVCache[], rows: readonly number[], tokens: readonly number[], sample?: NativeSampleArgs): Promise<Float32Array> {
    const { heap, params, handles, logits } = this.#call(weights, caches, rows, tokens);
    if (!this.#addon.decodeAsync) throw new Error('fused decoder: the native addon has no decodeAsync');
    await this.#addon.decodeAsync(heap, params, handles, logits, sample ?? null);
    for (let i = 0; i < caches.length; i++) if (!caches[i]!.disposed) caches[i]!.length += rows[i]!;
    return logits;
  }

  /** The weights' heap offsets, looked up again only when a weight's data changed (a variable assigned) or the backend did. */
  #offsets(backend: WasmHeapBackend, weights: readonly tf.Tensor[]): Float64Array {
    const seen = this.#seen;
    let same = seen !== undefined && seen.backend === backend && seen.ids.length === weights.length;
    for (let i = 0; same && i < weights.length; i++) same = seen!.ids[i] === weights[i]!.dataId;
    if (same) return seen!.offsets;
    const offsets = new Float64Array(weights.length);
    for (let i = 0; i < weights.length; i++) {
      const w = weights[i]!;
      if (w.dtype !== 'float32') throw new Error('fused decoder: weights must be float32');
      offsets[i] = offsetOf(backend, w);
    }
    this.#seen = { backend, ids: weights.map((w) => w.dataId), offsets };
    return offsets;
  }

  #call(weights: readonly tf.Tensor[], caches: readonly NativeKVCache[], rows: readonly number[], tokens: readonly number[]) {
    const { nLayer, nHead, nEmbd, blockSize, vocabSize } = this.#cfg;
    const N = caches.length;
    if (weights.length !== this.#nWeights) throw new Error(`fused decoder: ${weights.length} weights, expected ${this.#nWeights}`);
    if (rows.length !== N) throw new Error(`fused decoder: ${N} caches but ${rows.length} row counts`);
    const params = new Float64Array(6 + this.#nWeights + N + tokens.length);
    params[0] = nLayer;
    params[1] = nHead;
    params[2] = nEmbd;
    params[3] = vocabSize;
    params[4] = blockSize;
    params[5] = N;
    const backend = tf.backend() as unknown as WasmHeapBackend;
    params.set(this.#offsets(backend, weights), 6);
    const handles: NativeCacheHandle[] = new Array(N);
    let total = 0;
    for (let i = 0; i < N; i++) {
      const c = caches[i]!;
      if (c.disposed) throw new Error('fused decoder: cache was disposed');
      handles[i] = c.handle;
      params[6 + this.#nWeights + i] = rows[i]!;
      total += rows[i]!;
    }
    if (total !== tokens.length) throw new Error(`fused decoder: rows add up to ${total}, got ${tokens.length} tokens`);
    params.set(tokens, 6 + this.#nWeights + N);
    return { heap: heapOf(backend), params, handles, logits: new Float32Array(N * vocabSize) };
  }
}
