/**
 * The arena: users' blind head-to-head judgements between the `candidate` and the `champion`,
 * and the promotion decision they make.
 *
 * Data. Every current comparison whose two replies were generated one by each version (either
 * a/b order) is one judgement. From the candidate's side its outcome is x = 1 (win), ½ (tie or
 * both bad) or 0 (loss); p = E[x] = P(candidate ≻ champion) with ties counting half.
 *
 * Interval: an always-valid confidence sequence (Robbins' normal mixture; Howard, Ramdas,
 * McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences",
 * the two-sided normal-mixture boundary). x ∈ [0, 1] is sub-Gaussian with σ = ½ (Hoeffding's
 * lemma), so with S_n = Σ (x_i − p) and intrinsic time V_n = σ²n the mixture over λ ~ N(0, 1/ρ) of
 * exp(λS_n − λ²V_n/2) is the nonnegative supermartingale √(ρ/(V_n+ρ))·exp(S_n²/(2(V_n+ρ))).
 * Ville's inequality gives
 *
 *     P( ∃ n ≥ 1 : |S_n| ≥ u(V_n) ) ≤ α,   u(v) = √( (v + ρ) · log( (v + ρ) / (ρ α²) ) ),
 *
 * so C_n = [ x̄_n − u(V_n)/n , x̄_n + u(V_n)/n ] ∩ [0, 1] holds p at EVERY n at once with
 * probability ≥ 1 − α: the interval may be looked at after every judgement and the decision taken
 * at any look (optional stopping) without raising the error rate. ρ only changes the shape, not
 * the guarantee; it is tuned to make the boundary tightest at n = {@link ARENA_TUNED_N}
 * judgements: ρ = v* / (2 log(1/α) + log(1 + 2 log(1/α))) with v* = σ²·n (Howard et al.'s
 * closed-form approximation of the optimum).
 *
 * Decision: promote when the lower end is above ½, reject when the upper end is below ½ (each
 * wrong with probability ≤ α whatever the stopping rule), and reject as "no clear gain" once
 * `maxJudgements` (default 1500) are in and neither happened. At 80% ties the mean's true spread
 * is far below σ = ½, so a tie-heavy arena needs many judgements: that is the price of a bound
 * that assumes nothing about the outcome distribution.
 *
 * Length control (as Chatbot Arena's style control): the logistic regression
 *     P(x = 1 | d) = σ(β₀ + β₁·d),  d = candidate − champion reply length in words,
 * fit by Newton's method (IRLS) with ties and both-bad as a response of ½ (half a win, half a loss).
 * σ(β₀) is the win rate at equal length, with a 95% Wald interval from the inverse Fisher
 * information by the delta method (se(σ(β₀)) = σ(β₀)(1 − σ(β₀))·se(β₀)); β₁ is per word. This
 * interval is a fixed-n one, for reading, never for the decision.
 */
import { PostgresAdapter, type Kysely } from 'kysely';
import { clearAlias, promote, resolveAlias } from './model-versions.ts';
import type { Database } from './schema.ts';
import { inTransaction } from './transaction.ts';
import { replyWords } from './reply-words.ts';

/** One head-to-head judgement: outcome from the candidate's side. */
export interface ArenaOutcome {
  outcome: 'win' | 'loss' | 'tie' | 'both_bad';
  /** Candidate − champion reply length, in words. */
  lengthDiff: number;
  raterId: string;
  createdAt: string;
}

/** The arena's figures at one moment. */
export interface ArenaSummary {
  candidate: string;
  champion: string;
  n: number;
  wins: number;
  losses: number;
  ties: number;
  bothBad: number;
  /** P(candidate ≻ champion), ties and both-bad counting ½. */
  p: number;
  /** Always-valid (1 − alpha) confidence sequence for p, valid under looking after every judgement. */
  interval: [number, number];
  alpha: number;
  decision: 'promote' | 'reject' | 'continue';
  /** Win rate at equal length (logistic model with the length difference as covariate) and its 95% Wald interval. */
  lengthControlled: { p: number; interval: [number, number]; lengthCoef: number };
}

/** The length-controlled fit. */
export interface LengthControlled {
  /** σ(β₀): the candidate's win rate at equal length. */
  p: number;
  /** 95% Wald interval for it (delta method), clipped to [0, 1]. */
  interval: [number, number];
  /** β₁: change of the log-odds of a candidate win per word of extra length. */
  lengthCoef: number;
}

/** One point of the interval's history. */
export interface ArenaHistoryPoint {
  n: number;
  p: number;
  low: number;
  high: number;
}

export const ARENA_DEFAULT_ALPHA = 0.05;
export const ARENA_DEFAULT_MAX_JUDGEMENTS = 1500;
/** The number of judgements at which the confidence sequence is tightest. */
export const ARENA_TUNED_N = 500;
/** Sub-Gaussian scale of an outcome in [0, 1]. */
const SIGMA = 0.5;
const Z95 = 1.959963984540054;

const VALUE: Record<ArenaOutcome['outcome'], number> = { win: 1, tie: 0.5, both_bad: 0.5, loss: 0 };

/** The outcome as a number: win 1, tie / both bad ½, loss 0. */
export function outcomeValue(o: ArenaOutcome['outcome']): number {
  return VALUE[o];
}

/** The normal-mixture parameter ρ (in intrinsic-time units) tuned for `n` judgements at `alpha`. */
export function mixtureRho(alpha: number, n = ARENA_TUNED_N): number {
  const l = 2 * Math.log(1 / alpha);
  return (SIGMA * SIGMA * n) / (l + Math.log(1 + l));
}

/** Half-width of the confidence sequence for the mean after `n` judgements. */
export function csHalfWidth(n: number, alpha: number, rho = mixtureRho(alpha)): number {
  if (n <= 0) return Infinity;
  const v = SIGMA * SIGMA * n;
  return Math.sqrt((v + rho) * Math.log((v + rho) / (rho * alpha * alpha))) / n;
}

function csInterval(sum: number, n: number, alpha: number, rho: number): [number, number] {
  if (n === 0) return [0, 1];
  const mean = sum / n;
  const h = csHalfWidth(n, alpha, rho);
  return [Math.max(0, mean - h), Math.min(1, mean + h)];
}

function checkAlpha(alpha: number): void {
  if (!(alpha > 0 && alpha < 1)) throw new RangeError(`arena alpha must be in (0, 1), got ${alpha}`);
}

/** p, low and high after each judgement (in the given order), for the admin chart. */
export function intervalHistory(outcomes: readonly ArenaOutcome[], o: { alpha?: number } = {}): ArenaHistoryPoint[] {
  const alpha = o.alpha ?? ARENA_DEFAULT_ALPHA;
  checkAlpha(alpha);
  const rho = mixtureRho(alpha);
  const out: ArenaHistoryPoint[] = [];
  let sum = 0;
  for (let i = 0; i < outcomes.length; i++) {
    sum += VALUE[outcomes[i]!.outcome];
    const n = i + 1;
    const [low, high] = csInterval(sum, n, alpha, rho);
    out.push({ n, p: sum / n, low, high });
  }
  return out;
}

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

/**
 * Logistic regression of the candidate-win outcome on the length difference (Newton / IRLS,
 * ties and both-bad as ½). With no judgements: p ½, interval [0, 1]. A tiny ridge keeps the
 * information matrix invertible when every length difference is equal or the data separate.
 */
export function lengthControlledWinRate(outcomes: readonly ArenaOutcome[]): LengthControlled {
  const n = outcomes.length;
  if (n === 0) return { p: 0.5, interval: [0, 1], lengthCoef: 0 };
  const y = outcomes.map((o) => VALUE[o.outcome]);
  // Scale d for conditioning; β₁ is reported per word.
  const scale = Math.max(1, Math.sqrt(outcomes.reduce((s, o) => s + o.lengthDiff * o.lengthDiff, 0) / n));
  const x = outcomes.map((o) => o.lengthDiff / scale);
  const ridge = 1e-6;
  const loglik = (b0: number, b1: number) => {
    let l = -0.5 * ridge * (b0 * b0 + b1 * b1);
    for (let i = 0; i < n; i++) {
      const z = b0 + b1 * x[i]!;
      // y·log σ(z) + (1 − y)·log(1 − σ(z)), stably.
      l += y[i]! * z - Math.max(z, 0) - Math.log1p(Math.exp(-Math.abs(z)));
    }
    return l;
  };
  /** Gradient of the penalised log-likelihood and its information matrix at (b0, b1). */
  const derivatives = (b0: number, b1: number) => {
    const d = { g0: -ridge * b0, g1: -ridge * b1, h00: ridge, h01: 0, h11: ridge };
    for (let i = 0; i < n; i++) {
      const m = sigmoid(b0 + b1 * x[i]!);
      const w = m * (1 - m);
      const r = y[i]! - m;
      d.g0 += r;
      d.g1 += r * x[i]!;
      d.h00 += w;
      d.h01 += w * x[i]!;
      d.h11 += w * x[i]! * x[i]!;
    }
    return d;
  };
  let b0 = 0;
  let b1 = 0;
  let ll = loglik(b0, b1);
  for (let iter = 0; iter < 100; iter++) {
    const { g0, g1, h00, h01, h11 } = derivatives(b0, b1);
    const det = h00 * h11 - h01 * h01;
    if (!(det > 0)) break;
    const d0 = (h11 * g0 - h01 * g1) / det;
    const d1 = (h00 * g1 - h01 * g0) / det;
    // Step halving: Newton can overshoot on (near-)separated data.
    let t = 1;
    let next = loglik(b0 + d0, b1 + d1);
    while (next < ll - 1e-12 && t > 1e-6) {
      t /= 2;
      next = loglik(b0 + t * d0, b1 + t * d1);
    }
    b0 += t * d0;
    b1 += t * d1;
    const gain = next - ll;
    ll = next;
    if (Math.abs(t * d0) < 1e-10 && Math.abs(t * d1) < 1e-10) break;
    if (gain >= 0 && gain < 1e-12) break;
  }
  // Information at the estimate.
  const { h00, h01, h11 } = derivatives(b0, b1);
  const det = h00 * h11 - h01 * h01;
  const varB0 = det > 0 ? h11 / det : Infinity;
  const p = sigmoid(b0);
  const se = p * (1 - p) * Math.sqrt(varB0);
  const interval: [number, number] = Number.isFinite(se) ? [Math.max(0, p - Z95 * se), Math.min(1, p + Z95 * se)] : [0, 1];
  return { p, interval, lengthCoef: b1 / scale };
}

/**
 * Pure: the summary of outcomes (decision: promote when interval[0] > 0.5, reject when
 * interval[1] < 0.5, else continue; also reject when n >= maxJudgements and still undecided).
 * @example
 * const s = summariseArena(outcomes, { alpha: 0.05 });
 * if (s.decision === 'promote') …
 */
export function summariseArena(
  outcomes: readonly ArenaOutcome[],
  o: { alpha?: number; maxJudgements?: number; candidate?: string; champion?: string } = {},
): ArenaSummary {
  const alpha = o.alpha ?? ARENA_DEFAULT_ALPHA;
  const maxJudgements = o.maxJudgements ?? ARENA_DEFAULT_MAX_JUDGEMENTS;
  checkAlpha(alpha);
  if (!(maxJudgements >= 1)) throw new RangeError(`arena maxJudgements must be ≥ 1, got ${maxJudgements}`);
  const count = { win: 0, loss: 0, tie: 0, both_bad: 0 };
  let sum = 0;
  for (const x of outcomes) {
    count[x.outcome]++;
    sum += VALUE[x.outcome];
  }
  const n = outcomes.length;
  const interval = csInterval(sum, n, alpha, mixtureRho(alpha));
  const decision = interval[0] > 0.5 ? 'promote' : interval[1] < 0.5 ? 'reject' : n >= maxJudgements ? 'reject' : 'continue';
  return {
    candidate: o.candidate ?? '',
    champion: o.champion ?? '',
    n,
    wins: count.win,
    losses: count.loss,
    ties: count.tie,
    bothBad: count.both_bad,
    p: n === 0 ? 0.5 : sum / n,
    interval,
    alpha,
    decision,
    lengthControlled: lengthControlledWinRate(outcomes),
  };
}

/**
 * Head-to-head comparisons between two versions (either order of a/b), current rows only,
 * oldest first, outcome from the candidate's side.
 */
export async function arenaOutcomes(db: Kysely<Database>, o: { candidate: string; champion: string }): Promise<ArenaOutcome[]> {
  if (o.candidate === o.champion) return [];
  const rows = await db
    .selectFrom('comparisons as c')
    .innerJoin('generations as ga', 'ga.message_id', 'c.a_id')
    .innerJoin('generations as gb', 'gb.message_id', 'c.b_id')
    .innerJoin('messages as ma', 'ma.id', 'c.a_id')
    .innerJoin('messages as mb', 'mb.id', 'c.b_id')
    .select(['c.choice', 'c.rater_id', 'c.created_at', 'ga.model_version_id as va', 'ma.content as ta', 'mb.content as tb'])
    .where('c.current', '=', 1)
    .where('c.excluded_from_training', '=', 0) // a revoked key's judgements decide nothing
    .where((eb) =>
      eb.or([
        eb.and([eb('ga.model_version_id', '=', o.candidate), eb('gb.model_version_id', '=', o.champion)]),
        eb.and([eb('ga.model_version_id', '=', o.champion), eb('gb.model_version_id', '=', o.candidate)]),
      ]),
    )
    .orderBy('c.created_at')
    .orderBy('c.id')
    .execute();
  return rows.map((r) => {
    const candidateIsA = r.va === o.candidate;
    const [la, lb] = [replyWords(r.ta), replyWords(r.tb)];
    let outcome: ArenaOutcome['outcome'];
    if (r.choice === 'tie') outcome = 'tie';
    else if (r.choice === 'both_bad') outcome = 'both_bad';
    else outcome = (r.choice === 'a') === candidateIsA ? 'win' : 'loss';
    return { outcome, lengthDiff: candidateIsA ? la - lb : lb - la, raterId: r.rater_id, createdAt: r.created_at };
  });
}

/**
 * Reads the candidate and champion aliases, summarises their arena, and when decided and
 * `apply`: promotes (alias champion → candidate, logged 'promote'; the candidate alias cleared,
 * logged 'clear') or rejects (candidate alias cleared, logged 'reject'); every log row carries
 * the summary as metrics (`{ arena: summary }` over the version's own metrics). Returns undefined when there is no candidate (or no champion to
 * compare it with).
 * @example
 * const r = await decideArena(db, { apply: true, actor: 'online-loop' });
 * if (r?.applied === 'rejected') …
 */
export async function decideArena(
  db: Kysely<Database>,
  o: { apply: boolean; actor: string; alpha?: number; maxJudgements?: number },
): Promise<{ summary: ArenaSummary; applied: 'promoted' | 'rejected' | null } | undefined> {
  return inTransaction(db, async (trx) => {
    // Two deciders at once (the loop in two processes, say): on PostgreSQL the candidate's alias
    // row is locked, so the second waits and then finds no candidate; SQLite serialises writers.
    if (trx.getExecutor().adapter instanceof PostgresAdapter) {
      await trx.selectFrom('model_aliases').select('version_id').where('alias', '=', 'candidate').forUpdate().execute();
    }
    const candidate = await resolveAlias(trx, 'candidate');
    const champion = await resolveAlias(trx, 'champion');
    if (candidate === undefined || champion === undefined) return undefined;
    const outcomes = await arenaOutcomes(trx, { candidate, champion });
    const summary = summariseArena(outcomes, { alpha: o.alpha, maxJudgements: o.maxJudgements, candidate, champion });
    if (!o.apply || summary.decision === 'continue') return { summary, applied: null };
    const [low, high] = summary.interval.map((v) => v.toFixed(3));
    const figures = `n=${summary.n}, p=${summary.p.toFixed(3)}, ${Math.round((1 - summary.alpha) * 100)}% CS [${low}, ${high}]`;
    if (summary.decision === 'promote') {
      const reason = `arena: candidate beats champion (${figures})`;
      await promote(trx, { alias: 'champion', versionId: candidate, actor: o.actor, reason, metrics: { arena: summary } });
      await clearAlias(trx, 'candidate', { actor: o.actor, reason, metrics: { arena: summary }, action: 'clear' });
      return { summary, applied: 'promoted' };
    }
    const why = summary.interval[1] < 0.5 ? 'candidate loses to champion' : `no clear gain after ${summary.n} judgements`;
    await clearAlias(trx, 'candidate', { actor: o.actor, reason: `arena: ${why} (${figures})`, metrics: { arena: summary } });
    return { summary, applied: 'rejected' };
  });
}
