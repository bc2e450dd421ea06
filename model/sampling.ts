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
 * How a row's tokens are weighed (the same in `sampleToken`, `sampledLogprobs` and the native
 * sampler, model/kernels/native-sampler.ts, which picks the same token for the same draw):
 *
 * - `x = fround(fround(l - max) · fround(1 / T))`, in single precision, for every allowed logit
 *   `l` (`max`: the largest allowed one);
 * - candidates are the tokens with `x ≥ -30` (probability above e^-30 of the best);
 * - a candidate's weight is the integer `q = trunc(expWeight(x) · 2^S)`: `expWeight` is a
 *   single-precision exponential specified operation by operation (below), and `S` (`weightBits`)
 *   keeps the sum of V weights under 2^53, so every sum of weights is an exact integer in double
 *   precision, whatever the order of its terms. A weight of 0 (below 2^-S of the best) leaves the
 *   token out.
 *
 * Top-k keeps the k candidates of largest logit (ties: lower id first), top-p the shortest prefix
 * of them in that order whose weight reaches `topP` times theirs; the token is then drawn among
 * those kept, walking them in id order: the first whose running sum of weights exceeds
 * `floor(u · total)`. Exact sums make the pick independent of how it is computed, so the native
 * sampler may select the nucleus without sorting it and add the weights in any order.
 */
const LOG2E = Math.fround(1.44269504088896341);
const LN2_HI = Math.fround(0.693359375); // 9 significant bits: k · LN2_HI is exact
const LN2_LO = Math.fround(-2.12194440e-4);
const E1 = Math.fround(1.9875691500e-4);
const E2 = Math.fround(1.3981999507e-3);
const E3 = Math.fround(8.3334519073e-3);
const E4 = Math.fround(4.1665795894e-2);
const E5 = Math.fround(1.6666665459e-1);
const E6 = Math.fround(5.0000001201e-1);
/** 2^k for the exponents k of `expWeight` (k in [-64, 0]), exact in single precision. */
const POW2 = Float64Array.from({ length: 65 }, (_, i) => 2 ** (i - 64));

/**
 * e^x in single precision for x in [-30, 0] (a float): Cody-Waite reduction by ln 2, then a
 * degree-7 polynomial (Cephes' expf), every operation rounded to single precision as written, so
 * that the native sampler's vectorised copy gives the same bits. Relative error under 2e-7.
 */
export function expWeight(x: number): number {
  const fr = Math.fround;
  const k = Math.floor(fr(fr(x * LOG2E) + 0.5));
  const f = fr(fr(x - fr(k * LN2_HI)) - fr(k * LN2_LO));
  const z = fr(f * f);
  let p = fr(fr(E1 * f) + E2);
  p = fr(fr(p * f) + E3);
  p = fr(fr(p * f) + E4);
  p = fr(fr(p * f) + E5);
  p = fr(fr(p * f) + E6);
  const y = fr(fr(fr(p * z) + f) + 1);
  return fr(y * POW2[k + 64]!);
}

/** S of the weights `trunc(expWeight(x) · 2^S)` of a row of V logits: at most 40, and V · 2^S ≤ 2^53. */
export function weightBits(V: number): number {
  let bits = 0;
  while (2 ** bits < V) bits++;
  return Math.min(40, 53 - bits);
}

/**
 * Picks a token from `logits[offset .. offset+V)` (see the weights above).
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
  const invT = Math.fround(1 / params.temperature);
  if (params.temperature <= 0) return best;
  const u = rng(); // one draw whenever the temperature is above 0, as the batched samplers take it
  if (invT === Infinity || max === Infinity || best < 0) return best;
  const s = scratch(V);
  const sorted = params.topK > 0 || params.topP < 1;
  const kept = weigh(logits, offset, V, max, invT, params, sorted, s);
  if (sorted) keepOnly(s, kept, V);
  return pickInIdOrder(s.weight, V, u);
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
  const invT = Math.fround(1 / params.temperature);
  if (best < 0) throw new Error(`sampledLogprobs: token ${id} has probability 0 under these sampling parameters`);
  if (params.temperature <= 0 || invT === Infinity || max === Infinity) {
    if (id !== best) throw new Error(`sampledLogprobs: greedy decoding picks ${best}, not ${id}`);
    return { logprob: 0, top: topN > 0 ? [{ id, logprob: 0 }] : [] };
  }
  const s = scratch(V);
  const kept = weigh(logits, offset, V, max, invT, params, true, s);
  const { id: ids, weight } = s;
  let total = 0;
  for (let j = 0; j < kept; j++) total += weight[ids[j]!]!;
  const logTotal = Math.log(total);
  let logprob = NaN;
  for (let j = 0; j < kept; j++) if (ids[j] === id) logprob = Math.log(weight[id]!) - logTotal;
  if (Number.isNaN(logprob)) throw new Error(`sampledLogprobs: token ${id} has probability 0 under these sampling parameters`);
  const order = Array.from(ids.subarray(0, kept)).sort((a, b) => weight[b]! - weight[a]! || a - b);
  const top: TokenChoice[] = order.slice(0, Math.max(0, topN)).map((t) => ({ id: t, logprob: Math.log(weight[t]!) - logTotal }));
  return { logprob, top };
}

/**
 * Writes every token's weight into `s.weight` (0 for non-candidates). With `sorted`, the
 * candidates kept by top-k and top-p, in order of logit (ties: lower id first), are `s.id[0 ..
 * returned)`; without (no top-k, no top-p), every candidate is kept and it returns -1.
 */
function weigh(logits: Float32Array, offset: number, V: number, max: number, invT: number, params: SamplingParams, sorted: boolean, s: Scratch): number {
  const scale = 2 ** weightBits(V);
  const weight = s.weight;
  let n = 0;
  for (let i = 0; i < V; i++) {
    const l = logits[offset + i]!;
    const x = Math.fround(Math.fround(l - max) * invT);
    const q = x >= -30 ? Math.trunc(expWeight(x) * scale) : 0;
    weight[i] = q;
    if (sorted && q > 0) {
      s.key[n] = descendingKey(l);
      s.id[n++] = i;
    }
  }
  if (!sorted) return -1;
  const ids = radixSort(s, n);
  if (ids !== s.id) s.id.set(ids.subarray(0, n));
  if (params.topK > 0 && params.topK < n) n = params.topK;
  if (params.topP < 1) {
    let total = 0;
    for (let j = 0; j < n; j++) total += weight[s.id[j]!]!;
    const target = params.topP * total;
    let acc = 0;
    for (let j = 0; j < n; j++) {
      acc += weight[s.id[j]!]!;
      if (acc >= target) {
        n = j + 1;
        break;
      }
    }
  }
  return n;
}

/** The token the draw `u` picks among tokens of positive weight, in id order (-1 when there is none). */
function pickInIdOrder(weight: Float64Array, V: number, u: number): number {
  let total = 0;
  for (let i = 0; i < V; i++) total += weight[i]!;
  if (total === 0) return -1;
  const r = Math.min(Math.floor(u * total), total - 1);
  let acc = 0;
  for (let i = 0; i < V; i++) {
    acc += weight[i]!;
    if (acc > r) return i;
  }
  return -1; // unreachable: acc ends at total > r
}

/** Sets the weight of every token but the `kept` ones `s.id[0 .. kept)` to 0. */
function keepOnly(s: Scratch, kept: number, V: number): void {
  const mark = s.mark;
  mark.fill(0, 0, V);
  for (let j = 0; j < kept; j++) mark[s.id[j]!] = 1;
  for (let i = 0; i < V; i++) if (!mark[i]) s.weight[i] = 0;
}

interface Scratch {
  row: Float32Array; // a copy of the logits with banned tokens masked
  key: Int32Array; // descending keys with the top bit flipped, so they stay small integers in V8
  id: Int32Array;
  key2: Int32Array;
  id2: Int32Array;
  weight: Float64Array; // each token's integer weight (0: not a candidate)
  mark: Uint8Array; // the tokens kept by top-k and top-p
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
      weight: new Float64Array(V),
      mark: new Uint8Array(V),
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
