/**
 * The knobs every supervised training command shares (batch, schedule, AdamW, evaluation,
 * checkpoints, resume, backend), as a zod shape to spread into a command's config with its own
 * defaults.
 */
import { z } from 'zod';

export interface TrainKnobDefaults {
  batchSize: number;
  /** What one batch row is, for `--help` ("sequences", "dialogues"). */
  rows: string;
  steps: number;
  lr: number;
  minLr: number;
  warmup: number;
  weightDecay: number;
  evalEvery: number;
  saveEvery: number;
  seed: number;
}

export function trainKnobs(d: TrainKnobDefaults) {
  return {
    batchSize: z.number().int().positive().default(d.batchSize).describe(`${d.rows} per step`),
    steps: z.number().int().positive().default(d.steps).describe('optimizer steps'),
    lr: z.number().positive().default(d.lr).describe('peak learning rate'),
    minLr: z.number().nonnegative().default(d.minLr).describe('final learning rate (cosine)'),
    warmup: z.number().int().nonnegative().default(d.warmup).describe('warmup steps'),
    weightDecay: z.number().nonnegative().default(d.weightDecay).describe('AdamW weight decay on matrices'),
    gradClip: z.number().nonnegative().default(1).describe('global gradient-norm clip (0 = off)'),
    evalEvery: z.number().int().positive().default(d.evalEvery).describe('held-out evaluation period (steps)'),
    evalBatches: z.number().int().positive().default(8).describe('held-out batches per evaluation'),
    saveEvery: z.number().int().positive().default(d.saveEvery).describe('checkpoint period (steps)'),
    seed: z.number().int().default(d.seed).describe('seed for init and batches'),
    resume: z.boolean().default(true).describe("continue from the run directory's latest checkpoint"),
    backend: z.string().default('').describe('force a tensor backend (tensorflow, wasm, cpu)'),
  };
}
