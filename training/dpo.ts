/**
 * Direct Preference Optimisation (Rafailov et al. 2023): the policy learns from the same
 * preference data as the reward model, without a reward model or rollouts. Selectable instead
 * of reward model + PPO; writes the same policy checkpoints (stage `policy`).
 *
 * Objective (minimised), over a minibatch of judgement groups G (see preferences.ts):
 *
 *   L = (1/|G|) Σ_g Σ_{(w,l) ∈ g} w_g · −log σ(β · (Δ_θ(x, y_w) − Δ_θ(x, y_l)))
 *   Δ_θ(x, y) = log π_θ(y | x) − log π_ref(y | x),   log π(y | x) = Σ_t log π(y_t | x, y_<t)
 *
 *   π_ref   the frozen reference (SFT, or the champion when the loop re-anchors; the same
 *           reference PPO's and RLOO's KL is measured against);
 *   β       strength of the implicit KL leash (larger = stay closer to π_ref);
 *   w_g     1/#pairs of the judgement (a ranking's C(K,2) pairs weigh as one judgement).
 * The implicit reward is r̂(x, y) = β Δ_θ(x, y); logged: its margin r̂_w − r̂_l and the share of
 * pairs where it is positive (accuracy), on training batches and on held-out judgements.
 *
 * Deviations from the DPO paper:
 *  1. Rankings are used as all their pairs with weight 1/C(K,2) (the paper's Plackett–Luce
 *     form is not used); ties and "both bad" give no pair; lone thumbs are not used (DPO needs
 *     pairs; KTO would use them).
 *  2. Optional label smoothing ε (conservative DPO): L = (1−ε)·ℓ(βΔ) + ε·ℓ(−βΔ), default 0.
 *  3. The log-probabilities include the reply's closing `<|end|>` token, so when to stop is
 *     learned from preferences too.
 *  4. They are of the untempered softmax (T = 1) over the whole vocabulary: the replies are the
 *     users' data, not samples of this policy, so the rollout temperature does not apply.
 *
 * Two drivers: `trainDpo` (epochs over a train split, held-out evaluation; the command line) and
 * `DpoOptimizer` (one minibatch per `step()`, the online loop's policy optimiser: same
 * checkpoint, log and resume shape as PPO and RLOO, and the KL of a few sampled replies to the
 * reference measured every step so the loop's KL budget applies to DPO too).
 *
 *   node --import tsx training/dpo.ts --data prefs.jsonl --policy checkpoints/sft --out checkpoints/policy-dpo
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
import { tokenLogProbs } from '../model/losses.ts';
import { createRng } from '../model/random.ts';
import { encodeExchange, logSigmoid, mean, optimizerStep, padRows, warmupCosine } from './rlhf-common.ts';
import { describePreferences, loadStorePreferences, readPreferenceJsonl, splitGroups, type PreferenceData, type PreferenceGroup } from './preferences.ts';
import { WeightEma, episodeKl, sampleEpisodes } from './ppo.ts';
import type { RewardSource } from './reward-source.ts';
import { isMain, runCommand } from '../cli/command.ts';

export const DpoConfig = z.object({
  data: z.string().default('').describe('JSONL of preference rows (TRL pairs, rankings); or use --database'),
  ...optionalStoreOptions,
  policy: z.string().default('checkpoints/sft').describe('checkpoint the policy starts from'),
  reference: z.string().default('checkpoints/sft').describe('frozen reference π_ref (the SFT checkpoint)'),
  out: z.string().default('checkpoints/policy-dpo').describe('where the policy checkpoint is written (must not exist)'),
  beta: z.number().positive().default(0.1).describe('β: implicit KL strength'),
  labelSmoothing: z.number().min(0).max(0.5).default(0).describe('ε: assumed label noise (conservative DPO); 0 = plain DPO'),
  epochs: z.number().int().positive().default(1).describe('passes over the training judgements'),
  groupsPerBatch: z.number().int().positive().default(8).describe('judgement groups per optimizer step'),
  ...optimizerOptions({ lr: 5e-6, minLr: 5e-7, warmup: 10, weightDecay: 0 }),
  valFraction: z.number().min(0).max(0.5).default(0.1).describe('share of judgements held out (by group)'),
  seed: z.number().int().default(5).describe('seed for the split and batches'),
  ...backendOptions,
});
export type DpoConfig = z.infer<typeof DpoConfig>;

type DpoKnobs = Pick<DpoConfig, 'beta' | 'labelSmoothing' | 'epochs' | 'groupsPerBatch' | 'lr' | 'minLr' | 'warmup' | 'weightDecay' | 'gradClip' | 'seed'>;

/** Implicit-reward figures over pairs. */
export interface DpoEval {
  pairs: number;
  /** Mean β(Δ_w − Δ_l). */
  margin: number;
  /** Share of pairs with a positive margin. */
  accuracy: number;
  loss: number;
}

interface DpoBatch {
  inputs: Int32Array;
  targets: Int32Array;
  /** 1 on reply tokens (targets) `[N*T]`. */
  mask: Float32Array;
  N: number;
  T: number;
  select: Float32Array;
  weights: Float32Array;
  P: number;
  nGroups: number;
}

function buildBatch(tok: Tokenizer, blockSize: number, groups: readonly PreferenceGroup[]): DpoBatch {
  const pad = tok.specialId('<|pad|>');
  const seqs: { ids: number[]; replyStart: number }[] = [];
  const pairs: { w: number; l: number; weight: number }[] = [];
  for (const g of groups) {
    const base = seqs.length;
    for (const r of g.replies) seqs.push(encodeExchange(tok, g.prompt, r, blockSize));
    for (const [w, l] of g.pairs) pairs.push({ w: base + w, l: base + l, weight: g.weight });
  }
  const p = padRows(seqs.map((s) => s.ids.slice(0, -1)), pad);
  const N = p.B, T = p.T;
  const targets = new Int32Array(N * T).fill(pad);
  const mask = new Float32Array(N * T);
  seqs.forEach((s, b) => {
    targets.set(s.ids.slice(1), b * T);
    for (let t = s.replyStart - 1; t < s.ids.length - 1; t++) mask[b * T + t] = 1;
  });
  const select = new Float32Array(pairs.length * N);
  pairs.forEach((q, i) => {
    select[i * N + q.w] = 1;
    select[i * N + q.l] = -1;
  });
  return { inputs: p.ids, targets, mask, N, T, select, weights: Float32Array.from(pairs.map((q) => q.weight)), P: pairs.length, nGroups: groups.length };
}

/** Sequence log-probabilities of the replies `[N]`: Σ over reply tokens of log π(y_t | ·). */
function sequenceLogProbs(model: GPT, b: DpoBatch): tf.Tensor1D {
  const h = model.hidden(tf.tensor2d(b.inputs, [b.N, b.T], 'int32')); // [N*T, C]
  const lp = tokenLogProbs(model.lmLogits(h), tf.tensor1d(b.targets, 'int32')); // [N*T]
  return tf.sum(tf.reshape(tf.mul(lp, tf.tensor1d(b.mask)), [b.N, b.T]), 1) as tf.Tensor1D; // [N]
}

/** Loss and per-pair margins β(Δ_w − Δ_l) `[P]`, given the reference's sequence log-probs `[N]`. */
function dpoLoss(policy: GPT, b: DpoBatch, refLogp: tf.Tensor1D, beta: number, eps: number): { loss: tf.Scalar; margins: tf.Tensor1D } {
  const delta = tf.sub(sequenceLogProbs(policy, b), refLogp); // [N]
  const margins = tf.mul(tf.reshape(tf.matMul(tf.tensor2d(b.select, [b.P, b.N]), tf.reshape(delta, [b.N, 1])), [b.P]), beta) as tf.Tensor1D; // [P]
  let nll = tf.neg(logSigmoid(margins)); // [P]
  if (eps > 0) nll = tf.add(tf.mul(nll, 1 - eps), tf.mul(tf.neg(logSigmoid(tf.neg(margins))), eps));
  const loss = tf.div(tf.sum(tf.mul(nll, tf.tensor1d(b.weights))), Math.max(1, b.nGroups)) as tf.Scalar;
  return { loss, margins };
}

function referenceLogProbs(reference: GPT, b: DpoBatch): tf.Tensor1D {
  return tf.tidy(() => sequenceLogProbs(reference, b));
}

/** Implicit-reward margin and accuracy of a policy against its reference on held-out groups. */
export function evaluateDpo(policy: GPT, reference: GPT, tok: Tokenizer, groups: readonly PreferenceGroup[], beta: number, groupsPerBatch = 8): DpoEval {
  const margins: number[] = [];
  for (let i = 0; i < groups.length; i += groupsPerBatch) {
    const b = buildBatch(tok, policy.config.blockSize, groups.slice(i, i + groupsPerBatch));
    if (!b.P) continue;
    const m = tf.tidy(() => dpoLoss(policy, b, sequenceLogProbs(reference, b), beta, 0).margins);
    margins.push(...m.dataSync());
    m.dispose();
  }
  return {
    pairs: margins.length,
    margin: mean(margins),
    accuracy: mean(margins.map((m) => (m > 0 ? 1 : 0))),
    loss: mean(margins.map((m) => Math.log1p(Math.exp(-m)))),
  };
}

export interface TrainDpoOptions {
  policy: GPT;
  reference: GPT;
  tok: Tokenizer;
  train: readonly PreferenceGroup[];
  val: readonly PreferenceGroup[];
  knobs: DpoKnobs;
  log?: (line: string) => void;
}

export interface TrainDpoResult {
  steps: number;
  heldOut: DpoEval;
  history: { step: number; loss: number; margin: number; accuracy: number; heldOut?: DpoEval }[];
}

/** Trains `policy` in place with DPO (a `DpoOptimizer` driven for `epochs` passes); evaluates on `val` after every epoch. */
export function trainDpo(o: TrainDpoOptions): TrainDpoResult {
  const { policy, reference, tok, knobs: k } = o;
  const log = o.log ?? ((l: string) => console.error(l));
  const paired = o.train.filter((g) => g.pairs.length > 0);
  const perEpoch = Math.max(1, Math.ceil(paired.length / k.groupsPerBatch));
  const total = perEpoch * k.epochs;
  const history: TrainDpoResult['history'] = [];
  let heldOut = evaluateDpo(policy, reference, tok, o.val, k.beta, k.groupsPerBatch);
  if (!paired.length) return { steps: 0, heldOut, history };
  const opt = new DpoOptimizer({
    policy, reference, tok, data: paired,
    knobs: { beta: k.beta, labelSmoothing: k.labelSmoothing, groupsPerStep: k.groupsPerBatch, steps: total, lr: k.lr, minLr: k.minLr, warmup: k.warmup, weightDecay: k.weightDecay, gradClip: k.gradClip, emaDecay: 0, klSamples: 0, seed: k.seed },
  });
  try {
    for (let epoch = 1; epoch <= k.epochs; epoch++) {
      for (let i = 0; i < perEpoch; i++) {
        const s = opt.update();
        history.push({ step: s.step, loss: s.loss, margin: s.margin, accuracy: s.accuracy });
        log(`dpo: step ${s.step}/${total} loss ${s.loss.toFixed(4)} margin ${s.margin.toFixed(4)} acc ${s.accuracy.toFixed(3)} lr ${s.lr.toExponential(2)}`);
      }
      heldOut = evaluateDpo(policy, reference, tok, o.val, k.beta, k.groupsPerBatch);
      history[history.length - 1]!.heldOut = heldOut;
      const recent = history.slice(-perEpoch);
      log(`dpo: epoch ${epoch}/${k.epochs} step ${history.length} loss ${mean(recent.map((h) => h.loss)).toFixed(4)} margin ${mean(recent.map((h) => h.margin)).toFixed(4)} acc ${mean(recent.map((h) => h.accuracy)).toFixed(3)}; held-out margin ${heldOut.margin.toFixed(4)} acc ${heldOut.accuracy.toFixed(3)} over ${heldOut.pairs} pairs`);
    }
  } finally {
    opt.dispose();
  }
  return { steps: history.length, heldOut, history };
}

/** Knobs of the step-wise DPO optimiser. */
export interface DpoStepKnobs {
  /** β: implicit KL strength. */
  beta: number;
  /** ε: conservative-DPO label smoothing (0 = plain DPO). */
  labelSmoothing: number;
  /** Judgement groups per optimizer step. */
  groupsPerStep: number;
  /** Steps of the learning-rate schedule (warmup, then cosine to `minLr`). */
  steps: number;
  lr: number;
  minLr: number;
  warmup: number;
  weightDecay: number;
  gradClip: number;
  /** EMA of the weights, shipped instead of the raw weights (0 = off). */
  emaDecay: number;
  /** Replies sampled per step from the policy to measure its KL (and proxy reward); 0 = none. */
  klSamples: number;
  /** Sampling of those replies (as PPO's rollouts). */
  maxTokens: number;
  temperature: number;
  seed: number;
}

export const DPO_STEP_DEFAULTS: Readonly<DpoStepKnobs> = Object.freeze({
  beta: 0.1, labelSmoothing: 0, groupsPerStep: 8, steps: 100, lr: 5e-6, minLr: 5e-7, warmup: 10, weightDecay: 0, gradClip: 1, emaDecay: 0, klSamples: 8, maxTokens: 48, temperature: 1, seed: 5,
});

/** What one DPO step measured. */
export interface DpoStepStats {
  step: number;
  /** Epoch (pass over the groups) this step's minibatch belongs to, from 0. */
  epoch: number;
  loss: number;
  /** Mean β(Δ_w − Δ_l) over the minibatch's pairs. */
  margin: number;
  /** Share of pairs with a positive margin. */
  accuracy: number;
  pairs: number;
  /** Mean KL to the reference per sampled reply (k1 over `klSamples` rollouts; NaN when 0). */
  kl: number;
  /** Mean KL to the SFT model per sampled reply, when a `klReference` is given. */
  klSft?: number;
  /** Mean reward-source score of the sampled replies, when a reward source is given. */
  score?: number;
  /** Mean length of the sampled replies (NaN when none). */
  replyLength: number;
  beta: number;
  lr: number;
  ms: number;
}

/** What `DpoOptimizer.exportState` returns. */
export interface DpoOptimizerState {
  step: number;
  optimizerStep: number;
}

export interface DpoOptimizerOptions {
  policy: GPT;
  /** π_ref: the reference the loop gives (SFT, or the champion when re-anchored). */
  reference: GPT;
  /** The SFT model, when it is not `reference`: the KL of sampled replies to it is reported. */
  klReference?: GPT;
  tok: Tokenizer;
  /** Judgement groups (groups without pairs are dropped; unpaired examples are not used). */
  data: PreferenceData | readonly PreferenceGroup[];
  /** Scores the sampled replies (the proxy curve), optional. */
  reward?: RewardSource;
  knobs?: Partial<DpoStepKnobs>;
}

/**
 * DPO as a step-wise optimiser (the shape of PPO's trainer): each `step()` is one AdamW update
 * on the next `groupsPerStep` judgement groups of a shuffled pass (the shuffle of pass e is a
 * function of (seed, e), so a resumed run continues identically), then `klSamples` replies are
 * sampled to measure the KL to the reference.
 *
 * @example
 *   const dpo = new DpoOptimizer({ policy, reference, tok, data, knobs: { beta: 0.1 } });
 *   for (let i = 0; i < 20; i++) console.log(await dpo.step());
 *   dpo.dispose();
 */
export class DpoOptimizer {
  readonly knobs: Readonly<DpoStepKnobs>;
  private readonly groups: readonly PreferenceGroup[];
  private readonly opt: AdamW;
  private readonly vars: tf.Variable[];
  private readonly emaState: WeightEma | undefined;
  private stepCount = 0;
  private order: { epoch: number; groups: PreferenceGroup[] } | undefined;

  constructor(private readonly o: DpoOptimizerOptions) {
    this.knobs = Object.freeze({ ...DPO_STEP_DEFAULTS, ...o.knobs });
    if (o.policy.kind !== 'policy' || o.reference.kind !== 'policy') throw new Error('DPO needs policy models for the policy and the reference');
    const groups = Array.isArray(o.data) ? (o.data as readonly PreferenceGroup[]) : (o.data as PreferenceData).groups;
    this.groups = groups.filter((g) => g.pairs.length > 0);
    if (!this.groups.length) throw new Error('DPO needs at least one judgement with a preferred reply (a pair)');
    if (!Number.isInteger(this.knobs.groupsPerStep) || this.knobs.groupsPerStep < 1) throw new Error(`groupsPerStep must be a positive integer, got ${this.knobs.groupsPerStep}`);
    const k = this.knobs;
    this.opt = new AdamW(o.policy.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: k.weightDecay, gradClip: k.gradClip });
    this.vars = o.policy.trainableVariables().filter((v) => !v.name.startsWith('value.'));
    this.emaState = k.emaDecay > 0 ? new WeightEma(o.policy, k.emaDecay) : undefined;
  }

  get ema(): GPT | undefined {
    return this.emaState?.model;
  }

  /** Steps in one pass over the groups. */
  get stepsPerEpoch(): number {
    return Math.ceil(this.groups.length / this.knobs.groupsPerStep);
  }

  private batchAt(step: number): { epoch: number; groups: PreferenceGroup[] } {
    const epoch = Math.floor(step / this.stepsPerEpoch);
    if (this.order?.epoch !== epoch) this.order = { epoch, groups: createRng(this.knobs.seed * 104_729 + epoch).shuffle(this.groups) };
    const i = step % this.stepsPerEpoch;
    const g = this.knobs.groupsPerStep;
    return { epoch, groups: this.order.groups.slice(i * g, (i + 1) * g) };
  }

  /** The DPO update of the next minibatch alone (no sampling): the figures of `step()` but the KL ones. */
  update(): Omit<DpoStepStats, 'kl' | 'klSft' | 'score' | 'replyLength'> {
    const k = this.knobs;
    const { policy, reference, tok } = this.o;
    const t0 = performance.now();
    const { epoch, groups } = this.batchAt(this.stepCount);
    const b = buildBatch(tok, policy.config.blockSize, groups);
    const ref = referenceLogProbs(reference, b);
    const lr = warmupCosine(this.stepCount, Math.max(1, k.steps), k.lr, k.minLr, k.warmup);
    const r = optimizerStep(policy, this.opt, this.vars, lr, () => {
      const { loss, margins } = dpoLoss(policy, b, ref, k.beta, k.labelSmoothing);
      return { loss, aux: { margin: tf.mean(margins) as tf.Scalar, accuracy: tf.mean(tf.cast(tf.greater(margins, 0), 'float32')) as tf.Scalar } };
    });
    ref.dispose();
    if (!Number.isFinite(r.loss)) throw new Error(`dpo: loss became ${r.loss} at step ${this.stepCount}; lower the learning rate`);
    this.emaState?.update();
    this.stepCount++;
    return { step: this.stepCount, epoch, loss: r.loss, margin: r.aux.margin!, accuracy: r.aux.accuracy!, pairs: b.P, beta: k.beta, lr, ms: performance.now() - t0 };
  }

  /** One DPO update on the next minibatch, then the KL (and proxy score) of `klSamples` replies sampled for its prompts. */
  async step(): Promise<DpoStepStats> {
    const k = this.knobs;
    const { policy, reference, tok } = this.o;
    const t0 = performance.now();
    const seed = k.seed * 100_003 + this.stepCount * 1_009;
    const { groups } = this.batchAt(this.stepCount);
    const u = this.update();
    let kl = NaN;
    let klSft: number | undefined;
    let score: number | undefined;
    let replyLength = NaN;
    if (k.klSamples > 0) {
      const prompts = Array.from({ length: k.klSamples }, (_, i) => groups[i % groups.length]!.prompt);
      const eps = sampleEpisodes(policy, tok, prompts, { maxTokens: k.maxTokens, temperature: k.temperature, seed });
      kl = mean(episodeKl(policy, reference, tok, eps, k.temperature));
      if (this.o.klReference) klSft = mean(episodeKl(policy, this.o.klReference, tok, eps, k.temperature));
      if (this.o.reward) score = mean(await this.o.reward.score(eps.map((e) => ({ prompt: e.prompt, reply: e.reply, replyIds: e.replyIds }))));
      replyLength = mean(eps.map((e) => e.replyIds.length));
    }
    return { ...u, kl, ...(klSft !== undefined ? { klSft } : {}), ...(score !== undefined ? { score } : {}), replyLength, ms: performance.now() - t0 };
  }

  exportState(): DpoOptimizerState {
    return { step: this.stepCount, optimizerStep: this.opt.step };
  }

  /** Optimizer moments (`m.<param>`, `v.<param>`) for checkpoints. */
  exportOptimizer(): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
    return this.opt.exportState();
  }

  /** Continues a run saved by `exportState`/`exportOptimizer` (policy weights restored by the caller). */
  importState(state: DpoOptimizerState, optimizer?: ReadonlyMap<string, Float32Array>, ema?: ReadonlyMap<string, Float32Array>): void {
    this.stepCount = state.step;
    this.order = undefined;
    if (optimizer) this.opt.importState(optimizer, state.optimizerStep);
    if (this.emaState && ema) this.emaState.load(ema);
  }

  get shipped(): GPT {
    return this.emaState?.model ?? this.o.policy;
  }

  dispose(): void {
    this.opt.dispose();
    this.emaState?.dispose();
  }
}

/** One line per step. */
export function formatDpoStats(s: DpoStepStats, total?: number): string {
  const f = (x: number, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  return (
    `dpo step ${s.step}${total ? `/${total}` : ''}: loss ${f(s.loss, 4)} margin ${f(s.margin, 4)} acc ${f(s.accuracy)} pairs ${s.pairs} epoch ${s.epoch} ` +
    `kl ${f(s.kl)}${s.klSft !== undefined ? ` kl-sft ${f(s.klSft)}` : ''}${s.score !== undefined ? ` score ${f(s.score)}` : ''} len ${f(s.replyLength, 1)} β ${f(s.beta, 4)} lr ${s.lr.toExponential(2)} ${(s.ms / 1000).toFixed(2)}s`
  );
}

/** The command: load data and checkpoints, train, save a policy checkpoint. */
export async function dpo(cfg: DpoConfig, log: (l: string) => void = (l) => console.error(l)): Promise<TrainDpoResult> {
  await initBackend({ backend: cfg.backend || undefined, log });
  if (existsSync(cfg.out)) throw new Error(`${cfg.out} already exists; checkpoints are never overwritten (choose another --out)`);
  let groups: PreferenceGroup[];
  if (cfg.database) {
    const { openStore } = await import('../feedback/index.ts');
    const store = await openStore({ url: storeUrl(cfg.database) });
    try {
      const d = await loadStorePreferences(store, { useUnpaired: false });
      log(`dpo: ${describePreferences(d)}`);
      groups = d.groups;
    } finally {
      await store.close();
    }
  } else if (cfg.data) {
    const d = readPreferenceJsonl(cfg.data);
    log(`dpo: ${describePreferences(d)} (unpaired rows are not used by DPO)`);
    groups = d.groups;
  } else throw new Error('give --data prefs.jsonl or --database URL');
  const split = splitGroups(groups, cfg.valFraction, cfg.seed);
  if (!split.train.length) throw new Error('no training judgements');
  const refCk = loadCheckpoint(cfg.reference, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(refCk.tokenizer);
  const polCk = loadCheckpoint(cfg.policy, { kind: 'policy', config: refCk.meta.config, tokenizerFingerprint: tok.fingerprint() });
  const reference = GPT.fromWeights(refCk.meta.config, 'policy', refCk.weights);
  const policy = GPT.fromWeights(polCk.meta.config, 'policy', polCk.weights);
  const result = trainDpo({ policy, reference, tok, train: split.train, val: split.val, knobs: cfg, log });
  const last = result.history[result.history.length - 1];
  saveCheckpoint(cfg.out, {
    weights: await policy.exportWeights(),
    meta: {
      stage: 'policy',
      kind: 'policy',
      config: policy.config,
      tokenizerFingerprint: tok.fingerprint(),
      parent: cfg.policy,
      step: result.steps,
      metrics: Object.fromEntries(Object.entries({
        trainLoss: last?.loss ?? NaN,
        trainMargin: last?.margin ?? NaN,
        heldOutMargin: result.heldOut.margin,
        heldOutAccuracy: result.heldOut.accuracy,
        heldOutLoss: result.heldOut.loss,
      }).filter(([, v]) => Number.isFinite(v))),
      runConfig: { ...cfg, algorithm: 'dpo' },
    },
    tokenizer: tok.toJSON(),
  });
  log(`dpo: saved ${cfg.out}`);
  policy.dispose();
  reference.dispose();
  return result;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx training/dpo.ts --data prefs.jsonl --policy checkpoints/sft --reference checkpoints/sft --out checkpoints/policy-dpo', schema: DpoConfig, envPrefix: 'DPO' }, (cfg) => dpo(cfg));
}
