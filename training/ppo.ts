/**
 * PPO with a KL leash to a reference policy: the RL stage of InstructGPT (Ouyang et al. 2022), in
 * the shape of TRL's PPOTrainer (per-token k1 KL penalty in the reward, GAE, clipped policy and
 * value losses, several epochs over minibatches of one batch of rollouts).
 *
 * Symbols. x a prompt (a real conversation ending with a user turn), y = (y_1..y_L) a reply
 * sampled from the policy π_θ at temperature T, π_ref the frozen reference (SFT, or the champion
 * when the loop re-anchors), π_sft the SFT model (optional `klReference`, for reporting only),
 * r(x, y) the reward source's score (reward model, rule or remote scorer), V_θ the policy's value
 * head, β the KL coefficient.
 *
 * Distributions. Every log-probability (rollout-time π_θold, training-time π_θ, π_ref, π_sft) is
 * that of the distribution the sampler draws from: softmax(logits / T) with the special tokens
 * other than `<|end|>` masked out (model/generate.ts bans them), as TRL divides logits by T.
 * Rollouts are untruncated (top-k 0, top-p 1): a nucleus would make π_θold a distribution
 * whose support moves with θ, and the ratio and the KL would need its renormalisation, so top-p
 * is not offered here. Users' replies default to T 0.8, top-p 0.95 (model/sampling.ts): set
 * `temperature` to the serving temperature to train on the distribution users see, up to the
 * nucleus (the tail that top-p 0.95 cuts is what rollouts sample and users never get).
 *
 * Per-token reward (t = 1..L):
 *     kl_t = log π_θold(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)        (k1, unbiased on y ~ π_θold)
 *     r_t  = −β · kl_t  +  [t = L] · (r(x, y) − p_eot · [no <|end|> in y])
 * Advantages by GAE over the reply tokens, δ_t = r_t + γ V(s_{t+1}) − V(s_t),
 *     A_t = Σ_k (γλ)^k δ_{t+k},  R_t = A_t + V(s_t),  then A whitened over the batch.
 * Loss per minibatch, masked means over reply tokens, ρ_t = π_θ/π_θold:
 *     L_pg  = mean max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε, 1+ε))
 *     L_vf  = ½ mean max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε_v, ε_v) − R_t)²)
 *     L_kl  = mean k3_t,  k3_t = (q_t − 1) − log q_t,  q_t = π_ref(y_t)/π_θ(y_t)   (GRPO-style, ≥ 0)
 *     L     = L_pg + c_vf L_vf + c_kl L_kl − c_ent H[π_θ] + γ_ptx · (−log π_θ on pretraining text)
 * KL controller: fixed β, or adaptive (Ziegler et al. 2019): e = clip(KL/KL_target − 1, ±0.2),
 *     β ← β (1 + e · B / horizon), with KL the batch mean of Σ_t kl_t (k1) per reply. β is
 *     exposed (`klCoef`) and its initial value is a knob, so a loop carries it across rounds.
 * Reported: kl = mean Σ_t kl_t (to π_ref), kl_sft = mean Σ_t log π_θold − log π_sft (when a
 *     `klReference` is given; the total drift when π_ref is re-anchored to the champion).
 * EMA: after every optimizer step θ_ema ← d θ_ema + (1 − d) θ; the saved policy is θ_ema when d > 0.
 * Randomness: the prompt draw and minibatch shuffles of step s come from a stream seeded by
 *     (seed, s), so a run resumed from `exportState` continues exactly as the uninterrupted one.
 *
 * Deviations from TRL's PPOTrainer:
 *  1. The value head sits on the policy's trunk (one model, `value.*` parameters) instead of a
 *     separate value model initialised from the reward model: half the memory and forward passes
 *     on a laptop; the value loss therefore also shapes the trunk (c_vf keeps that small).
 *  2. k1 alone enters the reward, as in TRL; k3 exists only as the separate loss term L_kl
 *     (`klLossCoef`, default 0), and as a logged diagnostic (`klK3`, per token).
 *  3. The log-probabilities mask the special tokens the sampler bans (so they are exact, not
 *     the untruncated softmax TRL uses); the sampler's e^-30 candidate floor is ignored.
 *  4. The missing-end-of-turn penalty replaces TRL's `missing_eos_penalty`: subtracted from the
 *     score of replies cut off by `maxTokens` (same effect, named after our chat format).
 *  5. No reward whitening or clipping by default (`whitenScores` turns on score normalisation by
 *     a running mean/std); rewards from our reward model are already normalised to SFT = 0.
 *  6. An entropy bonus is available (`entCoef`, default 0), as in the PPO paper, not in TRL.
 * Deviations from InstructGPT:
 *  7. PPO-ptx mixes the pretraining loss into the same minibatch step rather than alternating
 *     separate pretraining gradient steps; γ_ptx defaults to 0 (plain PPO).
 *  8. The run may start from the current champion (the online loop) instead of from SFT, and the
 *     reference may be the champion too; the KL to SFT is then reported beside it (kl_sft).
 *  9. Tiny scale: a few dozen rollouts per step instead of 512, and the value head is not
 *     pretrained on reward-model targets.
 *
 *   node --import tsx training/ppo.ts --policy checkpoints/sft --reference checkpoints/sft \
 *     --reward checkpoints/reward --prompts prompts.jsonl --out checkpoints/policy
 */
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { backendOptions, optionalStoreOptions, optimizerOptions, storeUrl } from '../cli/options.ts';
import { existsSync, readFileSync } from 'node:fs';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { AdamW } from '../model/adamw.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { loadCheckpoint, saveCheckpoint } from '../model/checkpoint.ts';
import { entropy, maskedCrossEntropy, tokenLogProbs } from '../model/losses.ts';
import { generateBatch, type FinishReason } from '../model/generate.ts';
import { endOfTurnId, renderChat, type ChatMessage } from '../model/chat-template.ts';
import { createRng, type Rng } from '../model/random.ts';
import type { FeedbackStore } from '../feedback/index.ts';
import { exportSft } from '../feedback/index.ts';
import type { Batch } from './train-loop.ts';
import { mean, optimizerStep, padRows, warmupCosine } from './rlhf-common.ts';
import type { RewardSource } from './reward-source.ts';
import { isMain, runCommand, stopRequested } from '../cli/command.ts';

export const PpoConfig = z.object({
  policy: z.string().default('checkpoints/sft').describe('checkpoint the policy starts from (SFT, or the current champion)'),
  reference: z.string().default('checkpoints/sft').describe('frozen KL reference (the SFT checkpoint)'),
  reward: z.string().default('checkpoints/reward').describe('reward-model checkpoint (ignored with --reward-url)'),
  rewardUrl: z.string().default('').describe('score with a remote HTTP scorer instead of a reward model'),
  rewardTimeoutMs: z.number().int().positive().default(30_000).describe('timeout of one remote scoring request'),
  prompts: z.string().default('').describe('JSONL of prompts ({prompt} or {messages}); or use --database'),
  ...optionalStoreOptions,
  out: z.string().default('checkpoints/policy').describe('where the policy checkpoint is written (must not exist)'),
  steps: z.number().int().positive().default(100).describe('PPO steps (each: one batch of rollouts, then updates)'),
  batchSize: z.number().int().positive().default(16).describe('rollouts (prompt, reply) per step'),
  minibatchSize: z.number().int().positive().default(8).describe('rollouts per gradient step'),
  epochs: z.number().int().positive().default(4).describe('PPO epochs over each batch of rollouts'),
  maxTokens: z.number().int().positive().default(48).describe('most tokens per sampled reply'),
  temperature: z.number().positive().default(1).describe('sampling temperature T of rollouts; every log-probability is of logits / T'),
  ...optimizerOptions({ lr: 1e-5, minLr: 1e-6, warmup: 0, weightDecay: 0 }),
  klCoef: z.number().nonnegative().default(0.05).describe('β: KL penalty coefficient (initial value when adaptive)'),
  adaptiveKl: z.boolean().default(false).describe('adapt β towards klTarget (Ziegler et al.)'),
  klTarget: z.number().positive().default(6).describe('target KL per reply (nats, summed over tokens) of the adaptive controller'),
  klHorizon: z.number().positive().default(10_000).describe('horizon (rollouts) of the adaptive controller'),
  gamma: z.number().min(0).max(1).default(1).describe('γ: discount'),
  lam: z.number().min(0).max(1).default(0.95).describe('λ: GAE parameter'),
  clipRange: z.number().positive().default(0.2).describe('ε: policy ratio clip'),
  clipRangeValue: z.number().positive().default(0.2).describe('ε_v: value clip around the rollout-time values'),
  vfCoef: z.number().nonnegative().default(0.1).describe('c_vf: value-loss weight'),
  klLossCoef: z.number().nonnegative().default(0).describe('c_kl: weight of the k3 KL-to-reference loss term (GRPO-style; 0 = off, the KL is in the reward)'),
  entCoef: z.number().nonnegative().default(0).describe('c_ent: entropy bonus weight'),
  missingEotPenalty: z.number().nonnegative().default(1).describe('subtracted from the score of replies without <|end|>'),
  whitenScores: z.boolean().default(false).describe('normalise scores by a running mean/std before use'),
  ptxCoef: z.number().nonnegative().default(0).describe('γ_ptx: pretraining-loss weight (PPO-ptx; 0 = off)'),
  ptxData: z.string().default('data').describe('build-data directory whose corpus feeds PPO-ptx'),
  ptxBatchSize: z.number().int().positive().default(4).describe('pretraining rows per gradient step (PPO-ptx)'),
  emaDecay: z.number().min(0).max(1).default(0).describe('EMA of policy weights, saved instead of the raw weights (0 = off)'),
  seed: z.number().int().default(4).describe('seed for prompts and sampling'),
  ...backendOptions,
});
export type PpoConfig = z.infer<typeof PpoConfig>;

export const PpoKnobs = PpoConfig.omit({ policy: true, reference: true, reward: true, rewardUrl: true, rewardTimeoutMs: true, prompts: true, database: true, out: true, ptxData: true, backend: true });
/** The knobs the trainer itself uses (everything but file locations). */
export type PpoKnobs = z.infer<typeof PpoKnobs>;

/** Defaults of every knob. */
export const PPO_DEFAULTS: Readonly<PpoKnobs> = Object.freeze(PpoKnobs.parse({}));

/** One sampled reply. */
export interface Episode {
  prompt: ChatMessage[];
  promptIds: number[];
  replyIds: number[];
  reply: string;
  finishReason: FinishReason;
}

/** What one PPO step measured (the per-step log line). */
export interface PpoStepStats {
  step: number;
  /** Mean reward-source score (before the missing-EOT penalty). */
  score: number;
  /** Mean total per-reply reward: score − penalty − β Σ kl. */
  reward: number;
  /** Mean KL to the reference per reply, summed over tokens (k1 on the sampled tokens). */
  kl: number;
  /** Mean per-token k3 estimate (non-negative; a diagnostic, not in the reward). */
  klK3: number;
  /** Mean KL to the SFT model per reply (k1, summed over tokens), when a `klReference` is given. */
  klSft?: number;
  /** β used for this step's rewards. */
  klCoef: number;
  /** The k3 loss term L_kl (computed even when its weight is 0). */
  klLoss: number;
  clipFrac: number;
  valueLoss: number;
  policyLoss: number;
  entropy: number;
  replyLength: number;
  /** Share of replies that ended with `<|end|>`. */
  eotRate: number;
  /** Approximate KL(π_θold ‖ π_θ) = ½ mean (log ratio)², at the end of each PPO epoch. */
  approxKlByEpoch: number[];
  ptxLoss: number;
  /** Experience collection: sampling, scoring, and the policy and reference passes over the rollouts. */
  rolloutMs: number;
  /** Advantages and the PPO epochs of minibatch updates. */
  updateMs: number;
}

/** Token rows of a batch of episodes: inputs `[B, T]`, targets and reply mask `[B*T]`. */
export interface RolloutRows {
  B: number;
  T: number;
  inputs: Int32Array;
  targets: Int32Array;
  mask: Float32Array;
  /** For each row, the positions (in 0..T) of its reply tokens. */
  replyPos: number[][];
}

export function buildRows(episodes: readonly Episode[], pad: number): RolloutRows {
  const seqs = episodes.map((e) => [...e.promptIds, ...e.replyIds]);
  const p = padRows(seqs.map((s) => s.slice(0, -1)), pad);
  const { B, T } = p;
  const targets = new Int32Array(B * T).fill(pad);
  const mask = new Float32Array(B * T);
  const replyPos: number[][] = [];
  episodes.forEach((e, b) => {
    targets.set(seqs[b]!.slice(1), b * T);
    const pos: number[] = [];
    for (let k = 0; k < e.replyIds.length; k++) {
      const t = e.promptIds.length - 1 + k; // the input position that predicts reply token k
      pos.push(t);
      mask[b * T + t] = 1;
    }
    replyPos.push(pos);
  });
  return { B, T, inputs: p.ids, targets, mask, replyPos };
}

/** Subset of rows (a minibatch), re-padded to its own longest row. */
export function sliceRows(r: RolloutRows, rows: readonly number[], arrays: Float32Array[]): { rows: RolloutRows; arrays: Float32Array[] } {
  const T = Math.max(...rows.map((b) => r.replyPos[b]![r.replyPos[b]!.length - 1]! + 1));
  const B = rows.length;
  const pick = <A extends Int32Array | Float32Array>(src: A, make: (n: number) => A): A => {
    const out = make(B * T);
    rows.forEach((b, i) => out.set(src.subarray(b * r.T, b * r.T + T), i * T));
    return out;
  };
  return {
    rows: {
      B,
      T,
      inputs: pick(r.inputs, (n) => new Int32Array(n)),
      targets: pick(r.targets, (n) => new Int32Array(n)),
      mask: pick(r.mask, (n) => new Float32Array(n)),
      replyPos: rows.map((b) => r.replyPos[b]!),
    },
    arrays: arrays.map((a) => pick(a, (n) => new Float32Array(n))),
  };
}

/**
 * The distribution rollouts are sampled from, as logits: raw logits / T with the special tokens
 * the sampler bans (all but `<|end|>`) pushed to −1e9 (not −∞: a one-hot pick would give 0·∞).
 */
export class SamplingDistribution {
  private readonly banned: Float32Array;

  constructor(tok: Tokenizer, vocabSize: number, readonly temperature: number) {
    if (!(temperature > 0)) throw new Error(`training needs a sampling temperature > 0, got ${temperature}`);
    const eot = endOfTurnId(tok);
    this.banned = new Float32Array(vocabSize);
    for (let id = 0; id < Math.min(vocabSize, tok.vocabSize); id++) if (tok.isSpecial(id) && id !== eot) this.banned[id] = -1e9;
  }

  /** `[N, V]` raw logits → `[N, V]` logits of the sampling distribution. */
  logits(raw: tf.Tensor2D): tf.Tensor2D {
    const scaled = this.temperature === 1 ? raw : tf.div(raw, this.temperature);
    return tf.add(scaled, tf.tensor1d(this.banned)) as tf.Tensor2D;
  }
}

/** Log-probabilities of the targets `[B*T]` under the sampling distribution (and values, for a policy), no gradient. */
export function forwardStats(model: GPT, r: RolloutRows, dist: SamplingDistribution, withValues: boolean): { logp: Float32Array; values?: Float32Array } {
  return tf.tidy(() => {
    const h = model.hidden(tf.tensor2d(r.inputs, [r.B, r.T], 'int32')); // [B*T, C]
    const logp = tokenLogProbs(dist.logits(model.lmLogits(h)), tf.tensor1d(r.targets, 'int32')).dataSync() as Float32Array; // [B*T]
    return { logp, values: withValues ? (model.values(h).dataSync() as Float32Array) : undefined };
  });
}

/**
 * Per-token log-probabilities of each episode's reply under `model`'s sampling distribution at
 * `temperature` (what the trainers use as log π(y_t | x, y_<t)).
 */
export function replyLogProbs(model: GPT, tok: Tokenizer, episodes: readonly Episode[], temperature: number): number[][] {
  const rows = buildRows(episodes, tok.specialId('<|pad|>'));
  const { logp } = forwardStats(model, rows, new SamplingDistribution(tok, model.config.vocabSize, temperature), false);
  return rows.replyPos.map((pos, b) => pos.map((t) => logp[b * rows.T + t]!));
}

/** Σ over each row's reply tokens of `a − b` (per-reply k1 when a, b are log-probs `[B*T]`). */
export function sumLogRatio(rows: RolloutRows, a: Float32Array, b: Float32Array): number[] {
  return rows.replyPos.map((pos, r) => pos.reduce((sum, t) => sum + a[r * rows.T + t]! - b[r * rows.T + t]!, 0));
}

/**
 * An exponential moving average of a policy's weights (the shipped model when decay > 0).
 * `update()` after every optimizer step: θ_ema ← d θ_ema + (1 − d) θ.
 */
export class WeightEma {
  readonly model: GPT;

  constructor(private readonly policy: GPT, private readonly decay: number) {
    this.model = policy.clone('policy', false);
  }

  update(): void {
    const d = this.decay;
    tf.tidy(() => {
      for (const [name, p] of this.model.params) p.assign(tf.add(tf.mul(p, d), tf.mul(this.policy.params.get(name)!, 1 - d)));
    });
  }

  /** Restores saved EMA weights (names as the policy's parameters; missing names keep their value). */
  load(weights: ReadonlyMap<string, Float32Array>): void {
    tf.tidy(() => {
      for (const [name, p] of this.model.params) {
        const w = weights.get(name);
        if (w) p.assign(tf.tensor(w, p.shape));
      }
    });
  }

  dispose(): void {
    this.model.dispose();
  }
}

/** Generalised advantage estimation over each row's reply tokens; returns advantages and returns `[B*T]`. */
export function gae(rewards: Float32Array, values: Float32Array, replyPos: readonly number[][], T: number, gamma: number, lam: number): { adv: Float32Array; ret: Float32Array } {
  const adv = new Float32Array(rewards.length);
  const ret = new Float32Array(rewards.length);
  replyPos.forEach((pos, b) => {
    let last = 0;
    for (let k = pos.length - 1; k >= 0; k--) {
      const i = b * T + pos[k]!;
      const next = k + 1 < pos.length ? values[b * T + pos[k + 1]!]! : 0;
      const delta = rewards[i]! + gamma * next - values[i]!;
      last = delta + gamma * lam * last;
      adv[i] = last;
      ret[i] = last + values[i]!;
    }
  });
  return { adv, ret };
}

/** Whitens the masked entries in place (mean 0, std 1). */
export function whiten(x: Float32Array, mask: Float32Array): void {
  let n = 0, s = 0, s2 = 0;
  for (let i = 0; i < x.length; i++) if (mask[i]) (n++, (s += x[i]!), (s2 += x[i]! * x[i]!));
  if (n < 2) return;
  const m = s / n;
  const std = Math.sqrt(Math.max(0, s2 / n - m * m)) + 1e-8;
  for (let i = 0; i < x.length; i++) x[i] = mask[i] ? (x[i]! - m) / std : 0;
}

export const maskedMean = (x: tf.Tensor, m: tf.Tensor, n: number) => tf.div(tf.sum(tf.mul(x, m)), n) as tf.Scalar;

/** The adaptive KL controller of Ziegler et al. (2019). */
export class KlController {
  constructor(
    public value: number,
    private readonly target: number | undefined,
    private readonly horizon: number,
  ) {}

  update(kl: number, nRollouts: number): void {
    if (this.target === undefined) return;
    const e = Math.max(-0.2, Math.min(0.2, kl / this.target - 1));
    this.value *= 1 + (e * nRollouts) / this.horizon;
  }
}

/** What `PpoTrainer.exportState` returns: enough, with the weights and moments, to continue a run. */
export interface PpoTrainerState {
  step: number;
  updates: number;
  klCoef: number;
  scoreStats: { n: number; mean: number; m2: number };
  optimizerStep: number;
}

export interface PpoTrainerOptions {
  policy: GPT;
  /** The KL reference π_ref (SFT, or the champion when the loop re-anchors). */
  reference: GPT;
  /** The SFT model, when it is not `reference`: its KL is reported as `klSft` (never trained against). */
  klReference?: GPT;
  tok: Tokenizer;
  reward: RewardSource;
  /** Conversations ending with a user turn. */
  prompts: readonly ChatMessage[][];
  knobs?: Partial<PpoKnobs>;
  /** Pretraining batches for PPO-ptx (required when ptxCoef > 0). */
  ptxBatchAt?: (step: number) => Batch;
  log?: (line: string) => void;
}

/** Running mean/std of scores (Welford), for `whitenScores`. */
export function whitenScore(st: { n: number; mean: number; m2: number }, s: number): number {
  st.n++;
  const d = s - st.mean;
  st.mean += d / st.n;
  st.m2 += d * (s - st.mean);
  const std = st.n > 1 ? Math.sqrt(st.m2 / (st.n - 1)) : 1;
  return (s - st.mean) / (std + 1e-8);
}

/** The stream of randomness of step `step` (prompt draw, shuffles): a function of (seed, step) only. */
export const stepRng = (seed: number, step: number): Rng => createRng(seed * 7_919 + step);

/** The knobs every rollout trainer reads (PPO's and RLOO's share these names). */
export type RolloutTrainerKnobs = Pick<PpoKnobs, 'temperature' | 'klCoef' | 'adaptiveKl' | 'klTarget' | 'klHorizon' | 'weightDecay' | 'gradClip' | 'emaDecay'>;

/**
 * What PPO and RLOO share: the sampled distribution, the KL controller, AdamW, the weight EMA,
 * step counters and score statistics, and how they are saved and restored.
 */
export abstract class RolloutTrainer {
  readonly kl: KlController;
  protected readonly emaState: WeightEma | undefined;
  protected readonly opt: AdamW;
  protected readonly dist: SamplingDistribution;
  protected readonly pad: number;
  protected readonly eot: number;
  protected stepCount = 0;
  protected updates = 0;
  protected scoreStats = { n: 0, mean: 0, m2: 0 };

  constructor(
    protected readonly trained: GPT,
    tok: Tokenizer,
    k: Readonly<RolloutTrainerKnobs>,
  ) {
    this.dist = new SamplingDistribution(tok, trained.config.vocabSize, k.temperature);
    this.kl = new KlController(k.klCoef, k.adaptiveKl ? k.klTarget : undefined, k.klHorizon);
    this.opt = new AdamW(trained.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: k.weightDecay, gradClip: k.gradClip });
    this.emaState = k.emaDecay > 0 ? new WeightEma(trained, k.emaDecay) : undefined;
    this.pad = tok.specialId('<|pad|>');
    this.eot = endOfTurnId(tok);
  }

  /** The EMA model (when emaDecay > 0). */
  get ema(): GPT | undefined {
    return this.emaState?.model;
  }

  /** β now: the coefficient the next step's rewards use (carry it to the next round's `klCoef` knob). */
  get klCoef(): number {
    return this.kl.value;
  }

  /** Counters, KL coefficient and score statistics for resuming (see `importState`). */
  exportState(): PpoTrainerState {
    return { step: this.stepCount, updates: this.updates, klCoef: this.kl.value, scoreStats: { ...this.scoreStats }, optimizerStep: this.opt.step };
  }

  /** Optimizer moments (`m.<param>`, `v.<param>`) for checkpoints. */
  exportOptimizer(): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
    return this.opt.exportState();
  }

  /**
   * Continues a run saved by `exportState`/`exportOptimizer` (the policy's weights are restored
   * by the caller; the EMA's from `ema`). Randomness is a function of (seed, step), so the
   * continued run is the uninterrupted one.
   */
  importState(state: PpoTrainerState, optimizer?: ReadonlyMap<string, Float32Array>, ema?: ReadonlyMap<string, Float32Array>): void {
    this.stepCount = state.step;
    this.updates = state.updates;
    this.kl.value = state.klCoef;
    this.scoreStats = { ...state.scoreStats };
    if (optimizer) this.opt.importState(optimizer, state.optimizerStep);
    if (this.emaState && ema) this.emaState.load(ema);
  }

  /** The weights to ship: the EMA when enabled, else the policy's. */
  get shipped(): GPT {
    return this.emaState?.model ?? this.trained;
  }

  dispose(): void {
    this.opt.dispose();
    this.emaState?.dispose();
  }
}

/**
 * PPO on a policy (trained in place) against a frozen reference.
 *
 * @example
 *   const ppo = new PpoTrainer({ policy, reference: sft.clone('policy', false), tok, reward, prompts });
 *   for (let i = 0; i < 50; i++) console.log(await ppo.step());
 *   ppo.dispose();
 */
export class PpoTrainer extends RolloutTrainer {
  readonly knobs: Readonly<PpoKnobs>;
  private readonly vars: tf.Variable[];

  constructor(private readonly o: PpoTrainerOptions) {
    const knobs = Object.freeze({ ...PPO_DEFAULTS, ...o.knobs });
    if (o.policy.kind !== 'policy' || o.reference.kind !== 'policy') throw new Error('PPO needs policy models (with LM and value heads) for the policy and the reference');
    if (!o.prompts.length) throw new Error('PPO needs at least one prompt');
    if (knobs.ptxCoef > 0 && !o.ptxBatchAt) throw new Error('ptxCoef > 0 needs pretraining batches (ptxBatchAt)');
    if (knobs.minibatchSize > knobs.batchSize) throw new Error(`minibatchSize ${knobs.minibatchSize} exceeds batchSize ${knobs.batchSize}`);
    super(o.policy, o.tok, knobs);
    this.knobs = knobs;
    this.vars = o.policy.trainableVariables();
  }

  /** Samples one reply per prompt from the policy. */
  rollout(prompts: readonly ChatMessage[][], seed: number): Episode[] {
    return sampleEpisodes(this.o.policy, this.o.tok, prompts, { maxTokens: this.knobs.maxTokens, temperature: this.knobs.temperature, seed });
  }

  /** One PPO step: rollouts, scores, advantages, then `epochs` passes of minibatch updates. */
  async step(): Promise<PpoStepStats> {
    const k = this.knobs;
    const { policy, reference } = this.o;
    const rng = stepRng(k.seed, this.stepCount);
    const t0 = performance.now();
    const prompts = Array.from({ length: k.batchSize }, () => rng.pick(this.o.prompts));
    const episodes = this.rollout(prompts, k.seed * 100_003 + this.stepCount * 1_009);
    const rawScores = await this.o.reward.score(episodes.map((e) => ({ prompt: e.prompt, reply: e.reply, replyIds: e.replyIds })));
    const rows = buildRows(episodes, this.pad);
    const cur = forwardStats(policy, rows, this.dist, true);
    const ref = forwardStats(reference, rows, this.dist, false);
    const sft = this.o.klReference ? forwardStats(this.o.klReference, rows, this.dist, false) : undefined;
    const rolloutMs = performance.now() - t0;

    const t1 = performance.now();
    const scores = rawScores.map((s, i) => {
      const x = k.whitenScores ? whitenScore(this.scoreStats, s) : s;
      return episodes[i]!.replyIds[episodes[i]!.replyIds.length - 1] === this.eot ? x : x - k.missingEotPenalty;
    });
    const beta = this.kl.value;
    const rewards = new Float32Array(rows.B * rows.T);
    const klSeq: number[] = [];
    const k3s: number[] = [];
    const total: number[] = [];
    rows.replyPos.forEach((pos, b) => {
      let klSum = 0;
      let tot = 0;
      pos.forEach((t, j) => {
        const i = b * rows.T + t;
        const logRatio = cur.logp[i]! - ref.logp[i]!; // k1
        klSum += logRatio;
        k3s.push(Math.exp(-logRatio) - 1 + logRatio);
        rewards[i] = -beta * logRatio + (j === pos.length - 1 ? scores[b]! : 0);
        tot += rewards[i]!;
      });
      klSeq.push(klSum);
      total.push(tot);
    });
    const { adv, ret } = gae(rewards, cur.values!, rows.replyPos, rows.T, k.gamma, k.lam);
    whiten(adv, rows.mask);

    const order = Array.from({ length: rows.B }, (_, i) => i);
    const stats = { clip: [] as number[], vf: [] as number[], pg: [] as number[], ent: [] as number[], klLoss: [] as number[], ptx: [] as number[] };
    const approxKlByEpoch: number[] = [];
    const totalUpdates = Math.max(1, k.steps * k.epochs * Math.ceil(k.batchSize / k.minibatchSize));
    for (let epoch = 0; epoch < k.epochs; epoch++) {
      const perm = rng.shuffle(order);
      const epochKl: number[] = [];
      for (let s = 0; s < perm.length; s += k.minibatchSize) {
        const mb = sliceRows(rows, perm.slice(s, s + k.minibatchSize), [cur.logp, cur.values!, adv, ret, ref.logp]);
        const [oldLogp, oldValues, mAdv, mRet, refLogp] = mb.arrays as [Float32Array, Float32Array, Float32Array, Float32Array, Float32Array];
        const lr = warmupCosine(this.updates, totalUpdates, k.lr, k.minLr, k.warmup);
        const ptx = k.ptxCoef > 0 ? this.o.ptxBatchAt!(this.updates) : undefined;
        const r = optimizerStep(policy, this.opt, this.vars, lr, () => this.loss(mb.rows, oldLogp, oldValues, mAdv, mRet, refLogp, ptx));
        this.updates++;
        this.emaState?.update();
        stats.clip.push(r.aux.clipFrac!);
        stats.vf.push(r.aux.valueLoss!);
        stats.pg.push(r.aux.policyLoss!);
        stats.ent.push(r.aux.entropy!);
        stats.klLoss.push(r.aux.klLoss!);
        if (ptx) stats.ptx.push(r.aux.ptxLoss!);
        epochKl.push(r.aux.approxKl!);
      }
      approxKlByEpoch.push(mean(epochKl));
    }
    const kl = mean(klSeq);
    this.kl.update(kl, rows.B);
    this.stepCount++;
    return {
      step: this.stepCount,
      score: mean(rawScores),
      reward: mean(total),
      kl,
      klK3: mean(k3s),
      ...(sft ? { klSft: mean(sumLogRatio(rows, cur.logp, sft.logp)) } : {}),
      klCoef: beta,
      klLoss: mean(stats.klLoss),
      clipFrac: mean(stats.clip),
      valueLoss: mean(stats.vf),
      policyLoss: mean(stats.pg),
      entropy: mean(stats.ent),
      replyLength: mean(episodes.map((e) => e.replyIds.length)),
      eotRate: mean(episodes.map((e) => (e.replyIds[e.replyIds.length - 1] === this.eot ? 1 : 0))),
      approxKlByEpoch,
      ptxLoss: stats.ptx.length ? mean(stats.ptx) : NaN,
      rolloutMs,
      updateMs: performance.now() - t1,
    };
  }

  /** The clipped PPO loss of a minibatch (plus value, k3, entropy and ptx terms) and its diagnostics. */
  private loss(r: RolloutRows, oldLogp: Float32Array, oldValues: Float32Array, adv: Float32Array, ret: Float32Array, refLogp: Float32Array, ptx: Batch | undefined): { loss: tf.Scalar; aux: Record<string, tf.Scalar> } {
    const k = this.knobs;
    const { policy } = this.o;
    const n = r.mask.reduce((a, b) => a + b, 0);
    const m = tf.tensor1d(r.mask); // [B*T]
    const h = policy.hidden(tf.tensor2d(r.inputs, [r.B, r.T], 'int32')); // [B*T, C]
    const logits = this.dist.logits(policy.lmLogits(h)); // [B*T, V], the sampling distribution
    const logp = tokenLogProbs(logits, tf.tensor1d(r.targets, 'int32')); // [B*T]
    const values = policy.values(h); // [B*T]
    const A = tf.tensor1d(adv);
    const R = tf.tensor1d(ret);
    const Vold = tf.tensor1d(oldValues);
    const logRatio = tf.mul(tf.sub(logp, tf.tensor1d(oldLogp)), m); // [B*T], 0 off the reply
    const ratio = tf.exp(logRatio);
    const pg1 = tf.mul(tf.neg(A), ratio);
    const pg2 = tf.mul(tf.neg(A), tf.clipByValue(ratio, 1 - k.clipRange, 1 + k.clipRange));
    const policyLoss = maskedMean(tf.maximum(pg1, pg2), m, n);
    const vClipped = tf.add(Vold, tf.clipByValue(tf.sub(values, Vold), -k.clipRangeValue, k.clipRangeValue));
    const valueLoss = tf.mul(maskedMean(tf.maximum(tf.square(tf.sub(values, R)), tf.square(tf.sub(vClipped, R))), m, n), 0.5) as tf.Scalar;
    const ent = maskedMean(entropy(logits), m, n);
    const klLoss = maskedMean(k3(logp, tf.tensor1d(refLogp), m), m, n);
    let loss = tf.add(policyLoss, tf.mul(valueLoss, k.vfCoef)) as tf.Scalar;
    if (k.klLossCoef > 0) loss = tf.add(loss, tf.mul(klLoss, k.klLossCoef)) as tf.Scalar;
    if (k.entCoef > 0) loss = tf.sub(loss, tf.mul(ent, k.entCoef)) as tf.Scalar;
    const aux: Record<string, tf.Scalar> = {
      policyLoss,
      valueLoss,
      entropy: ent,
      klLoss,
      clipFrac: maskedMean(tf.cast(tf.greater(pg2, pg1), 'float32'), m, n),
      approxKl: maskedMean(tf.mul(tf.square(logRatio), 0.5), m, n),
    };
    if (ptx) {
      const hp = policy.hidden(tf.tensor2d(ptx.inputs, [ptx.B, ptx.T], 'int32')); // [B*T, C]
      const ptxLoss = maskedCrossEntropy(policy.lmLogits(hp), tf.tensor1d(ptx.targets, 'int32'), tf.tensor1d(ptx.weights));
      loss = tf.add(loss, tf.mul(ptxLoss, k.ptxCoef)) as tf.Scalar;
      aux.ptxLoss = ptxLoss;
    }
    return { loss, aux };
  }

}

/** Per-token k3 estimate of KL(π_θ ‖ π_ref) on tokens sampled from π_θ: (q − 1) − log q, q = π_ref/π_θ, `[N]` (0 where m is 0). */
export function k3(logp: tf.Tensor1D, refLogp: tf.Tensor1D, m: tf.Tensor1D): tf.Tensor1D {
  const logQ = tf.mul(tf.sub(refLogp, logp), m); // [N]
  return tf.sub(tf.sub(tf.exp(logQ), 1), logQ) as tf.Tensor1D;
}

/**
 * One reply per prompt from `model` (prompts longer than the window keep their latest tokens).
 * Sampling is untruncated (no top-k/top-p) so the replies follow the model's distribution.
 */
export function sampleEpisodes(model: GPT, tok: Tokenizer, prompts: readonly ChatMessage[][], opts: { maxTokens: number; temperature: number; seed: number }): Episode[] {
  const maxPrompt = model.config.blockSize - opts.maxTokens - 1;
  if (maxPrompt < 2) throw new Error(`maxTokens ${opts.maxTokens} leaves no room for a prompt in blockSize ${model.config.blockSize}`);
  const promptIds = prompts.map((p) => {
    const ids = renderChat(tok, p, { addGenerationPrompt: true }).ids;
    return ids.slice(Math.max(0, ids.length - maxPrompt));
  });
  const gens = generateBatch(model, tok, promptIds, { maxTokens: opts.maxTokens, temperature: opts.temperature, topK: 0, topP: 1, seed: opts.seed, stop: [] });
  return gens.map((g, i) => ({ prompt: prompts[i]!, promptIds: promptIds[i]!, replyIds: g.ids, reply: g.text, finishReason: g.finishReason }));
}

/**
 * Σ_t log π(y_t) − log π_ref(y_t) per episode (the k1 estimate of KL(π ‖ π_ref) per reply, on
 * replies sampled from π), both under the sampling distribution at `temperature` (default 1).
 */
export function episodeKl(policy: GPT, reference: GPT, tok: Tokenizer, episodes: readonly Episode[], temperature = 1): number[] {
  const rows = buildRows(episodes, tok.specialId('<|pad|>'));
  const dist = new SamplingDistribution(tok, policy.config.vocabSize, temperature);
  return sumLogRatio(rows, forwardStats(policy, rows, dist, false).logp, forwardStats(reference, rows, dist, false).logp);
}

/** One line per step: reward, KL, clip fraction, value loss, entropy, length, approx KL by epoch. */
export function formatPpoStats(s: PpoStepStats, total?: number): string {
  const f = (x: number, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  return (
    `ppo step ${s.step}${total ? `/${total}` : ''}: score ${f(s.score)} reward ${f(s.reward)} kl ${f(s.kl)} (k3/token ${f(s.klK3, 4)})${s.klSft !== undefined ? ` kl-sft ${f(s.klSft)}` : ''} β ${f(s.klCoef, 4)} ` +
    `clipfrac ${f(s.clipFrac)} vf ${f(s.valueLoss, 4)} pg ${f(s.policyLoss, 4)} entropy ${f(s.entropy)} len ${f(s.replyLength, 1)} eot ${f(s.eotRate, 2)} ` +
    `approx-kl/epoch [${s.approxKlByEpoch.map((x) => f(x, 5)).join(' ')}]${Number.isFinite(s.ptxLoss) ? ` ptx ${f(s.ptxLoss)}` : ''} ` +
    `rollout ${(s.rolloutMs / 1000).toFixed(2)}s update ${(s.updateMs / 1000).toFixed(2)}s`
  );
}

/** The scalar metrics of a step (for the store's run metrics). */
export function ppoMetrics(s: PpoStepStats): Record<string, number> {
  const out: Record<string, number> = {
    score: s.score, reward: s.reward, kl: s.kl, kl_k3: s.klK3, kl_sft: s.klSft ?? NaN, kl_loss: s.klLoss, kl_coef: s.klCoef, clip_frac: s.clipFrac, value_loss: s.valueLoss,
    policy_loss: s.policyLoss, entropy: s.entropy, reply_length: s.replyLength, eot_rate: s.eotRate,
    approx_kl: s.approxKlByEpoch[s.approxKlByEpoch.length - 1] ?? NaN, ptx_loss: s.ptxLoss, rollout_ms: s.rolloutMs, update_ms: s.updateMs,
  };
  for (const key of Object.keys(out)) if (!Number.isFinite(out[key])) delete out[key];
  return out;
}

// ------------------------------------------------------------------ prompts

function userPrefixes(turns: readonly ChatMessage[]): ChatMessage[][] {
  const out: ChatMessage[][] = [];
  turns.forEach((t, i) => {
    if (t.role === 'user') out.push(turns.slice(0, i + 1).map((m) => ({ role: m.role, content: m.content })));
  });
  return out;
}

/** Prompts from JSONL rows `{ prompt }` (turns or a string) or `{ messages }` (every user turn with its context). */
export function readPromptsJsonl(path: string): ChatMessage[][] {
  if (!existsSync(path)) throw new Error(`no prompts file at ${path}; give --prompts prompts.jsonl or --database URL`);
  const out: ChatMessage[][] = [];
  readFileSync(path, 'utf8').split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let row: { prompt?: unknown; messages?: unknown };
    try {
      row = JSON.parse(line) as typeof row;
    } catch {
      throw new Error(`${path}:${i + 1}: not valid JSON`);
    }
    if (typeof row.prompt === 'string') out.push([{ role: 'user', content: row.prompt }]);
    else if (Array.isArray(row.prompt)) out.push(...userPrefixes(row.prompt as ChatMessage[]).slice(-1));
    else if (Array.isArray(row.messages)) out.push(...userPrefixes(row.messages as ChatMessage[]));
    else throw new Error(`${path}:${i + 1}: expected { prompt } or { messages }`);
  });
  return dedupe(out);
}

/** Prompts from real conversations in the store: every user turn with its preceding context. */
export async function loadStorePrompts(store: FeedbackStore, opts: { since?: string; limit?: number } = {}): Promise<ChatMessage[][]> {
  const out: ChatMessage[][] = [];
  for await (const row of exportSft(store.db, { keepThumbsDown: true, ...(opts.since ? { since: opts.since } : {}) })) {
    out.push(...userPrefixes(row.messages));
    if (opts.limit && out.length >= opts.limit) break;
  }
  return dedupe(out);
}

function dedupe(prompts: ChatMessage[][]): ChatMessage[][] {
  const seen = new Set<string>();
  return prompts.filter((p) => {
    const key = JSON.stringify(p);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

// ------------------------------------------------------------------ command line

/** Loads the checkpoints and the reward source, runs PPO, saves the policy. */
export async function ppo(cfg: PpoConfig, log: (l: string) => void = (l) => console.error(l), shouldStop?: () => boolean): Promise<{ history: PpoStepStats[] }> {
  await initBackend({ backend: cfg.backend || undefined, log });
  if (existsSync(cfg.out)) throw new Error(`${cfg.out} already exists; checkpoints are never overwritten (choose another --out)`);
  const refCk = loadCheckpoint(cfg.reference, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(refCk.tokenizer);
  const expect = { config: refCk.meta.config, tokenizerFingerprint: tok.fingerprint() };
  const polCk = loadCheckpoint(cfg.policy, { ...expect, kind: 'policy' });
  const reference = GPT.fromWeights(refCk.meta.config, 'policy', refCk.weights);
  const policy = GPT.fromWeights(polCk.meta.config, 'policy', polCk.weights);
  const { RemoteRewardSource, RewardModelSource } = await import('./reward-source.ts');
  let rm: GPT | undefined;
  let reward: RewardSource;
  if (cfg.rewardUrl) reward = new RemoteRewardSource(cfg.rewardUrl, { timeoutMs: cfg.rewardTimeoutMs });
  else {
    const rmCk = loadCheckpoint(cfg.reward, { kind: 'reward', tokenizerFingerprint: tok.fingerprint() });
    rm = GPT.fromWeights(rmCk.meta.config, 'reward', rmCk.weights);
    reward = new RewardModelSource(rm, tok, { label: cfg.reward });
  }
  let prompts: ChatMessage[][];
  if (cfg.database) {
    const { openStore } = await import('../feedback/index.ts');
    const store = await openStore({ url: storeUrl(cfg.database) });
    try {
      prompts = await loadStorePrompts(store);
    } finally {
      await store.close();
    }
  } else if (cfg.prompts) prompts = readPromptsJsonl(cfg.prompts);
  else throw new Error('give --prompts prompts.jsonl or --database URL');
  log(`ppo: ${prompts.length} prompts, reward from ${reward.name}, KL to ${cfg.reference}`);
  let ptxBatchAt: ((step: number) => Batch) | undefined;
  if (cfg.ptxCoef > 0) {
    const { corpusTokens, streamBatchAt } = await import('./datasets.ts');
    ptxBatchAt = streamBatchAt(corpusTokens(cfg.ptxData, 'train', tok), cfg.ptxBatchSize, policy.config.blockSize, cfg.seed);
  }
  const knobs = PpoKnobs.parse(Object.fromEntries(Object.keys(PPO_DEFAULTS).map((key) => [key, cfg[key as keyof PpoConfig]])));
  const trainer = new PpoTrainer({ policy, reference, tok, reward, prompts, knobs, ptxBatchAt, log });
  const history: PpoStepStats[] = [];
  for (let i = 0; i < cfg.steps; i++) {
    const s = await trainer.step();
    history.push(s);
    log(formatPpoStats(s, cfg.steps));
    if (shouldStop?.()) {
      log(`ppo: stopped at step ${s.step}; saving what was trained`);
      break;
    }
  }
  const last = history.slice(-Math.min(5, history.length));
  saveCheckpoint(cfg.out, {
    weights: await trainer.shipped.exportWeights(),
    meta: {
      stage: 'policy',
      kind: 'policy',
      config: policy.config,
      tokenizerFingerprint: tok.fingerprint(),
      parent: cfg.policy,
      step: history.length,
      metrics: { ...ppoMetrics(last[last.length - 1]!), scoreLast5: mean(last.map((s) => s.score)), klLast5: mean(last.map((s) => s.kl)) },
      runConfig: { ...cfg, reference: cfg.reference, rewardSource: reward.name },
    },
    tokenizer: tok.toJSON(),
  });
  log(`ppo: saved ${cfg.out}`);
  trainer.dispose();
  policy.dispose();
  reference.dispose();
  rm?.dispose();
  return { history };
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx training/ppo.ts --policy checkpoints/sft --reference checkpoints/sft --reward checkpoints/reward --prompts prompts.jsonl|--database URL --out checkpoints/policy', schema: PpoConfig, envPrefix: 'PPO' }, (cfg) => ppo(cfg, undefined, stopRequested()));
}
