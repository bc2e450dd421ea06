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
 *   π_ref   the frozen SFT policy (the same reference PPO's KL is measured against);
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
 *
 *   node --import tsx training/dpo.ts --data prefs.jsonl --policy checkpoints/sft --out checkpoints/policy-dpo
 */
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { existsSync } from 'node:fs';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { AdamW } from '../model/adamw.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { loadCheckpoint, saveCheckpoint } from '../model/checkpoint.ts';
import { tokenLogProbs } from '../model/losses.ts';
import { createRng } from '../model/random.ts';
import { encodeExchange, logSigmoid, mean, optimizerStep, padRows, warmupCosine } from './rlhf-common.ts';
import { describePreferences, loadStorePreferences, readPreferenceJsonl, splitGroups, type PreferenceGroup } from './preferences.ts';
import { isMain, runCli } from './cli.ts';

export const DpoConfig = z.object({
  data: z.string().default('').describe('JSONL of preference rows (TRL pairs, rankings); or use --database'),
  database: z.string().default('').describe('feedback store URL or "default" (data/feedback.sqlite); read instead of --data'),
  policy: z.string().default('checkpoints/sft').describe('checkpoint the policy starts from'),
  reference: z.string().default('checkpoints/sft').describe('frozen reference π_ref (the SFT checkpoint)'),
  out: z.string().default('checkpoints/policy-dpo').describe('where the policy checkpoint is written (must not exist)'),
  beta: z.number().positive().default(0.1).describe('β: implicit KL strength'),
  labelSmoothing: z.number().min(0).max(0.5).default(0).describe('ε: assumed label noise (conservative DPO); 0 = plain DPO'),
  epochs: z.number().int().positive().default(1).describe('passes over the training judgements'),
  groupsPerBatch: z.number().int().positive().default(8).describe('judgement groups per optimizer step'),
  lr: z.number().positive().default(5e-6).describe('peak learning rate'),
  minLr: z.number().nonnegative().default(5e-7).describe('final learning rate (cosine)'),
  warmup: z.number().int().nonnegative().default(10).describe('warmup steps'),
  weightDecay: z.number().nonnegative().default(0).describe('AdamW weight decay on matrices'),
  gradClip: z.number().nonnegative().default(1).describe('global gradient-norm clip (0 = off)'),
  valFraction: z.number().min(0).max(0.5).default(0.1).describe('share of judgements held out (by group)'),
  seed: z.number().int().default(5).describe('seed for the split and batches'),
  backend: z.string().default('').describe('force a tensor backend (tensorflow, wasm, cpu)'),
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

/** Trains `policy` in place with DPO; evaluates on `val` after every epoch. */
export function trainDpo(o: TrainDpoOptions): TrainDpoResult {
  const { policy, reference, tok, knobs: k } = o;
  const log = o.log ?? ((l: string) => console.error(l));
  const opt = new AdamW(policy.params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: k.weightDecay, gradClip: k.gradClip });
  const vars = policy.trainableVariables().filter((v) => !v.name.startsWith('value.'));
  const rng = createRng(k.seed);
  const perEpoch = Math.max(1, Math.ceil(o.train.length / k.groupsPerBatch));
  const total = perEpoch * k.epochs;
  const history: TrainDpoResult['history'] = [];
  let step = 0;
  let heldOut = evaluateDpo(policy, reference, tok, o.val, k.beta, k.groupsPerBatch);
  for (let epoch = 1; epoch <= k.epochs; epoch++) {
    const order = rng.shuffle(o.train);
    for (let i = 0; i < perEpoch; i++) {
      const b = buildBatch(tok, policy.config.blockSize, order.slice(i * k.groupsPerBatch, (i + 1) * k.groupsPerBatch));
      if (!b.P) continue;
      const ref = referenceLogProbs(reference, b);
      const lr = warmupCosine(step, total, k.lr, k.minLr, k.warmup);
      const r = optimizerStep(policy, opt, vars, lr, () => {
        const { loss, margins } = dpoLoss(policy, b, ref, k.beta, k.labelSmoothing);
        return { loss, aux: { margin: tf.mean(margins) as tf.Scalar, accuracy: tf.mean(tf.cast(tf.greater(margins, 0), 'float32')) as tf.Scalar } };
      });
      ref.dispose();
      if (!Number.isFinite(r.loss)) throw new Error(`dpo: loss became ${r.loss} at step ${step}; lower --lr`);
      step++;
      history.push({ step, loss: r.loss, margin: r.aux.margin!, accuracy: r.aux.accuracy! });
      log(`dpo: step ${step}/${total} loss ${r.loss.toFixed(4)} margin ${r.aux.margin!.toFixed(4)} acc ${r.aux.accuracy!.toFixed(3)} lr ${lr.toExponential(2)}`);
    }
    heldOut = evaluateDpo(policy, reference, tok, o.val, k.beta, k.groupsPerBatch);
    if (history.length) history[history.length - 1]!.heldOut = heldOut;
    const recent = history.slice(-perEpoch);
    log(`dpo: epoch ${epoch}/${k.epochs} step ${step} loss ${mean(recent.map((h) => h.loss)).toFixed(4)} margin ${mean(recent.map((h) => h.margin)).toFixed(4)} acc ${mean(recent.map((h) => h.accuracy)).toFixed(3)}; held-out margin ${heldOut.margin.toFixed(4)} acc ${heldOut.accuracy.toFixed(3)} over ${heldOut.pairs} pairs`);
  }
  opt.dispose();
  return { steps: step, heldOut, history };
}

/** The command: load data and checkpoints, train, save a policy checkpoint. */
export async function dpo(cfg: DpoConfig, log: (l: string) => void = (l) => console.error(l)): Promise<TrainDpoResult> {
  await initBackend({ backend: cfg.backend || undefined, log });
  if (existsSync(cfg.out)) throw new Error(`${cfg.out} already exists; checkpoints are never overwritten (choose another --out)`);
  let groups: PreferenceGroup[];
  if (cfg.database) {
    const { openStore } = await import('../feedback/index.ts');
    const store = await openStore(cfg.database === 'default' ? {} : { url: cfg.database });
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
  await runCli('node --import tsx training/dpo.ts --data prefs.jsonl --policy checkpoints/sft --reference checkpoints/sft --out checkpoints/policy-dpo', DpoConfig, 'DPO', (cfg) => dpo(cfg));
}
