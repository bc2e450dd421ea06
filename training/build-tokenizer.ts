/**
 * Trains the project tokenizer on a deterministic sample of the built data and writes
 * `tokenizer.json`. The sample is the first `sampleBytes` of the (already shuffled) training
 * corpus, whole documents only, plus ALL training-dialogue text so chat phrasing is well covered.
 * Held-out files are never read.
 *
 * CLI: node --import tsx training/build-tokenizer.ts --data data --vocab-size 2048 [--sample-mb 5]
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { isMain, runCommand } from '../cli/command.ts';
import { Tokenizer } from '../model/tokenizer.ts';

/** The training text: corpus documents (in file order) up to `sampleBytes` UTF-8 bytes, then every dialogue message. */
export function tokenizerSample(corpusPath: string, sampleBytes: number, dialoguesPath?: string): string {
  const parts: string[] = [];
  let bytes = 0;
  for (const line of readFileSync(corpusPath, 'utf8').split('\n')) {
    if (!line) continue;
    const { text } = JSON.parse(line) as { text: string };
    const n = Buffer.byteLength(text) + 1;
    if (bytes + n > sampleBytes) break;
    parts.push(text);
    bytes += n;
  }
  if (dialoguesPath) {
    for (const line of readFileSync(dialoguesPath, 'utf8').split('\n')) {
      if (!line) continue;
      const { messages } = JSON.parse(line) as { messages: { content: string }[] };
      for (const m of messages) parts.push(m.content);
    }
  }
  return parts.join('\n');
}

/**
 * Trains a tokenizer on `tokenizerSample` and writes it as `tokenizer.json` beside the corpus
 * (or to `opts.outPath`). Dialogues default to `dialogues.train.jsonl` beside the corpus, when present.
 * Deterministic: the same files and arguments give the same tokenizer (and fingerprint).
 *
 * @example
 *   const tok = trainTokenizerFromCorpus('data/corpus.train.jsonl', 2048, 5e6);
 */
export function trainTokenizerFromCorpus(
  corpusPath: string,
  vocabSize: number,
  sampleBytes: number,
  opts: { dialoguesPath?: string; outPath?: string; onProgress?: (done: number, total: number) => void } = {},
): Tokenizer {
  const sibling = join(dirname(corpusPath), 'dialogues.train.jsonl');
  const dialoguesPath = opts.dialoguesPath ?? (existsSync(sibling) ? sibling : undefined);
  const text = tokenizerSample(corpusPath, sampleBytes, dialoguesPath);
  const tok = Tokenizer.train(text, { vocabSize, onProgress: opts.onProgress });
  writeFileSync(opts.outPath ?? join(dirname(corpusPath), 'tokenizer.json'), JSON.stringify(tok.toJSON()) + '\n');
  return tok;
}

export const BuildTokenizerConfig = z.object({
  data: z.string().default('data').describe('directory written by build-data (reads corpus.train.jsonl, dialogues.train.jsonl)'),
  vocabSize: z.number().int().min(262).max(65536).default(2048).describe('bytes + merges + 6 specials'),
  sampleMb: z.number().positive().default(5).describe('megabytes of training corpus to learn merges from'),
  out: z.string().default('').describe('output file (default: <data>/tokenizer.json)'),
});

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'npm run build-tokenizer -- [options]', schema: BuildTokenizerConfig, envPrefix: 'BUILD_TOKENIZER' }, async (cfg) => {
    const outPath = cfg.out || join(cfg.data, 'tokenizer.json');
    const t0 = performance.now();
    const tok = trainTokenizerFromCorpus(join(cfg.data, 'corpus.train.jsonl'), cfg.vocabSize, cfg.sampleMb * 1e6, { outPath });
    console.log(`trained vocab ${tok.vocabSize} in ${((performance.now() - t0) / 1000).toFixed(1)} s; wrote ${outPath} (fingerprint ${tok.fingerprint().slice(0, 16)})`);
  });
}
