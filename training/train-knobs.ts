/**
 * The knobs every supervised training command shares (batch, schedule, AdamW, evaluation,
 * checkpoints, resume, backend), as a zod shape to spread into a command's config with its own
 * defaults.
 */
import { z } from 'zod';
import { backendOptions, optimizerOptions } from '../cli/options.ts';

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
    ...optimizerOptions({ lr: d.lr, minLr: d.minLr, warmup: d.warmup, weightDecay: d.weightDecay }),
    evalEvery: z.number().int().positive().default(d.evalEvery).describe('held-out evaluation period (steps)'),
    evalBatches: z.number().int().positive().default(8).describe('held-out batches per evaluation'),
    saveEvery: z.number().int().positive().default(d.saveEvery).describe('checkpoint period (steps)'),
    seed: z.number().int().default(d.seed).describe('seed for init and batches'),
    resume: z.boolean().default(true).describe("continue from the run directory's latest checkpoint"),
    ...backendOptions,
  };
}
