import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer, type TokenizerJSON } from '../model/tokenizer.ts';
import { tokenizerSample, trainTokenizerFromCorpus } from './build-tokenizer.ts';

const dir = mkdtempSync(join(tmpdir(), 'build-tokenizer-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const docs = ['The quick brown fox jumps over the lazy dog. '.repeat(20), 'A second document about dogs and foxes. '.repeat(20), 'qwvqwv '.repeat(200)];
writeFileSync(join(dir, 'corpus.train.jsonl'), docs.map((text) => JSON.stringify({ text, source: 'brown' })).join('\n') + '\n');
writeFileSync(join(dir, 'corpus.val.jsonl'), JSON.stringify({ text: 'heldout '.repeat(500), source: 'brown' }) + '\n');
writeFileSync(
  join(dir, 'dialogues.train.jsonl'),
  JSON.stringify({ messages: [{ role: 'user', content: 'What does xyzzy mean? '.repeat(30) }, { role: 'assistant', content: 'xyzzy!' }], kind: 'wordnet', meta: { word: 'xyzzy' } }) + '\n',
);
const sampleBytes = Buffer.byteLength(docs[0]!) + Buffer.byteLength(docs[1]!) + 2;

test('the sample is whole corpus documents up to the byte budget plus all dialogue text', () => {
  const s = tokenizerSample(join(dir, 'corpus.train.jsonl'), sampleBytes, join(dir, 'dialogues.train.jsonl'));
  assert.ok(s.includes(docs[1]!) && !s.includes('qwvqwv') && !s.includes('heldout'));
  assert.ok(s.includes('xyzzy!'));
});

test('training writes tokenizer.json that loads back, learns dialogue phrasing and ignores text past the budget', () => {
  const tok = trainTokenizerFromCorpus(join(dir, 'corpus.train.jsonl'), 400, sampleBytes);
  const loaded = Tokenizer.fromJSON(JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as TokenizerJSON);
  assert.equal(loaded.fingerprint(), tok.fingerprint());
  assert.equal(tok.encode(' xyzzy').length, 1);
  assert.ok(tok.encode(' qwvqwv').length > 2);
});

test('the same files and arguments give the same tokenizer', () => {
  const a = trainTokenizerFromCorpus(join(dir, 'corpus.train.jsonl'), 350, sampleBytes, { outPath: join(dir, 'a.json') });
  const b = trainTokenizerFromCorpus(join(dir, 'corpus.train.jsonl'), 350, sampleBytes, { outPath: join(dir, 'b.json') });
  assert.equal(a.fingerprint(), b.fingerprint());
  assert.equal(readFileSync(join(dir, 'a.json'), 'utf8'), readFileSync(join(dir, 'b.json'), 'utf8'));
});
