/**
 * The online loop's gates and guards, as pure functions of what the loop measured. None reads
 * gold (a scorer that knows the truth) except the two kept for the `goldGate` ablation.
 *
 *   - {@link proxyPreFilter}: a candidate is offered to the users' arena only when its proxy score
 *     beats the champion's by `minScoreGain` and its KL to SFT is within the budget. The proxy is
 *     the reward model the policy was just optimised against (a winner's curse), so it only
 *     filters; the users' head-to-head judgements decide.
 *   - {@link rewardAccuracyGuard}: the reward model must reach `minRewardAccuracy` on held-out
 *     judgements, and not fall more than `maxAccuracyDrop` below the last round's.
 *   - {@link overOptimisationGuard}: when the arena rejected a candidate the proxy had preferred,
 *     the next round pushes less (half the PPO steps, twice β) or starts afresh (β as configured,
 *     the reward model from the SFT trunk instead of the fooled one), and says why.
 *   - {@link ensembleDisagreementRising}: across the last `patience` evaluations the proxy rose
 *     while the reward ensemble's disagreement rose by more than `tolerance`: the policy is moving
 *     where the reward models do not agree (Goodhart without an oracle); the optimiser stops.
 *   - {@link klEstimateToSft}/{@link klOverBudget}: the budget is on the total KL to SFT, also
 *     when the reference is re-anchored to the champion.
 *   - {@link proxyGoldDiverged}/{@link goldGate}: the old gold guard and gate, ablation only.
 *   - {@link arenaStep}: what an arena verdict means for the iteration.
 */

/** What an evaluation of a policy measured (gold only when a gold source was given, for the report). */
export interface PolicyEval {
  /** Mean proxy score (the reward the optimiser saw; pessimistic with an ensemble). */
  proxy: number;
  /** Mean KL per reply to SFT (k1, on the policy's own samples). */
  kl: number;
  /** Mean reply length in tokens. */
  length: number;
  /** Mean ensemble standard deviation (disagreement); NaN without an ensemble. */
  spread: number;
  /** Mean gold score; NaN without gold. Never read by a decision unless `goldGate`. */
  gold: number;
}

/** The pre-filter's verdict: whether to offer the candidate to the arena, and why not. */
export interface PreFilterVerdict {
  offer: boolean;
  gain: number;
  reasons: string[];
}

/** Candidate proxy − champion proxy ≥ `minScoreGain` and candidate KL to SFT ≤ `klBudget` → offer. */
export function proxyPreFilter(candidate: Pick<PolicyEval, 'proxy' | 'kl'>, champion: Pick<PolicyEval, 'proxy'>, o: { minScoreGain: number; klBudget: number }): PreFilterVerdict {
  const gain = candidate.proxy - champion.proxy;
  const reasons: string[] = [];
  if (!(gain >= o.minScoreGain)) reasons.push(`proxy gain ${gain.toFixed(3)} < ${o.minScoreGain}`);
  if (!(candidate.kl <= o.klBudget)) reasons.push(`KL to SFT ${candidate.kl.toFixed(2)} > budget ${o.klBudget}`);
  return { offer: reasons.length === 0, gain, reasons };
}

/** Why the reward model must not be trained against, or undefined when it may. */
export function rewardAccuracyGuard(accuracy: number, previous: number | undefined, o: { minRewardAccuracy: number; maxAccuracyDrop: number; pairs?: number }): string | undefined {
  if (!(accuracy >= o.minRewardAccuracy)) {
    return `reward model held-out accuracy ${accuracy.toFixed(3)} is below ${o.minRewardAccuracy}${o.pairs !== undefined ? ` over ${o.pairs} pairs` : ''}; not training a policy on it`;
  }
  if (previous !== undefined && Number.isFinite(previous) && accuracy < previous - o.maxAccuracyDrop) {
    return `Goodhart guard: held-out preference accuracy fell from ${previous.toFixed(3)} to ${accuracy.toFixed(3)} since the last iteration, while the policy was trained to raise the proxy reward: the reward model no longer tracks what people prefer; stopping for the admin`;
  }
  return undefined;
}

/** The last verdict on a candidate (from the promotion log): the users' arena, or an admin. */
export interface CandidateVerdict {
  action: 'promote' | 'reject';
  versionId: string;
  /** When it was logged. */
  at: string;
  /** P(candidate ≻ champion) and its interval when the arena decided. */
  p?: number;
  interval?: [number, number];
  n?: number;
}

/** How hard an iteration pushes the policy: what the over-optimisation guard adjusts. */
export interface PushKnobs {
  ppoSteps: number;
  /** β the optimiser starts from. */
  klCoef: number;
  /** Warm-start the reward model from the previous round's (false: from the SFT trunk). */
  warmStartReward: boolean;
  /** Set when the guard changed the knobs: what it did and why. */
  reason?: string;
}

/** What the guard does after a rejection: push less, or start afresh from the champion. */
export type OverOptimisationResponse = 'shrink' | 'restart';

/**
 * The over-optimisation guard. `carried` are the knobs the iteration would use (configured steps,
 * β carried over from the last round); `configuredKlCoef` is the configured β.
 */
export function overOptimisationGuard(last: CandidateVerdict | undefined, carried: { ppoSteps: number; klCoef: number }, o: { response: OverOptimisationResponse; configuredKlCoef: number }): PushKnobs {
  if (!last || last.action !== 'reject') return { ...carried, warmStartReward: true };
  const figures = last.p !== undefined ? ` (P(candidate ≻ champion) ${last.p.toFixed(3)}${last.interval ? `, interval [${last.interval[0].toFixed(3)}, ${last.interval[1].toFixed(3)}]` : ''}${last.n !== undefined ? ` over ${last.n} judgements` : ''})` : '';
  const why = `over-optimisation guard: the proxy preferred candidate ${last.versionId} but users rejected it head to head${figures}`;
  if (o.response === 'restart') {
    return { ppoSteps: carried.ppoSteps, klCoef: o.configuredKlCoef, warmStartReward: false, reason: `${why}; starting back from the champion with β ${o.configuredKlCoef} and a reward model trained afresh from the SFT trunk` };
  }
  const ppoSteps = Math.max(1, Math.ceil(carried.ppoSteps / 2));
  const klCoef = carried.klCoef * 2;
  return { ppoSteps, klCoef, warmStartReward: true, reason: `${why}; this iteration runs ${ppoSteps} optimiser steps instead of ${carried.ppoSteps} and β ${klCoef.toPrecision(3)} instead of ${carried.klCoef.toPrecision(3)}` };
}

/**
 * True when, across the last `patience` evaluations (the latest against the one `patience`
 * before it), the proxy rose while the ensemble's mean disagreement rose by more than
 * `tolerance`. A net change over a window: one noisy evaluation neither fires it nor hides a trend.
 */
export function ensembleDisagreementRising(history: readonly Pick<PolicyEval, 'proxy' | 'spread'>[], patience: number, tolerance: number): boolean {
  if (history.length < patience + 1) return false;
  const from = history[history.length - 1 - patience]!;
  const to = history[history.length - 1]!;
  return to.proxy > from.proxy && to.spread - from.spread > tolerance;
}

/**
 * The KL per reply to SFT of a step's policy. With the reference at SFT it is the step's KL; with
 * the reference re-anchored to the champion it is estimated as the champion's KL to SFT plus the
 * step's KL to the champion (exact in expectation when the policy's samples are the champion's
 * typical ones; evaluations measure it directly).
 */
export function klEstimateToSft(stepKl: number, o: { reanchored: boolean; championKlToSft: number }): number {
  return o.reanchored ? o.championKlToSft + stepKl : stepKl;
}

/** True when the KL to SFT is over the budget (NaN counts as over: unmeasured is not within). */
export function klOverBudget(klToSft: number, budget: number): boolean {
  return !(klToSft <= budget);
}

/**
 * Ablation only (`goldGate`): true when, across the last `patience` evaluations, the proxy rose
 * while the gold score fell by more than `tolerance`.
 */
export function proxyGoldDiverged(history: readonly { proxy: number; gold: number }[], patience: number, tolerance: number): boolean {
  if (history.length < patience + 1) return false;
  const from = history[history.length - 1 - patience]!;
  const to = history[history.length - 1]!;
  return to.proxy > from.proxy && from.gold - to.gold > tolerance;
}

/** Ablation only (`goldGate`): why gold refuses the candidate, or undefined. */
export function goldGate(candidate: Pick<PolicyEval, 'gold'>, champion: Pick<PolicyEval, 'gold'>): string | undefined {
  return candidate.gold >= champion.gold ? undefined : `gold ${candidate.gold.toFixed(3)} < champion ${champion.gold.toFixed(3)}`;
}

/** The figures of an arena the loop reads (a subset of the arena's `ArenaSummary`). */
export interface ArenaFigures {
  candidate: string;
  champion: string;
  n: number;
  ties: number;
  bothBad: number;
  p: number;
  interval: [number, number];
  decision: 'promote' | 'reject' | 'continue';
}

/** One line of arena figures for logs and reasons. */
export function describeArena(s: ArenaFigures): string {
  return `P(candidate ≻ champion) ${s.p.toFixed(3)}, interval [${s.interval[0].toFixed(3)}, ${s.interval[1].toFixed(3)}] over ${s.n} judgements (${s.ties} ties, ${s.bothBad} both bad)`;
}

/**
 * What the arena means for this iteration: `wait` (status 'arena': keep collecting, do not train)
 * while the candidate is undecided, or decided but not applied (no auto-promotion: the admin
 * applies it); `train` once a verdict was applied.
 */
export function arenaStep(r: { summary: ArenaFigures; applied: 'promoted' | 'rejected' | null } | undefined): { action: 'train' | 'wait'; reason: string } {
  if (!r) return { action: 'train', reason: 'no candidate in the arena' };
  const figures = describeArena(r.summary);
  if (r.applied === 'promoted') return { action: 'train', reason: `users promoted candidate ${r.summary.candidate}: ${figures}` };
  if (r.applied === 'rejected') return { action: 'train', reason: `users rejected candidate ${r.summary.candidate}: ${figures}` };
  if (r.summary.decision === 'continue') return { action: 'wait', reason: `candidate ${r.summary.candidate} is in the arena, undecided: ${figures}; collecting judgements, not training` };
  return { action: 'wait', reason: `the arena says ${r.summary.decision} for candidate ${r.summary.candidate} (${figures}); waiting for the admin to apply it` };
}
