/**
 * The online loop's knobs (one frozen config, overridable from the command line and LOOP_<NAME>),
 * its result type, and the options only tests and simulations pass (a gold scorer, for the report).
 */
import { z } from 'zod';
import { backendOptions, storeOptions } from '../cli/options.ts';
import { DEFAULT_SAMPLING } from '../model/sampling.ts';
import type { RewardSource } from './reward-source.ts';
import { ALGORITHMS, type Algorithm } from './policy-optimizer.ts';
import { COVARIATE_SETS } from './covariate-sets.ts';
import type { ArenaSummary } from '../feedback/arena.ts';

export const OnlineLoopConfig = z.object({
  ...storeOptions,
  sft: z.string().default('checkpoints/sft').describe('the SFT checkpoint: reward-model trunk and KL reference'),
  checkpoints: z.string().default('checkpoints').describe('directory new reward models and policies are written to'),
  minNewJudgements: z.number().int().nonnegative().default(50).describe('new judgements needed before an iteration runs'),
  pollSeconds: z.number().positive().default(60).describe('wait between checks for new feedback'),
  once: z.boolean().default(false).describe('run one iteration (or skip) and exit'),
  rewardEpochs: z.number().int().positive().default(2).describe('most reward-model epochs per iteration (early stopping may end sooner)'),
  rewardLr: z.number().positive().default(1e-4).describe('reward-model learning rate'),
  rewardEnsemble: z.number().int().positive().default(3).describe('K: reward models in the ensemble (warm-started from the last round\'s)'),
  rewardWarmStart: z.boolean().default(true).describe('warm-start the reward models from the last round\'s (off: from the SFT trunk every round)'),
  pessimism: z.number().nonnegative().default(1).describe('k: the optimiser maximises ensemble mean − k·std (0 = the mean)'),
  rewardPatience: z.number().int().nonnegative().default(2).describe('early stopping of each reward model: held-out evaluations without a lower loss (0 = off)'),
  recencyHalfLife: z.number().nonnegative().default(0).describe('weight of a judgement 0.5^(newer judgements / this); 0 = all equal'),
  tieWeight: z.number().nonnegative().default(1).describe('weight of ties (Bradley–Terry target ½) in the reward loss; 0 = ignored'),
  rewardCovariates: z.enum(COVARIATE_SETS).default('length+likelihood+echo').describe('covariates in the reward, their λ fitted on the judgements (reward-covariates.ts): length = words; likelihood = mean log-probability under SFT; relevance = that minus the same without the question; tail = mean log-probability of the 20% least likely tokens; echo = IDF-weighted share of the words of the question that the reply repeats; the heads learn the rest'),
  rewardHeads: z.enum(['on', 'auto']).default('on').describe("the reward models' heads: on, or auto = kept only when they fit the users' val judgements better than the covariates alone (else zeroed; reward-ensemble.ts)"),
  rewardLengthWeight: z.number().nonnegative().default(1).describe('weight of the length covariate λ·words in the optimiser\'s reward (1 = the users\' whole preference, 0 = the heads only)'),
  minRewardAccuracy: z.number().min(0).max(1).default(0.6).describe('guard: pairwise accuracy the reward ensemble must reach on the fixed eval split (val while eval has no pair)'),
  maxAccuracyDrop: z.number().min(0).max(1).default(0.1).describe('guard: stop when that accuracy falls this much below the last iteration\'s'),
  algorithm: z.enum(ALGORITHMS as [Algorithm, ...Algorithm[]]).default('ppo').describe('policy optimiser: ppo, rloo (k samples, leave-one-out baseline) or dpo (on the judgements)'),
  rlooK: z.number().int().min(2).default(4).describe('RLOO: samples per prompt'),
  dpoBeta: z.number().positive().default(0.1).describe('DPO: β of the implicit reward'),
  ppoSteps: z.number().int().positive().default(30).describe('optimiser steps per iteration'),
  batchSize: z.number().int().positive().default(16).describe('PPO rollouts per step'),
  minibatchSize: z.number().int().positive().default(8).describe('PPO rollouts per gradient step'),
  epochs: z.number().int().positive().default(4).describe('PPO epochs per batch'),
  maxTokens: z.number().int().positive().default(48).describe('most tokens per sampled reply (rollouts and evaluation; serve users the same)'),
  temperature: z.number().positive().default(DEFAULT_SAMPLING.temperature).describe('sampling temperature of rollouts and evaluation (the server\'s default for users\' replies)'),
  topP: z.number().gt(0).max(1).default(DEFAULT_SAMPLING.topP).describe('nucleus top-p of evaluation replies, as users get; rollouts are untruncated (top-p 1) so the optimiser stays on-policy'),
  lr: z.number().positive().default(1e-5).describe('peak learning rate of the policy optimiser (cosine to a tenth)'),
  klCoef: z.number().nonnegative().default(0.6).describe('β of the first round (later rounds carry over the last round\'s β; adaptive towards klTarget)'),
  klTarget: z.number().positive().default(4).describe('adaptive controller target KL per reply (nats)'),
  klBudget: z.number().positive().default(10).describe('guard: the optimiser stops, and no candidate is offered, when the KL per reply to SFT exceeds this'),
  reanchor: z.boolean().default(false).describe('KL reference = the champion instead of SFT (smaller steps per round; the total KL to SFT is still measured and budgeted)'),
  evalPrompts: z.number().int().positive().default(32).describe('held-out prompts for candidate vs champion'),
  evalEvery: z.number().int().positive().default(5).describe('optimiser steps between evaluations (proxy, disagreement, KL to SFT; gold for the report)'),
  disagreementPatience: z.number().int().positive().default(3).describe('guard: evaluations over which proxy up / ensemble disagreement up stops the optimiser'),
  disagreementTolerance: z.number().nonnegative().default(0.05).describe('guard: how far the mean ensemble std must rise over those evaluations'),
  overOptimisation: z.enum(['shrink', 'restart']).default('shrink').describe('after users reject a candidate: shrink = half the steps and twice β; restart = configured β and a reward model from the SFT trunk'),
  goldGate: z.boolean().default(false).describe('ablation: gold (when given) stops the optimiser and gates promotion, instead of the users\' arena'),
  goldPatience: z.number().int().positive().default(3).describe('ablation (goldGate): evaluations over which proxy up / gold down stops the optimiser'),
  goldTolerance: z.number().nonnegative().default(0.1).describe('ablation (goldGate): how far gold must fall over those evaluations'),
  arenaAlpha: z.number().gt(0).lt(1).default(0.05).describe('arena: error rate of the always-valid interval on P(candidate ≻ champion)'),
  arenaMaxJudgements: z.number().int().positive().default(1500).describe('arena: a candidate still undecided after this many head-to-head judgements is rejected'),
  autoPromote: z.boolean().default(false).describe('apply the users\' arena verdict (promote or reject the candidate) without the admin'),
  minScoreGain: z.number().default(0.05).describe('pre-filter: a candidate is offered to the arena only when its proxy beats the champion\'s by this'),
  seed: z.number().int().default(6).describe('seed for splits and sampling'),
  ...backendOptions,
  checkpointEvery: z.number().int().positive().default(5).describe('optimiser steps between resumable checkpoints (policy, value head, optimiser state, β)'),
  resume: z.boolean().default(true).describe('continue a run left `running` by a process that died (one loop per store)'),
});
export type OnlineLoopConfig = z.infer<typeof OnlineLoopConfig>;

/**
 * skipped: nothing to do (paused, too few new judgements); arena: a candidate is before the users,
 * undecided (or decided and waiting for the admin), no training; rejected: a guard or the
 * pre-filter refused (no candidate offered); offered: a candidate was put into the arena;
 * candidate / promoted: the `goldGate` ablation's outcomes (registered and waiting / promoted).
 */
export type IterationStatus = 'skipped' | 'arena' | 'rejected' | 'offered' | 'candidate' | 'promoted';

export interface IterationResult {
  status: IterationStatus;
  reason: string;
  runId?: string;
  rewardVersion?: string;
  policyVersion?: string;
  metrics: Record<string, number>;
  /** The arena's figures when a candidate was (or just stopped being) before the users. */
  arena?: ArenaSummary;
}

/** What only tests and simulations pass: a gold scorer (simulated users' rubric), for reporting unless `goldGate`. */
export interface LoopOptions {
  gold?: RewardSource;
  log?: (line: string) => void;
  shouldStop?: () => boolean;
}
