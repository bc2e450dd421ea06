/**
 * A tiny decoder for the generation tests: a 300-token tokenizer and a 1-layer random GPT with
 * a 48-token context, the same every time.
 */
import { initBackend } from './backend.ts';
import { GPT } from './gpt.ts';
import { Tokenizer } from './tokenizer.ts';

/** For a `before` hook: the wasm backend, then the tokenizer and the model. */
export async function tinyDecoder(): Promise<{ tok: Tokenizer; gpt: GPT }> {
  await initBackend({ backend: 'wasm', log: () => {} });
  const tok = Tokenizer.train('hello world, the quick brown fox jumps over the lazy dog. '.repeat(20), { vocabSize: 300 });
  const gpt = GPT.create({ nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 48, vocabSize: tok.vocabSize }, 'policy', 5);
  return { tok, gpt };
}
