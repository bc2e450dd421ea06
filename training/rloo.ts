/**
 * RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics:
 * Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs"), in the shape
 * of TRL's RLOOTrainer: k replies per prompt, a sequence-level reward, no value head.
 *
 * Symbols. x a prompt, y_1..y_k replies sampled from π_θold at temperature T (the sampling
 * distribution of training/ppo.ts: softmax(logits / T), banned specials masked, no top-p), π_ref
 * the frozen reference, π_sft the SFT model (optional `klReference`, reported only), r(x, y) the
 * reward source's score, β the KL coefficient, ε the ratio clip.
 *
 * Sequence reward of reply i (k1 summed over its tokens, as TRL's non-score reward):
 *     KL_i = Σ_t log π_θold(y_i,t | ·) − log π_ref(y_i,t | ·)
 *     R_i  = r(x, y_i) − p_eot · [no <|end|> in y_i] − β · KL_i
 * Leave-one-out baseline and advantage (per prompt, over its k replies):
 *     b_i = (1/(k−1)) Σ_{j≠i} R_j,   A_i = R_i − b_i   (optionally whitened over the batch)
 * Loss per minibatch of replies, with the sequence ratio ρ_i = π_θ(y_i | x) / π_θold(y_i | x):
 *     L_pg = mean_i max(−A_i ρ_i, −A_i clip(ρ_i, 1−ε, 1+ε))
 *     L    = L_pg + c_kl · mean k3_t − c_ent H[π_θ]   (both extra terms 0 by default)
 * `epochs` passes over minibatches of one batch of rollouts (PPO-style reuse, as TRL); with one
 * epoch and one minibatch ρ = 1 and L_pg is plain REINFORCE with the RLOO baseline.
 * KL controller, EMA, resumable state and per-step randomness are PPO's (training/ppo.ts).
 *
 * Deviations from the paper and TRL's RLOOTrainer:
 *  1. `batchSize` counts replies, so a step samples round(batchSize / k) prompts × k replies
 *     (TRL counts prompts); the same knobs as PPO thus cost about the same per step.
 *  2. The missing-end-of-turn penalty and optional score whitening are PPO's (TRL has
 *     `missing_eos_penalty`; score whitening is ours).
 *  3. The optional k3 loss term and entropy bonus are not in TRL's RLOO (defaults 0).
 *  4. Value-head, GAE and PPO-ptx knobs are ignored (no value head, no pretraining mix).
 *  5. Tiny scale: tens of replies per step.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { entropy, tokenLogProbs } from '../model/losses.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { mean, optimizerStep, warmupCosine } from './rlhf-common.ts';
import type { RewardSource } from './reward-source.ts';
import {
  PPO_DEFAULTS, RolloutTrainer, buildRows, forwardStats, k3, maskedMean, sampleEpisodes, sliceRows, stepRng, sumLogRatio, whitenScore,
  type Episode, type PpoKnobs, type PpoTrainerState, type RolloutRows,
} from './ppo.ts';

/** RLOO's knobs: PPO's (those it uses) plus k and advantage whitening. */
export interface RlooKnobs extends PpoKnobs {
  /** k: replies per prompt (≥ 2). */
  rlooK: number;
  /** Whiten the advantages over the batch (TRL's `normalize_advantage`). */
  rlooWhiten: boolean;
}

export const RLOO_DEFAULTS: Readonly<RlooKnobs> = Object.freeze({ ...PPO_DEFAULTS, rlooK: 4, rlooWhiten: false });

/** What one RLOO step measured. */
export interface RlooStepStats {
  step: number;
  /** Mean reward-source score (before the missing-EOT penalty). */
  score: number;
  /** Mean sequence reward R_i = score − penalty − β KL_i. */
  reward: number;
  /** Mean KL to the reference per reply (k1 summed over tokens). */
  kl: number;
  /** Mean per-token k3 estimate (diagnostic). */
  klK3: number;
  /** Mean KL to the SFT model per reply, when a `klReference` is given. */
  klSft?: number;
  klCoef: number;
  klLoss: number;
  /** Mean over prompts of the std of R among its k replies (the signal the baseline leaves). */
  rewardStdWithin: number;
  /** Mean |A_i| before whitening. */
  advantageAbs: number;
  clipFrac: number;
  policyLoss: number;
  entropy: number;
  replyLength: number;
  eotRate: number;
  /** ½ mean (sequence log ratio)² at the end of each epoch. */
  approxKlByEpoch: number[];
  rolloutMs: number;
  updateMs: number;
}

/** What `RlooTrainer.exportState` returns. */
/** RLOO saves and restores what PPO does. */
export type RlooTrainerState = PpoTrainerState;

export interface RlooTrainerOptions {
  policy: GPT;
  reference: GPT;
  /** The SFT model, when it is not `reference`: its KL is reported as `klSft`. */
  klReference?: GPT;
  tok: Tokenizer;
  reward: RewardSource;
  prompts: readonly ChatMessage[][];
  knobs?: Partial<RlooKnobs>;
  log?: (line: string) => void;
}

/**
 * Leave-one-out baselines and advantages of rewards laid out as consecutive groups of `k`
 * (the k replies of one prompt): b_i = mean of the other k−1, A_i = R_i − b_i.
 *
 * @example
 *   leaveOneOutAdvantages([1, 2, 3, 6], 4) // baseline [11/3, 10/3, 3, 2], advantage [−8/3, −4/3, 0, 4]
 */
export function leaveOneOutAdvantages(rewards: readonly number[], k: number): { baseline: number[]; advantage: number[] } {
  if (!Number.isInteger(k) || k < 2) throw new Error(`RLOO needs k ≥ 2 replies per prompt, got ${k}`);
  if (rewards.length % k !== 0) throw new Error(`${rewards.length} rewards are not groups of ${k}`);
  const baseline: number[] = [];
  for (let g = 0; g < rewards.length; g += k) {
    const group = rewards.slice(g, g + k);
    const sum = group.reduce((a, b) => a + b, 0);
    for (const r of group) baseline.push((sum - r) / (k - 1));
  }
  return { baseline, advantage: rewards.map((r, i) => r - baseline[i]!) };
}

/**
 * RLOO on a policy (trained in place, value head untouched) against a frozen reference.
 *
 * @example
 *   const rloo = new RlooTrainer({ policy, reference, tok, reward, prompts, knobs: { rlooK: 4 } });
 *   for (let i = 0; i < 50; i++) console.log(await rloo.step());
 *   rloo.dispose();
 */
export class RlooTrainer extends RolloutTrainer {
  readonly knobs: Readonly<RlooKnobs>;
  private readonly vars: tf.Variable[];
  private readonly nPrompts: number;

  constructor(private readonly o: RlooTrainerOptions) {
    const k = Object.freeze({ ...RLOO_DEFAULTS, ...o.knobs });
    if (o.policy.kind !== 'policy' || o.reference.kind !== 'policy') throw new Error('RLOO needs policy models for the policy and the reference');
    if (!o.prompts.length) throw new Error('RLOO needs at least one prompt');
    if (!Number.isInteger(k.rlooK) || k.rlooK < 2) throw new Error(`RLOO needs rlooK ≥ 2 replies per prompt, got ${k.rlooK}`);
    const nPrompts = Math.max(1, Math.round(k.batchSize / k.rlooK));
    if (k.minibatchSize > nPrompts * k.rlooK) throw new Error(`minibatchSize ${k.minibatchSize} exceeds the ${nPrompts * k.rlooK} replies of a step`);
    super(o.policy, o.tok, k);
    this.knobs = k;
    this.nPrompts = nPrompts;
    this.vars = o.policy.trainableVariables().filter((v) => !v.name.startsWith('value.'));
  }

  /** Replies per step: round(batchSize / k) prompts × k. */
  get rolloutsPerStep(): number {
    return this.nPrompts * this.knobs.rlooK;
  }

  /** One RLOO step: k replies for each of the step's prompts, rewards, baselines, then `epochs` passes of minibatch updates. */
  async step(): Promise<RlooStepStats> {
    const k = this.knobs;
    const K = k.rlooK;
    const { policy, reference } = this.o;
    const rng = stepRng(k.seed, this.stepCount);
    const t0 = performance.now();
    const drawn = Array.from({ length: this.nPrompts }, () => rng.pick(this.o.prompts));
    const prompts = drawn.flatMap((p) => Array.from({ length: K }, () => p)); // groups of K, consecutive
    const episodes: Episode[] = sampleEpisodes(policy, this.o.tok, prompts, { maxTokens: k.maxTokens, temperature: k.temperature, seed: k.seed * 100_003 + this.stepCount * 1_009 });
    const rawScores = await this.o.reward.score(episodes.map((e) => ({ prompt: e.prompt, reply: e.reply, replyIds: e.replyIds })));
    const rows = buildRows(episodes, this.pad);
    const cur = forwardStats(policy, rows, this.dist, false);
    const ref = forwardStats(reference, rows, this.dist, false);
    const sft = this.o.klReference ? forwardStats(this.o.klReference, rows, this.dist, false) : undefined;
    const rolloutMs = performance.now() - t0;

    const t1 = performance.now();
    const beta = this.kl.value;
    const klSeq = sumLogRatio(rows, cur.logp, ref.logp);
    const k3s: number[] = [];
    rows.replyPos.forEach((pos, b) => pos.forEach((t) => {
      const lr = cur.logp[b * rows.T + t]! - ref.logp[b * rows.T + t]!;
      k3s.push(Math.exp(-lr) - 1 + lr);
    }));
    const R = rawScores.map((s, i) => {
      const x = k.whitenScores ? whitenScore(this.scoreStats, s) : s;
      const closed = episodes[i]!.replyIds[episodes[i]!.replyIds.length - 1] === this.eot;
      return (closed ? x : x - k.missingEotPenalty) - beta * klSeq[i]!;
    });
    const { advantage } = leaveOneOutAdvantages(R, K);
    const adv = Float64Array.from(advantage);
    const advantageAbs = mean(advantage.map(Math.abs));
    if (k.rlooWhiten && adv.length > 1) {
      const m = mean([...adv]);
      const sd = Math.sqrt(mean([...adv].map((a) => (a - m) ** 2))) + 1e-8;
      for (let i = 0; i < adv.length; i++) adv[i] = (adv[i]! - m) / sd;
    }
    const oldSeq = Float32Array.from(rows.replyPos.map((pos, b) => pos.reduce((s, t) => s + cur.logp[b * rows.T + t]!, 0)));

    const order = Array.from({ length: rows.B }, (_, i) => i);
    const stats = { clip: [] as number[], pg: [] as number[], ent: [] as number[], klLoss: [] as number[] };
    const approxKlByEpoch: number[] = [];
    const totalUpdates = Math.max(1, k.steps * k.epochs * Math.ceil(rows.B / k.minibatchSize));
    for (let epoch = 0; epoch < k.epochs; epoch++) {
      const perm = rng.shuffle(order);
      const epochKl: number[] = [];
      for (let s = 0; s < perm.length; s += k.minibatchSize) {
        const pick = perm.slice(s, s + k.minibatchSize);
        const mb = sliceRows(rows, pick, [ref.logp]);
        const mAdv = Float32Array.from(pick.map((b) => adv[b]!));
        const mOld = Float32Array.from(pick.map((b) => oldSeq[b]!));
        const lr = warmupCosine(this.updates, totalUpdates, k.lr, k.minLr, k.warmup);
        const r = optimizerStep(policy, this.opt, this.vars, lr, () => this.loss(mb.rows, mOld, mAdv, mb.arrays[0]!));
        this.updates++;
        this.emaState?.update();
        stats.clip.push(r.aux.clipFrac!);
        stats.pg.push(r.aux.policyLoss!);
        stats.ent.push(r.aux.entropy!);
        stats.klLoss.push(r.aux.klLoss!);
        epochKl.push(r.aux.approxKl!);
      }
      approxKlByEpoch.push(mean(epochKl));
    }
    const kl = mean(klSeq);
    this.kl.update(kl, rows.B);
    this.stepCount++;
    const stdWithin: number[] = [];
    for (let g = 0; g < R.length; g += K) {
      const grp = R.slice(g, g + K);
      const m = mean(grp);
      stdWithin.push(Math.sqrt(mean(grp.map((x) => (x - m) ** 2))));
    }
    return {
      step: this.stepCount,
      score: mean(rawScores),
      reward: mean(R),
      kl,
      klK3: mean(k3s),
      ...(sft ? { klSft: mean(sumLogRatio(rows, cur.logp, sft.logp)) } : {}),
      klCoef: beta,
      klLoss: mean(stats.klLoss),
      rewardStdWithin: mean(stdWithin),
      advantageAbs,
      clipFrac: mean(stats.clip),
      policyLoss: mean(stats.pg),
      entropy: mean(stats.ent),
      replyLength: mean(episodes.map((e) => e.replyIds.length)),
      eotRate: mean(episodes.map((e) => (e.replyIds[e.replyIds.length - 1] === this.eot ? 1 : 0))),
      approxKlByEpoch,
      rolloutMs,
      updateMs: performance.now() - t1,
    };
  }

  /** The clipped sequence-level REINFORCE loss of a minibatch (plus k3 and entropy terms). */
  private loss(r: RolloutRows, oldSeq: Float32Array, adv: Float32Array, refLogp: Float32Array): { loss: tf.Scalar; aux: Record<string, tf.Scalar> } {
    const k = this.knobs;
    const { policy } = this.o;
    const n = r.mask.reduce((a, b) => a + b, 0);
    const m = tf.tensor1d(r.mask); // [B*T]
    const h = policy.hidden(tf.tensor2d(r.inputs, [r.B, r.T], 'int32')); // [B*T, C]
    const logits = this.dist.logits(policy.lmLogits(h)); // [B*T, V]
    const logp = tokenLogProbs(logits, tf.tensor1d(r.targets, 'int32')); // [B*T]
    const seq = tf.sum(tf.reshape(tf.mul(logp, m), [r.B, r.T]), 1); // [B]
    const logRatio = tf.sub(seq, tf.tensor1d(oldSeq)); // [B]
    const ratio = tf.exp(logRatio);
    const A = tf.tensor1d(adv); // [B]
    const pg1 = tf.mul(tf.neg(A), ratio);
    const pg2 = tf.mul(tf.neg(A), tf.clipByValue(ratio, 1 - k.clipRange, 1 + k.clipRange));
    const policyLoss = tf.mean(tf.maximum(pg1, pg2)) as tf.Scalar;
    const ent = maskedMean(entropy(logits), m, n);
    const klLoss = maskedMean(k3(logp, tf.tensor1d(refLogp), m), m, n);
    let loss = policyLoss;
    if (k.klLossCoef > 0) loss = tf.add(loss, tf.mul(klLoss, k.klLossCoef)) as tf.Scalar;
    if (k.entCoef > 0) loss = tf.sub(loss, tf.mul(ent, k.entCoef)) as tf.Scalar;
    return {
      loss,
      aux: {
        policyLoss,
        entropy: ent,
        klLoss,
        clipFrac: tf.mean(tf.cast(tf.greater(pg2, pg1), 'float32')) as tf.Scalar,
        approxKl: tf.mul(tf.mean(tf.square(logRatio)), 0.5) as tf.Scalar,
      },
    };
  }

}

/** One line per step. */
export function formatRlooStats(s: RlooStepStats, total?: number): string {
  const f = (x: number, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  return (
    `rloo step ${s.step}${total ? `/${total}` : ''}: score ${f(s.score)} reward ${f(s.reward)} kl ${f(s.kl)} (k3/token ${f(s.klK3, 4)})${s.klSft !== undefined ? ` kl-sft ${f(s.klSft)}` : ''} β ${f(s.klCoef, 4)} ` +
    `reward-std/prompt ${f(s.rewardStdWithin)} |adv| ${f(s.advantageAbs)} clipfrac ${f(s.clipFrac)} pg ${f(s.policyLoss, 4)} entropy ${f(s.entropy)} len ${f(s.replyLength, 1)} eot ${f(s.eotRate, 2)} ` +
    `approx-kl/epoch [${s.approxKlByEpoch.map((x) => f(x, 5)).join(' ')}] rollout ${(s.rolloutMs / 1000).toFixed(2)}s update ${(s.updateMs / 1000).toFixed(2)}s`
  );
}
