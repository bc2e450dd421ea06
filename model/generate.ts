/**
 * Text generation on top of the GPT's KV-cache decoding: one `DecodeSequence` per reply holds
 * its cache, its seeded sampler, its streamed text and its stop rules (end-of-turn token, stop
 * strings, max tokens, the context window). `generateBatch` decodes many sequences together, one
 * batched forward pass per step; a serving scheduler drives `DecodeSequence`s the same way.
 *
 * `sampleBatch` samples every row of a step at once: in the native addon when it is built
 * (model/kernels/native-sampler.ts, the same algorithm and the same draws from each sequence's
 * generator, so the same tokens), else row by row with `sampleToken`. Sequences whose options go
 * beyond temperature / top-k / top-p (any other sampling option set) are always sampled in JS.
 */
import type { GPT, KVCache } from './gpt.ts';
import { disposeCache } from './gpt.ts';
import { StreamDecoder, type Tokenizer } from './tokenizer.ts';
import { endOfTurnId } from './chat-template.ts';
import * as tf from '@tensorflow/tfjs-core';
import { adjustLogits, adjustsLogits, DEFAULT_SAMPLING, sampledLogprobs, sampleToken, type LogitAdjustments, type SamplingParams, type TokenChoice } from './sampling.ts';
import { createRng } from './random.ts';
import { nativeSampleRows } from './kernels/native-sampler.ts';
import type { NativeSampleArgs } from './kernels/native-addon.ts';

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerateOptions extends SamplingParams, LogitAdjustments {
  /** Most tokens to generate (also bounded by the context window). */
  maxTokens: number;
  /** Same seed, same prompt, same model → same text. */
  seed: number;
  /** Generation stops before any of these strings; they are not part of the text. */
  stop: readonly string[];
  /**
   * Record each sampled token's log-probability under the distribution it was drawn from, and
   * this many of that distribution's most likely tokens (0: the sampled token's only). Off when
   * undefined.
   */
  logprobs?: number;
}

/**
 * Whether a sequence samples with temperature, top-k and top-p alone: no logit bias, no
 * penalties, no log-probabilities recorded. A faster sampler that knows only those may take such
 * a sequence; any other needs `DecodeSequence.push`.
 */
export function plainSampling(opts: GenerateOptions): boolean {
  return !adjustsLogits(opts) && opts.logprobs === undefined;
}

/** A sampled token with its log-probability (see `sampledLogprobs`). */
export interface TokenLogprob {
  id: number;
  logprob: number;
  /** The most likely tokens of the distribution it was drawn from (`opts.logprobs` of them). */
  top: TokenChoice[];
  /** Characters of the reply's text before this token, and up to the end of it. */
  start: number;
  end: number;
}

export const DEFAULT_GENERATE: GenerateOptions = Object.freeze({ ...DEFAULT_SAMPLING, maxTokens: 64, seed: 0, stop: [] });

export interface Generation {
  /** Generated token ids (the end-of-turn token included when the model emitted it). */
  ids: number[];
  text: string;
  finishReason: FinishReason;
}

/** One reply being decoded. Feed it logits; it samples, streams text and decides when to stop. */
export class DecodeSequence {
  readonly ids: number[] = [];
  text = '';
  finishReason: FinishReason | undefined;
  /** Per sampled token (the end-of-turn token excepted), when `opts.logprobs` is set; none past a stop string. */
  readonly logprobs: TokenLogprob[] = [];
  /** Entries of `logprobs` already handed out by `takeLogprobs`. */
  private taken = 0;
  /** How often each token occurs in the reply so far (kept only when penalties are set). */
  private readonly counts = new Map<number, number>();
  private row: Float32Array | undefined;
  /** Text released to the client so far (held back while it could be the start of a stop string). */
  private released = 0;
  private readonly rng: () => number;
  private readonly decoder: StreamDecoder;
  private readonly eot: number;
  /** Whether the native batched sampler may sample this sequence (plain temperature / top-k / top-p). */
  readonly plainSampling: boolean;

  constructor(
    private readonly tok: Tokenizer,
    readonly cache: KVCache,
    readonly opts: GenerateOptions,
    private readonly blockSize: number,
  ) {
    this.rng = createRng(opts.seed);
    this.decoder = new StreamDecoder(tok);
    this.eot = endOfTurnId(tok);
    this.plainSampling = plainSampling(opts);
  }

  get done(): boolean {
    return this.finishReason !== undefined;
  }

  /** The token to feed at the next decode step. */
  get lastToken(): number {
    return this.ids[this.ids.length - 1]!;
  }

  /**
   * Samples the next token from `logits[offset .. offset+V)` and returns the newly releasable
   * text (may be '' while a stop string might be forming).
   */
  push(logits: Float32Array, offset: number, V: number): string {
    if (this.done) return '';
    // Specials other than end-of-turn never belong inside a reply.
    let banned: ReadonlySet<number> | undefined = bannedSpecials(this.tok, this.eot);
    if (adjustsLogits(this.opts)) {
      logits = adjustLogits(logits, offset, V, this.opts, this.counts, (this.row ??= new Float32Array(V)), banned);
      offset = 0;
      banned = undefined;
    }
    const id = sampleToken(logits, offset, V, this.opts, this.rng, banned);
    const lp = this.opts.logprobs !== undefined && id !== this.eot ? sampledLogprobs(logits, offset, V, this.opts, id, this.opts.logprobs, banned) : undefined;
    return this.append(id, lp);
  }

  /**
   * The next token of a plain sequence (`plainSampling`) drawn from `logits[offset .. offset+V)`,
   * as `push` would draw it, not yet accepted: the reference for `sampleBatch`.
   */
  sample(logits: Float32Array, offset: number, V: number): number {
    return sampleToken(logits, offset, V, this.opts, this.rng, bannedSpecials(this.tok, this.eot));
  }

  /** The uniform draw `sample` would take for its next token (one when the temperature is above 0). */
  draw(): number {
    return this.opts.temperature > 0 ? this.rng() : 0;
  }

  /** The ids `sample` never picks (specials other than end-of-turn) as a mask of at least V bytes. */
  bannedMask(V: number): Uint8Array {
    return bannedMask(this.tok, this.eot, V);
  }

  /**
   * Appends a token sampled for a plain sequence (by `sample` or `sampleBatch`): detokenises it,
   * applies the stop rules, and returns the newly releasable text.
   */
  accept(id: number): string {
    if (this.done) return '';
    if (!this.plainSampling) throw new Error('DecodeSequence.accept: this sequence adjusts logits or records log-probabilities; use push');
    return this.append(id, undefined);
  }

  private append(id: number, lp: { logprob: number; top: TokenChoice[] } | undefined): string {
    this.ids.push(id);
    if (this.opts.presencePenalty || this.opts.frequencyPenalty) this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    if (id === this.eot) return this.finish('stop');
    const start = this.text.length;
    this.text += this.decoder.push(id);
    if (lp) this.logprobs.push({ id, ...lp, start, end: this.text.length });
    for (const s of this.opts.stop) {
      const at = s ? this.text.indexOf(s) : -1;
      if (at >= 0) {
        this.text = this.text.slice(0, at);
        // Tokens wholly inside the stop string are not part of the reply.
        while (this.logprobs.length > this.taken && this.logprobs[this.logprobs.length - 1]!.start >= at) this.logprobs.pop();
        return this.finish('stop');
      }
    }
    if (this.ids.length >= this.opts.maxTokens || this.cache.length + 1 >= this.blockSize) {
      this.text += this.decoder.flush();
      const last = this.logprobs[this.logprobs.length - 1];
      if (last) last.end = this.text.length; // the flushed bytes belong to the last tokens
      return this.finish('length');
    }
    const safe = this.text.length - holdBack(this.text, this.opts.stop);
    const delta = this.text.slice(this.released, Math.max(this.released, safe));
    this.released += delta.length;
    return delta;
  }

  /**
   * The `logprobs` entries not handed out yet whose text has been released (all of them once the
   * sequence is done): what goes with the delta `push` just returned.
   */
  takeLogprobs(): readonly TokenLogprob[] {
    let end = this.taken;
    while (end < this.logprobs.length && (this.done || this.logprobs[end]!.end <= this.released)) end++;
    if (end === this.taken) return NONE; // every delta asks, most sequences record nothing
    const out = this.logprobs.slice(this.taken, end);
    this.taken = end;
    return out;
  }

  /** Ends the sequence early (client cancelled). Returns the unreleased text. */
  cancel(): string {
    return this.done ? '' : this.finish('cancelled');
  }

  private finish(reason: FinishReason): string {
    this.finishReason = reason;
    const delta = this.text.slice(this.released);
    this.released = this.text.length;
    return delta;
  }

  dispose(): void {
    disposeCache(this.cache);
  }
}

/** How `sampleBatch` samples: `auto` (native when available), or forced. */
export type SamplePath = 'auto' | 'native' | 'js';

/**
 * Samples the next token of each plain sequence `seqs[r]` (`plainSampling`) from row r of
 * `logits` (`seqs.length * V` values) into `ids[r]`, drawing from its own generator exactly as
 * `sample` would; the tokens are not accepted (call `accept`). Other sequences get -1: they
 * adjust logits or record log-probabilities, so `push` samples them. Native when the addon has
 * the sampler (and `path` is not `js`), else `sample` row by row.
 *
 * It is `planSamples`, the native sampler over the plan, then `finishSamples`; a caller that runs
 * the native rows elsewhere (with the decode step: `GPT.decodeStepAsync`) calls the two itself.
 */
export function sampleBatch(seqs: readonly DecodeSequence[], logits: Float32Array, V: number, ids: Int32Array, path: SamplePath = 'auto'): void {
  const plan = planSamples(seqs, V, path);
  if (plan) nativeSampleRows()!(logits, V, ...plan);
  finishSamples(seqs, logits, V, ids, plan);
}

/**
 * The rows of a step the native sampler takes, with their uniform draws taken now (one per row,
 * from each sequence's own generator, so before or after the step is the same): `[params, banned,
 * ids]` for `sampleRows`, or undefined when no row is for it (no sampler, `path` `js`, no plain
 * row). Rows it does not take run there as greedy and are overwritten by `finishSamples`.
 */
export function planSamples(seqs: readonly DecodeSequence[], V: number, path: SamplePath = 'auto'): NativeSampleArgs | undefined {
  const n = seqs.length;
  const native = path === 'js' ? undefined : nativeSampleRows();
  if (path === 'native' && !native) throw new Error('sampleBatch: the native sampler is not available');
  if (!native || !n) return undefined;
  const banned = seqs[0]!.bannedMask(V);
  if (!seqs.some((s) => s.plainSampling && s.bannedMask(V) === banned)) return undefined;
  const params = new Float64Array(n * 4);
  for (let r = 0; r < n; r++) {
    const s = seqs[r]!;
    const plain = s.plainSampling && s.bannedMask(V) === banned;
    params[4 * r] = plain ? s.opts.temperature : 0;
    params[4 * r + 1] = plain ? s.opts.topK : 0;
    params[4 * r + 2] = plain ? s.opts.topP : 1;
    params[4 * r + 3] = plain ? s.draw() : 0;
  }
  return [params, banned, new Int32Array(n)];
}

/** Completes `ids` after the native rows of `plan` were sampled: those ids, the other plain rows sampled here, -1 for the rest (see `sampleBatch`). */
export function finishSamples(seqs: readonly DecodeSequence[], logits: Float32Array, V: number, ids: Int32Array, plan: NativeSampleArgs | undefined): void {
  const banned = plan?.[1];
  const out = plan?.[2];
  for (let r = 0; r < seqs.length; r++) {
    const s = seqs[r]!;
    ids[r] = !s.plainSampling ? -1 : out && s.bannedMask(V) === banned ? out[r]! : s.sample(logits, r * V, V);
  }
}

const NONE: readonly TokenLogprob[] = Object.freeze([]);

const bannedCache = new WeakMap<Tokenizer, Set<number>>();
const maskCache = new WeakMap<Tokenizer, Uint8Array>();
function bannedMask(tok: Tokenizer, eot: number, V: number): Uint8Array {
  let m = maskCache.get(tok);
  if (!m || m.length < V) {
    m = new Uint8Array(Math.max(V, tok.vocabSize));
    for (const id of bannedSpecials(tok, eot)) m[id] = 1;
    maskCache.set(tok, m);
  }
  return m;
}
function bannedSpecials(tok: Tokenizer, eot: number): Set<number> {
  let s = bannedCache.get(tok);
  if (!s) {
    s = new Set<number>();
    for (let id = 0; id < tok.vocabSize; id++) if (tok.isSpecial(id) && id !== eot) s.add(id);
    bannedCache.set(tok, s);
  }
  return s;
}

/** Characters at the end of `text` that could be the beginning of a stop string. */
function holdBack(text: string, stops: readonly string[]): number {
  let keep = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(s.slice(0, n))) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}

/**
 * Generates one reply per prompt, all decoded together.
 *
 * @example
 *   const [g] = generateBatch(gpt, tok, [renderChat(tok, msgs, { addGenerationPrompt: true }).ids], { ...DEFAULT_GENERATE, seed: 1 });
 */
export function generateBatch(
  gpt: GPT,
  tok: Tokenizer,
  prompts: readonly (readonly number[])[],
  opts: Partial<GenerateOptions> = {},
  onDelta?: (index: number, delta: string) => void,
  path: SamplePath = 'auto',
): Generation[] {
  const o = { ...DEFAULT_GENERATE, ...opts };
  const V = gpt.config.vocabSize;
  const seqs = prompts.map((p, i) => {
    const { cache, logits } = gpt.prefill(p);
    const seq = new DecodeSequence(tok, cache, { ...o, seed: o.seed + i }, gpt.config.blockSize);
    const d = seq.push(logits, 0, V);
    if (d) onDelta?.(i, d);
    return seq;
  });
  try {
    for (;;) {
      const live = seqs.map((s, i) => [s, i] as const).filter(([s]) => !s.done);
      if (!live.length) break;
      const logits = gpt.decodeStep(live.map(([s]) => s.cache), live.map(([s]) => s.lastToken));
      const ids = new Int32Array(live.length);
      sampleBatch(live.map(([s]) => s), logits, V, ids, path);
      live.forEach(([s, i], row) => {
        const d = ids[row]! >= 0 ? s.accept(ids[row]!) : s.push(logits, row * V, V);
        if (d) onDelta?.(i, d);
      });
    }
    return seqs.map((s) => ({ ids: s.ids, text: s.text, finishReason: s.finishReason! }));
  } finally {
    seqs.forEach((s) => s.dispose());
  }
}

/**
 * Scores a token sequence: for each position t ≥ 1, the log-probability of `ids[t]` after
 * `ids[0..t)` under the model's own distribution (softmax of the logits: temperature 1, no
 * sampling cut), and the `topN` most likely tokens there (ties: lower id first). Position 0 has no
 * context and is `null`. One full forward pass (`ids.length` ≤ blockSize).
 *
 * @example
 *   const scored = promptLogprobs(gpt, tok.encode('the cat sat'), 1);   // [null, {…}, {…}]
 */
export function promptLogprobs(gpt: GPT, ids: readonly number[], topN: number): ({ logprob: number; top: TokenChoice[] } | null)[] {
  const T = ids.length;
  if (T === 0) return [];
  const V = gpt.config.vocabSize;
  const lp = tf.tidy(() => {
    const logits = gpt.forward(tf.tensor2d([...ids], [1, T], 'int32')); // [1, T, V]
    return tf.logSoftmax(tf.reshape(logits, [T, V])); // [T, V]
  });
  const rows = lp.dataSync() as Float32Array;
  lp.dispose();
  const out: ({ logprob: number; top: TokenChoice[] } | null)[] = [null];
  for (let t = 1; t < T; t++) {
    const base = (t - 1) * V; // the distribution after ids[0..t)
    const top: TokenChoice[] = [];
    if (topN > 0) {
      for (let i = 0; i < V; i++) {
        const l = rows[base + i]!;
        if (top.length === topN && l <= top[topN - 1]!.logprob) continue;
        let j = top.length < topN ? top.length : topN - 1;
        while (j > 0 && top[j - 1]!.logprob < l) j--;
        top.splice(j, 0, { id: i, logprob: l });
        if (top.length > topN) top.pop();
      }
    }
    out.push({ logprob: rows[base + ids[t]!]!, top });
  }
  return out;
}
