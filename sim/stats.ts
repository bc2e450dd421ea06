/**
 * The statistics of the story's report, pure and seeded.
 *
 *   - `pairedBootstrap`: the final comparison holds, per held-out prompt, the champion's and the
 *     SFT model's replies to the same seeds (4 samples a prompt by default); a prompt's win is the
 *     mean over its samples (ties ½). The interval resamples prompts with replacement (the pairs
 *     inside a prompt stay together: a paired bootstrap) and takes the 2.5 and 97.5 percentiles of
 *     the resampled means (percentile method, ≥ 1000 resamples, a fixed seed). It covers the noise
 *     of prompts and sampling, not the story-to-story variation of training (the per-seed figures
 *     show that).
 *   - `bayesCeiling`: the best pairwise accuracy any reward model can reach on labels drawn by
 *     Bradley–Terry users: a pair whose gold scores differ by Δ is labelled in gold's order with
 *     probability σ(|Δ|/T), so a model that knows gold is right that often: E[σ(|Δ|/T)] over the
 *     labelled pairs (pairs the users called ties carry no order and are not scored).
 *   - `heldOutPairs`: the ordered pairs the users' sessions stated (a comparison's pick, every pair
 *     of a ranking), with their gold scores, on the prompts a split predicate selects.
 */
import { Rng, sigmoid } from './gold-rubric.ts';
import type { SessionResult } from './sim-users.ts';

/** Mean and percentile-bootstrap (1 − alpha) interval of per-unit values, resampling units. */
export function pairedBootstrap(perUnit: readonly number[], o: { resamples?: number; seed?: number; alpha?: number } = {}): { mean: number; interval: [number, number]; units: number } {
  const n = perUnit.length;
  if (!n) return { mean: NaN, interval: [NaN, NaN], units: 0 };
  const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
  const interval = clusterBootstrap(perUnit.map((x) => [x]), (xs) => sum(xs) / xs.length, { ...o, resamples: Math.max(1000, o.resamples ?? 2000) });
  return { mean: sum(perUnit) / n, interval, units: n };
}

/**
 * Percentile-bootstrap (1 − alpha) interval of `stat` over clustered data: each resample draws
 * clusters (prompts) with replacement and evaluates `stat` on their items together, so the
 * samples of one prompt stay together as in {@link pairedBootstrap}.
 */
export function clusterBootstrap<T>(clusters: readonly (readonly T[])[], stat: (items: readonly T[]) => number, o: { resamples?: number; seed?: number; alpha?: number } = {}): [number, number] {
  const n = clusters.length;
  if (!n) return [NaN, NaN];
  const resamples = Math.max(200, o.resamples ?? 1000);
  const alpha = o.alpha ?? 0.05;
  const rng = new Rng(o.seed ?? 1);
  const values = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    const items: T[] = [];
    for (let i = 0; i < n; i++) for (const x of clusters[rng.int(n)]!) items.push(x);
    values[r] = stat(items);
  }
  values.sort();
  const q = (p: number): number => values[Math.min(resamples - 1, Math.max(0, Math.round(p * (resamples - 1))))]!;
  return [q(alpha / 2), q(1 - alpha / 2)];
}

/** One prompt's win for side A from paired gold scores (same seeds): the mean of 1 / ½ / 0 over its samples. */
export function promptWin(a: readonly number[], b: readonly number[]): number {
  if (a.length !== b.length || !a.length) throw new Error(`promptWin: paired samples expected, got ${a.length} and ${b.length}`);
  let w = 0;
  for (let i = 0; i < a.length; i++) w += a[i]! > b[i]! ? 1 : a[i] === b[i] ? 0.5 : 0;
  return w / a.length;
}

/** E[σ(|Δ|/T)] over pairs of gold scores; T = 0 means noiseless labels. NaN without pairs. */
export function bayesCeiling(pairs: readonly { winner: number; loser: number }[], temperature: number): number {
  if (!pairs.length) return NaN;
  let s = 0;
  for (const p of pairs) {
    const d = Math.abs(p.winner - p.loser);
    s += temperature > 0 ? sigmoid(d / temperature) : d > 0 ? 1 : 0.5;
  }
  return s / pairs.length;
}

/** The ordered pairs (winner's and loser's gold score, in the users' stated order) of the sessions on prompts `keep` accepts. */
export function heldOutPairs(sessions: readonly SessionResult[], keep: (prompt: string) => boolean): { winner: number; loser: number }[] {
  const out: { winner: number; loser: number }[] = [];
  for (const s of sessions) {
    if (!keep(s.prompt)) continue;
    if (s.kind === 'comparison' && (s.judgement === 'a' || s.judgement === 'b')) {
      const [a, b] = s.gold as [number, number];
      out.push(s.judgement === 'a' ? { winner: a, loser: b } : { winner: b, loser: a });
    } else if (s.kind === 'ranking' && Array.isArray(s.judgement)) {
      const order = s.judgement;
      for (let i = 0; i < order.length; i++) for (let j = i + 1; j < order.length; j++) out.push({ winner: s.gold[order[i]!]!, loser: s.gold[order[j]!]! });
    }
  }
  return out;
}

/** Mean of finite values (NaN when none). */
export function mean(xs: readonly number[]): number {
  const f = xs.filter(Number.isFinite);
  return f.length ? f.reduce((a, b) => a + b, 0) / f.length : NaN;
}

/** Rounded to 3 decimals, null when not finite (JSON has no NaN). */
export function round3(x: number): number | null {
  return Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null;
}
