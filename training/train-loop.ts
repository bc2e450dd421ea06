/**
 * The supervised training loop shared by pretraining and SFT: warmup + cosine learning rate,
 * AdamW, periodic held-out evaluation, periodic checkpoints (weights + optimizer) under
 * `<runDir>/step-NNNNNN` with an atomically replaced `latest` pointer, resume after an
 * interruption, and a progress line (loss, tokens/s, ETA).
 *
 * Batches are a pure function of (seed, step), so a resumed run sees the same data it would
 * have seen without the interruption.
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { GPT, type GPTConfig } from '../model/gpt.ts';
import { AdamW } from '../model/adamw.ts';
import { maskedCrossEntropy } from '../model/losses.ts';
import { loadCheckpoint, saveCheckpoint, writeFileAtomic, type Stage } from '../model/checkpoint.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { Progress } from './progress.ts';

/** A batch of token rows: inputs `[B, T]`, next-token targets and 0/1 loss weights, flat `[B*T]`. */
export interface Batch {
  B: number;
  T: number;
  inputs: Int32Array;
  targets: Int32Array;
  weights: Float32Array;
}

export interface TrainLoopOptions {
  stage: Stage;
  runDir: string;
  tokenizer: Tokenizer;
  /** Starting weights (a new model, or the parent checkpoint's); ignored when resuming. */
  init: () => GPT;
  /** The model shape `init` makes; a checkpoint to resume from must have it. */
  config: GPTConfig;
  parent: string | null;
  steps: number;
  lr: number;
  minLr: number;
  warmup: number;
  weightDecay: number;
  gradClip: number;
  evalEvery: number;
  saveEvery: number;
  resume: boolean;
  /** The batch for a step (deterministic in the step). */
  batchAt: (step: number) => Batch;
  /** Held-out batches for evaluation (fixed). */
  evalBatches: readonly Batch[];
  runConfig: Record<string, unknown>;
  log?: (line: string) => void;
  /** Checked after every step: when it returns true the loop saves a resumable checkpoint and returns. */
  shouldStop?: () => boolean;
}

export interface TrainLoopResult {
  gpt: GPT;
  step: number;
  /** True when `shouldStop` ended the run before `steps`. */
  interrupted: boolean;
  trainLoss: number;
  evalLoss: number;
  tokensPerSecond: number;
  history: { step: number; trainLoss: number; evalLoss?: number; lr: number }[];
}

function lrAt(step: number, o: TrainLoopOptions): number {
  if (step < o.warmup) return (o.lr * (step + 1)) / o.warmup;
  const progress = Math.min(1, (step - o.warmup) / Math.max(1, o.steps - o.warmup));
  return o.minLr + 0.5 * (o.lr - o.minLr) * (1 + Math.cos(Math.PI * progress));
}

/** Mean loss of a model over batches (token-weighted). */
export function evaluateLoss(gpt: GPT, batches: readonly Batch[]): number {
  let total = 0;
  let count = 0;
  for (const b of batches) {
    const [sum, n] = tf.tidy(() => {
      const idx = tf.tensor2d(b.inputs, [b.B, b.T], 'int32');
      const w = tf.tensor1d(b.weights);
      const loss = maskedCrossEntropy(gpt.lmLogits(gpt.hidden(idx)), tf.tensor1d(b.targets, 'int32'), w);
      return [tf.mul(loss, tf.sum(w)).dataSync()[0]!, tf.sum(w).dataSync()[0]!];
    });
    total += sum;
    count += n;
  }
  return count ? total / count : NaN;
}

/** One optimizer step; returns the loss. */
export function trainStep(gpt: GPT, opt: AdamW, b: Batch, lr: number, vars: tf.Variable[]): number {
  const idx = tf.tensor2d(b.inputs, [b.B, b.T], 'int32');
  const tgt = tf.tensor1d(b.targets, 'int32');
  const w = tf.tensor1d(b.weights);
  const { value, grads } = tf.variableGrads(() => maskedCrossEntropy(gpt.lmLogits(gpt.hidden(idx)), tgt, w), vars);
  const named: Record<string, tf.Tensor> = {};
  for (const [name, p] of gpt.params) if (grads[p.name]) named[name] = grads[p.name]!;
  opt.apply(named, lr);
  const loss = value.dataSync()[0]!;
  tf.dispose([value, idx, tgt, w]);
  return loss;
}

const stepDir = (runDir: string, step: number) => join(runDir, `step-${String(step).padStart(6, '0')}`);

/** The newest complete checkpoint of a run, if any. */
export function latestCheckpoint(runDir: string): string | undefined {
  const pointer = join(runDir, 'latest');
  if (!existsSync(pointer)) return undefined;
  const dir = join(runDir, readFileSync(pointer, 'utf8').trim());
  return existsSync(dir) ? dir : undefined;
}

function pruneOld(runDir: string, keep: string): void {
  for (const name of readdirSync(runDir)) {
    if ((name.startsWith('step-') && name !== keep) || name.startsWith('.tmp-')) rmSync(join(runDir, name), { recursive: true, force: true });
  }
}

export async function trainLoop(o: TrainLoopOptions): Promise<TrainLoopResult> {
  const log = o.log ?? ((l: string) => console.error(l));
  let gpt: GPT;
  let startStep = 0;
  let opt: AdamW;
  const adamCfg = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: o.weightDecay, gradClip: o.gradClip };
  const resumeFrom = o.resume ? latestCheckpoint(o.runDir) : undefined;
  if (!o.resume) rmSync(o.runDir, { recursive: true, force: true });
  if (resumeFrom) {
    let ck;
    try {
      ck = loadCheckpoint(resumeFrom, { config: o.config, tokenizerFingerprint: o.tokenizer.fingerprint(), withOptimizer: true });
    } catch (err) {
      throw new Error(`${o.runDir} holds a run that cannot continue this one (${(err as Error).message}); pass --no-resume or delete ${o.runDir}`);
    }
    if (ck.meta.parent !== o.parent) {
      throw new Error(`${o.runDir} holds a run started from ${ck.meta.parent ?? 'scratch'}, not ${o.parent ?? 'scratch'}; pass --no-resume or delete ${o.runDir}`);
    }
    gpt = GPT.fromWeights(ck.meta.config as GPTConfig, ck.meta.kind, ck.weights);
    opt = new AdamW(gpt.params, adamCfg);
    if (ck.optimizer) opt.importState(ck.optimizer, ck.meta.step);
    startStep = ck.meta.step;
    log(`resuming ${o.stage} from ${resumeFrom} at step ${startStep}`);
  } else {
    gpt = o.init();
    opt = new AdamW(gpt.params, adamCfg);
  }
  const vars = gpt.trainableVariables().filter((v) => !v.name.startsWith('value.') && !v.name.startsWith('score.'));
  const history: TrainLoopResult['history'] = [];
  const progress = new Progress(o.stage, o.steps, startStep);
  let trainLoss = NaN;
  let evalLoss = NaN;
  let smooth = NaN;
  let tokens = 0;
  const t0 = performance.now();

  const save = async (step: number, final: boolean) => {
    const dir = stepDir(o.runDir, step);
    if (existsSync(dir)) return dir;
    saveCheckpoint(dir, {
      weights: await gpt.exportWeights(),
      optimizer: final ? undefined : await opt.exportState(),
      meta: {
        stage: o.stage,
        kind: gpt.kind,
        config: gpt.config,
        tokenizerFingerprint: o.tokenizer.fingerprint(),
        parent: o.parent,
        step,
        metrics: { trainLoss, evalLoss },
        runConfig: o.runConfig,
      },
      tokenizer: o.tokenizer.toJSON(),
    });
    writeFileAtomic(join(o.runDir, 'latest'), `step-${String(step).padStart(6, '0')}\n`);
    pruneOld(o.runDir, `step-${String(step).padStart(6, '0')}`);
    return dir;
  };

  for (let step = startStep; step < o.steps; step++) {
    const b = o.batchAt(step);
    const lr = lrAt(step, o);
    trainLoss = trainStep(gpt, opt, b, lr, vars);
    if (!Number.isFinite(trainLoss)) throw new Error(`${o.stage}: loss became ${trainLoss} at step ${step}; lower --lr`);
    smooth = Number.isNaN(smooth) ? trainLoss : 0.95 * smooth + 0.05 * trainLoss;
    tokens += b.B * b.T;
    const entry: TrainLoopResult['history'][number] = { step: step + 1, trainLoss, lr };
    if ((step + 1) % o.evalEvery === 0 || step + 1 === o.steps) {
      evalLoss = evaluateLoss(gpt, o.evalBatches);
      entry.evalLoss = evalLoss;
      progress.note(`step ${step + 1}: train ${smooth.toFixed(3)}, held-out ${evalLoss.toFixed(3)}`);
    }
    history.push(entry);
    const tps = tokens / ((performance.now() - t0) / 1000);
    progress.update(step + 1, { loss: smooth, tokensPerSecond: tps });
    if (o.shouldStop?.() && step + 1 < o.steps) {
      await save(step + 1, false);
      progress.note(`stopped at step ${step + 1}; run again to resume`);
      opt.dispose();
      return { gpt, step: step + 1, interrupted: true, trainLoss: smooth, evalLoss, tokensPerSecond: 0, history };
    }
    if ((step + 1) % o.saveEvery === 0 && step + 1 < o.steps) await save(step + 1, false);
  }
  progress.done();
  if (Number.isNaN(evalLoss)) evalLoss = evaluateLoss(gpt, o.evalBatches);
  if (startStep < o.steps || !existsSync(stepDir(o.runDir, o.steps))) await save(o.steps, true);
  opt.dispose();
  const tokensPerSecond = tokens / Math.max(1e-9, (performance.now() - t0) / 1000);
  return { gpt, step: o.steps, interrupted: false, trainLoss: smooth, evalLoss, tokensPerSecond, history };
}
