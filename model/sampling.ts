/**
 * Next-token sampling from a row of logits: temperature, top-k, top-p (nucleus), with a seeded
 * generator (model/random.ts) so the same seed gives the same text. Temperature 0 is greedy.
 *
 * Before sampling, a row may be adjusted per request (`adjustLogits`, OpenAI's semantics):
 * `logit_bias` is added to the logits (a bias of -100 or below bans the token), then for every
 * token already sampled in this reply `frequencyPenalty × count + presencePenalty` is subtracted.
 * `sampledLogprobs` reports the log-probabilities of the distribution `sampleToken` draws from:
 * after the adjustments, temperature, top-k and top-p (renormalised over the tokens kept; a token
 * outside them has probability 0). At temperature 0 that distribution is a point mass on the
 * greedy token (log-probability 0).
 */

/** Sampling knobs, as the chat APIs expose them. */
export interface SamplingParams {
  /** 0 = greedy; otherwise logits are divided by it. */
  temperature: number;
  /** Keep only the k most likely tokens (0 = off). */
  topK: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = off). */
  topP: number;
}

export const DEFAULT_SAMPLING: SamplingParams = Object.freeze({ temperature: 0.8, topK: 0, topP: 0.95 });

/** Per-request changes to the logits before sampling (all off by default). */
export interface LogitAdjustments {
  /** Subtracted once from the logit of every token that already occurs in the reply. */
  presencePenalty?: number;
  /** Subtracted from a token's logit once per occurrence in the reply so far. */
  frequencyPenalty?: number;
  /** `[tokenId, bias]` pairs added to the logits; a bias of -100 or below bans the token. */
  logitBias?: readonly (readonly [number, number])[];
}

/** The most negative bias that is still a bias; at or below it the token is banned. */
export const BAN_BIAS = -100;

/** Whether `adj` changes anything (a plain row needs no copy). */
export function adjustsLogits(adj: LogitAdjustments): boolean {
  return !!(adj.presencePenalty || adj.frequencyPenalty || adj.logitBias?.length);
}

/**
 * Writes `logits[offset .. offset+V)` into `out` (length ≥ V) with `adj` applied, given how often
 * each token occurs in the reply so far (`counts`), and banned tokens (`banned`, plus those with a
 * bias ≤ -100) set to NaN, which `sampleToken` and `sampledLogprobs` never pick.
 */
export function adjustLogits(
  logits: Float32Array,
  offset: number,
  V: number,
  adj: LogitAdjustments,
  counts: ReadonlyMap<number, number>,
  out: Float32Array,
  banned?: ReadonlySet<number>,
): Float32Array {
  out.set(logits.subarray(offset, offset + V));
  for (const [id, bias] of adj.logitBias ?? []) if (id >= 0 && id < V) out[id] = bias <= BAN_BIAS ? NaN : out[id]! + bias;
  const presence = adj.presencePenalty ?? 0;
  const frequency = adj.frequencyPenalty ?? 0;
  if (presence || frequency) for (const [id, n] of counts) if (id >= 0 && id < V) out[id] = out[id]! - frequency * n - presence;
  if (banned) for (const id of banned) if (id >= 0 && id < V) out[id] = NaN;
  return out;
}

/** A copy of the row (in the shared scratch) with banned tokens NaN: NaN passes no comparison of the samplers. */
function withoutBanned(logits: Float32Array, offset: number, V: number, banned: ReadonlySet<number>): { logits: Float32Array; offset: number } {
  const row = scratch(V).row;
  row.set(logits.subarray(offset, offset + V));
  for (const id of banned) if (id >= 0 && id < V) row[id] = NaN;
  return { logits: row, offset: 0 };
}

/** The largest logit of the row and its first index (-1 when none is above -∞: all NaN or -∞). */
function peak(logits: Float32Array, offset: number, V: number): { max: number; best: number } {
  let max = -Infinity;
  let best = -1;
  for (let i = 0; i < V; i++) {
    const l = logits[offset + i]!;
    if (l > max) {
      max = l;
      best = i;
    }
  }
  return { max, best };
}

/** A token and its log-probability. */
export interface TokenChoice {
  id: number;
  logprob: number;
}

/**
 * Picks a token from `logits[offset .. offset+V)`.
 *
 * @example
 *   const rng = createRng(42);
 *   const id = sampleToken(logits, 0, vocabSize, { temperature: 0.7, topK: 50, topP: 0.9 }, rng);
 */
export function sampleToken(
  logits: Float32Array,
  offset: number,
  V: number,
  params: SamplingParams,
  rng: () => number,
  banned?: ReadonlySet<number>,
): number {
  if (banned && banned.size) ({ logits, offset } = withoutBanned(logits, offset, V, banned));
  const { max, best } = peak(logits, offset, V);
  if (params.temperature <= 0) return best;
  // Candidates: tokens within a margin of the best logit (the rest have probability below
  // e^-30 of the best after temperature). With top-k or top-p they are sorted by logit (ties:
  // lower id first), cut by top-k, then by top-p, and sampled in that order; without, sampled in
  // id order (no sort). The sort is a stable radix sort of 32-bit keys: a comparator sort of ~V
  // candidates cost ~0.5 ms per token.
  const floor = max - 30 * params.temperature;
  if (params.topK <= 0 && params.topP >= 1) return sampleAll(logits, offset, V, max, floor, params.temperature, rng);
  const { ids, probs, n, total } = nucleus(logits, offset, V, max, floor, params);
  let r = rng() * total;
  for (let j = 0; j < n; j++) {
    r -= probs[j]!;
    if (r <= 0) return ids[j]!;
  }
  return ids[n - 1]!;
}

/**
 * The log-probability of `id` under the distribution `sampleToken` draws from with the same
 * arguments, and the `topN` most likely tokens of it (fewer when fewer have a probability above
 * 0), most likely first (ties: lower id first). Greedy (temperature 0): a point mass on the
 * greedy token. `id` must be a token that distribution can draw.
 *
 * @example
 *   const { logprob, top } = sampledLogprobs(logits, 0, V, params, id, 5);
 */
export function sampledLogprobs(
  logits: Float32Array,
  offset: number,
  V: number,
  params: SamplingParams,
  id: number,
  topN: number,
  banned?: ReadonlySet<number>,
): { logprob: number; top: TokenChoice[] } {
  if (banned && banned.size) ({ logits, offset } = withoutBanned(logits, offset, V, banned));
  const { max, best } = peak(logits, offset, V);
  if (params.temperature <= 0) {
    if (id !== best) throw new Error(`sampledLogprobs: greedy decoding picks ${best}, not ${id}`);
    return { logprob: 0, top: topN > 0 ? [{ id, logprob: 0 }] : [] };
  }
  const { ids, probs, n, total } = nucleus(logits, offset, V, max, max - 30 * params.temperature, params);
  const logTotal = Math.log(total);
  let logprob = NaN;
  for (let j = 0; j < n; j++) if (ids[j] === id) logprob = Math.log(probs[j]!) - logTotal;
  if (Number.isNaN(logprob)) throw new Error(`sampledLogprobs: token ${id} has probability 0 under these sampling parameters`);
  const top: TokenChoice[] = [];
  for (let j = 0; j < Math.min(topN, n); j++) top.push({ id: ids[j]!, logprob: Math.log(probs[j]!) - logTotal });
  return { logprob, top };
}

/**
 * The tokens kept at or above `floor`, sorted by logit (ties: lower id first), cut by top-k then
 * top-p, with their unnormalised probabilities (`exp((l - max) / T)`) and their sum. The arrays
 * are shared scratch buffers, valid until the next call.
 */
function nucleus(logits: Float32Array, offset: number, V: number, max: number, floor: number, params: SamplingParams): { ids: Int32Array; probs: Float64Array; n: number; total: number } {
  const s = scratch(V);
  let n = 0;
  for (let i = 0; i < V; i++) {
    const l = logits[offset + i]!;
    if (l >= floor) {
      s.key[n] = descendingKey(l);
      s.id[n++] = i;
    }
  }
  const ids = radixSort(s, n);
  if (params.topK > 0 && params.topK < n) n = params.topK;
  const probs = s.probs;
  let total = 0;
  for (let j = 0; j < n; j++) {
    const p = Math.exp((logits[offset + ids[j]!]! - max) / params.temperature);
    probs[j] = p;
    total += p;
  }
  if (params.topP < 1) {
    let acc = 0;
    for (let j = 0; j < n; j++) {
      acc += probs[j]! / total;
      if (acc >= params.topP) {
        n = j + 1;
        break;
      }
    }
    total = 0;
    for (let j = 0; j < n; j++) total += probs[j]!;
  }
  return { ids, probs, n, total };
}

/** Samples among the tokens at or above `floor`, walking them in id order. */
function sampleAll(logits: Float32Array, offset: number, V: number, max: number, floor: number, temperature: number, rng: () => number): number {
  let total = 0;
  let last = -1;
  for (let i = 0; i < V; i++) {
    const l = logits[offset + i]!;
    if (l >= floor) {
      total += Math.exp((l - max) / temperature);
      last = i;
    }
  }
  let r = rng() * total;
  for (let i = 0; i < V; i++) {
    const l = logits[offset + i]!;
    if (l >= floor && (r -= Math.exp((l - max) / temperature)) <= 0) return i;
  }
  return last;
}

interface Scratch {
  row: Float32Array; // a copy of the logits with banned tokens masked
  key: Int32Array; // descending keys with the top bit flipped, so they stay small integers in V8
  id: Int32Array;
  key2: Int32Array;
  id2: Int32Array;
  probs: Float64Array;
  counts: Int32Array;
}

let buffers: Scratch | undefined;

function scratch(V: number): Scratch {
  if (!buffers || buffers.key.length < V) {
    buffers = {
      row: new Float32Array(V),
      key: new Int32Array(V),
      id: new Int32Array(V),
      key2: new Int32Array(V),
      id2: new Int32Array(V),
      probs: new Float64Array(V),
      counts: new Int32Array(256),
    };
  }
  return buffers;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * A key whose unsigned order is descending float order (-0 and +0 equal), with its top bit
 * flipped (an int32; `radixSort` flips it back).
 */
function descendingKey(logit: number): number {
  f32[0] = logit + 0;
  const b = u32[0]!;
  const ascending = b & 0x80000000 ? ~b : b | 0x80000000;
  return ~ascending ^ 0x80000000;
}

/** Stable LSD radix sort of the first n (key, id) pairs by key; returns the ids in order. */
function radixSort(s: Scratch, n: number): Int32Array {
  let key = s.key;
  let id = s.id;
  let key2 = s.key2;
  let id2 = s.id2;
  const counts = s.counts;
  for (let shift = 0; shift < 32; shift += 8) {
    const flip = shift === 24 ? 0x80 : 0;
    counts.fill(0);
    for (let i = 0; i < n; i++) counts[((key[i]! >>> shift) & 255) ^ flip]!++;
    if (counts[((key[0]! >>> shift) & 255) ^ flip] === n) continue; // every key has this byte
    for (let b = 0, sum = 0; b < 256; b++) {
      const c = counts[b]!;
      counts[b] = sum;
      sum += c;
    }
    for (let i = 0; i < n; i++) {
      const k = key[i]!;
      const at = counts[((k >>> shift) & 255) ^ flip]!++;
      key2[at] = k;
      id2[at] = id[i]!;
    }
    const tk = key;
    key = key2;
    key2 = tk;
    const ti = id;
    id = id2;
    id2 = ti;
  }
  return id;
}
