/**
 * A toy world for the RLHF tests: a tokenizer trained on a few words, tiny GPT configs, and a
 * preference task where replies containing "banana" are preferred.
 */
import { Tokenizer } from '../model/tokenizer.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import type { GPTConfig } from '../model/gpt.ts';
import { createRng } from '../model/random.ts';
import type { PreferenceGroup } from './preferences.ts';

export const WORDS = ['apple', 'pear', 'plum', 'grape', 'lemon', 'melon', 'kiwi', 'fig', 'date', 'lime'];
export const TARGET = 'banana';

export function toyTokenizer(): Tokenizer {
  const text = [...WORDS, TARGET, 'say', 'a', 'fruit', 'name', 'one', 'please', 'give', 'me'].map((w) => ` ${w}`).join('').repeat(20);
  return Tokenizer.train(text, { vocabSize: 300 });
}

export function toyConfig(tok: Tokenizer, extra: Partial<GPTConfig> = {}): GPTConfig {
  return { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 48, vocabSize: tok.vocabSize, ...extra };
}

const PROMPTS = ['say a fruit', 'give me a fruit name', 'one fruit please', 'name a fruit'];

export function toyPrompts(n: number, seed = 1): ChatMessage[][] {
  const rng = createRng(seed);
  return Array.from({ length: n }, () => [{ role: 'user' as const, content: rng.pick(PROMPTS) }]);
}

function words(rng: ReturnType<typeof createRng>, n: number, withTarget: boolean): string {
  const w = Array.from({ length: n }, () => rng.pick(WORDS));
  if (withTarget) w[rng.int(n)] = TARGET;
  return w.join(' ');
}

/** Pairs where the reply containing the target word is chosen. */
export function toyPreferenceGroups(n: number, seed = 2): PreferenceGroup[] {
  const rng = createRng(seed);
  return Array.from({ length: n }, () => ({
    prompt: [{ role: 'user' as const, content: rng.pick(PROMPTS) }],
    replies: [words(rng, 1 + rng.int(4), true), words(rng, 1 + rng.int(4), false)],
    pairs: [[0, 1]] as [number, number][],
    weight: 1,
    source: 'toy',
  }));
}
