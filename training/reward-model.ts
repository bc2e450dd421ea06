/**
 * The reward model: the SFT policy's trunk with a fresh scalar head, trained on human judgements
 * with a Bradley–Terry loss (InstructGPT §3.5, Ouyang et al. 2022).
 *
 * Objective (minimised), over a minibatch of judgement groups G and unpaired examples U:
 *
 *   L = (1/|G|) Σ_g Σ_{(w,l) ∈ g} w_g · −log σ(r(x_g, y_w) − r(x_g, y_l))
 *     + c_u · Σ_u w_u · −log σ(s_u · r(x_u, y_u)) / Σ_u w_u
 *
 *   r(x, y)  the scalar head on the final hidden state of the rendered conversation x + y, i.e. on
 *            the reply's closing `<|end|>` token;
 *   w_g      1 / #pairs of the group: a pick is 1 pair, a K-way ranking C(K,2) pairs, so each
 *            judgement weighs the same (InstructGPT); its K replies are scored in one pass;
 *   s_u      +1 for a thumb up, −1 for a thumb down (and for each half of "both bad");
 *   c_u      `unpairedCoef`: how much lone thumbs count (0 = pairs only).
 *
 * Deviations from InstructGPT's reward model:
 *  1. Initialised from the SFT policy (InstructGPT used a separately fine-tuned 6B model); the
 *     scalar head starts at zero so the first scores are all 0.
 *  2. Lone thumbs are used as a logistic loss against the score 0 (a KTO-like unpaired term),
 *     since a small deployment gets many more thumbs than comparisons. Ties are ignored;
 *     "both bad" gives two unpaired negatives (see preferences.ts).
 *  3. Normalisation: after training, the mean score of SFT replies on held-out prompts is
 *     subtracted from the head's bias, so SFT replies average 0 (InstructGPT normalises the same
 *     way, with a separate bias); the shift is stored in the checkpoint as `scoreOffset`.
 *  4. Several epochs are allowed (InstructGPT trains one epoch to avoid overfitting); the
 *     held-out accuracy is the guard, logged every epoch.
 *
 * Reported per run: held-out pairwise accuracy (each pair counts once), the judgement-weighted
 * accuracy, the held-out loss, and calibration as the expected calibration error (ECE, 10 bins)
 * of σ(r_w − r_l) as the probability of the human's choice.
 *
 *   node --import tsx training/reward-model.ts --data prefs.jsonl --init checkpoints/sft --out checkpoints/reward
 */
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
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
import { describePreferences, loadStorePreferences, readPreferenceJsonl, splitGroups, type PreferenceData, type PreferenceGroup, type UnpairedExample } from './preferences.ts';
import { isMain, runCli } from './cli.ts';

export const RewardConfig = z.object({
  data: z.string().default('').describe('JSONL of preference rows (TRL pairs, rankings, unpaired thumbs); or use --database'),
  database: z.string().default('').describe('feedback store URL or "default" (data/feedback.sqlite); read instead of --data'),
  init: z.string().default('checkpoints/sft').describe('SFT checkpoint: the trunk to start from and the policy whose replies define score 0'),
  out: z.string().default('checkpoints/reward').describe('where the reward-model checkpoint is written (must not exist)'),
  epochs: z.number().int().positive().default(2).describe('passes over the training judgements'),
  groupsPerBatch: z.number().int().positive().default(8).describe('judgement groups per optimizer step'),
  unpairedPerBatch: z.number().int().nonnegative().default(8).describe('unpaired thumbs per optimizer step'),
  unpairedCoef: z.number().nonnegative().default(0.5).describe('weight of the unpaired (thumb) loss; 0 = pairs only'),
  lr: z.number().positive().default(1e-4).describe('peak learning rate'),
  minLr: z.number().nonnegative().default(1e-5).describe('final learning rate (cosine)'),
  warmup: z.number().int().nonnegative().default(10).describe('warmup steps'),
  weightDecay: z.number().nonnegative().default(0.0).describe('AdamW weight decay on matrices'),
  gradClip: z.number().nonnegative().default(1).describe('global gradient-norm clip (0 = off)'),
  valFraction: z.number().min(0).max(0.5).default(0.1).describe('share of judgements held out (by group)'),
  normSamples: z.number().int().nonnegative().default(64).describe('SFT replies sampled on held-out prompts to set score 0 (0 = use the data replies)'),
  normMaxTokens: z.number().int().positive().default(64).describe('max tokens of those SFT replies'),
  seed: z.number().int().default(3).describe('seed for the split, batches and sampling'),
  backend: z.string().default('').describe('force a tensor backend (tensorflow, wasm, cpu)'),
});
export type RewardConfig = z.infer<typeof RewardConfig>;

/** Held-out figures of a reward model on judgement groups. */
export interface RewardEval {
  pairs: number;
  /** Share of pairs where the preferred reply scores higher (ties count 1/2). */
  accuracy: number;
  /** The same, each judgement weighted 1 (a ranking's pairs share its weight). */
  weightedAccuracy: number;
  /** Mean −log σ(Δ) per pair. */
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

/** Scores `(prompt, reply)` exchanges in batches, without gradients. */
export function scoreExchanges(rm: GPT, tok: Tokenizer, items: readonly { prompt: readonly ChatMessage[]; reply: string | readonly number[] }[], batchSize = 16): number[] {
  const pad = tok.specialId('<|pad|>');
  const out: number[] = [];
  for (let i = 0; i < items.length; i += batchSize) {
    const rows = items.slice(i, i + batchSize).map((it) => encodeExchange(tok, it.prompt, it.reply, rm.config.blockSize).ids);
    const s = scoreRows(rm, rows, pad);
    out.push(...s.dataSync());
    s.dispose();
  }
  return out;
}

/** Rows, pair selections and weights for a minibatch of groups and unpaired examples. */
interface RmBatch {
  rows: number[][];
  /** `[P, N]` +1 at the winner's row, −1 at the loser's. */
  select: Float32Array;
  pairWeights: Float32Array;
  P: number;
  nGroups: number;
  /** Unpaired rows follow the group rows: index, sign, weight. */
  unpaired: { row: number; sign: number; weight: number }[];
}

function buildBatch(tok: Tokenizer, blockSize: number, groups: readonly PreferenceGroup[], unpaired: readonly UnpairedExample[]): RmBatch {
  const rows: number[][] = [];
  const pairs: { w: number; l: number; weight: number }[] = [];
  for (const g of groups) {
    const base = rows.length;
    for (const r of g.replies) rows.push(encodeExchange(tok, g.prompt, r, blockSize).ids);
    for (const [w, l] of g.pairs) pairs.push({ w: base + w, l: base + l, weight: g.weight });
  }
  const up = unpaired.map((u) => {
    rows.push(encodeExchange(tok, u.prompt, u.reply, blockSize).ids);
    return { row: rows.length - 1, sign: u.label ? 1 : -1, weight: u.weight };
  });
  const N = rows.length;
  const select = new Float32Array(pairs.length * N);
  pairs.forEach((p, i) => {
    select[i * N + p.w] = 1;
    select[i * N + p.l] = -1;
  });
  return { rows, select, pairWeights: Float32Array.from(pairs.map((p) => p.weight)), P: pairs.length, nGroups: groups.length, unpaired: up };
}

/** The Bradley–Terry (+ unpaired) loss of a batch, and Δ = r_w − r_l per pair `[P]`. */
function batchLoss(rm: GPT, b: RmBatch, pad: number, unpairedCoef: number): { loss: tf.Scalar; diff: tf.Tensor1D } {
  const s = scoreRows(rm, b.rows, pad); // [N]
  const N = b.rows.length;
  let loss: tf.Scalar = tf.scalar(0);
  let diff: tf.Tensor1D = tf.zeros([0]);
  if (b.P > 0) {
    diff = tf.reshape(tf.matMul(tf.tensor2d(b.select, [b.P, N]), tf.reshape(s, [N, 1])), [b.P]) as tf.Tensor1D; // [P]
    const nll = tf.neg(logSigmoid(diff)); // [P]
    loss = tf.div(tf.sum(tf.mul(nll, tf.tensor1d(b.pairWeights))), Math.max(1, b.nGroups)) as tf.Scalar;
  }
  if (b.unpaired.length && unpairedCoef > 0) {
    const sel = new Float32Array(b.unpaired.length * N);
    b.unpaired.forEach((u, i) => (sel[i * N + u.row] = u.sign));
    const signed = tf.reshape(tf.matMul(tf.tensor2d(sel, [b.unpaired.length, N]), tf.reshape(s, [N, 1])), [-1]); // [U]
    const w = b.unpaired.map((u) => u.weight);
    const wsum = w.reduce((a, c) => a + c, 0);
    const u = tf.div(tf.sum(tf.mul(tf.neg(logSigmoid(signed)), tf.tensor1d(w))), wsum);
    loss = tf.add(loss, tf.mul(u, unpairedCoef)) as tf.Scalar;
  }
  return { loss, diff };
}

/** Pairwise accuracy, loss and calibration on held-out groups. */
export function evaluateRewardModel(rm: GPT, tok: Tokenizer, groups: readonly PreferenceGroup[], groupsPerBatch = 8): RewardEval {
  const pad = tok.specialId('<|pad|>');
  const deltas: number[] = [];
  const weights: number[] = [];
  for (let i = 0; i < groups.length; i += groupsPerBatch) {
    const part = groups.slice(i, i + groupsPerBatch);
    const b = buildBatch(tok, rm.config.blockSize, part, []);
    if (!b.P) continue;
    const d = tf.tidy(() => batchLoss(rm, b, pad, 0).diff);
    deltas.push(...d.dataSync());
    d.dispose();
    weights.push(...b.pairWeights);
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
  val: readonly PreferenceGroup[];
  cfg: Pick<RewardConfig, 'epochs' | 'groupsPerBatch' | 'unpairedPerBatch' | 'unpairedCoef' | 'lr' | 'minLr' | 'warmup' | 'weightDecay' | 'gradClip' | 'seed'>;
  log?: (line: string) => void;
}

export interface TrainRewardResult {
  steps: number;
  trainLoss: number;
  heldOut: RewardEval;
  history: { epoch: number; step: number; trainLoss: number; heldOut: RewardEval }[];
  pairsPerSecond: number;
}

/** Trains `rm` in place on groups (and unpaired thumbs); evaluates on `val` after every epoch. */
export function trainRewardModel(o: TrainRewardOptions): TrainRewardResult {
  const { rm, tok, cfg } = o;
  const log = o.log ?? ((l: string) => console.error(l));
  const pad = tok.specialId('<|pad|>');
  const opt = new AdamW(rm.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: cfg.weightDecay, gradClip: cfg.gradClip });
  const vars = rm.trainableVariables();
  const rng = createRng(cfg.seed);
  const { groups, unpaired } = o.train;
  const perEpoch = Math.max(1, Math.ceil(groups.length / cfg.groupsPerBatch));
  const total = perEpoch * cfg.epochs;
  const history: TrainRewardResult['history'] = [];
  let step = 0;
  let pairs = 0;
  let smooth = NaN;
  const t0 = performance.now();
  for (let epoch = 1; epoch <= cfg.epochs; epoch++) {
    const order = rng.shuffle(groups);
    const uorder = rng.shuffle(unpaired);
    const losses: number[] = [];
    for (let i = 0; i < perEpoch; i++) {
      const g = order.slice(i * cfg.groupsPerBatch, (i + 1) * cfg.groupsPerBatch);
      const u = cfg.unpairedCoef > 0 && uorder.length ? Array.from({ length: Math.min(cfg.unpairedPerBatch, uorder.length) }, (_, k) => uorder[(i * cfg.unpairedPerBatch + k) % uorder.length]!) : [];
      const b = buildBatch(tok, rm.config.blockSize, g, u);
      if (!b.P && !b.unpaired.length) continue;
      const lr = warmupCosine(step, total, cfg.lr, cfg.minLr, cfg.warmup);
      const { loss } = optimizerStep(rm, opt, vars, lr, () => ({ loss: batchLoss(rm, b, pad, cfg.unpairedCoef).loss }));
      if (!Number.isFinite(loss)) throw new Error(`reward model: loss became ${loss} at step ${step}; lower --lr`);
      losses.push(loss);
      smooth = Number.isNaN(smooth) ? loss : 0.9 * smooth + 0.1 * loss;
      step++;
      pairs += b.P;
    }
    const heldOut = evaluateRewardModel(rm, tok, o.val, cfg.groupsPerBatch);
    history.push({ epoch, step, trainLoss: mean(losses), heldOut });
    log(`reward: epoch ${epoch}/${cfg.epochs} step ${step} train loss ${mean(losses).toFixed(4)} held-out acc ${heldOut.accuracy.toFixed(3)} (judgement-weighted ${heldOut.weightedAccuracy.toFixed(3)}) loss ${heldOut.loss.toFixed(4)} ECE ${heldOut.ece.toFixed(3)} over ${heldOut.pairs} pairs`);
  }
  opt.dispose();
  const seconds = (performance.now() - t0) / 1000;
  return { steps: step, trainLoss: smooth, heldOut: history[history.length - 1]!.heldOut, history, pairsPerSecond: pairs / Math.max(1e-9, seconds) };
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
    const store = await openStore(cfg.database === 'default' ? {} : { url: cfg.database });
    try {
      data = await loadStorePreferences(store);
    } finally {
      await store.close();
    }
  } else if (cfg.data) data = readPreferenceJsonl(cfg.data);
  else throw new Error('give --data prefs.jsonl or --database URL');
  log(`reward: ${describePreferences(data)}`);
  const split = splitGroups(data.groups, cfg.valFraction, cfg.seed);
  if (!split.train.length) throw new Error('no training judgements');
  const ck = loadCheckpoint(cfg.init, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(ck.tokenizer);
  const sft = GPT.fromWeights(ck.meta.config, 'policy', ck.weights);
  const rm = sft.clone('reward');
  const result = trainRewardModel({ rm, tok, train: { groups: split.train, unpaired: data.unpaired }, val: split.val, cfg, log });
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
  await runCli('node --import tsx training/reward-model.ts --data prefs.jsonl --init checkpoints/sft --out checkpoints/reward', RewardConfig, 'REWARD', (cfg) => rewardModel(cfg));
}
