/**
 * Bradley–Terry strengths of model versions from pairwise outcomes, for promotion decisions.
 *
 * Model: P(i beats j) = σ(θ_i − θ_j), θ_reference = 0. Fitted by Newton's method on the log
 * likelihood with a weak Gaussian prior (σ² = 100 on each θ; keeps a version that never lost
 * finite). The 95% interval of each θ is ±1.96·√(H⁻¹)_ii from the Hessian at the optimum (Wald),
 * i.e. it is the uncertainty of the difference to the reference. `elo` = 400/ln 10 · θ.
 */
import type { VersionPair } from '../feedback/version-feedback.ts';

export interface Strength {
  versionId: string;
  theta: number;
  low: number;
  high: number;
  elo: number;
  /** Decided pairwise outcomes involving this version. */
  games: number;
}

const ELO = 400 / Math.log(10);
const PRIOR = 1 / 100;

/** Strengths relative to `reference` (which gets θ = 0 exactly); versions absent from `pairs` are left out. */
export function fitBradleyTerry(pairs: readonly VersionPair[], reference: string): Strength[] {
  const ids = [...new Set(pairs.flatMap((p) => [p.winner, p.loser]))].filter((v) => v !== reference);
  const all = [reference, ...ids];
  const index = new Map(all.map((v, i) => [v, i - 1])); // reference → -1 (fixed)
  const n = ids.length;
  const theta = new Float64Array(n);
  const at = (v: string) => (index.get(v)! < 0 ? 0 : theta[index.get(v)!]!);
  let H: number[][] = [];
  for (let iter = 0; iter < 50; iter++) {
    const g = new Float64Array(n);
    H = Array.from({ length: n }, () => new Array<number>(n).fill(0));
    for (let i = 0; i < n; i++) {
      g[i] = -PRIOR * theta[i]!;
      H[i]![i] = PRIOR;
    }
    for (const p of pairs) {
      const w = index.get(p.winner)!;
      const l = index.get(p.loser)!;
      const q = 1 / (1 + Math.exp(-(at(p.winner) - at(p.loser)))); // P(winner beats loser)
      const grad = p.count * (1 - q);
      const curv = p.count * q * (1 - q);
      if (w >= 0) ((g[w]! += grad), (H[w]![w]! += curv));
      if (l >= 0) ((g[l]! -= grad), (H[l]![l]! += curv));
      if (w >= 0 && l >= 0) ((H[w]![l]! -= curv), (H[l]![w]! -= curv));
    }
    const step = solve(H, Array.from(g));
    let max = 0;
    for (let i = 0; i < n; i++) {
      theta[i]! += step[i]!;
      max = Math.max(max, Math.abs(step[i]!));
    }
    if (max < 1e-9) break;
  }
  const inv = invert(H);
  const games = new Map<string, number>();
  for (const p of pairs) for (const v of [p.winner, p.loser]) games.set(v, (games.get(v) ?? 0) + p.count);
  return all.map((v) => {
    const i = index.get(v)!;
    const t = i < 0 ? 0 : theta[i]!;
    const se = i < 0 ? 0 : Math.sqrt(inv[i]![i]!);
    return { versionId: v, theta: t, low: t - 1.96 * se, high: t + 1.96 * se, elo: ELO * t, games: games.get(v) ?? 0 };
  });
}

function solve(A: readonly number[][], b: number[]): number[] {
  const n = b.length;
  const M = A.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(M[r]![c]!) > Math.abs(M[p]![c]!)) p = r;
    [M[c], M[p]] = [M[p]!, M[c]!];
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = M[r]![c]! / M[c]![c]!;
      for (let k = c; k <= n; k++) M[r]![k]! -= f * M[c]![k]!;
    }
  }
  return M.map((row, i) => row[n]! / row[i]!);
}

function invert(A: readonly number[][]): number[][] {
  const n = A.length;
  const cols = Array.from({ length: n }, (_, j) => solve(A, Array.from({ length: n }, (_, i) => (i === j ? 1 : 0))));
  return Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => cols[j]![i]!));
}
