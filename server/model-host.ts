/**
 * The model being served: a policy GPT, its tokenizer and a version id, loaded from a
 * sha256-verified checkpoint directory. The version id is `<directory name>-<first 12 hex of the
 * weights' sha256>`, stamped on every reply and every stored generation.
 */
import { resolve } from 'node:path';
import { GPT } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { loadCheckpoint, versionId } from '../model/checkpoint.ts';

/** A loaded model, ready to decode. */
export interface ServedModel {
  readonly gpt: GPT;
  readonly tok: Tokenizer;
  /** e.g. `sft-3f2a9c0d11be` */
  readonly version: string;
  readonly dir: string;
  readonly createdAt: number;
}

export { versionId };

/**
 * Loads a policy checkpoint (throws `CheckpointError` with a stable code when it is missing or
 * corrupt), yielding to the event loop between its phases (hash check, tokenizer, weights) so
 * replies being decoded keep flowing while a hot swap loads the next version.
 *
 * @example
 *   const model = await loadServedModel('checkpoints/sft');   // model.version === 'sft-…'
 */
export async function loadServedModel(dir: string): Promise<ServedModel> {
  const tick = () => new Promise<void>((r) => setImmediate(r));
  const ck = loadCheckpoint(dir, { kind: 'policy' });
  await tick();
  const tok = Tokenizer.fromJSON(ck.tokenizer);
  await tick();
  const gpt = GPT.fromWeights(ck.meta.config, 'policy', ck.weights);
  await tick();
  return Object.freeze({ gpt, tok, version: versionId(dir, ck.meta.sha256), dir: resolve(dir), createdAt: Math.floor(Date.parse(ck.meta.createdAt) / 1000) || 0 });
}
