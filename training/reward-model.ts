/**
 * The reward model: the SFT policy's trunk with a fresh scalar head, trained on human judgements
 * with a Bradley–Terry loss (InstructGPT §3.5, Ouyang et al. 2022).
 *
 * Objective (minimised), over a minibatch of judgement groups G and unpaired examples U:
 *
 *   L = Σ_g ω_g w_g [ Σ_{(w,l) ∈ g} −log σ(Δ_wl − m) + τ Σ_{(a,b) ∈ ties(g)} (−½ log σ(Δ_ab) − ½ log σ(−Δ_ab)) ] / Σ_g ω_g
 *     + c_u · Σ_u ω_u w_u · −log σ(s_u · r(x_u, y_u)) / Σ_u ω_u w_u
 *
 *   r(x, y)  the scalar head on the final hidden state of the rendered conversation x + y, i.e. on
 *            the reply's closing `<|end|>` token; the reply is always the canonical encoding of
 *            its text (see {@link scoreExchanges}); with a `scoreOffset` c, r + c(x, y) takes its
 *            place everywhere in L (c fixed: the reward covariates of reward-covariates.ts);
 *   Δ_wl     r(x_g, y_w) − r(x_g, y_l);
 *   w_g      1 / (#pairs + #ties) of the group: a pick is 1 pair, a K-way ranking C(K,2) pairs,
 *            so each judgement weighs the same (InstructGPT); its K replies are scored in one pass;
 *   ω        a per-judgement sample weight (1 by default): recency × bootstrap in the ensemble
 *            (reward-ensemble.ts); 0 leaves the judgement out;
 *   m        `margin` (0 = the plain Bradley–Terry loss);
 *   τ        `tieWeight`: a tie is Bradley–Terry with target ½ (0 = ties ignored);
 *   s_u      +1 for a thumb up, −1 for a thumb down (and for each half of "both bad");
 *   c_u      `unpairedCoef`: how much lone thumbs count (0 = pairs only).
 *
 * Deviations from InstructGPT's reward model:
 *  1. Initialised from the SFT policy (InstructGPT used a separately fine-tuned 6B model); the
 *     scalar head starts at zero so the first scores are all 0.
 *  2. Lone thumbs are used as a logistic loss against the score 0 (a KTO-like unpaired term),
 *     since a small deployment gets many more thumbs than comparisons. Ties have target ½ (not
 *     Davidson's model); "both bad" gives two unpaired negatives (see preferences.ts).
 *  3. Normalisation: after training, the mean score of SFT replies on held-out prompts is
 *     subtracted from the head's bias, so SFT replies average 0 (InstructGPT normalises the same
 *     way, with a separate bias); the shift is stored in the checkpoint as `scoreOffset`.
 *  4. Several epochs are allowed (InstructGPT trains one epoch to avoid overfitting), with early
 *     stopping: the held-out loss is measured before training and every `evalEvery` steps (every
 *     epoch by default); after `patience` evaluations without improvement training stops, and
 *     the weights of the best evaluation are kept.
 *  5. Scores are always of the canonical re-encoding of the reply's text plus `<|end|>`: the
 *     model is trained on text, and BPE can sample a non-canonical id sequence of the same text
 *     whose score would be off the training distribution.
 *
 * Reported per run: held-out pairwise accuracy (each pair counts once), the judgement-weighted
 * accuracy, the held-out loss, and calibration as the expected calibration error (ECE, 10 bins)
 * of σ(r_w − r_l) as the probability of the human's choice.
 *
 *   node --import tsx training/reward-model.ts --data prefs.jsonl --init checkpoints/sft --out checkpoints/reward
 */
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { backendOptions, optionalStoreOptions, optimizerOptions, storeUrl } from '../cli/options.ts';
import { existsSync } from 'node:fs';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { AdamW } from '../model/adamw.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { loadCheckpoint, saveCheckpoint } from '../model/checkpoint.ts';
import { generateBatch } from '../model/generate.ts';
import { renderChat, type ChatMessage } from '../model/chat-template.ts';
import { createRng } from '../model/random.ts';
import { encodeExchange, logSigmoid, mean, optimizerStep, padRows, warmupCosine } from './rlhf-common.ts';
import { describePreferences, loadStorePreferences, readPreferenceJsonl, splitPreferences, type PreferenceData, type PreferenceGroup, type UnpairedExample } from './preferences.ts';
import { isMain, runCommand } from '../cli/command.ts';

export const RewardConfig = z.object({
  data: z.string().default('').describe('JSONL of preference rows (TRL pairs, rankings, unpaired thumbs); or use --database'),
  ...optionalStoreOptions,
  init: z.string().default('checkpoints/sft').describe('SFT checkpoint: the trunk to start from and the policy whose replies define score 0'),
  out: z.string().default('checkpoints/reward').describe('where the reward-model checkpoint is written (must not exist)'),
  epochs: z.number().int().positive().default(2).describe('passes over the training judgements'),
  groupsPerBatch: z.number().int().positive().default(8).describe('judgement groups per optimizer step'),
  unpairedPerBatch: z.number().int().nonnegative().default(8).describe('unpaired thumbs per optimizer step'),
  unpairedCoef: z.number().nonnegative().default(0.5).describe('weight of the unpaired (thumb) loss; 0 = pairs only'),
  ...optimizerOptions({ lr: 1e-4, minLr: 1e-5, warmup: 10, weightDecay: 0.0 }),
  tieWeight: z.number().nonnegative().default(1).describe('weight of a tie (Bradley–Terry target ½); 0 = ties ignored'),
  margin: z.number().nonnegative().default(0).describe('margin m in −log σ(Δ − m); 0 = plain Bradley–Terry'),
  patience: z.number().int().nonnegative().default(2).describe('early stopping: evaluations without a better held-out loss before stopping (0 = off)'),
  normSamples: z.number().int().nonnegative().default(64).describe('SFT replies sampled on held-out prompts to set score 0 (0 = use the data replies)'),
  normMaxTokens: z.number().int().positive().default(64).describe('max tokens of those SFT replies'),
  seed: z.number().int().default(3).describe('seed for the split, batches and sampling'),
  ...backendOptions,
});
export type RewardConfig = z.infer<typeof RewardConfig>;

/** Held-out figures of a reward model on judgement groups. */
export interface RewardEval {
  pairs: number;
  /** Share of pairs where the preferred reply scores higher (ties count 1/2). */
  accuracy: number;
  /** The same, each judgement weighted 1 (a ranking's pairs share its weight). */
  weightedAccuracy: number;
  /** Mean −log σ(Δ) per pair (no margin). */
  loss: number;
  /** Expected calibration error of σ(Δ), 10 equal-width confidence bins. */
  ece: number;
}

/** Scores of exchanges `[B]` (differentiable): the scalar head at each row's last token. */
export function scoreRows(rm: GPT, rows: readonly (readonly number[])[], pad: number): tf.Tensor1D {
  return tf.tidy(() => {
    const b = padRows(rows, pad);
    const last = new Float32Array(b.B * b.T);
    b.lengths.forEach((len, i) => (last[i * b.T + len - 1] = 1));
    const idx = tf.tensor2d(b.ids, [b.B, b.T], 'int32');
    const s = tf.reshape(rm.scores(rm.hidden(idx)), [b.B, b.T]); // [B, T]
    return tf.sum(tf.mul(s, tf.tensor2d(last, [b.B, b.T])), 1) as tf.Tensor1D; // [B]
  });
}

/**
 * The text a reply is scored as: a string as is; ids decoded (specials, such as a closing
 * `<|end|>`, decode to nothing). Scoring re-encodes this text canonically and closes it with
 * `<|end|>`, exactly as training encodes judged replies.
 */
export function replyAsText(tok: Tokenizer, reply: string | readonly number[]): string {
  return typeof reply === 'string' ? reply : tok.decode(reply);
}

/**
 * Scores `(prompt, reply)` exchanges in batches, without gradients. A reply given as ids is
 * decoded and re-encoded canonically first (what the model was trained on).
 */
export function scoreExchanges(rm: GPT, tok: Tokenizer, items: readonly { prompt: readonly ChatMessage[]; reply: string | readonly number[] }[], batchSize = 16): number[] {
  const pad = tok.specialId('<|pad|>');
  const out: number[] = [];
  for (let i = 0; i < items.length; i += batchSize) {
    const rows = items.slice(i, i + batchSize).map((it) => encodeExchange(tok, it.prompt, replyAsText(tok, it.reply), rm.config.blockSize).ids);
    const s = scoreRows(rm, rows, pad);
    out.push(...s.dataSync());
    s.dispose();
  }
  return out;
}

/** Knobs of the loss (see the objective at the top of the file). */
export interface RewardLossOptions {
  unpairedCoef: number;
  /** τ: weight of a tie's Bradley–Terry term with target ½ (0 = ties ignored). */
  tieWeight?: number;
  /** m in −log σ(Δ − m) (0 = off). */
  margin?: number;
  /** A fixed part of the score: r(x, y) + c(x, y), so the head learns what c does not explain (see reward-covariates.ts; absent = 0). */
  scoreOffset?: ScoreOffset;
}

/** The fixed part c(x, y) of a reply's score (a reply is its text, as judged). */
export type ScoreOffset = (prompt: readonly ChatMessage[], reply: string) => number;

/** A judgement with its sample weight ω (recency × bootstrap; 1 by default). */
interface Weighted<T> {
  item: T;
  omega: number;
}

/** Rows, pair selections and weights for a minibatch of groups and unpaired examples. */
interface RmBatch {
  rows: number[][];
  /** c(x, y) of each row `[N]` (zeros without a score offset). */
  offsets: Float32Array;
  /** `[P, N]` +1 at the winner's row, −1 at the loser's. */
  select: Float32Array;
  /** ω_g w_g / Σ ω_g per pair `[P]`. */
  pairWeights: Float32Array;
  P: number;
  /** `[Q, N]` +1 at one tied reply's row, −1 at the other's. */
  tieSelect: Float32Array;
  /** ω_g w_g / Σ ω_g per tie `[Q]`. */
  tieWeights: Float32Array;
  Q: number;
  /** Unpaired rows follow the group rows: index, sign, weight ω_u w_u. */
  unpaired: { row: number; sign: number; weight: number }[];
}

const unit = <T>(items: readonly T[]): Weighted<T>[] => items.map((item) => ({ item, omega: 1 }));

function buildBatch(tok: Tokenizer, blockSize: number, groups: readonly Weighted<PreferenceGroup>[], unpaired: readonly Weighted<UnpairedExample>[], offset?: ScoreOffset): RmBatch {
  const rows: number[][] = [];
  const offsets: number[] = [];
  const pairs: { w: number; l: number; weight: number }[] = [];
  const ties: { w: number; l: number; weight: number }[] = [];
  const omegaSum = groups.reduce((a, g) => a + g.omega, 0);
  for (const { item: g, omega } of groups) {
    if (omega <= 0) continue;
    const base = rows.length;
    for (const r of g.replies) (rows.push(encodeExchange(tok, g.prompt, r, blockSize).ids), offsets.push(offset?.(g.prompt, r) ?? 0));
    const weight = (omega * g.weight) / omegaSum;
    for (const [w, l] of g.pairs) pairs.push({ w: base + w, l: base + l, weight });
    for (const [a, b] of g.ties ?? []) ties.push({ w: base + a, l: base + b, weight });
  }
  const up = unpaired
    .filter((u) => u.omega > 0)
    .map(({ item: u, omega }) => {
      rows.push(encodeExchange(tok, u.prompt, u.reply, blockSize).ids);
      offsets.push(offset?.(u.prompt, u.reply) ?? 0);
      return { row: rows.length - 1, sign: u.label ? 1 : -1, weight: omega * u.weight };
    });
  const N = rows.length;
  const selectOf = (ps: typeof pairs) => {
    const sel = new Float32Array(ps.length * N);
    ps.forEach((p, i) => {
      sel[i * N + p.w] = 1;
      sel[i * N + p.l] = -1;
    });
    return sel;
  };
  return {
    rows,
    offsets: Float32Array.from(offsets),
    select: selectOf(pairs),
    pairWeights: Float32Array.from(pairs.map((p) => p.weight)),
    P: pairs.length,
    tieSelect: selectOf(ties),
    tieWeights: Float32Array.from(ties.map((p) => p.weight)),
    Q: ties.length,
    unpaired: up,
  };
}

/** The loss of a batch (the objective at the top of the file), and Δ = r_w − r_l per pair `[P]`. */
function batchLoss(rm: GPT, b: RmBatch, pad: number, o: RewardLossOptions): { loss: tf.Scalar; diff: tf.Tensor1D } {
  const s = o.scoreOffset ? tf.add(scoreRows(rm, b.rows, pad), tf.tensor1d(b.offsets)) : scoreRows(rm, b.rows, pad); // [N]
  const N = b.rows.length;
  const col = tf.reshape(s, [N, 1]); // [N, 1]
  let loss: tf.Scalar = tf.scalar(0);
  let diff: tf.Tensor1D = tf.zeros([0]);
  if (b.P > 0) {
    diff = tf.reshape(tf.matMul(tf.tensor2d(b.select, [b.P, N]), col), [b.P]) as tf.Tensor1D; // [P]
    const nll = tf.neg(logSigmoid(o.margin ? tf.sub(diff, o.margin) : diff)); // [P]
    loss = tf.sum(tf.mul(nll, tf.tensor1d(b.pairWeights))) as tf.Scalar;
  }
  const tieWeight = o.tieWeight ?? 0;
  if (b.Q > 0 && tieWeight > 0) {
    const d = tf.reshape(tf.matMul(tf.tensor2d(b.tieSelect, [b.Q, N]), col), [b.Q]); // [Q]
    const nll = tf.mul(tf.add(logSigmoid(d), logSigmoid(tf.neg(d))), -0.5); // [Q]
    loss = tf.add(loss, tf.mul(tf.sum(tf.mul(nll, tf.tensor1d(b.tieWeights))), tieWeight)) as tf.Scalar;
  }
  if (b.unpaired.length && o.unpairedCoef > 0) {
    const sel = new Float32Array(b.unpaired.length * N);
    b.unpaired.forEach((u, i) => (sel[i * N + u.row] = u.sign));
    const signed = tf.reshape(tf.matMul(tf.tensor2d(sel, [b.unpaired.length, N]), col), [-1]); // [U]
    const w = b.unpaired.map((u) => u.weight);
    const wsum = w.reduce((a, c) => a + c, 0);
    const u = tf.div(tf.sum(tf.mul(tf.neg(logSigmoid(signed)), tf.tensor1d(w))), wsum);
    loss = tf.add(loss, tf.mul(u, o.unpairedCoef)) as tf.Scalar;
  }
  return { loss, diff };
}

/**
 * The training loss of one minibatch (no gradients): what an optimizer step on these groups and
 * unpaired examples minimises. `omega` gives each group's sample weight (default 1).
 */
export function rewardLoss(rm: GPT, tok: Tokenizer, groups: readonly PreferenceGroup[], unpaired: readonly UnpairedExample[], o: RewardLossOptions & { omega?: readonly number[] }): number {
  const pad = tok.specialId('<|pad|>');
  const b = buildBatch(tok, rm.config.blockSize, groups.map((item, i) => ({ item, omega: o.omega?.[i] ?? 1 })), unit(unpaired), o.scoreOffset);
  const l = tf.tidy(() => batchLoss(rm, b, pad, o).loss);
  const v = l.dataSync()[0]!;
  l.dispose();
  return v;
}

/** Pairwise accuracy, loss and calibration on held-out groups (of r + c with a score offset c). */
export function evaluateRewardModel(rm: GPT, tok: Tokenizer, groups: readonly PreferenceGroup[], groupsPerBatch = 8, scoreOffset?: ScoreOffset): RewardEval {
  const pad = tok.specialId('<|pad|>');
  const deltas: number[] = [];
  const weights: number[] = [];
  for (let i = 0; i < groups.length; i += groupsPerBatch) {
    const part = groups.slice(i, i + groupsPerBatch).filter((g) => g.pairs.length > 0);
    const b = buildBatch(tok, rm.config.blockSize, unit(part), [], scoreOffset);
    if (!b.P) continue;
    const d = tf.tidy(() => batchLoss(rm, b, pad, { unpairedCoef: 0, scoreOffset }).diff);
    deltas.push(...d.dataSync());
    d.dispose();
    weights.push(...part.flatMap((g) => g.pairs.map(() => g.weight)));
  }
  return pairStatistics(deltas, weights);
}

/** Accuracy, weighted accuracy, loss and ECE from score differences Δ = r_w − r_l. */
export function pairStatistics(deltas: readonly number[], weights: readonly number[]): RewardEval {
  const n = deltas.length;
  if (!n) return { pairs: 0, accuracy: NaN, weightedAccuracy: NaN, loss: NaN, ece: NaN };
  const hit: number[] = deltas.map((d) => (d > 0 ? 1 : d === 0 ? 0.5 : 0));
  const wsum = weights.reduce((a, b) => a + b, 0);
  const bins = Array.from({ length: 10 }, () => ({ n: 0, conf: 0, acc: 0 }));
  deltas.forEach((d, i) => {
    const p = 1 / (1 + Math.exp(-d)); // model's probability of the human's choice
    const conf = Math.max(p, 1 - p);
    const bin = bins[Math.min(9, Math.floor((conf - 0.5) * 20))]!;
    bin.n++;
    bin.conf += conf;
    bin.acc += hit[i]!;
  });
  const ece = bins.reduce((a, b) => a + (b.n ? (b.n / n) * Math.abs(b.acc / b.n - b.conf / b.n) : 0), 0);
  return {
    pairs: n,
    accuracy: mean(hit),
    weightedAccuracy: hit.reduce((a, h, i) => a + h * weights[i]!, 0) / wsum,
    loss: mean(deltas.map((d) => Math.log1p(Math.exp(-d)))),
    ece,
  };
}

export interface TrainRewardOptions {
  rm: GPT;
  tok: Tokenizer;
  train: PreferenceData;
  /** Held-out groups: evaluated before training and every `evalEvery` steps (early stopping). */
  val: readonly PreferenceGroup[];
  cfg: Pick<RewardConfig, 'epochs' | 'groupsPerBatch' | 'unpairedPerBatch' | 'unpairedCoef' | 'lr' | 'minLr' | 'warmup' | 'weightDecay' | 'gradClip' | 'seed'> &
    Partial<Pick<RewardConfig, 'tieWeight' | 'margin' | 'patience'>> & {
      /** Steps between held-out evaluations (0 or absent = once per epoch). */
      evalEvery?: number;
      /** {@link RewardLossOptions.scoreOffset} (absent = none). */
      scoreOffset?: ScoreOffset;
    };
  /** Sample weight ω of each training group (same order as `train.groups`; default 1; 0 = left out). */
  groupWeights?: readonly number[];
  /** Sample weight ω of each unpaired example (same order as `train.unpaired`; default 1). */
  unpairedWeights?: readonly number[];
  log?: (line: string) => void;
}

export interface TrainRewardResult {
  steps: number;
  trainLoss: number;
  /** Held-out figures of the weights kept (the best evaluation when early stopping is on, else the last). */
  heldOut: RewardEval;
  history: { epoch: number; step: number; trainLoss: number; heldOut: RewardEval }[];
  pairsPerSecond: number;
  /** The step whose weights were kept (0 = the initial weights). */
  bestStep: number;
  /** True when training stopped before `epochs` because the held-out loss stopped improving. */
  stoppedEarly: boolean;
}

/**
 * Trains `rm` in place on groups (and unpaired thumbs). With `patience` > 0 and held-out pairs,
 * it stops after `patience` evaluations without a lower held-out loss and restores the best
 * weights; otherwise it runs `epochs` and keeps the last.
 */
export function trainRewardModel(o: TrainRewardOptions): TrainRewardResult {
  const { rm, tok, cfg } = o;
  const log = o.log ?? ((l: string) => console.error(l));
  const pad = tok.specialId('<|pad|>');
  const lossOpts: RewardLossOptions = { unpairedCoef: cfg.unpairedCoef, tieWeight: cfg.tieWeight ?? 0, margin: cfg.margin ?? 0, scoreOffset: cfg.scoreOffset };
  const opt = new AdamW(rm.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: cfg.weightDecay, gradClip: cfg.gradClip });
  const vars = rm.trainableVariables();
  const rng = createRng(cfg.seed);
  const groups = o.train.groups.map((item, i) => ({ item, omega: o.groupWeights?.[i] ?? 1 })).filter((g) => g.omega > 0);
  const unpaired = o.train.unpaired.map((item, i) => ({ item, omega: o.unpairedWeights?.[i] ?? 1 })).filter((u) => u.omega > 0);
  const useUnpaired = cfg.unpairedCoef > 0 && unpaired.length > 0;
  // An epoch is a pass over the groups (thumbs cycle beside them), or over the thumbs when there are no groups.
  const perEpoch = Math.max(1, groups.length ? Math.ceil(groups.length / cfg.groupsPerBatch) : useUnpaired ? Math.ceil(unpaired.length / Math.max(1, cfg.unpairedPerBatch)) : 0);
  const total = perEpoch * cfg.epochs;
  const evalEvery = cfg.evalEvery && cfg.evalEvery > 0 ? cfg.evalEvery : perEpoch;
  const patience = cfg.patience ?? 0;
  const earlyStopping = patience > 0 && o.val.some((g) => g.pairs.length > 0);
  const history: TrainRewardResult['history'] = [];
  let step = 0;
  let pairs = 0;
  let smooth = NaN;
  let losses: number[] = [];
  let best = { loss: Infinity, step: 0, heldOut: undefined as RewardEval | undefined, weights: undefined as tf.Tensor[] | undefined };
  let bad = 0;
  let stoppedEarly = false;
  let lastEval = -1;
  const evaluate = (epoch: number): boolean => {
    lastEval = step;
    const heldOut = evaluateRewardModel(rm, tok, o.val, cfg.groupsPerBatch, cfg.scoreOffset);
    const trainLoss = mean(losses);
    history.push({ epoch, step, trainLoss, heldOut });
    losses = [];
    log(`reward: epoch ${epoch}/${cfg.epochs} step ${step} train loss ${trainLoss.toFixed(4)} held-out acc ${heldOut.accuracy.toFixed(3)} (judgement-weighted ${heldOut.weightedAccuracy.toFixed(3)}) loss ${heldOut.loss.toFixed(4)} ECE ${heldOut.ece.toFixed(3)} over ${heldOut.pairs} pairs`);
    if (!earlyStopping) return false;
    if (heldOut.loss < best.loss - 1e-6) {
      tf.dispose(best.weights ?? []);
      best = { loss: heldOut.loss, step, heldOut, weights: [...rm.params.values()].map((p) => tf.clone(p)) };
      bad = 0;
      return false;
    }
    return ++bad >= patience;
  };
  const t0 = performance.now();
  if (earlyStopping) evaluate(0);
  train: for (let epoch = 1; epoch <= cfg.epochs; epoch++) {
    const order = rng.shuffle(groups);
    const uorder = rng.shuffle(unpaired);
    for (let i = 0; i < perEpoch; i++) {
      const g = order.slice(i * cfg.groupsPerBatch, (i + 1) * cfg.groupsPerBatch);
      const u = useUnpaired ? Array.from({ length: Math.min(cfg.unpairedPerBatch, uorder.length) }, (_, k) => uorder[(i * cfg.unpairedPerBatch + k) % uorder.length]!) : [];
      const b = buildBatch(tok, rm.config.blockSize, g, u, cfg.scoreOffset);
      if (b.P || b.Q || b.unpaired.length) {
        const lr = warmupCosine(step, total, cfg.lr, cfg.minLr, cfg.warmup);
        const { loss } = optimizerStep(rm, opt, vars, lr, () => ({ loss: batchLoss(rm, b, pad, lossOpts).loss }));
        if (!Number.isFinite(loss)) throw new Error(`reward model: loss became ${loss} at step ${step}; lower --lr`);
        losses.push(loss);
        smooth = Number.isNaN(smooth) ? loss : 0.9 * smooth + 0.1 * loss;
        step++;
        pairs += b.P;
      }
      const last = epoch === cfg.epochs && i === perEpoch - 1;
      if (step !== lastEval && ((step > 0 && step % evalEvery === 0) || last)) {
        if (evaluate(epoch)) {
          stoppedEarly = !last;
          break train;
        }
      }
    }
  }
  opt.dispose();
  let heldOut = history[history.length - 1]?.heldOut ?? evaluateRewardModel(rm, tok, o.val, cfg.groupsPerBatch, cfg.scoreOffset);
  let bestStep = step;
  if (earlyStopping && best.weights) {
    [...rm.params.values()].forEach((p, i) => p.assign(best.weights![i]!));
    tf.dispose(best.weights);
    heldOut = best.heldOut!;
    bestStep = best.step;
    if (stoppedEarly || bestStep !== step) log(`reward: kept the weights of step ${bestStep} (held-out loss ${best.loss.toFixed(4)})${stoppedEarly ? `; stopped early at step ${step} after ${patience} evaluations without improvement` : ''}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  return { steps: step, trainLoss: smooth, heldOut, history, pairsPerSecond: pairs / Math.max(1e-9, seconds), bestStep, stoppedEarly };
}

/**
 * Shifts the scalar head's bias so `replies` average 0; returns the shift and the scores' spread.
 * Pass replies sampled from the SFT policy (the reference PPO starts from).
 */
export function normaliseScores(rm: GPT, tok: Tokenizer, replies: readonly { prompt: readonly ChatMessage[]; reply: string | readonly number[] }[]): { scoreOffset: number; sftScoreStd: number } {
  const s = scoreExchanges(rm, tok, replies);
  const m = mean(s);
  const std = Math.sqrt(mean(s.map((x) => (x - m) ** 2)));
  const b = rm.params.get('score.b')!;
  tf.tidy(() => b.assign(tf.sub(b, m)));
  return { scoreOffset: m, sftScoreStd: std };
}

/** Samples one SFT reply per prompt (for the normalisation). */
export function sampleReplies(policy: GPT, tok: Tokenizer, prompts: readonly ChatMessage[][], maxTokens: number, seed: number): { prompt: ChatMessage[]; reply: number[] }[] {
  const out: { prompt: ChatMessage[]; reply: number[] }[] = [];
  for (let i = 0; i < prompts.length; i += 16) {
    const part = prompts.slice(i, i + 16);
    const ids = part.map((p) => {
      const r = renderChat(tok, p, { addGenerationPrompt: true }).ids;
      return r.slice(Math.max(0, r.length - (policy.config.blockSize - maxTokens - 1)));
    });
    generateBatch(policy, tok, ids, { maxTokens, seed: seed + i }).forEach((g, k) => out.push({ prompt: part[k]!, reply: g.ids }));
  }
  return out;
}

/** The command: load data and the SFT checkpoint, train, normalise, report, save. */
export async function rewardModel(cfg: RewardConfig, log: (l: string) => void = (l) => console.error(l)): Promise<{ heldOut: RewardEval; scoreOffset: number }> {
  await initBackend({ backend: cfg.backend || undefined, log });
  if (existsSync(cfg.out)) throw new Error(`${cfg.out} already exists; checkpoints are never overwritten (choose another --out)`);
  let data: PreferenceData;
  if (cfg.database) {
    const { openStore } = await import('../feedback/index.ts');
    const store = await openStore({ url: storeUrl(cfg.database) });
    try {
      data = await loadStorePreferences(store, { ties: true });
    } finally {
      await store.close();
    }
  } else if (cfg.data) data = readPreferenceJsonl(cfg.data);
  else throw new Error('give --data prefs.jsonl or --database URL');
  log(`reward: ${describePreferences(data)}`);
  // By context (every kind of judgement of one prompt together); 'val' and 'eval' are both held out here.
  const parts = splitPreferences(data);
  const split = { train: parts.train.groups, val: [...parts.val.groups, ...parts.eval.groups] };
  if (!split.train.length && !(cfg.unpairedCoef > 0 && parts.train.unpaired.length)) throw new Error('no training judgements (every context hashed to the held-out splits)');
  const ck = loadCheckpoint(cfg.init, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(ck.tokenizer);
  const sft = GPT.fromWeights(ck.meta.config, 'policy', ck.weights);
  const rm = sft.clone('reward');
  const result = trainRewardModel({ rm, tok, train: parts.train, val: split.val, cfg, log });
  const prompts = [...split.val, ...split.train].map((g) => g.prompt).slice(0, cfg.normSamples);
  const replies = cfg.normSamples > 0
    ? sampleReplies(sft, tok, prompts, cfg.normMaxTokens, cfg.seed)
    : data.groups.flatMap((g) => g.replies.map((reply) => ({ prompt: g.prompt, reply })));
  const norm = normaliseScores(rm, tok, replies);
  log(`reward: SFT replies scored ${norm.scoreOffset.toFixed(4)} on average (std ${norm.sftScoreStd.toFixed(4)}); head bias shifted so they average 0`);
  const h = result.heldOut;
  saveCheckpoint(cfg.out, {
    weights: await rm.exportWeights(),
    meta: {
      stage: 'reward',
      kind: 'reward',
      config: rm.config,
      tokenizerFingerprint: tok.fingerprint(),
      parent: cfg.init,
      step: result.steps,
      metrics: {
        trainLoss: result.trainLoss,
        heldOutAccuracy: h.accuracy,
        heldOutWeightedAccuracy: h.weightedAccuracy,
        heldOutLoss: h.loss,
        heldOutEce: h.ece,
        heldOutPairs: h.pairs,
        scoreOffset: norm.scoreOffset,
        sftScoreStd: norm.sftScoreStd,
      },
      runConfig: { ...cfg },
    },
    tokenizer: tok.toJSON(),
  });
  log(`reward: held-out accuracy ${h.accuracy.toFixed(3)}, ECE ${h.ece.toFixed(3)}; saved ${cfg.out}`);
  sft.dispose();
  rm.dispose();
  return { heldOut: h, scoreOffset: norm.scoreOffset };
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx training/reward-model.ts --data prefs.jsonl --init checkpoints/sft --out checkpoints/reward', schema: RewardConfig, envPrefix: 'REWARD' }, (cfg) => rewardModel(cfg));
}
