/**
 * Supervised fine-tuning: multi-turn dialogues rendered by the chat template, loss on assistant
 * tokens only (their content and closing end-of-turn token). Starts from the base checkpoint;
 * the published SFT checkpoint is the policy that serves first and the frozen KL reference of
 * PPO.
 *
 *   npm run sft -- --steps 800 --init checkpoints/base
 */
import { z } from 'zod';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { readJsonl, renderRows, rowBatchAt, rowEvalBatches, type Dialogue } from './datasets.ts';
import { latestCheckpoint, trainLoop, evaluateLoss } from './train-loop.ts';
import { publishCheckpoint } from './publish.ts';
import { loadTokenizer } from './pretrain.ts';
import { trainKnobs } from './train-knobs.ts';
import { isMain, runCommand, stopRequested } from '../cli/command.ts';

export const SftConfig = z.object({
  data: z.string().default('data').describe('directory made by build-data (dialogues.*.jsonl, tokenizer.json)'),
  init: z.string().default('checkpoints/base').describe('checkpoint to start from (the base model)'),
  runDir: z.string().default('runs/sft').describe('where resumable checkpoints go'),
  out: z.string().default('checkpoints/sft').describe('where the final checkpoint is published'),
  ...trainKnobs({ batchSize: 16, rows: 'dialogues', steps: 1600, lr: 1e-3, minLr: 1e-4, warmup: 50, weightDecay: 0.05, evalEvery: 200, saveEvery: 200, seed: 2 }),
});
export type SftConfig = z.infer<typeof SftConfig>;

export async function sft(cfg: SftConfig, log: (l: string) => void = (l) => console.error(l), shouldStop?: () => boolean) {
  await initBackend({ backend: cfg.backend || undefined, log });
  const tok = loadTokenizer(cfg.data);
  const base = loadCheckpoint(cfg.init, { tokenizerFingerprint: tok.fingerprint(), kind: 'policy' });
  const blockSize = base.meta.config.blockSize;
  const train = renderRows(tok, readJsonl<Dialogue>(join(cfg.data, 'dialogues.train.jsonl')), blockSize);
  const val = renderRows(tok, readJsonl<Dialogue>(join(cfg.data, 'dialogues.val.jsonl')), blockSize);
  const pad = tok.specialId('<|pad|>');
  log(`sft: ${train.length} training dialogues, ${val.length} held-out, from ${cfg.init}`);
  const evalBatches = rowEvalBatches(val, cfg.batchSize, pad, cfg.evalBatches);
  const baseModel = GPT.fromWeights(base.meta.config, 'policy', base.weights);
  const baseLoss = evaluateLoss(baseModel, evalBatches);
  log(`sft: base model's held-out assistant-token loss ${baseLoss.toFixed(4)}`);
  const result = await trainLoop({
    stage: 'sft',
    runDir: cfg.runDir,
    tokenizer: tok,
    init: () => baseModel.clone(),
    config: base.meta.config,
    parent: cfg.init,
    steps: cfg.steps,
    lr: cfg.lr,
    minLr: cfg.minLr,
    warmup: cfg.warmup,
    weightDecay: cfg.weightDecay,
    gradClip: cfg.gradClip,
    evalEvery: cfg.evalEvery,
    saveEvery: cfg.saveEvery,
    resume: cfg.resume,
    batchAt: rowBatchAt(train, cfg.batchSize, pad, cfg.seed),
    evalBatches,
    runConfig: { ...cfg, baseHeldOutLoss: baseLoss },
    log,
    shouldStop,
  });
  baseModel.dispose();
  if (result.interrupted) return { ...result, baseLoss };
  publishCheckpoint(latestCheckpoint(cfg.runDir)!, cfg.out);
  log(`sft: held-out assistant-token loss ${result.evalLoss.toFixed(4)} (base ${baseLoss.toFixed(4)}), ${Math.round(result.tokensPerSecond)} tokens/s; published ${cfg.out}`);
  return { ...result, baseLoss };
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'npm run sft -- [options]', schema: SftConfig, envPrefix: 'SFT' }, async (cfg) => (await sft(cfg, undefined, stopRequested())).gpt.dispose());
}
