/**
 * Pretraining: next-token prediction on the corpus, every token weighted, with held-out loss
 * and perplexity. Writes resumable checkpoints under `runDir` and publishes the final one as
 * `out` (stage "base").
 *
 *   npm run pretrain -- --steps 2000 --n-layer 4 --n-embd 128
 */
import { z } from 'zod';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { trainKnobs } from './train-knobs.ts';
import { isMain, runCommand, stopRequested } from '../cli/command.ts';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { Tokenizer, type TokenizerJSON } from '../model/tokenizer.ts';
import { corpusTokens, streamBatchAt, streamEvalBatches } from './datasets.ts';
import { latestCheckpoint, trainLoop } from './train-loop.ts';
import { publishCheckpoint } from './publish.ts';

export const PretrainConfig = z.object({
  data: z.string().default('data').describe('directory made by build-data (corpus.*.jsonl, tokenizer.json)'),
  runDir: z.string().default('runs/pretrain').describe('where resumable checkpoints go'),
  out: z.string().default('checkpoints/base').describe('where the final checkpoint is published'),
  nLayer: z.number().int().positive().default(4).describe('transformer blocks'),
  nHead: z.number().int().positive().default(4).describe('attention heads'),
  nEmbd: z.number().int().positive().default(128).describe('embedding width'),
  blockSize: z.number().int().positive().default(128).describe('context length'),
  ...trainKnobs({ batchSize: 16, rows: 'sequences', steps: 900, lr: 2e-3, minLr: 2e-4, warmup: 100, weightDecay: 0.1, evalEvery: 150, saveEvery: 150, seed: 1 }),
});
export type PretrainConfig = z.infer<typeof PretrainConfig>;

export function loadTokenizer(dataDir: string): Tokenizer {
  const path = join(dataDir, 'tokenizer.json');
  let json: TokenizerJSON;
  try {
    json = JSON.parse(readFileSync(path, 'utf8')) as TokenizerJSON;
  } catch {
    throw new Error(`${path} is missing or not JSON: run \`npm run build-data\` first`);
  }
  return Tokenizer.fromJSON(json);
}

export async function pretrain(cfg: PretrainConfig, log: (l: string) => void = (l) => console.error(l), shouldStop?: () => boolean) {
  await initBackend({ backend: cfg.backend || undefined, log });
  const tok = loadTokenizer(cfg.data);
  const train = corpusTokens(cfg.data, 'train', tok);
  const val = corpusTokens(cfg.data, 'val', tok);
  log(`pretrain: ${train.length} training tokens, ${val.length} held-out tokens, vocab ${tok.vocabSize}`);
  const model = { nLayer: cfg.nLayer, nHead: cfg.nHead, nEmbd: cfg.nEmbd, blockSize: cfg.blockSize, vocabSize: tok.vocabSize };
  const result = await trainLoop({
    stage: 'base',
    runDir: cfg.runDir,
    tokenizer: tok,
    init: () => GPT.create(model, 'policy', cfg.seed),
    config: model,
    parent: null,
    steps: cfg.steps,
    lr: cfg.lr,
    minLr: cfg.minLr,
    warmup: cfg.warmup,
    weightDecay: cfg.weightDecay,
    gradClip: cfg.gradClip,
    evalEvery: cfg.evalEvery,
    saveEvery: cfg.saveEvery,
    resume: cfg.resume,
    batchAt: streamBatchAt(train, cfg.batchSize, cfg.blockSize, cfg.seed),
    evalBatches: streamEvalBatches(val, cfg.batchSize, cfg.blockSize, cfg.evalBatches),
    runConfig: { ...cfg },
    log,
    shouldStop,
  });
  if (result.interrupted) return result;
  publishCheckpoint(latestCheckpoint(cfg.runDir)!, cfg.out);
  log(`pretrain: held-out loss ${result.evalLoss.toFixed(4)} (perplexity ${Math.exp(result.evalLoss).toFixed(1)}), ${Math.round(result.tokensPerSecond)} tokens/s; published ${cfg.out}`);
  return result;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'npm run pretrain -- [options]', schema: PretrainConfig, envPrefix: 'PRETRAIN' }, async (cfg) => (await pretrain(cfg, undefined, stopRequested())).gpt.dispose());
}
