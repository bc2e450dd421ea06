/**
 * The offline pipeline end to end: data → tokenizer → pretraining → SFT → held-out report.
 * Every stage is resumable: finished stages are skipped (data whose manifest exists, a
 * tokenizer that exists, runs whose last checkpoint is final), so an interrupted pipeline
 * continues where it stopped. `--fresh` starts over.
 *
 *   npm run pipeline                      # the default model, under 30 minutes on 2 cores
 *   npm run pipeline -- --pretrain-steps 100 --sft-steps 50 --out-dir /tmp/try
 */
import { z } from 'zod';
import { backendOptions, storeOptions, storeUrl } from '../cli/options.ts';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { buildData, BuildDataConfig } from './build-data.ts';
import { trainTokenizerFromCorpus } from './build-tokenizer.ts';
import { pretrain, PretrainConfig } from './pretrain.ts';
import { sft, SftConfig } from './sft.ts';
import { evaluateSft, sampleDialogues, type SftReport } from './eval-sft.ts';
import { readJsonl, type Dialogue } from './datasets.ts';
import { loadTokenizer } from './pretrain.ts';
import { formatDuration } from './progress.ts';
import { isMain, runCommand } from '../cli/command.ts';
import { registerPipelineVersions } from './register-versions.ts';
import { openStore } from '../feedback/index.ts';

export const PipelineConfig = z.object({
  data: z.string().default('data').describe('data directory (built if missing)'),
  runs: z.string().default('runs').describe('directory for resumable run checkpoints'),
  outDir: z.string().default('checkpoints').describe('where base/ and sft/ are published'),
  vocabSize: z.number().int().min(300).default(2048).describe('tokenizer vocabulary (specials included)'),
  tokenizerSampleMb: z.number().positive().default(4).describe('MB of corpus text the tokenizer is trained on'),
  nLayer: z.number().int().positive().default(4).describe('transformer blocks'),
  nHead: z.number().int().positive().default(4).describe('attention heads'),
  nEmbd: z.number().int().positive().default(128).describe('embedding width'),
  blockSize: z.number().int().positive().default(128).describe('context length'),
  pretrainSteps: z.number().int().positive().default(900).describe('pretraining optimizer steps'),
  pretrainBatch: z.number().int().positive().default(16).describe('pretraining sequences per step'),
  sftSteps: z.number().int().positive().default(1600).describe('SFT optimizer steps'),
  sftBatch: z.number().int().positive().default(16).describe('SFT dialogues per step'),
  evalDialogues: z.number().int().positive().default(200).describe('held-out dialogues in the final report'),
  database: storeOptions.database,
  register: z.boolean().default(true).describe('register the published checkpoints as model versions'),
  fresh: z.boolean().default(false).describe('delete previous runs and start over'),
  ...backendOptions,
});
export type PipelineConfig = z.infer<typeof PipelineConfig>;

export interface PipelineReport {
  config: PipelineConfig;
  backend: string;
  baseHeldOutLoss: number;
  sftHeldOutLoss: number;
  baseCorpusHeldOutLoss: number;
  sft: SftReport;
  samples: { role: string; content: string }[][];
  minutes: Record<string, number>;
}

export async function pipeline(cfg: PipelineConfig, log: (l: string) => void = (l) => console.error(l)): Promise<PipelineReport> {
  const info = await initBackend({ backend: cfg.backend || undefined, log });
  const t0 = performance.now();
  const minutes: Record<string, number> = {};
  const lap = (name: string, since: number) => (minutes[name] = +((performance.now() - since) / 60000).toFixed(2));
  if (cfg.fresh) rmSync(cfg.runs, { recursive: true, force: true });

  let t = performance.now();
  if (!existsSync(join(cfg.data, 'manifest.json'))) buildData(BuildDataConfig.parse({ out: cfg.data }), { log });
  else log(`data: ${cfg.data}/manifest.json exists, reusing it`);
  lap('data', t);

  t = performance.now();
  if (!existsSync(join(cfg.data, 'tokenizer.json'))) trainTokenizerFromCorpus(join(cfg.data, 'corpus.train.jsonl'), cfg.vocabSize, cfg.tokenizerSampleMb * 1e6);
  else log(`tokenizer: ${cfg.data}/tokenizer.json exists, reusing it`);
  const tok = loadTokenizer(cfg.data);
  if (tok.vocabSize !== cfg.vocabSize) log(`tokenizer: existing vocabulary is ${tok.vocabSize} (not ${cfg.vocabSize}); delete ${cfg.data}/tokenizer.json to retrain it`);
  lap('tokenizer', t);

  t = performance.now();
  const base = await pretrain(
    PretrainConfig.parse({
      data: cfg.data,
      runDir: join(cfg.runs, 'pretrain'),
      out: join(cfg.outDir, 'base'),
      nLayer: cfg.nLayer,
      nHead: cfg.nHead,
      nEmbd: cfg.nEmbd,
      blockSize: cfg.blockSize,
      batchSize: cfg.pretrainBatch,
      steps: cfg.pretrainSteps,
      evalEvery: Math.max(50, Math.floor(cfg.pretrainSteps / 6)),
      saveEvery: Math.max(50, Math.floor(cfg.pretrainSteps / 6)),
    }),
    log,
  );
  base.gpt.dispose();
  lap('pretrain', t);

  t = performance.now();
  const tuned = await sft(
    SftConfig.parse({
      data: cfg.data,
      init: join(cfg.outDir, 'base'),
      runDir: join(cfg.runs, 'sft'),
      out: join(cfg.outDir, 'sft'),
      batchSize: cfg.sftBatch,
      steps: cfg.sftSteps,
      evalEvery: Math.max(50, Math.floor(cfg.sftSteps / 6)),
      saveEvery: Math.max(50, Math.floor(cfg.sftSteps / 6)),
    }),
    log,
  );
  lap('sft', t);

  t = performance.now();
  const val = readJsonl<Dialogue>(join(cfg.data, 'dialogues.val.jsonl'));
  const picked = val.filter((_, i) => i % Math.max(1, Math.floor(val.length / cfg.evalDialogues)) === 0).slice(0, cfg.evalDialogues);
  const report = evaluateSft(tuned.gpt, tok, picked, { maxTokens: 64, batchSize: 16 });
  const samples = sampleDialogues(tuned.gpt, tok, [picked.find((d) => d.kind === 'wordnet'), picked.find((d) => d.kind === 'factbook'), picked.find((d) => d.kind === 'mixed')].filter((d): d is Dialogue => !!d), 3);
  tuned.gpt.dispose();
  lap('evaluation', t);
  minutes.total = +((performance.now() - t0) / 60000).toFixed(2);

  const out: PipelineReport = {
    config: cfg,
    backend: info.name + (info.nativeKernels.length ? '+native' : ''),
    baseCorpusHeldOutLoss: base.evalLoss,
    baseHeldOutLoss: tuned.baseLoss,
    sftHeldOutLoss: tuned.evalLoss,
    sft: report,
    samples,
    minutes,
  };
  mkdirSync(cfg.outDir, { recursive: true });
  writeFileSync(join(cfg.outDir, 'pipeline-report.json'), JSON.stringify(out, null, 2) + '\n');
  if (cfg.register) {
    const store = await openStore({ url: storeUrl(cfg.database), dataDir: cfg.data });
    try {
      const ids = await registerPipelineVersions(store, { base: join(cfg.outDir, 'base'), sft: join(cfg.outDir, 'sft') });
      log(`registry: base ${ids.base}, SFT ${ids.sft} (alias sft) in ${store.location}`);
    } finally {
      await store.close();
    }
  }
  log('');
  log(`pipeline finished in ${formatDuration(minutes.total * 60)} (${Object.entries(minutes).map(([k, v]) => `${k} ${v} min`).join(', ')})`);
  log(`held-out corpus loss of the base model: ${base.evalLoss.toFixed(3)}`);
  log(`held-out assistant-token loss: base ${tuned.baseLoss.toFixed(3)} → SFT ${tuned.evalLoss.toFixed(3)}`);
  log(`end-of-turn within ${64} tokens: ${(report.endOfTurnRate * 100).toFixed(1)}% of ${report.replies} replies`);
  log(`follow-ups naming the earlier word: ${(report.followUpWordRate * 100).toFixed(1)}% (without the earlier turns: ${(report.followUpWordRateWithoutContext * 100).toFixed(1)}%) of ${report.followUps}`);
  return out;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'npm run pipeline -- [options]', schema: PipelineConfig, envPrefix: 'PIPELINE' }, (cfg) => pipeline(cfg));
}
