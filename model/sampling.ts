/**
 * Next-token sampling from a row of logits: temperature, top-k, top-p (nucleus), with a seeded
 * generator (model/random.ts) so the same seed gives the same text. Temperature 0 is greedy.
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
  const allowed = (i: number) => !banned || !banned.has(i);
  if (params.temperature <= 0) {
    let best = -1;
    let bestLogit = -Infinity;
    for (let i = 0; i < V; i++) {
      const l = logits[offset + i]!;
      if (l > bestLogit && allowed(i)) {
        bestLogit = l;
        best = i;
      }
    }
    return best;
  }
  // Candidates: tokens within a margin of the best logit (the rest have probability below
  // e^-30 of the best after temperature), sorted by logit, cut by top-k, then by top-p.
  let max = -Infinity;
  for (let i = 0; i < V; i++) {
    const l = logits[offset + i]!;
    if (l > max && allowed(i)) max = l;
  }
  const floor = max - 30 * params.temperature;
  let idx: number[] = [];
  for (let i = 0; i < V; i++) if (logits[offset + i]! >= floor && allowed(i)) idx.push(i);
  idx.sort((a, b) => logits[offset + b]! - logits[offset + a]! || a - b);
  if (params.topK > 0 && params.topK < idx.length) idx = idx.slice(0, params.topK);
  const probs = idx.map((i) => Math.exp((logits[offset + i]! - max) / params.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (params.topP < 1) {
    let acc = 0;
    let keep = probs.length;
    for (let j = 0; j < probs.length; j++) {
      acc += probs[j]! / total;
      if (acc >= params.topP) {
        keep = j + 1;
        break;
      }
    }
    probs.length = keep;
    idx.length = keep;
    total = probs.reduce((a, b) => a + b, 0);
  }
  let r = rng() * total;
  for (let j = 0; j < probs.length; j++) {
    r -= probs[j]!;
    if (r <= 0) return idx[j]!;
  }
  return idx[idx.length - 1]!;
}
