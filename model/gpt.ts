/**
 * The GPT: a decoder-only transformer (pre-LayerNorm, causal self-attention, GELU MLP) with a
 * language-model head tied to the token embedding, a value head (PPO) and a scalar head (the
 * reward model). The whole model lives in this one file, nanoGPT-style.
 *
 * Deviations from nanoGPT, each for the tfjs wasm backend:
 *  1. Activations stay rank-2 `[B*T, C]` between blocks so every linear layer is a rank-2
 *     matMul (the backend's fast path); attention alone reshapes to `[B, H, T, hs]`.
 *  2. The token embedding's gradient is a scatter-add done in JS inside a custom gradient,
 *     because the wasm backend has no kernel for the gradient of `gather`.
 *  3. No dropout (the models are small and trained for few epochs).
 *  4. Decoding keeps one KV cache per sequence so sequences of different lengths decode together.
 *     On the wasm backend with the native addon, `prefill`/`decodeStep` run the fused native
 *     decoder (model/kernels/fused-decoder.ts: one call per step, caches in native memory, no
 *     padding); otherwise the tfjs path below, whose caches (`[H, t, hs]` per layer) are padded
 *     to the longest and masked. Both give the logits of the full forward pass.
 *  5. The full forward pass (training, scoring) has two paths too: on the wasm backend with the
 *     native addon, the fused training ops of model/kernels/training-ops.ts (one op forward and
 *     one backward for each LayerNorm, attention, GELU and the embeddings); otherwise plain tfjs
 *     ops. Both compute the same function and gradients (within float32 rounding).
 */
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { FusedDecoder, NativeKVCache, fusedDecoderAvailable } from './kernels/fused-decoder.ts';
import type { NativeSampleArgs } from './kernels/native-addon.ts';
import { fusedAttention, fusedEmbed, fusedGelu, fusedLayerNorm, fusedLinear, trainingOpsAvailable } from './kernels/training-ops.ts';

export const GPTConfigSchema = z
  .object({
    nLayer: z.number().int().positive().describe('transformer blocks'),
    nHead: z.number().int().positive().describe('attention heads per block'),
    nEmbd: z.number().int().positive().describe('embedding width'),
    blockSize: z.number().int().positive().describe('context length in tokens'),
    vocabSize: z.number().int().positive().describe('tokenizer vocabulary size'),
  })
  .strict()
  .refine((c) => c.nEmbd % c.nHead === 0, { message: 'nEmbd must be divisible by nHead' });

export type GPTConfig = Readonly<z.infer<typeof GPTConfigSchema>>;

/** Which heads sit on the trunk: a policy has LM + value heads, a reward model a scalar head. */
export type ModelKind = 'policy' | 'reward';

/** Which implementation runs `prefill`/`decodeStep`: the fused native decoder or plain tfjs. */
export type DecodePath = 'native' | 'tfjs';

/** Which implementation runs the full forward pass (`hidden`) and its gradients. */
export type ForwardPath = 'native' | 'tfjs';

/**
 * Per-sequence decoding state, an opaque handle: made by `prefill`, advanced by `decodeStep`,
 * freed by `disposeCache`. A cache only works with the path (and model shape) that made it.
 */
export interface KVCache {
  /** Tokens already in the cache (the position of the next token). */
  readonly length: number;
  /** Bytes of memory held (see `cacheBytes`). */
  readonly bytes: number;
  /** True once disposed. */
  readonly disposed: boolean;
  /** The path that made it. */
  readonly kind: DecodePath;
  dispose(): void;
}

/** The tfjs path's cache: for each layer, keys and values `[H, t, hs]` as tensors. */
class TensorKVCache implements KVCache {
  readonly kind = 'tfjs';
  k: tf.Tensor3D[] = [];
  v: tf.Tensor3D[] = [];
  length = 0;
  disposed = false;

  get bytes(): number {
    let n = 0;
    for (const t of this.k) n += t.size * 4;
    for (const t of this.v) n += t.size * 4;
    return n;
  }

  dispose(): void {
    tf.dispose([...this.k, ...this.v]);
    this.k = [];
    this.v = [];
    this.disposed = true;
  }
}

/** Options of `GPT.prefill`. */
export interface PrefillOptions {
  /** Continue this cache (e.g. a conversation's earlier turns) instead of starting a new one. */
  cache?: KVCache;
  /** Force a path (default: native when available). Ignored when `cache` is given. */
  path?: DecodePath;
}

const LN_EPS = 1e-5;

/** Parameter names and shapes, in a fixed order (the checkpoint's order). */
export function parameterShapes(cfg: GPTConfig, kind: ModelKind): [string, number[]][] {
  const C = cfg.nEmbd;
  const shapes: [string, number[]][] = [
    ['wte', [cfg.vocabSize, C]],
    ['wpe', [cfg.blockSize, C]],
  ];
  for (let l = 0; l < cfg.nLayer; l++) {
    const p = `h.${l}.`;
    shapes.push(
      [p + 'ln1.g', [C]], [p + 'ln1.b', [C]],
      [p + 'attn.wqkv', [C, 3 * C]], [p + 'attn.bqkv', [3 * C]],
      [p + 'attn.wo', [C, C]], [p + 'attn.bo', [C]],
      [p + 'ln2.g', [C]], [p + 'ln2.b', [C]],
      [p + 'mlp.wfc', [C, 4 * C]], [p + 'mlp.bfc', [4 * C]],
      [p + 'mlp.wproj', [4 * C, C]], [p + 'mlp.bproj', [C]],
    );
  }
  shapes.push(['lnf.g', [C]], ['lnf.b', [C]]);
  if (kind === 'policy') shapes.push(['value.w', [C, 1]], ['value.b', [1]]);
  else shapes.push(['score.w', [C, 1]], ['score.b', [1]]);
  return shapes;
}

function initTensor(name: string, shape: number[], cfg: GPTConfig, seed: number): tf.Tensor {
  const leaf = name.slice(name.lastIndexOf('.') + 1);
  if (leaf === 'g') return tf.ones(shape);
  if (leaf.startsWith('b') || name.startsWith('value.') || name.startsWith('score.')) return tf.zeros(shape);
  // GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 nLayer).
  const std = leaf === 'wo' || leaf === 'wproj' ? 0.02 / Math.sqrt(2 * cfg.nLayer) : 0.02;
  return tf.randomNormal(shape, 0, std, 'float32', seed);
}

/**
 * A GPT whose parameters are tfjs variables.
 *
 * @example
 *   const gpt = GPT.create({ nLayer: 2, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 300 }, 'policy');
 *   const logits = tf.tidy(() => gpt.forward(tf.tensor2d([[1, 2, 3]], [1, 3], 'int32')));  // [1, 3, V]
 */
export class GPT {
  private constructor(
    readonly config: GPTConfig,
    readonly kind: ModelKind,
    /** Parameters by name, in checkpoint order. */
    readonly params: ReadonlyMap<string, tf.Variable>,
  ) {}

  static create(config: GPTConfig, kind: ModelKind, seed = 1337): GPT {
    const cfg = Object.freeze(GPTConfigSchema.parse(config));
    const params = new Map<string, tf.Variable>();
    parameterShapes(cfg, kind).forEach(([name, shape], i) => {
      const init = initTensor(name, shape, cfg, seed * 1000 + i);
      params.set(name, tf.variable(init, true, `${name}#${nextId++}`));
      init.dispose();
    });
    return new GPT(cfg, kind, params);
  }

  /** Builds a model from named arrays (a checkpoint), checking every name and shape. */
  static fromWeights(config: GPTConfig, kind: ModelKind, weights: ReadonlyMap<string, Float32Array>): GPT {
    const cfg = Object.freeze(GPTConfigSchema.parse(config));
    const params = new Map<string, tf.Variable>();
    for (const [name, shape] of parameterShapes(cfg, kind)) {
      const data = weights.get(name);
      const size = shape.reduce((a, b) => a * b, 1);
      if (!data || data.length !== size) {
        params.forEach((p) => p.dispose());
        throw new Error(`weights: "${name}" ${data ? `has ${data.length} values, expected ${size}` : 'is missing'}`);
      }
      const t = tf.tensor(data, shape, 'float32');
      params.set(name, tf.variable(t, true, `${name}#${nextId++}`));
      t.dispose();
    }
    return new GPT(cfg, kind, params);
  }

  /** A deep copy (e.g. the frozen reference policy, or a trunk for the reward model). */
  clone(kind: ModelKind = this.kind, trainable = true): GPT {
    const params = new Map<string, tf.Variable>();
    const fresh = kind === this.kind ? undefined : GPT.create(this.config, kind);
    for (const [name] of parameterShapes(this.config, kind)) {
      const src = this.params.get(name) ?? fresh!.params.get(name)!;
      const copy = src.clone();
      params.set(name, tf.variable(copy, trainable, `${name}#${nextId++}`));
      copy.dispose();
    }
    fresh?.dispose();
    return new GPT(this.config, kind, params);
  }

  /** Copies the values of `other`'s parameters into this model's (same config and kind). */
  assign(other: GPT): void {
    for (const [name, p] of this.params) p.assign(other.params.get(name)!);
  }

  get numParams(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.size;
    return n;
  }

  /** Trainable variables: everything except the head this loss does not use. */
  trainableVariables(): tf.Variable[] {
    return [...this.params.values()];
  }

  /** Named Float32Arrays of every parameter (for checkpoints). */
  async exportWeights(): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
    const out = new Map<string, { data: Float32Array; shape: number[] }>();
    for (const [name, p] of this.params) out.set(name, { data: (await p.data()) as Float32Array, shape: p.shape });
    return out;
  }

  /** Frees the weights; while `decodeStepAsync` steps run (they read them in place), when the last one ends. */
  dispose(): void {
    if (this.stepsRunning > 0) {
      this.disposeWhenIdle = true;
      return;
    }
    for (const p of this.params.values()) p.dispose();
  }

  private p(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`GPT(${this.kind}) has no parameter "${name}"`);
    return v;
  }

  // ---------------------------------------------------------------- full forward pass

  /** The path `hidden` takes by default: the fused training ops when they can run here. */
  forwardPath(): ForwardPath {
    return trainingOpsAvailable() ? 'native' : 'tfjs';
  }

  /**
   * Final hidden states after the last LayerNorm: `[B*T, C]` for ids `[B, T]` (int32).
   * Rows are in (b, t) order.
   */
  hidden(idx: tf.Tensor2D, path: ForwardPath = this.forwardPath()): tf.Tensor2D {
    const [B, T] = idx.shape;
    const { nLayer, nHead, nEmbd: C, blockSize } = this.config;
    if (T > blockSize) throw new Error(`sequence of ${T} tokens exceeds blockSize ${blockSize}`);
    if (path === 'native') return this.hiddenFused(idx);
    const hs = C / nHead;
    const tok = embed(this.p('wte'), tf.reshape(idx, [B * T]) as tf.Tensor1D); // [B*T, C]
    const pos = tf.tile(tf.slice(this.p('wpe'), [0, 0], [T, C]), [B, 1]); // [B*T, C]
    let x = tf.add(tok, pos) as tf.Tensor2D; // [B*T, C]
    const mask = causalMask(T); // [T, T], 0 or -1e9
    for (let l = 0; l < nLayer; l++) {
      const h = `h.${l}.`;
      const a = layerNorm(x, this.p(h + 'ln1.g'), this.p(h + 'ln1.b'));
      const qkv = linear(a, this.p(h + 'attn.wqkv'), this.p(h + 'attn.bqkv')); // [B*T, 3C]
      const heads = (t: tf.Tensor2D) => tf.transpose(tf.reshape(t, [B, T, nHead, hs]), [0, 2, 1, 3]); // [B, H, T, hs]
      const [q, k, v] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
      const att = tf.add(tf.mul(tf.matMul(heads(q), heads(k), false, true), 1 / Math.sqrt(hs)), mask); // [B, H, T, T]
      const y = tf.matMul(tf.softmax(att), heads(v)); // [B, H, T, hs]
      const merged = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [B * T, C]) as tf.Tensor2D; // [B*T, C]
      x = tf.add(x, linear(merged, this.p(h + 'attn.wo'), this.p(h + 'attn.bo')));
      const m = layerNorm(x, this.p(h + 'ln2.g'), this.p(h + 'ln2.b'));
      const fc = gelu(linear(m, this.p(h + 'mlp.wfc'), this.p(h + 'mlp.bfc'))); // [B*T, 4C]
      x = tf.add(x, linear(fc, this.p(h + 'mlp.wproj'), this.p(h + 'mlp.bproj')));
    }
    return layerNorm(x, this.p('lnf.g'), this.p('lnf.b'));
  }

  /** `hidden` on the fused training ops; the same blocks as the tfjs path above. */
  private hiddenFused(idx: tf.Tensor2D): tf.Tensor2D {
    const [B, T] = idx.shape;
    const ids = tf.reshape(idx.dtype === 'int32' ? idx : tf.cast(idx, 'int32'), [B * T]) as tf.Tensor1D;
    let x = fusedEmbed(this.p('wte') as tf.Tensor2D, this.p('wpe') as tf.Tensor2D, ids, B, T); // [B*T, C]
    const dense = (a: tf.Tensor2D, w: string, b: string) => fusedLinear(a, this.p(w) as tf.Tensor2D, this.p(b) as tf.Tensor1D); // [B*T, out]
    for (let l = 0; l < this.config.nLayer; l++) {
      const h = `h.${l}.`;
      const a = fusedLayerNorm(x, this.p(h + 'ln1.g'), this.p(h + 'ln1.b'), LN_EPS);
      const qkv = dense(a, h + 'attn.wqkv', h + 'attn.bqkv'); // [B*T, 3C]
      const y = fusedAttention(qkv, B, T, this.config.nHead); // [B*T, C]
      x = tf.add(x, dense(y, h + 'attn.wo', h + 'attn.bo')) as tf.Tensor2D;
      const m = fusedLayerNorm(x, this.p(h + 'ln2.g'), this.p(h + 'ln2.b'), LN_EPS);
      const fc = fusedGelu(dense(m, h + 'mlp.wfc', h + 'mlp.bfc')); // [B*T, 4C]
      x = tf.add(x, dense(fc, h + 'mlp.wproj', h + 'mlp.bproj')) as tf.Tensor2D;
    }
    return fusedLayerNorm(x, this.p('lnf.g'), this.p('lnf.b'), LN_EPS);
  }

  /** Language-model logits `[N, V]` of hidden states `[N, C]` (head tied to `wte`). */
  lmLogits(h: tf.Tensor2D, path: ForwardPath = this.forwardPath()): tf.Tensor2D {
    if (path === 'native') return fusedLinear(h, this.p('wte') as tf.Tensor2D, undefined, true); // [N, V]
    return tf.matMul(h, this.p('wte'), false, true); // [N, V]
  }

  /** Value-head estimates `[N]` (policy only). */
  values(h: tf.Tensor2D): tf.Tensor1D {
    return tf.reshape(linear(h, this.p('value.w'), this.p('value.b')), [-1]) as tf.Tensor1D;
  }

  /** Scalar-head scores `[N]` (reward model only). */
  scores(h: tf.Tensor2D): tf.Tensor1D {
    return tf.reshape(linear(h, this.p('score.w'), this.p('score.b')), [-1]) as tf.Tensor1D;
  }

  /** Logits `[B, T, V]` for ids `[B, T]`. */
  forward(idx: tf.Tensor2D): tf.Tensor3D {
    const [B, T] = idx.shape;
    return tf.reshape(this.lmLogits(this.hidden(idx)), [B, T, this.config.vocabSize]);
  }

  // ---------------------------------------------------------------- incremental decoding

  /** The path `prefill` takes by default: native when the fused decoder can run here. */
  decodePath(): DecodePath {
    return fusedDecoderAvailable() ? 'native' : 'tfjs';
  }

  // Plain (not #) fields: tests wrap a GPT with Object.create, and # fields do not follow the prototype.
  private decoder?: FusedDecoder;
  private decoderWeights?: tf.Variable[];
  private stepsRunning = 0;
  private disposeWhenIdle = false;

  private fused(): { decoder: FusedDecoder; weights: tf.Variable[] } {
    if (!this.decoder) {
      this.decoder = new FusedDecoder(this.config);
      const names = ['wte', 'wpe'];
      for (let l = 0; l < this.config.nLayer; l++) {
        for (const n of ['ln1.g', 'ln1.b', 'attn.wqkv', 'attn.bqkv', 'attn.wo', 'attn.bo', 'ln2.g', 'ln2.b', 'mlp.wfc', 'mlp.bfc', 'mlp.wproj', 'mlp.bproj']) names.push(`h.${l}.${n}`);
      }
      names.push('lnf.g', 'lnf.b');
      this.decoderWeights = names.map((n) => this.p(n));
    }
    return { decoder: this.decoder, weights: this.decoderWeights! };
  }

  /**
   * Runs a prompt through the model; returns its cache and the logits of its last token `[V]`.
   * With `opts.cache`, the tokens continue that cache (which is returned, advanced).
   */
  prefill(ids: readonly number[], opts: PrefillOptions = {}): { cache: KVCache; logits: Float32Array } {
    const T = ids.length;
    if (T === 0) throw new Error('prefill needs at least one token');
    const { blockSize } = this.config;
    const start = opts.cache?.length ?? 0;
    if (opts.cache?.disposed) throw new Error('prefill: the cache was disposed');
    if (start + T > blockSize) {
      throw new Error(start ? `prompt of ${T} tokens after ${start} cached exceeds blockSize ${blockSize}` : `prompt of ${T} tokens exceeds blockSize ${blockSize}`);
    }
    const path = opts.cache?.kind ?? opts.path ?? this.decodePath();
    if (path === 'native') {
      const { decoder, weights } = this.fused();
      const cache = (opts.cache as NativeKVCache | undefined) ?? decoder.newCache();
      try {
        return { cache, logits: decoder.run(weights, [cache], [T], ids) };
      } catch (err) {
        if (!opts.cache) cache.dispose();
        throw err;
      }
    }
    if (opts.cache) {
      let logits!: Float32Array;
      for (const id of ids) logits = this.decodeStep([opts.cache], [id]);
      return { cache: opts.cache, logits };
    }
    return this.prefillTensors(ids);
  }

  /**
   * Prefills several prompts together (one fused pass on the native path), each continuing
   * `cache` when given; returns one cache per prompt and the logits after each prompt's last
   * token, `N * V` values row by row. The same numbers as `prefill` on each prompt alone.
   */
  prefillBatch(prompts: readonly { ids: readonly number[]; cache?: KVCache }[]): { caches: KVCache[]; logits: Float32Array } {
    const V = this.config.vocabSize;
    const given = prompts.filter((p) => p.cache);
    const native = this.decodePath() === 'native' && given.every((p) => p.cache!.kind === 'native');
    if (prompts.length <= 1 || !native) {
      const caches: KVCache[] = [];
      const logits = new Float32Array(prompts.length * V);
      try {
        prompts.forEach((p, i) => {
          const r = this.prefill(p.ids, { cache: p.cache });
          caches.push(r.cache);
          logits.set(r.logits, i * V);
        });
      } catch (err) {
        caches.forEach((c, i) => c !== prompts[i]!.cache && disposeCache(c));
        throw err;
      }
      return { caches, logits };
    }
    const { blockSize } = this.config;
    for (const p of prompts) {
      const start = p.cache?.length ?? 0;
      if (p.ids.length === 0) throw new Error('prefill needs at least one token');
      if (p.cache?.disposed) throw new Error('prefill: the cache was disposed');
      if (start + p.ids.length > blockSize) throw new Error(`prompt of ${p.ids.length} tokens after ${start} cached exceeds blockSize ${blockSize}`);
    }
    const { decoder, weights } = this.fused();
    const caches = prompts.map((p) => (p.cache as NativeKVCache | undefined) ?? decoder.newCache());
    try {
      return { caches, logits: decoder.run(weights, caches, prompts.map((p) => p.ids.length), prompts.flatMap((p) => p.ids)) };
    } catch (err) {
      caches.forEach((c, i) => c !== prompts[i]!.cache && c.dispose());
      throw err;
    }
  }

  /**
   * One decoding step for N sequences at once: feeds `tokens[i]` to `caches[i]` (appending to
   * it) and returns the next-token logits, `N * V` values row by row. The caches must all come
   * from the same path. With `sample` (native caches only: `[params, banned, ids]` as for
   * `sampleRows`), the rows are sampled in the same call and the ids written into `sample[2]`.
   */
  decodeStep(caches: readonly KVCache[], tokens: readonly number[], sample?: NativeSampleArgs): Float32Array {
    const N = this.checkStep(caches, tokens);
    if (N === 0) return new Float32Array(0);
    const kind = caches[0]!.kind;
    if (caches.some((c) => c.kind !== kind)) throw new Error('decodeStep: caches from different decode paths');
    if (kind === 'native') {
      const { decoder, weights } = this.fused();
      return decoder.run(weights, caches as NativeKVCache[], new Array<number>(N).fill(1), tokens, sample);
    }
    if (sample) throw new Error('decodeStep: sampling in the step needs the native decoder');
    return this.decodeStepTensors(caches as TensorKVCache[], tokens);
  }

  /** Whether `decodeStepAsync` can run here: the fused native decoder, with an addon that has its asynchronous step. */
  decodesAsync(): boolean {
    return this.decodePath() === 'native' && this.fused().decoder.canRunAsync;
  }

  /**
   * `decodeStep` on a worker thread (`decodesAsync()` must hold and the caches be native): the
   * JS thread goes on while the step runs and the promise resolves with the same logits. Until
   * then the caches take no other step (a disposed one is freed when it ends) and the weights
   * stay alive. With `sample`, the rows are sampled right after the step in the same job (the
   * native sampler: `[params, banned, ids]` as for `sampleRows`, ids written into `sample[2]`).
   */
  async decodeStepAsync(caches: readonly KVCache[], tokens: readonly number[], sample?: NativeSampleArgs): Promise<Float32Array> {
    const N = this.checkStep(caches, tokens);
    if (caches.some((c) => c.kind !== 'native')) throw new Error('decodeStepAsync: needs caches of the native decoder');
    if (N === 0) return new Float32Array(0);
    const { decoder, weights } = this.fused();
    this.stepsRunning++;
    try {
      return await decoder.runAsync(weights, caches as NativeKVCache[], new Array<number>(N).fill(1), tokens, sample);
    } finally {
      if (--this.stepsRunning === 0 && this.disposeWhenIdle) this.dispose();
    }
  }

  /** The batch size of a step over `caches`; throws when a cache cannot take one more token. */
  private checkStep(caches: readonly KVCache[], tokens: readonly number[]): number {
    const N = caches.length;
    if (N !== tokens.length) throw new Error(`decodeStep: ${N} caches but ${tokens.length} tokens`);
    const { blockSize } = this.config;
    for (const c of caches) {
      if (c.disposed) throw new Error('decodeStep: a cache was disposed');
      if (c.length >= blockSize) throw new Error(`cache is full (${c.length} of blockSize ${blockSize})`);
    }
    return N;
  }

  private prefillTensors(ids: readonly number[]): { cache: KVCache; logits: Float32Array } {
    const T = ids.length;
    if (T === 0) throw new Error('prefill needs at least one token');
    const { nLayer, nHead, nEmbd: C, blockSize } = this.config;
    if (T > blockSize) throw new Error(`prompt of ${T} tokens exceeds blockSize ${blockSize}`);
    const hs = C / nHead;
    const cache = new TensorKVCache();
    cache.length = T;
    const logits = tf.tidy(() => {
      const idx = tf.tensor1d(ids as number[], 'int32');
      let x = tf.add(tf.gather(this.p('wte'), idx), tf.slice(this.p('wpe'), [0, 0], [T, C])) as tf.Tensor2D; // [T, C]
      const mask = causalMask(T);
      for (let l = 0; l < nLayer; l++) {
        const h = `h.${l}.`;
        const a = layerNorm(x, this.p(h + 'ln1.g'), this.p(h + 'ln1.b'));
        const qkv = linear(a, this.p(h + 'attn.wqkv'), this.p(h + 'attn.bqkv')); // [T, 3C]
        const heads = (t: tf.Tensor2D) => tf.transpose(tf.reshape(t, [T, nHead, hs]), [1, 0, 2]) as tf.Tensor3D; // [H, T, hs]
        const [q, k, v] = (tf.split(qkv, 3, 1) as tf.Tensor2D[]).map(heads) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
        cache.k.push(tf.keep(k));
        cache.v.push(tf.keep(v));
        const att = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)), mask); // [H, T, T]
        const y = tf.reshape(tf.transpose(tf.matMul(tf.softmax(att), v), [1, 0, 2]), [T, C]) as tf.Tensor2D; // [T, C]
        x = tf.add(x, linear(y, this.p(h + 'attn.wo'), this.p(h + 'attn.bo')));
        x = tf.add(x, this.mlp(h, x));
      }
      const last = tf.slice(x, [T - 1, 0], [1, C]) as tf.Tensor2D;
      return tf.reshape(this.lmLogits(layerNorm(last, this.p('lnf.g'), this.p('lnf.b'))), [-1]);
    });
    const out = logits.dataSync() as Float32Array;
    logits.dispose();
    return { cache, logits: out };
  }

  private decodeStepTensors(caches: readonly TensorKVCache[], tokens: readonly number[]): Float32Array {
    const N = caches.length;
    const { nLayer, nHead, nEmbd: C } = this.config;
    const hs = C / nHead;
    const lengths = caches.map((c) => c.length + 1); // after this step
    const Tmax = Math.max(...lengths);
    const newK: tf.Tensor3D[][] = [];
    const newV: tf.Tensor3D[][] = [];
    const logits = tf.tidy(() => {
      const idx = tf.tensor1d(tokens as number[], 'int32');
      const pos = tf.tensor1d(caches.map((c) => c.length), 'int32');
      let x = tf.add(tf.gather(this.p('wte'), idx), tf.gather(this.p('wpe'), pos)) as tf.Tensor2D; // [N, C]
      // Additive mask over padded key positions: [N, 1, 1, Tmax].
      const maskData = new Float32Array(N * Tmax);
      lengths.forEach((len, i) => maskData.fill(-1e9, i * Tmax + len, (i + 1) * Tmax));
      const mask = tf.tensor4d(maskData, [N, 1, 1, Tmax]);
      for (let l = 0; l < nLayer; l++) {
        const h = `h.${l}.`;
        const a = layerNorm(x, this.p(h + 'ln1.g'), this.p(h + 'ln1.b'));
        const qkv = linear(a, this.p(h + 'attn.wqkv'), this.p(h + 'attn.bqkv')); // [N, 3C]
        const [q, k, v] = (tf.split(qkv, 3, 1) as tf.Tensor2D[]).map((t) => tf.reshape(t, [N, nHead, 1, hs])); // [N, H, 1, hs]
        const ks: tf.Tensor3D[] = [];
        const vs: tf.Tensor3D[] = [];
        const kPad: tf.Tensor3D[] = [];
        const vPad: tf.Tensor3D[] = [];
        for (let i = 0; i < N; i++) {
          const ki = tf.concat([caches[i]!.k[l]!, tf.reshape(tf.slice(k!, [i, 0, 0, 0], [1, nHead, 1, hs]), [nHead, 1, hs])], 1) as tf.Tensor3D; // [H, t+1, hs]
          const vi = tf.concat([caches[i]!.v[l]!, tf.reshape(tf.slice(v!, [i, 0, 0, 0], [1, nHead, 1, hs]), [nHead, 1, hs])], 1) as tf.Tensor3D;
          ks.push(tf.keep(ki));
          vs.push(tf.keep(vi));
          const pad = Tmax - lengths[i]!;
          kPad.push(pad ? tf.pad(ki, [[0, 0], [0, pad], [0, 0]]) : ki);
          vPad.push(pad ? tf.pad(vi, [[0, 0], [0, pad], [0, 0]]) : vi);
        }
        newK.push(ks);
        newV.push(vs);
        const K = tf.stack(kPad) as tf.Tensor4D; // [N, H, Tmax, hs]
        const V = tf.stack(vPad) as tf.Tensor4D;
        const att = tf.add(tf.mul(tf.matMul(q!, K, false, true), 1 / Math.sqrt(hs)), mask); // [N, H, 1, Tmax]
        const y = tf.reshape(tf.matMul(tf.softmax(att), V), [N, C]) as tf.Tensor2D; // [N, C]
        x = tf.add(x, linear(y, this.p(h + 'attn.wo'), this.p(h + 'attn.bo')));
        x = tf.add(x, this.mlp(h, x));
      }
      return this.lmLogits(layerNorm(x, this.p('lnf.g'), this.p('lnf.b'))); // [N, V]
    });
    caches.forEach((c, i) => {
      for (let l = 0; l < nLayer; l++) {
        c.k[l]!.dispose();
        c.v[l]!.dispose();
        c.k[l] = newK[l]![i]!;
        c.v[l] = newV[l]![i]!;
      }
      c.length += 1;
    });
    const out = logits.dataSync() as Float32Array;
    logits.dispose();
    return out;
  }

  private mlp(h: string, x: tf.Tensor2D): tf.Tensor2D {
    const m = layerNorm(x, this.p(h + 'ln2.g'), this.p(h + 'ln2.b'));
    const fc = gelu(linear(m, this.p(h + 'mlp.wfc'), this.p(h + 'mlp.bfc')));
    return linear(fc, this.p(h + 'mlp.wproj'), this.p(h + 'mlp.bproj'));
  }
}

let nextId = 0;

/** Frees a sequence's cache (idempotent). */
export function disposeCache(cache: KVCache): void {
  cache.dispose();
}

/** Bytes held by a cache (for memory-bounded caches of live conversations). */
export function cacheBytes(cache: KVCache): number {
  return cache.bytes;
}

// ------------------------------------------------------------------ building blocks

function linear(x: tf.Tensor2D, w: tf.Tensor, b: tf.Tensor): tf.Tensor2D {
  return tf.add(tf.matMul(x, w as tf.Tensor2D), b); // [N, out]
}

function layerNorm(x: tf.Tensor2D, g: tf.Tensor, b: tf.Tensor): tf.Tensor2D {
  const mean = tf.mean(x, -1, true);
  const xc = tf.sub(x, mean);
  const variance = tf.mean(tf.square(xc), -1, true);
  return tf.add(tf.mul(tf.mul(xc, tf.rsqrt(tf.add(variance, LN_EPS))), g), b);
}

function gelu(x: tf.Tensor2D): tf.Tensor2D {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
}

const masks = new Map<number, Float32Array>();
function causalMask(T: number): tf.Tensor2D {
  let data = masks.get(T);
  if (!data) {
    data = new Float32Array(T * T);
    for (let i = 0; i < T; i++) data.fill(-1e9, i * T + i + 1, (i + 1) * T);
    masks.set(T, data);
  }
  return tf.tensor2d(data, [T, T]);
}

/** Token embedding `[N, C]` = wte[ids], with a scatter-add gradient computed in JS. */
function embed(wte: tf.Variable, ids: tf.Tensor1D): tf.Tensor2D {
  const idData = ids.dataSync(); // read now: `ids` is not kept alive for the backward pass
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const w = args[0] as tf.Tensor;
    const value = tf.gather(w, ids) as tf.Tensor2D;
    const gradFunc = (dy: tf.Tensor) => {
      const [V, C] = w.shape as [number, number];
      const g = new Float32Array(V * C);
      const dyData = dy.dataSync() as Float32Array;
      for (let r = 0; r < idData.length; r++) {
        const dst = idData[r]! * C;
        const src = r * C;
        for (let c = 0; c < C; c++) g[dst + c]! += dyData[src + c]!;
      }
      return tf.tensor2d(g, [V, C]);
    };
    return { value, gradFunc };
  });
  return f(wte) as tf.Tensor2D;
}
