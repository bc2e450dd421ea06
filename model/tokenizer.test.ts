import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CACHE_BYTES, DEFAULT_PATTERN, MAX_PIECE_BYTES, SPECIAL_TOKENS, StreamDecoder, Tokenizer, type TokenizerJSON } from './tokenizer.ts';

const TEXT =
  "The quick brown fox jumps over the lazy dog. It's 2024, and we've got 1234567 reasons! " +
  'Lucid prose is transparently clear; lucid dreams are vivid. ' +
  'Le café coûte 3,50 €. 東京は日本の首都です。 Emoji: 👍🏽 🇪🇬 and more emoji 👍🏽.\n\n  Indented line\ttab\r\n';
const CORPUS = Array.from({ length: 20 }, (_, i) => `${TEXT} Round ${i}.`).join('\n');

/** Reference trainer: recounts every pair from scratch each merge (slow, obviously correct). */
function naiveMerges(text: string, numMerges: number): [number, number][] {
  const re = new RegExp(DEFAULT_PATTERN, 'gu');
  const words = [...text.matchAll(re)].map((m) => Array.from(new TextEncoder().encode(m[0])));
  const merges: [number, number][] = [];
  while (merges.length < numMerges) {
    const counts = new Map<string, number>();
    for (const w of words) for (let i = 0; i + 1 < w.length; i++) counts.set(`${w[i]},${w[i + 1]}`, (counts.get(`${w[i]},${w[i + 1]}`) ?? 0) + 1);
    let best: [number, number] | undefined, bestC = 0;
    for (const [k, c] of counts) {
      const [a, b] = k.split(',').map(Number) as [number, number];
      if (c > bestC || (c === bestC && best && (a < best[0] || (a === best[0] && b < best[1])))) [best, bestC] = [[a, b], c];
    }
    if (!best) break;
    const id = 256 + merges.length;
    merges.push(best);
    for (let wi = 0; wi < words.length; wi++) {
      const w = words[wi]!, out: number[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === best[0] && w[i + 1] === best[1]) (out.push(id), i++);
        else out.push(w[i]!);
      }
      words[wi] = out;
    }
  }
  return merges;
}

const tok = Tokenizer.train(CORPUS, { vocabSize: 400 });

test('incremental training learns exactly the merges of a from-scratch recount', () => {
  assert.deepEqual(tok.toJSON().merges, naiveMerges(CORPUS, 400 - 256 - 6));
});

test('training is deterministic and the vocabulary size counts bytes, merges and specials', () => {
  const again = Tokenizer.train(CORPUS, { vocabSize: 400 });
  assert.equal(tok.vocabSize, 400);
  assert.equal(tok.toJSON().merges.length, 400 - 256 - 6);
  assert.equal(again.fingerprint(), tok.fingerprint());
  assert.notEqual(Tokenizer.train(CORPUS, { vocabSize: 390 }).fingerprint(), tok.fingerprint());
});

test('training stops early when the text has no pairs left', () => {
  const small = Tokenizer.train('ab ab', { vocabSize: 1000 });
  assert.ok(small.vocabSize < 1000);
  assert.deepEqual(small.encode('ab ab').length, 2);
});

test('any string round-trips: emoji, CJK, control chars, BOM, text unseen in training, empty', () => {
  const cases = ['', TEXT, '👩‍👩‍👧‍👦 zwj', '\uFEFFbom first', 'Ελληνικά и кириллица', '\u0000\u0001\x7f', '   trailing   ', '\n\n\n', "don'T WE'LL", 'x'.repeat(5000), '<|end|><|user|>'];
  for (const s of cases) assert.equal(tok.decode(tok.encode(s)), s, JSON.stringify(s.slice(0, 40)));
});

test('merges compress the training text', () => {
  const bytes = new TextEncoder().encode(TEXT).length;
  assert.ok(tok.encode(TEXT).length < bytes * 0.6);
});

test('encode never produces special ids, even for text that spells them', () => {
  const ids = tok.encode(SPECIAL_TOKENS.join(' hi '));
  assert.ok(ids.every((id) => !tok.isSpecial(id)));
  assert.ok(ids.every((id) => id >= 0 && id < tok.vocabSize - SPECIAL_TOKENS.length));
});

test('specials take the last six ids, in order, and decode to nothing', () => {
  SPECIAL_TOKENS.forEach((name, i) => {
    const id = tok.specialId(name);
    assert.equal(id, tok.vocabSize - 6 + i);
    assert.ok(tok.isSpecial(id));
  });
  assert.ok(!tok.isSpecial(tok.vocabSize - 7));
  assert.ok(!tok.isSpecial(tok.vocabSize));
  const ids = [tok.specialId('<|user|>'), ...tok.encode('hi'), tok.specialId('<|end|>')];
  assert.equal(tok.decode(ids), 'hi');
  assert.deepEqual(tok.decodeBytes(ids), new TextEncoder().encode('hi'));
});

test('invalid UTF-8 decodes to U+FFFD and out-of-range ids throw', () => {
  const euro = tok.encode('€'); // 3 bytes; take the first byte only
  const firstByte = tok.decodeBytes(euro)[0]!;
  assert.equal(tok.decode([firstByte]), '\uFFFD');
  assert.throws(() => tok.decode([tok.vocabSize]), /outside vocabulary/);
  assert.throws(() => tok.decode([-1]), /outside vocabulary/);
});

test('toJSON/fromJSON preserves encoding and the fingerprint', () => {
  const back = Tokenizer.fromJSON(JSON.parse(JSON.stringify(tok.toJSON())) as TokenizerJSON);
  assert.equal(back.fingerprint(), tok.fingerprint());
  assert.deepEqual(back.encode(TEXT), tok.encode(TEXT));
  assert.match(tok.fingerprint(), /^[0-9a-f]{64}$/);
});

test('fromJSON rejects malformed input with a clear message', () => {
  const good = tok.toJSON();
  const bad: [Partial<TokenizerJSON> | null, RegExp][] = [
    [null, /not an object/],
    [{ ...good, format: 'bpe' as 'byte-bpe/1' }, /format/],
    [{ ...good, vocabSize: good.vocabSize + 1 }, /vocabSize/],
    [{ ...good, merges: [[0, 256]] , vocabSize: 263 }, /merges\[0\]/],
    [{ ...good, merges: [[1, 2], [1, 2]], vocabSize: 264 }, /duplicates/],
    [{ ...good, specials: ['<|end|>'] }, /specials/],
    [{ ...good, pattern: '(' }, /pattern/],
  ];
  for (const [json, re] of bad) assert.throws(() => Tokenizer.fromJSON(json as TokenizerJSON), re);
});

test('StreamDecoder emits only complete characters and matches decode overall', () => {
  const text = 'a€b👍🏽东京';
  const bytes = new TextEncoder().encode(text);
  const ids = Array.from(bytes); // byte tokens split every multi-byte character
  const sd = new StreamDecoder(tok);
  const parts = ids.map((id) => sd.push(id));
  assert.equal(parts[1], ''); // first byte of '€'
  assert.equal(parts[3], '€');
  assert.ok(parts.every((p) => !p.includes('\uFFFD')));
  assert.equal(parts.join('') + sd.flush(), text);
  const sd2 = new StreamDecoder(tok);
  assert.equal(sd2.push(tok.specialId('<|end|>')), '');
  sd2.push(bytes[1]!);
  assert.equal(sd2.flush(), '\uFFFD');
});

/** A tokenizer built to make one long word expensive: every letter pair is a merge, and so are many pairs of those. */
function adversarialTokenizer(): { tok: Tokenizer; word: string } {
  const letters = [...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'].map((c) => c.charCodeAt(0));
  const merges: [number, number][] = [];
  for (const a of letters) for (const b of letters) merges.push([a, b]);
  const level1 = merges.length;
  let seed = 7;
  const rnd = () => (seed = (seed * 48271) % 2147483647) / 2147483647;
  const seen = new Set<number>();
  while (merges.length < level1 + 20_000) {
    const a = 256 + Math.floor(rnd() * level1), b = 256 + Math.floor(rnd() * level1);
    if (seen.has(a * 65536 + b)) continue;
    seen.add(a * 65536 + b);
    merges.push([a, b]);
  }
  const tok = Tokenizer.fromJSON({ format: 'byte-bpe/1', vocabSize: 256 + merges.length + 6, merges, specials: [...SPECIAL_TOKENS], pattern: DEFAULT_PATTERN });
  let word = '';
  for (let i = 0; i < 64 * 1024; i++) word += String.fromCharCode(letters[Math.floor(rnd() * letters.length)]!);
  return { tok, word };
}

test('a 64 KiB word costs linear time: long pieces are merged in chunks of MAX_PIECE_BYTES', () => {
  const { tok, word } = adversarialTokenizer();
  const chunked = [];
  for (let at = 0; at < word.length; at += MAX_PIECE_BYTES) chunked.push(...tok.encode(word.slice(at, at + MAX_PIECE_BYTES)));
  const t0 = performance.now();
  const ids = tok.encode(word);
  const ms = performance.now() - t0;
  assert.deepEqual(ids, chunked, 'the same ids as its chunks encoded one by one');
  assert.equal(tok.decode(ids), word);
  // Merged whole, this word takes seconds (about 20,000 merge passes over 64 KiB); chunked, a few tens of ms.
  assert.ok(ms < 500, `encoding took ${ms.toFixed(0)} ms`);
});

test('the encode cache is bounded in bytes, and long pieces are not cached', () => {
  const tok = Tokenizer.train('the cat sat on the mat '.repeat(20), { vocabSize: 280 });
  tok.encode('x'.repeat(10_000));
  assert.equal(tok.cacheBytes, 0, 'a piece over MAX_PIECE_BYTES is not cached');
  let peak = 0;
  for (let i = 0; i < 120_000; i++) {
    tok.encode(` w${i.toString(36)}q${'z'.repeat(i % 90)}`);
    peak = Math.max(peak, tok.cacheBytes);
  }
  assert.ok(peak <= CACHE_BYTES, `cache peaked at ${peak} bytes`);
  assert.ok(peak > CACHE_BYTES / 2, 'the cache is used up to its bound');
});
