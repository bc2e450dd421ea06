/**
 * The benchmarks' tokenizer: byte BPE trained on synthetic text (a list of common English words
 * and seeded pseudo-words), so every benchmark runs the same on a fresh clone (no `data/`) and
 * on a machine that has built its data. It has exactly the vocabulary size asked for, so a model
 * of that shape never samples an id the tokenizer lacks.
 */
import { createRng, type Rng } from '../model/random.ts';
import { Tokenizer } from '../model/tokenizer.ts';

/** Common English words: the prompts and replies the RLHF benchmarks make up are drawn from these. */
export const WORDS = 'the of and to in is was he for it with as his on be at by had are but from or have an they which one you were all we her she there would their will when who him been has more if no out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three'.split(' ');

/** `n` words from `WORDS`, space-separated. */
export function sentence(rng: Rng, n: number): string {
  return Array.from({ length: n }, () => rng.pick(WORDS)).join(' ');
}

const cache = new Map<number, Tokenizer>();

/** A tokenizer of exactly `vocabSize` ids (the same one on every call and every machine). */
export function benchTokenizer(vocabSize: number): Tokenizer {
  const hit = cache.get(vocabSize);
  if (hit) return hit;
  const rng = createRng(7);
  const consonants = 'bcdfghjklmnprstvwz'.split('');
  const vowels = 'aeiou'.split('');
  const syllable = () => rng.pick(consonants) + rng.pick(vowels) + (rng.int(3) ? '' : rng.pick(consonants));
  const lexicon = Array.from({ length: 6000 }, () => Array.from({ length: 1 + rng.int(3) }, syllable).join(''));
  const words: string[] = [];
  // Zipf-like: low ranks are drawn far more often, as in real text, so BPE finds ever-longer merges.
  for (let i = 0; i < 12_000; i++) words.push(rng.int(2) ? rng.pick(WORDS) + (rng.int(7) ? '' : String(rng.int(1000))) : lexicon[Math.floor(lexicon.length * rng() ** 3)]!);
  const tok = Tokenizer.train(words.join(' '), { vocabSize });
  if (tok.vocabSize !== vocabSize) throw new Error(`bench tokenizer: the synthetic text gave ${tok.vocabSize} ids, not ${vocabSize}`);
  cache.set(vocabSize, tok);
  return tok;
}
