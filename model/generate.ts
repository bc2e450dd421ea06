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
import { DEFAULT_SAMPLING, sampleToken, type SamplingParams } from './sampling.ts';
import { createRng } from './random.ts';
import { nativeSampleRows } from './kernels/native-sampler.ts';

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerateOptions extends SamplingParams {
  /** Most tokens to generate (also bounded by the context window). */
  maxTokens: number;
  /** Same seed, same prompt, same model → same text. */
  seed: number;
  /** Generation stops before any of these strings; they are not part of the text. */
  stop: readonly string[];
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
    return this.accept(this.sample(logits, offset, V));
  }

  /** The next token drawn from `logits[offset .. offset+V)` with `sampleToken` (not yet accepted). */
  sample(logits: Float32Array, offset: number, V: number): number {
    // Specials other than end-of-turn never belong inside a reply.
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
   * Appends a sampled token (from `sample` or `sampleBatch`): detokenises it, applies the stop
   * rules, and returns the newly releasable text.
   */
  accept(id: number): string {
    if (this.done) return '';
    this.ids.push(id);
    if (id === this.eot) return this.finish('stop');
    this.text += this.decoder.push(id);
    for (const s of this.opts.stop) {
      const at = s ? this.text.indexOf(s) : -1;
      if (at >= 0) {
        this.text = this.text.slice(0, at);
        return this.finish('stop');
      }
    }
    if (this.ids.length >= this.opts.maxTokens || this.cache.length + 1 >= this.blockSize) {
      this.text += this.decoder.flush();
      return this.finish('length');
    }
    const safe = this.text.length - holdBack(this.text, this.opts.stop);
    const delta = this.text.slice(this.released, Math.max(this.released, safe));
    this.released += delta.length;
    return delta;
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

/** Options `sampleBatch` may sample natively: only these keys may carry a value that changes sampling. */
const PLAIN_KEYS = new Set(['temperature', 'topK', 'topP', 'maxTokens', 'seed', 'stop']);

/**
 * True when `opts` asks for nothing but temperature / top-k / top-p: every other key is absent
 * or neutral (undefined, null, false, 0, an empty array or object), so sampling options added
 * later (penalties, logit biases, log-probabilities) send their requests to the JS sampler.
 */
export function plainSampling(opts: GenerateOptions): boolean {
  for (const key in opts) {
    if (PLAIN_KEYS.has(key)) continue;
    const v = (opts as unknown as Record<string, unknown>)[key];
    if (v === undefined || v === null || v === false || v === 0) continue;
    if (typeof v === 'object' && Object.keys(v).length === 0) continue;
    return false;
  }
  return Number.isFinite(opts.temperature) && Number.isFinite(opts.topP) && Number.isFinite(opts.topK);
}

/** How `sampleBatch` samples: `auto` (native when available), or forced. */
export type SamplePath = 'auto' | 'native' | 'js';

let params = new Float64Array(0);
let picked = new Int32Array(0);

/**
 * Samples the next token of `seqs[r]` from row r of `logits` (`seqs.length * V` values) into
 * `ids[r]`, drawing from each sequence's own generator exactly as `sample` would. The tokens are
 * not accepted: call `accept` on each. Native for the rows of plain sequences when the addon has
 * the sampler (and `path` is not `js`), `sampleToken` for the others.
 */
export function sampleBatch(seqs: readonly DecodeSequence[], logits: Float32Array, V: number, ids: Int32Array, path: SamplePath = 'auto'): void {
  const n = seqs.length;
  const native = path === 'js' ? undefined : nativeSampleRows();
  if (path === 'native' && !native) throw new Error('sampleBatch: the native sampler is not available');
  const banned = n ? seqs[0]!.bannedMask(V) : undefined;
  let fast = 0;
  if (native) for (const s of seqs) if (s.plainSampling && s.bannedMask(V) === banned) fast++;
  if (!fast) {
    for (let r = 0; r < n; r++) ids[r] = seqs[r]!.sample(logits, r * V, V);
    return;
  }
  if (params.length < n * 4) params = new Float64Array(n * 4);
  for (let r = 0; r < n; r++) {
    const s = seqs[r]!;
    const plain = s.plainSampling && s.bannedMask(V) === banned;
    // Rows sampled in JS run natively as greedy (cheap) and are overwritten below.
    params[4 * r] = plain ? s.opts.temperature : 0;
    params[4 * r + 1] = plain ? s.opts.topK : 0;
    params[4 * r + 2] = plain ? s.opts.topP : 1;
    params[4 * r + 3] = plain ? s.draw() : 0;
  }
  if (picked.length < n) picked = new Int32Array(n);
  const out = picked.subarray(0, n);
  native!(logits, V, params.subarray(0, 4 * n), banned!, out);
  for (let r = 0; r < n; r++) {
    const s = seqs[r]!;
    ids[r] = s.plainSampling && s.bannedMask(V) === banned ? out[r]! : s.sample(logits, r * V, V);
  }
}

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
        const d = s.accept(ids[row]!);
        if (d) onDelta?.(i, d);
      });
    }
    return seqs.map((s) => ({ ids: s.ids, text: s.text, finishReason: s.finishReason! }));
  } finally {
    seqs.forEach((s) => s.dispose());
  }
}
