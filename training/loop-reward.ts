/**
 * Step 2 of an iteration: the reward ensemble and its guards. Trains K reward models on every
 * current judgement (split by a hash of the prompt text, so the held-out sets never move between
 * rounds; ties with a target of ½; recent judgements weighted up when asked), each warm-started
 * from the last round's ensemble (the SFT trunk in the first round, with `rewardWarmStart` off, or
 * after the over-optimisation guard's `restart`). Refuses to go on when the accuracy on the fixed
 * 'eval' split (the 'val' split while 'eval' holds no pair) is below the floor or fell since the
 * last round (`rewardAccuracyGuard`). Normalises each member to SFT = 0 on SFT replies, saves the
 * ensemble as one checkpoint and registers it. A resumed run reuses the ensemble it saved.
 * The proxy the optimiser sees is the pessimistic ensemble score mean − k·std (`pessimism`).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { GPT } from '../model/gpt.ts';
import type { CheckpointMeta } from '../model/checkpoint.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { finishRun, getMetrics, listModelVersions, listRuns, logMetrics } from '../feedback/index.ts';
import { loadStorePreferences, type PreferenceData } from './preferences.ts';
import { sampleReplies, type RewardEval } from './reward-model.ts';
import { EnsembleRewardSource, loadRewardEnsemble, normaliseEnsemble, saveRewardEnsemble, trainRewardEnsemble, type RewardEnsemble } from './reward-ensemble.ts';
import { rewardAccuracyGuard } from './loop-gates.ts';
import { covariatesOf } from './covariate-sets.ts';
import { finite } from './loop-eval.ts';
import { registerCheckpointVersion } from './register-versions.ts';
import type { IterationContext } from './loop-run.ts';
import type { IterationResult } from './loop-config.ts';

/** The proxy the optimiser is trained against, and what the iteration reports of it. */
export interface PreparedReward {
  proxy: EnsembleRewardSource;
  rewardVersion: string;
  /** Its checkpoint directory (the served policy's reranker, named in the policy's checkpoint). */
  rewardDir: string;
  /** The guard's accuracy: the fixed 'eval' split's, or 'val''s while 'eval' has no pair. */
  accuracy: number;
  /** The judgements it was trained on (DPO reads them). */
  data: PreferenceData;
}

/** The guard's accuracy of the last successful round. */
async function previousAccuracy(ctx: IterationContext): Promise<number | undefined> {
  const previous = (await listRuns(ctx.db, { kind: 'loop', status: 'succeeded' }))[0];
  return previous ? (await getMetrics(ctx.db, previous.id, { names: ['rm_heldout_accuracy'] }))[0]?.value : undefined;
}

/** The newest reward ensemble a loop run registered, to warm-start from (undefined: start from SFT). */
async function previousEnsemble(ctx: IterationContext, sft: GPT): Promise<RewardEnsemble | undefined> {
  const last = (await listModelVersions(ctx.db, { kind: 'reward' })).find((v) => v.run_id !== null && existsSync(v.checkpoint));
  if (!last) return undefined;
  try {
    const { ensemble } = loadRewardEnsemble(last.checkpoint, ctx.tok, sft);
    if (JSON.stringify(ensemble.members[0]!.config) === JSON.stringify(sft.config)) {
      ctx.log(`loop: reward ensemble warm-started from ${last.id}`);
      return ensemble;
    }
    ensemble.dispose();
    ctx.log(`loop: reward ensemble ${last.id} has another config than SFT; training from the SFT trunk`);
  } catch (err) {
    ctx.log(`loop: cannot warm-start from reward ensemble ${last.id} (${(err as Error).message}); training from the SFT trunk`);
  }
  return undefined;
}

const accuracyOf = (evalSet: RewardEval, val: RewardEval): number => (evalSet.pairs > 0 ? evalSet.accuracy : val.pairs > 0 ? val.accuracy : NaN);

/** Trains (or reuses) the round's reward ensemble; `rejected` when a guard refuses it (the run is then failed). */
export async function prepareReward(ctx: IterationContext, sft: GPT, normPrompts: readonly ChatMessage[][]): Promise<PreparedReward | { rejected: IterationResult }> {
  const { cfg, db, tok, runId, log } = ctx;
  const rmDir = join(cfg.checkpoints, `reward-${ctx.stamp}`);
  const data = await loadStorePreferences(ctx.store, { ties: cfg.tieWeight > 0 });
  let ensemble: RewardEnsemble;
  let accuracy: number;
  let meta: CheckpointMeta;
  if (existsSync(rmDir)) {
    const loaded = loadRewardEnsemble(rmDir, tok, sft);
    ensemble = loaded.ensemble;
    ensemble.members.forEach((m) => ctx.own(m));
    meta = loaded.meta;
    accuracy = meta.metrics.heldOutAccuracy ?? NaN;
    log(`loop: reusing reward model ${rmDir}`);
  } else {
    const previous = cfg.rewardWarmStart && ctx.push.warmStartReward ? await previousEnsemble(ctx, sft) : undefined;
    let r;
    try {
      r = trainRewardEnsemble({
        sft, previous, tok, data, log,
        cfg: { members: cfg.rewardEnsemble, epochs: cfg.rewardEpochs, lr: cfg.rewardLr, patience: cfg.rewardPatience, recencyHalfLife: cfg.recencyHalfLife, tieWeight: cfg.tieWeight, covariates: covariatesOf(cfg.rewardCovariates), heads: cfg.rewardHeads, seed: cfg.seed },
      });
    } finally {
      previous?.dispose();
    }
    ensemble = r.ensemble;
    ensemble.members.forEach((m) => ctx.own(m));
    accuracy = accuracyOf(r.evalSet, r.heldOut);
    const figures = finite({
      rm_heldout_accuracy: accuracy, rm_eval_accuracy: r.evalSet.accuracy, rm_eval_pairs: r.evalSet.pairs, rm_val_accuracy: r.heldOut.accuracy, rm_heldout_ece: r.heldOut.ece, rm_heldout_loss: r.heldOut.loss,
      rm_spread: r.meanStd, rm_members: ensemble.members.length, rm_covariate_length: r.covariates.length ?? NaN, rm_covariate_likelihood: r.covariates.likelihood ?? NaN, rm_covariate_relevance: r.covariates.relevance ?? NaN, rm_covariate_tail: r.covariates.tail ?? NaN, rm_covariate_echo: r.covariates.echo ?? NaN, rm_heads_dropped: r.heads === 'dropped' ? 1 : 0, rm_member_accuracy_min: Math.min(...r.perMember.map((m) => m.accuracy)),
      new_judgements: ctx.window.newJudgements, data_judgements: ctx.window.judgements, data_new_judgements: ctx.window.newJudgements,
    });
    await logMetrics(db, runId, 0, figures);
    const prev = await previousAccuracy(ctx);
    const refused = rewardAccuracyGuard(accuracy, prev, { minRewardAccuracy: cfg.minRewardAccuracy, maxAccuracyDrop: cfg.maxAccuracyDrop, pairs: r.evalSet.pairs > 0 ? r.evalSet.pairs : r.heldOut.pairs });
    if (refused) {
      await finishRun(db, runId, { status: 'failed', error: refused });
      return { rejected: { status: 'rejected', reason: refused, runId, metrics: finite({ rmAccuracy: accuracy, previousRmAccuracy: prev ?? NaN }) } };
    }
    if (!normPrompts.length) throw new Error('too few prompts in the store to normalise the reward models on SFT replies');
    const norm = normaliseEnsemble(ensemble, tok, sampleReplies(sft, tok, normPrompts, cfg.maxTokens, cfg.seed));
    meta = saveRewardEnsemble(rmDir, ensemble, {
      tokenizer: tok, parent: cfg.sft, step: r.steps,
      metrics: finite({ heldOutAccuracy: accuracy, evalAccuracy: r.evalSet.accuracy, valAccuracy: r.heldOut.accuracy, heldOutEce: r.heldOut.ece, heldOutLoss: r.heldOut.loss, meanStd: r.meanStd, sftScoreStd: norm.sftScoreStd }),
      runConfig: { ...cfg, runId, dataWindow: ctx.window, scoreOffsets: norm.scoreOffsets, splits: r.splits },
    });
  }
  const rewardVersion = await registerCheckpointVersion(db, { dir: rmDir, meta, stage: 'reward', runId, parentId: ctx.sftVersion });
  return { proxy: new EnsembleRewardSource(ensemble, tok, { pessimism: cfg.pessimism, lengthWeight: cfg.rewardLengthWeight, label: rewardVersion }), rewardVersion, rewardDir: rmDir, accuracy, data };
}
