/**
 * The model being served: a policy GPT, its tokenizer and a version id, loaded from a
 * sha256-verified checkpoint directory. The version id is `<directory name>-<first 12 hex of the
 * weights' sha256>`, stamped on every reply and every stored generation.
 *
 * A policy the online loop trained names, in its checkpoint's `runConfig`, the reward ensemble it
 * was optimised against (`reward`, `rewardDir`). Served with `rerankN` > 1, such a version answers
 * best-of-n: every reply is picked from `rerankN` samples decoded together, by that ensemble's
 * score (mean − k·std with the loop's k and length weight: the objective the policy was trained
 * on). Policies without one (the SFT model, anything trained offline) sample one reply as before.
 */
import { resolve } from 'node:path';
import { GPT } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { CheckpointError, loadCheckpoint, readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { EnsembleRewardSource, loadRewardEnsemble, savedCovariates } from '../training/reward-ensemble.ts';
import { needsReference } from '../training/reward-covariates.ts';
import type { RewardItem } from '../training/reward-source.ts';

/** Best-of-n reranking of a served policy's replies by the reward ensemble it was trained against. */
export interface Reranker {
  /** Samples per reply. */
  readonly n: number;
  /** The reward version scoring them (`reward-…`). */
  readonly version: string;
  /** Bytes of its weights (the ensemble's members and the reference), float32. */
  readonly bytes: number;
  score(items: readonly RewardItem[]): Promise<number[]>;
  /** Keeps the weights alive until the returned release is called (a reply holds them from submission to its pick). */
  hold(): () => void;
  /** Frees the weights now, or when the last hold is released. */
  dispose(): void;
}

/** A loaded model, ready to decode. */
export interface ServedModel {
  readonly gpt: GPT;
  readonly tok: Tokenizer;
  /** e.g. `sft-3f2a9c0d11be` */
  readonly version: string;
  readonly dir: string;
  readonly createdAt: number;
  readonly reranker?: Reranker;
}

export { versionId };

/** Options of {@link loadServedModel}. */
export interface ServeOptions {
  /** Samples per reply for a policy that names its reward ensemble (1 = no reranking, the default). */
  rerankN?: number;
}

/**
 * Loads a policy checkpoint (throws `CheckpointError` with a stable code when it is missing or
 * corrupt), yielding to the event loop between its phases (hash check, tokenizer, weights) so
 * replies being decoded keep flowing while a hot swap loads the next version. With `rerankN` > 1
 * the reward ensemble the policy names is loaded too (its checkpoint and the SFT reference it
 * scores likelihoods against); when it is named but cannot be loaded the load fails with its code,
 * so a version is never served otherwise than it was registered to be.
 *
 * @example
 *   const model = await loadServedModel('checkpoints/sft');   // model.version === 'sft-…'
 */
export async function loadServedModel(dir: string, o: ServeOptions = {}): Promise<ServedModel> {
  const tick = () => new Promise<void>((r) => setImmediate(r));
  const ck = loadCheckpoint(dir, { kind: 'policy' });
  await tick();
  const tok = Tokenizer.fromJSON(ck.tokenizer);
  await tick();
  const gpt = GPT.fromWeights(ck.meta.config, 'policy', ck.weights);
  await tick();
  let reranker: Reranker | undefined;
  try {
    reranker = (o.rerankN ?? 1) > 1 ? await loadReranker(dir, ck.meta.runConfig, tok, o.rerankN!, tick) : undefined;
  } catch (err) {
    gpt.dispose();
    throw err;
  }
  return Object.freeze({ gpt, tok, version: versionId(dir, ck.meta.sha256), dir: resolve(dir), createdAt: Math.floor(Date.parse(ck.meta.createdAt) / 1000) || 0, ...(reranker ? { reranker } : {}) });
}

/**
 * The reranker a policy's run config names, or undefined when it names none. The SFT reference
 * is loaded only when the ensemble's covariates read it; `tick` yields between the loads.
 */
async function loadReranker(dir: string, runConfig: Record<string, unknown>, tok: Tokenizer, n: number, tick: () => Promise<void>): Promise<Reranker | undefined> {
  const rewardDir = runConfig.rewardDir;
  if (rewardDir === undefined) return undefined;
  if (typeof rewardDir !== 'string' || !rewardDir) throw new CheckpointError('checkpoint_corrupt', `${dir}: runConfig.rewardDir must be a directory`);
  const rewardMeta = readCheckpointMeta(rewardDir);
  let reference: GPT | undefined;
  if (rewardMeta.parent && needsReference(savedCovariates(rewardMeta))) {
    const ref = loadCheckpoint(rewardMeta.parent, { kind: 'policy', tokenizerFingerprint: tok.fingerprint() });
    reference = GPT.fromWeights(ref.meta.config, 'policy', ref.weights);
    await tick();
  }
  try {
    const { ensemble } = loadRewardEnsemble(rewardDir, tok, reference);
    const num = (v: unknown, d: number) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : d);
    const source = new EnsembleRewardSource(ensemble, tok, { pessimism: num(runConfig.pessimism, 0), lengthWeight: num(runConfig.rewardLengthWeight, 1) });
    const version = typeof runConfig.reward === 'string' ? runConfig.reward : versionId(rewardDir, rewardMeta.sha256);
    let holds = 0;
    let retired = false;
    let freed = false;
    const free = () => {
      if (freed || !retired || holds > 0) return;
      freed = true;
      ensemble.dispose();
      reference?.dispose();
    };
    return Object.freeze({
      n,
      version,
      bytes: 4 * (ensemble.members.reduce((a, m) => a + m.numParams, 0) + (reference?.numParams ?? 0)),
      score: (items: readonly RewardItem[]) => {
        if (freed) throw new Error(`reranker ${version} was disposed`);
        return source.score(items);
      },
      hold: () => {
        holds++;
        let released = false;
        return () => {
          if (released) return;
          released = true;
          holds--;
          free();
        };
      },
      dispose: () => {
        retired = true;
        free();
      },
    });
  } catch (err) {
    reference?.dispose();
    throw err;
  }
}

/** Frees a served model's weights (and its reranker's). */
export function disposeServedModel(m: ServedModel): void {
  m.gpt.dispose();
  m.reranker?.dispose();
}
