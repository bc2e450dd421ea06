/**
 * Text generation on top of the GPT's KV-cache decoding: one `DecodeSequence` per reply holds
 * its cache, its seeded sampler, its streamed text and its stop rules (end-of-turn token, stop
 * strings, max tokens, the context window). `generateBatch` decodes many sequences together, one
 * batched forward pass per step; a serving scheduler drives `DecodeSequence`s the same way.
 */
import type { GPT, KVCache } from './gpt.ts';
import { disposeCache } from './gpt.ts';
import { StreamDecoder, type Tokenizer } from './tokenizer.ts';
import { endOfTurnId } from './chat-template.ts';
import { DEFAULT_SAMPLING, sampleToken, type SamplingParams } from './sampling.ts';
import { createRng } from './random.ts';

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

  constructor(
    private readonly tok: Tokenizer,
    readonly cache: KVCache,
    readonly opts: GenerateOptions,
    private readonly blockSize: number,
  ) {
    this.rng = createRng(opts.seed);
    this.decoder = new StreamDecoder(tok);
    this.eot = endOfTurnId(tok);
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
    const id = sampleToken(logits, offset, V, this.opts, this.rng, bannedSpecials(this.tok, this.eot));
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

const bannedCache = new WeakMap<Tokenizer, Set<number>>();
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
      live.forEach(([s, i], row) => {
        const d = s.push(logits, row * V, V);
        if (d) onDelta?.(i, d);
      });
    }
    return seqs.map((s) => ({ ids: s.ids, text: s.text, finishReason: s.finishReason! }));
  } finally {
    seqs.forEach((s) => s.dispose());
  }
}
