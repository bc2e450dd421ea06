/**
 * One seam for the three policy optimisers of the online loop: PPO (training/ppo.ts), RLOO
 * (training/rloo.ts) and DPO (training/dpo.ts, `DpoOptimizer`). The loop picks one by name
 * (`--algorithm ppo|rloo|dpo`) and drives it the same way: `step()` until done, checkpoints of
 * (weights, `exportOptimizer()`, `exportState()`), resume with `importState`, ship `shipped`.
 *
 * Contract.
 *  - `policy` is trained in place; `reference` is frozen and is what `kl` is measured against
 *    (per reply, k1 summed over tokens, at the rollout temperature); `klReference` (optional, the
 *    SFT model when the reference is re-anchored to the champion) gives `klSft` beside it.
 *  - `klCoef` is β now (PPO/RLOO: the KL controller's value, to carry into the next round's
 *    `knobs.klCoef`; DPO: its fixed β). `reward` is the mean proxy score of the step's sampled
 *    replies (PPO, RLOO; DPO when a reward source is given), before any penalty.
 *  - `exportOptimizer()` holds the AdamW moments (`m.<param>`, `v.<param>`) and, when the EMA is
 *    on, its weights (`ema.<param>`), so one map restores everything but the policy's weights;
 *    `importState(state, optimizer)` takes the EMA from that map unless `ema` is given.
 *  - `exportState()` is JSON (`{ algorithm, state }`); importing another algorithm's state throws
 *    `optimizer_state_mismatch`, a malformed one `optimizer_state_invalid`.
 *  - Randomness of step s is a function of (seed, s) for all three, so a resumed optimiser
 *    continues exactly as the uninterrupted one would have.
 *
 * Knobs are PPO's (`Partial<PpoKnobs>`) for all three, plus `rlooK`, `rlooWhiten` (RLOO) and
 * `dpoBeta`, `dpoLabelSmoothing`, `dpoKlSamples` (DPO). DPO reads `minibatchSize` as judgement
 * groups per step and takes its own defaults for the learning-rate knobs left unset (lr 5e-6,
 * minLr 5e-7, warmup 10).
 */
import { z } from 'zod';
import type { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import type { Batch } from './train-loop.ts';
import type { RewardSource } from './reward-source.ts';
import type { PreferenceData } from './preferences.ts';
import { PpoTrainer, formatPpoStats, ppoMetrics, type PpoKnobs, type PpoStepStats } from './ppo.ts';
import { RlooTrainer, formatRlooStats, type RlooStepStats } from './rloo.ts';
import { DPO_STEP_DEFAULTS, DpoOptimizer, formatDpoStats, type DpoStepKnobs, type DpoStepStats } from './dpo.ts';

export type Algorithm = 'ppo' | 'rloo' | 'dpo';
export const ALGORITHMS: readonly Algorithm[] = Object.freeze(['ppo', 'rloo', 'dpo'] as const);

/** Figures every algorithm reports per step. */
interface CommonStepStats {
  step: number;
  /** Mean KL to the reference per sampled reply (nats, k1 summed over tokens). */
  kl: number;
  /** β of this step. */
  klCoef: number;
  /** Mean KL to the SFT model per sampled reply, when a `klReference` was given. */
  klSft?: number;
  /** Mean proxy (reward-source) score of the step's sampled replies. */
  reward?: number;
  /** Mean length of the step's sampled replies, in tokens. */
  length?: number;
}

/** One step's figures: the common ones, and the algorithm's own (`detail`). */
export type OptimizerStepStats =
  | (CommonStepStats & { algorithm: 'ppo'; detail: PpoStepStats })
  | (CommonStepStats & { algorithm: 'rloo'; detail: RlooStepStats })
  | (CommonStepStats & { algorithm: 'dpo'; detail: DpoStepStats });

export interface PolicyOptimizer {
  readonly algorithm: Algorithm;
  /** The weights being trained. */
  readonly policy: GPT;
  /** What to save: the EMA when on, else the policy. */
  readonly shipped: GPT;
  /** β now (carry it over between rounds as `knobs.klCoef`). */
  readonly klCoef: number;
  /** One step; see `OptimizerStepStats`. */
  step(): Promise<OptimizerStepStats>;
  exportState(): unknown;
  exportOptimizer(): Promise<Map<string, { data: Float32Array; shape: number[] }>>;
  importState(state: unknown, optimizer?: Map<string, Float32Array>, ema?: Map<string, Float32Array>): void;
  dispose(): void;
}

/** Stable codes of the factory's and resume's errors. */
export type PolicyOptimizerErrorCode = 'optimizer_unknown_algorithm' | 'optimizer_missing_reward' | 'optimizer_missing_preferences' | 'optimizer_state_mismatch' | 'optimizer_state_invalid';

export class PolicyOptimizerError extends Error {
  constructor(
    readonly code: PolicyOptimizerErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'PolicyOptimizerError';
  }
}

/** Knobs of `createPolicyOptimizer`: PPO's, plus the RLOO and DPO ones. */
export type PolicyOptimizerKnobs = Partial<PpoKnobs> & { rlooK?: number; rlooWhiten?: boolean; dpoBeta?: number; dpoLabelSmoothing?: number; dpoKlSamples?: number };

export interface CreatePolicyOptimizerOptions {
  algorithm: Algorithm;
  policy: GPT;
  reference: GPT;
  /** The SFT model when `reference` is not it (KL to it reported as `klSft`). */
  klReference?: GPT;
  tok: Tokenizer;
  /** Required by PPO and RLOO; optional for DPO (scores its KL samples). */
  reward?: RewardSource;
  prompts: ChatMessage[][];
  /** Required by DPO. */
  preferences?: PreferenceData;
  knobs: PolicyOptimizerKnobs;
  /** Pretraining batches for PPO-ptx (PPO only). */
  ptxBatchAt?: (step: number) => Batch;
  log?: (l: string) => void;
}

const TrainerState = z.object({ step: z.number().int().nonnegative(), updates: z.number().int().nonnegative(), klCoef: z.number().nonnegative(), scoreStats: z.object({ n: z.number(), mean: z.number(), m2: z.number() }), optimizerStep: z.number().int().nonnegative() });
const SavedState = z.discriminatedUnion('algorithm', [
  z.object({ algorithm: z.literal('ppo'), state: TrainerState }),
  z.object({ algorithm: z.literal('rloo'), state: TrainerState }),
  z.object({ algorithm: z.literal('dpo'), state: z.object({ step: z.number().int().nonnegative(), optimizerStep: z.number().int().nonnegative() }) }),
]);

/** What the three trainers have in common (their own state types aside). */
interface Trainer<S, T> {
  readonly ema: GPT | undefined;
  readonly shipped: GPT;
  step(): Promise<S>;
  exportState(): T;
  exportOptimizer(): Promise<Map<string, { data: Float32Array; shape: number[] }>>;
  importState(state: T, optimizer?: ReadonlyMap<string, Float32Array>, ema?: ReadonlyMap<string, Float32Array>): void;
  dispose(): void;
}

class Wrapped<S, T> implements PolicyOptimizer {
  constructor(
    readonly algorithm: Algorithm,
    readonly policy: GPT,
    private readonly trainer: Trainer<S, T>,
    private readonly beta: () => number,
    private readonly summarise: (s: S) => OptimizerStepStats,
  ) {}

  get shipped(): GPT {
    return this.trainer.shipped;
  }

  get klCoef(): number {
    return this.beta();
  }

  async step(): Promise<OptimizerStepStats> {
    return this.summarise(await this.trainer.step());
  }

  exportState(): unknown {
    return { algorithm: this.algorithm, state: this.trainer.exportState() };
  }

  async exportOptimizer(): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
    const out = await this.trainer.exportOptimizer();
    if (this.trainer.ema) for (const [k, v] of await this.trainer.ema.exportWeights()) out.set(`ema.${k}`, { data: v.data, shape: [...v.shape] });
    return out;
  }

  importState(state: unknown, optimizer?: Map<string, Float32Array>, ema?: Map<string, Float32Array>): void {
    const alg = (state as { algorithm?: unknown } | null)?.algorithm;
    if (typeof alg === 'string' && alg !== this.algorithm) throw new PolicyOptimizerError('optimizer_state_mismatch', `cannot resume a ${this.algorithm} optimiser from ${alg} state`);
    const parsed = SavedState.safeParse(state);
    if (!parsed.success) throw new PolicyOptimizerError('optimizer_state_invalid', `not a saved ${this.algorithm} optimiser state: ${parsed.error.issues[0]?.message ?? 'malformed'}`);
    const fromMap = optimizer && [...optimizer.keys()].some((k) => k.startsWith('ema.')) ? new Map([...optimizer].filter(([k]) => k.startsWith('ema.')).map(([k, v]) => [k.slice(4), v])) : undefined;
    this.trainer.importState(parsed.data.state as T, optimizer, ema ?? fromMap);
  }

  dispose(): void {
    this.trainer.dispose();
  }
}

/**
 * The optimiser `algorithm` names, over `policy` (trained in place) against `reference`.
 *
 * @example
 *   const opt = createPolicyOptimizer({ algorithm: 'rloo', policy, reference: sft, tok, reward, prompts, knobs: { steps: 30, rlooK: 4 } });
 *   for (let i = 0; i < 30; i++) log(formatOptimizerStats(await opt.step(), 30));
 *   saveCheckpoint(dir, { weights: await opt.shipped.exportWeights(), optimizer: await opt.exportOptimizer(), meta: { …, runConfig: { state: opt.exportState() } } });
 */
export function createPolicyOptimizer(o: CreatePolicyOptimizerOptions): PolicyOptimizer {
  const { rlooK, rlooWhiten, dpoBeta, dpoLabelSmoothing, dpoKlSamples, ...ppoKnobs } = o.knobs;
  switch (o.algorithm) {
    case 'ppo': {
      if (!o.reward) throw new PolicyOptimizerError('optimizer_missing_reward', 'PPO needs a reward source');
      const t = new PpoTrainer({ policy: o.policy, reference: o.reference, klReference: o.klReference, tok: o.tok, reward: o.reward, prompts: o.prompts, knobs: ppoKnobs, ptxBatchAt: o.ptxBatchAt, log: o.log });
      return new Wrapped('ppo', o.policy, t, () => t.klCoef, (s) => ({ algorithm: 'ppo', step: s.step, kl: s.kl, klCoef: s.klCoef, ...(s.klSft !== undefined ? { klSft: s.klSft } : {}), reward: s.score, length: s.replyLength, detail: s }));
    }
    case 'rloo': {
      if (!o.reward) throw new PolicyOptimizerError('optimizer_missing_reward', 'RLOO needs a reward source');
      const knobs = { ...ppoKnobs, ...(rlooK !== undefined ? { rlooK } : {}), ...(rlooWhiten !== undefined ? { rlooWhiten } : {}) };
      const t = new RlooTrainer({ policy: o.policy, reference: o.reference, klReference: o.klReference, tok: o.tok, reward: o.reward, prompts: o.prompts, knobs, log: o.log });
      return new Wrapped('rloo', o.policy, t, () => t.klCoef, (s) => ({ algorithm: 'rloo', step: s.step, kl: s.kl, klCoef: s.klCoef, ...(s.klSft !== undefined ? { klSft: s.klSft } : {}), reward: s.score, length: s.replyLength, detail: s }));
    }
    case 'dpo': {
      if (!o.preferences) throw new PolicyOptimizerError('optimizer_missing_preferences', 'DPO needs preference data');
      const d = DPO_STEP_DEFAULTS;
      const knobs: DpoStepKnobs = {
        beta: dpoBeta ?? d.beta,
        labelSmoothing: dpoLabelSmoothing ?? d.labelSmoothing,
        groupsPerStep: ppoKnobs.minibatchSize ?? d.groupsPerStep,
        steps: ppoKnobs.steps ?? d.steps,
        lr: ppoKnobs.lr ?? d.lr,
        minLr: ppoKnobs.minLr ?? d.minLr,
        warmup: ppoKnobs.warmup ?? d.warmup,
        weightDecay: ppoKnobs.weightDecay ?? d.weightDecay,
        gradClip: ppoKnobs.gradClip ?? d.gradClip,
        emaDecay: ppoKnobs.emaDecay ?? d.emaDecay,
        klSamples: dpoKlSamples ?? d.klSamples,
        maxTokens: ppoKnobs.maxTokens ?? d.maxTokens,
        temperature: ppoKnobs.temperature ?? d.temperature,
        seed: ppoKnobs.seed ?? d.seed,
      };
      const t = new DpoOptimizer({ policy: o.policy, reference: o.reference, klReference: o.klReference, tok: o.tok, data: o.preferences, reward: o.reward, knobs });
      return new Wrapped('dpo', o.policy, t, () => knobs.beta, (s) => ({
        algorithm: 'dpo', step: s.step, kl: s.kl, klCoef: s.beta, ...(s.klSft !== undefined ? { klSft: s.klSft } : {}), ...(s.score !== undefined ? { reward: s.score } : {}),
        ...(Number.isFinite(s.replyLength) ? { length: s.replyLength } : {}), detail: s,
      }));
    }
    default:
      throw new PolicyOptimizerError('optimizer_unknown_algorithm', `unknown algorithm ${String(o.algorithm)}; expected one of ${ALGORITHMS.join(', ')}`);
  }
}

const finite = (m: Record<string, number>): Record<string, number> => Object.fromEntries(Object.entries(m).filter(([, v]) => Number.isFinite(v)));

/**
 * The scalar metrics of a step for the store's run metrics. PPO's are exactly `ppoMetrics`
 * (score, reward, kl, kl_sft, kl_coef, clip_frac, …); RLOO shares every name it has in common
 * with PPO; DPO logs kl, kl_sft, kl_coef, score, reply_length and its own `dpo_*`.
 */
export function optimizerMetrics(s: OptimizerStepStats): Record<string, number> {
  switch (s.algorithm) {
    case 'ppo':
      return ppoMetrics(s.detail);
    case 'rloo': {
      const d = s.detail;
      return finite({
        score: d.score, reward: d.reward, kl: d.kl, kl_k3: d.klK3, kl_sft: d.klSft ?? NaN, kl_loss: d.klLoss, kl_coef: d.klCoef, clip_frac: d.clipFrac, policy_loss: d.policyLoss,
        entropy: d.entropy, reply_length: d.replyLength, eot_rate: d.eotRate, approx_kl: d.approxKlByEpoch[d.approxKlByEpoch.length - 1] ?? NaN,
        rloo_reward_std: d.rewardStdWithin, rloo_adv_abs: d.advantageAbs, rollout_ms: d.rolloutMs, update_ms: d.updateMs,
      });
    }
    case 'dpo': {
      const d = s.detail;
      return finite({
        kl: d.kl, kl_sft: d.klSft ?? NaN, kl_coef: d.beta, score: d.score ?? NaN, reply_length: d.replyLength,
        dpo_loss: d.loss, dpo_margin: d.margin, dpo_accuracy: d.accuracy, dpo_pairs: d.pairs, dpo_epoch: d.epoch, lr: d.lr, update_ms: d.ms,
      });
    }
  }
}

/** One log line per step (the algorithm's own format: `ppo step …`, `rloo step …`, `dpo step …`). */
export function formatOptimizerStats(s: OptimizerStepStats, total?: number): string {
  switch (s.algorithm) {
    case 'ppo':
      return formatPpoStats(s.detail, total);
    case 'rloo':
      return formatRlooStats(s.detail, total);
    case 'dpo':
      return formatDpoStats(s.detail, total);
  }
}
