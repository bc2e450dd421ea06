/**
 * Byte-level BPE tokenizer (GPT-2 family): text is split by a pre-tokenization regex, each
 * piece is turned into its UTF-8 bytes (ids 0..255), and learned merges are applied in rank order.
 * Chat special tokens sit at the END of the vocabulary and are never produced by `encode`.
 *
 * Id layout: `0..255` bytes, `256..256+M-1` merges (in training order), then the six
 * `SPECIAL_TOKENS` in their listed order; `vocabSize = 256 + M + 6`.
 *
 * Deviations from the textbook:
 * 1. The pre-tokenization regex is a JavaScript port of the GPT-4 pattern: no possessive
 *    quantifiers and the contraction group spelled case-insensitively by hand. Gaps the regex
 *    would skip (none are known) are still encoded, so every string round-trips.
 * 2. Training ties (equal pair counts) go to the lowest pair `(a, b)`, so training is
 *    deterministic. When the text runs out of pairs, training stops early with a smaller vocab.
 * 3. Training merges over unique pre-tokens weighted by frequency, with a pair -> words index
 *    and a lazy max-heap of pair counts (stale entries re-checked on pop).
 * 4. Lone UTF-16 surrogates are not valid Unicode: they encode as U+FFFD, like `TextEncoder`.
 * 5. `encode` merges a piece longer than `MAX_PIECE_BYTES` (128) in chunks of that many bytes:
 *    merging one piece costs about its length times the merges it goes through, so a 64 KiB
 *    "word" sent by a client would hold the event loop for most of a second; chunked, the cost
 *    is linear in the text. No merge spans a chunk boundary (real words are far shorter).
 * 6. The encode cache is bounded in bytes (`CACHE_BYTES`, 8 MiB estimated), not entries, and
 *    pieces longer than the chunk size are not cached: distinct long pieces cannot fill memory.
 */
import { createHash } from 'node:crypto';

/** The chat special tokens, in id order (the last six ids of the vocabulary). */
export const SPECIAL_TOKENS = ['<|endoftext|>', '<|system|>', '<|user|>', '<|assistant|>', '<|end|>', '<|pad|>'] as const;
export type SpecialToken = (typeof SPECIAL_TOKENS)[number];

/** The serialized tokenizer (`tokenizer.json`). `merges[i]` creates id `256 + i`. */
export interface TokenizerJSON {
  format: 'byte-bpe/1';
  vocabSize: number;
  merges: [number, number][];
  specials: string[];
  pattern: string;
}

/** GPT-4 style split: contractions, letters (with one leading non-letter), 1-3 digits, punctuation, whitespace. */
export const DEFAULT_PATTERN =
  "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const BYTES = 256;
const KEY = 1 << 16; // pair key = a * KEY + b; ids stay below 2^16
const MAX_VOCAB = KEY;
/** Longest run of bytes merged as one; longer pieces are merged chunk by chunk. */
export const MAX_PIECE_BYTES = 128;
/** Estimated bytes the encode cache may hold before it starts over. */
export const CACHE_BYTES = 8 * 1024 * 1024;
/** Estimated cost of one cache entry: the key (UTF-16), the ids, and the Map's own overhead. */
const entryBytes = (piece: string, ids: readonly number[]) => 2 * piece.length + 8 * ids.length + 80;
const utf8 = new TextEncoder();

/** Splits text into pre-tokens; pieces the regex skips are returned too, so nothing is lost. */
function* pretokenize(text: string, re: RegExp): Generator<string> {
  re.lastIndex = 0;
  let at = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > at) yield text.slice(at, m.index);
    yield m[0];
    at = m.index + m[0].length;
  }
  if (at < text.length) yield text.slice(at);
}

function compile(pattern: string): RegExp {
  return new RegExp(pattern, 'gu');
}

/** Max-heap of (count, key) ordered by count desc, then key asc (lowest pair ids win ties). */
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];
  get size(): number {
    return this.counts.length;
  }
  private above(i: number, j: number): boolean {
    const ci = this.counts[i]!, cj = this.counts[j]!;
    return ci > cj || (ci === cj && this.keys[i]! < this.keys[j]!);
  }
  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j]!, this.counts[i]!];
    [this.keys[i], this.keys[j]] = [this.keys[j]!, this.keys[i]!];
  }
  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.counts.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.above(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  pop(): [count: number, key: number] {
    const top: [number, number] = [this.counts[0]!, this.keys[0]!];
    const lastC = this.counts.pop()!, lastK = this.keys.pop()!;
    if (this.counts.length > 0) {
      this.counts[0] = lastC;
      this.keys[0] = lastK;
      let i = 0;
      const n = this.counts.length;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < n && this.above(l, m)) m = l;
        if (r < n && this.above(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

function pairCounts(word: readonly number[]): Map<number, number> {
  const out = new Map<number, number>();
  for (let i = 0; i + 1 < word.length; i++) {
    const k = word[i]! * KEY + word[i + 1]!;
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

function mergeWord(word: readonly number[], a: number, b: number, id: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < word.length; i++) {
    if (i + 1 < word.length && word[i] === a && word[i + 1] === b) {
      out.push(id);
      i++;
    } else out.push(word[i]!);
  }
  return out;
}

function trainMerges(text: string, pattern: string, numMerges: number, onProgress?: (done: number, total: number) => void): [number, number][] {
  const freq = new Map<string, number>();
  for (const piece of pretokenize(text, compile(pattern))) freq.set(piece, (freq.get(piece) ?? 0) + 1);
  // Sorted so that word indices (and hence everything downstream) do not depend on Map order quirks.
  const uniq = [...freq.keys()].sort();
  const words: number[][] = uniq.map((w) => Array.from(utf8.encode(w)));
  const wfreq = uniq.map((w) => freq.get(w)!);

  const counts = new Map<number, number>();
  const where = new Map<number, Set<number>>();
  words.forEach((word, wi) => {
    for (const [k, c] of pairCounts(word)) {
      counts.set(k, (counts.get(k) ?? 0) + c * wfreq[wi]!);
      let s = where.get(k);
      if (!s) where.set(k, (s = new Set()));
      s.add(wi);
    }
  });
  const heap = new PairHeap();
  for (const [k, c] of counts) heap.push(c, k);

  const merges: [number, number][] = [];
  const every = Math.max(1, Math.floor(numMerges / 100));
  while (merges.length < numMerges && heap.size > 0) {
    const [c, k] = heap.pop();
    const current = counts.get(k) ?? 0;
    if (current <= 0) continue;
    if (c !== current) {
      if (c > current) heap.push(current, k); // stale upper bound: re-queue at its true count
      continue;
    }
    const a = Math.floor(k / KEY), b = k % KEY;
    const id = BYTES + merges.length;
    merges.push([a, b]);
    const touched = new Set<number>();
    for (const wi of where.get(k) ?? []) {
      const word = words[wi]!;
      const merged = mergeWord(word, a, b, id);
      if (merged.length === word.length) continue; // stale index entry
      const before = pairCounts(word), after = pairCounts(merged);
      const f = wfreq[wi]!;
      for (const [pk, pc] of before) {
        const d = (after.get(pk) ?? 0) - pc;
        if (d !== 0) counts.set(pk, counts.get(pk)! + d * f);
      }
      for (const [pk, pc] of after) {
        if (before.has(pk)) continue;
        counts.set(pk, (counts.get(pk) ?? 0) + pc * f);
        let s = where.get(pk);
        if (!s) where.set(pk, (s = new Set()));
        s.add(wi);
        touched.add(pk);
      }
      words[wi] = merged;
    }
    where.delete(k);
    counts.delete(k);
    for (const pk of touched) heap.push(counts.get(pk)!, pk);
    if (onProgress && merges.length % every === 0) onProgress(merges.length, numMerges);
  }
  onProgress?.(merges.length, numMerges);
  return merges;
}

function fail(msg: string): never {
  throw new Error(`invalid tokenizer JSON: ${msg}`);
}

/**
 * A trained byte-level BPE tokenizer.
 *
 * @example
 *   const tok = Tokenizer.train(corpus, { vocabSize: 2048 });
 *   const ids = [tok.specialId('<|user|>'), ...tok.encode('Hi!'), tok.specialId('<|end|>')];
 *   tok.decode(ids); // 'Hi!'
 */
export class Tokenizer {
  /** Bytes + merges + specials. */
  readonly vocabSize: number;
  private readonly merges: readonly (readonly [number, number])[];
  private readonly pattern: string;
  private readonly re: RegExp;
  private readonly ranks = new Map<number, number>(); // pair key -> merged id
  private readonly tokenBytes: Uint8Array[] = [];
  private readonly firstSpecial: number;
  private readonly cache = new Map<string, readonly number[]>();
  #cacheBytes = 0;

  private constructor(merges: readonly (readonly [number, number])[], pattern: string) {
    this.merges = merges;
    this.pattern = pattern;
    this.re = compile(pattern);
    this.firstSpecial = BYTES + merges.length;
    this.vocabSize = this.firstSpecial + SPECIAL_TOKENS.length;
    for (let i = 0; i < BYTES; i++) this.tokenBytes.push(Uint8Array.of(i));
    merges.forEach(([a, b], i) => {
      this.ranks.set(a * KEY + b, BYTES + i);
      const x = this.tokenBytes[a]!, y = this.tokenBytes[b]!;
      const t = new Uint8Array(x.length + y.length);
      t.set(x);
      t.set(y, x.length);
      this.tokenBytes.push(t);
    });
  }

  /**
   * Learns merges from `text` until the vocabulary (bytes + merges + 6 specials) reaches
   * `vocabSize`, or the text has no pairs left. Deterministic: same text and size, same merges.
   */
  static train(text: string, opts: { vocabSize: number; onProgress?: (done: number, total: number) => void }): Tokenizer {
    const { vocabSize } = opts;
    const min = BYTES + SPECIAL_TOKENS.length;
    if (!Number.isInteger(vocabSize) || vocabSize < min || vocabSize > MAX_VOCAB) {
      throw new Error(`vocabSize must be an integer in [${min}, ${MAX_VOCAB}], got ${vocabSize}`);
    }
    return new Tokenizer(trainMerges(text, DEFAULT_PATTERN, vocabSize - min, opts.onProgress), DEFAULT_PATTERN);
  }

  /** Rebuilds a tokenizer from `toJSON()` output; throws an Error saying what is wrong with malformed input. */
  static fromJSON(json: TokenizerJSON): Tokenizer {
    if (typeof json !== 'object' || json === null) fail('not an object');
    if (json.format !== 'byte-bpe/1') fail(`format must be "byte-bpe/1", got ${JSON.stringify(json.format)}`);
    if (!Array.isArray(json.merges)) fail('merges must be an array');
    if (typeof json.pattern !== 'string') fail('pattern must be a string');
    try {
      compile(json.pattern);
    } catch (e) {
      fail(`pattern does not compile: ${(e as Error).message}`);
    }
    if (!Array.isArray(json.specials) || json.specials.length !== SPECIAL_TOKENS.length || json.specials.some((s, i) => s !== SPECIAL_TOKENS[i])) {
      fail(`specials must be exactly ${JSON.stringify(SPECIAL_TOKENS)}`);
    }
    const seen = new Set<number>();
    json.merges.forEach((m, i) => {
      const limit = BYTES + i;
      if (!Array.isArray(m) || m.length !== 2 || !m.every((x) => Number.isInteger(x) && x >= 0 && x < limit)) {
        fail(`merges[${i}] must be a pair of ids below ${limit}, got ${JSON.stringify(m)}`);
      }
      const k = m[0] * KEY + m[1];
      if (seen.has(k)) fail(`merges[${i}] duplicates an earlier merge ${JSON.stringify(m)}`);
      seen.add(k);
    });
    const expected = BYTES + json.merges.length + SPECIAL_TOKENS.length;
    if (json.vocabSize !== expected) fail(`vocabSize ${json.vocabSize} != 256 + ${json.merges.length} merges + 6 specials = ${expected}`);
    if (expected > MAX_VOCAB) fail(`vocabSize ${expected} exceeds ${MAX_VOCAB}`);
    return new Tokenizer(json.merges.map(([a, b]) => [a, b] as const), json.pattern);
  }

  /** The canonical serialized form (stable key order; `fingerprint()` hashes it). */
  toJSON(): TokenizerJSON {
    return {
      format: 'byte-bpe/1',
      vocabSize: this.vocabSize,
      merges: this.merges.map(([a, b]) => [a, b]),
      specials: [...SPECIAL_TOKENS],
      pattern: this.pattern,
    };
  }

  /** Ordinary text to ids. Never yields special ids, even for text that spells one. */
  encode(text: string): number[] {
    const out: number[] = [];
    for (const piece of pretokenize(text, this.re)) {
      let ids = this.cache.get(piece);
      if (!ids) {
        const bytes = utf8.encode(piece);
        if (bytes.length > MAX_PIECE_BYTES) {
          for (let at = 0; at < bytes.length; at += MAX_PIECE_BYTES) for (const id of this.encodeBytes(bytes.subarray(at, at + MAX_PIECE_BYTES))) out.push(id);
          continue;
        }
        ids = this.encodeBytes(bytes);
        const size = entryBytes(piece, ids);
        if (this.#cacheBytes + size > CACHE_BYTES) {
          this.cache.clear();
          this.#cacheBytes = 0;
        }
        this.cache.set(piece, ids);
        this.#cacheBytes += size;
      }
      for (const id of ids) out.push(id);
    }
    return out;
  }

  /** @internal Estimated bytes held by the encode cache (at most `CACHE_BYTES`). */
  get cacheBytes(): number {
    return this.#cacheBytes;
  }

  private encodeBytes(bytes: Uint8Array): number[] {
    let word = Array.from(bytes);
    while (word.length > 1) {
      let best = -1;
      for (let i = 0; i + 1 < word.length; i++) {
        const r = this.ranks.get(word[i]! * KEY + word[i + 1]!);
        if (r !== undefined && (best < 0 || r < best)) best = r;
      }
      if (best < 0) break;
      const [a, b] = this.merges[best - BYTES]!;
      word = mergeWord(word, a, b, best);
    }
    return word;
  }

  /** The bytes of `ids` concatenated; specials contribute none. Throws on an id outside the vocabulary. */
  decodeBytes(ids: readonly number[]): Uint8Array {
    let n = 0;
    for (const id of ids) n += this.bytesOf(id).length;
    const out = new Uint8Array(n);
    let at = 0;
    for (const id of ids) {
      const b = this.bytesOf(id);
      out.set(b, at);
      at += b.length;
    }
    return out;
  }

  /** Ids to text; specials decode to '' and invalid UTF-8 becomes U+FFFD (as `TextDecoder` does). */
  decode(ids: readonly number[]): string {
    return new TextDecoder('utf-8', { ignoreBOM: true }).decode(this.decodeBytes(ids));
  }

  /** @internal bytes of one id (empty for specials). */
  bytesOf(id: number): Uint8Array {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) throw new Error(`token id ${id} outside vocabulary [0, ${this.vocabSize})`);
    return id >= this.firstSpecial ? EMPTY : this.tokenBytes[id]!;
  }

  /** The id of a special token, e.g. `specialId('<|end|>')`. */
  specialId(name: SpecialToken): number {
    const i = SPECIAL_TOKENS.indexOf(name);
    if (i < 0) throw new Error(`unknown special token ${JSON.stringify(name)}`);
    return this.firstSpecial + i;
  }

  /** True for the six special ids. */
  isSpecial(id: number): boolean {
    return id >= this.firstSpecial && id < this.vocabSize;
  }

  /** sha256 hex of the canonical JSON; a checkpoint stores it and refuses a different tokenizer. */
  fingerprint(): string {
    return createHash('sha256').update(JSON.stringify(this.toJSON())).digest('hex');
  }
}

const EMPTY = new Uint8Array(0);

/**
 * Incremental UTF-8 decoding for streaming: push token ids, get the text that is complete so
 * far (a multi-byte character split across tokens is held back until its last byte arrives).
 */
export class StreamDecoder {
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  constructor(private readonly tok: Tokenizer) {}
  /** Adds one id; returns the newly completed text (possibly ''). */
  push(id: number): string {
    return this.decoder.decode(this.tok.bytesOf(id), { stream: true });
  }
  /** Ends the stream; an incomplete trailing character becomes U+FFFD. */
  flush(): string {
    return this.decoder.decode();
  }
}
