/**
 * Step 2 of an iteration: the reward model and its guards. Trains the reward model on every
 * current judgement (a resumed run reuses the one it saved), refuses to go on when its held-out
 * accuracy is below the floor or fell since the last round (`rewardAccuracyGuard`), normalises its
 * scores to SFT = 0, saves and registers it.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { GPT } from '../model/gpt.ts';
import { loadCheckpoint, saveCheckpoint, type CheckpointMeta } from '../model/checkpoint.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { finishRun, getMetrics, listRuns, logMetrics } from '../feedback/index.ts';
import { loadStorePreferences, splitGroups } from './preferences.ts';
import { normaliseScores, sampleReplies, trainRewardModel } from './reward-model.ts';
import { RewardModelSource, type RewardSource } from './reward-source.ts';
import { rewardAccuracyGuard } from './loop-gates.ts';
import { finite } from './loop-eval.ts';
import { registerCheckpointVersion } from './register-versions.ts';
import type { IterationContext } from './loop-run.ts';
import type { IterationResult } from './loop-config.ts';

/** The proxy the optimiser is trained against, and what the iteration reports of it. */
export interface PreparedReward {
  proxy: RewardSource;
  rewardVersion: string;
  accuracy: number;
}

/** Held-out accuracy of the last successful round's reward model. */
async function previousAccuracy(ctx: IterationContext): Promise<number | undefined> {
  const previous = (await listRuns(ctx.db, { kind: 'loop', status: 'succeeded' }))[0];
  return previous ? (await getMetrics(ctx.db, previous.id, { names: ['rm_heldout_accuracy'] }))[0]?.value : undefined;
}

/** Trains (or reuses) the round's reward model; `rejected` when a guard refuses it (the run is then failed). */
export async function prepareReward(ctx: IterationContext, sft: GPT, normPrompts: readonly ChatMessage[][]): Promise<PreparedReward | { rejected: IterationResult }> {
  const { cfg, db, tok, runId, log } = ctx;
  const rmDir = join(cfg.checkpoints, `reward-${ctx.stamp}`);
  let rm: GPT;
  let rmMeta: CheckpointMeta;
  let accuracy: number;
  if (existsSync(rmDir)) {
    const ck = loadCheckpoint(rmDir, { kind: 'reward', tokenizerFingerprint: tok.fingerprint() });
    rm = ctx.own(GPT.fromWeights(ck.meta.config, 'reward', ck.weights));
    rmMeta = ck.meta;
    accuracy = ck.meta.metrics.heldOutAccuracy ?? NaN;
    log(`loop: reusing reward model ${rmDir}`);
  } else {
    const data = await loadStorePreferences(ctx.store);
    const split = splitGroups(data.groups, 0.15, cfg.seed);
    rm = ctx.own(sft.clone('reward'));
    const r = trainRewardModel({
      rm, tok, train: { groups: split.train, unpaired: data.unpaired }, val: split.val, log,
      cfg: { epochs: cfg.rewardEpochs, groupsPerBatch: 8, unpairedPerBatch: 8, unpairedCoef: 0.5, lr: cfg.rewardLr, minLr: cfg.rewardLr / 10, warmup: 5, weightDecay: 0, gradClip: 1, seed: cfg.seed },
    });
    accuracy = r.heldOut.accuracy;
    await logMetrics(db, runId, 0, finite({ rm_heldout_accuracy: accuracy, rm_heldout_ece: r.heldOut.ece, rm_heldout_loss: r.heldOut.loss, new_judgements: ctx.window.newJudgements, data_judgements: ctx.window.judgements, data_new_judgements: ctx.window.newJudgements }));
    const prev = await previousAccuracy(ctx);
    const refused = rewardAccuracyGuard(accuracy, prev, { minRewardAccuracy: cfg.minRewardAccuracy, maxAccuracyDrop: cfg.maxAccuracyDrop, pairs: r.heldOut.pairs });
    if (refused) {
      await finishRun(db, runId, { status: 'failed', error: refused });
      return { rejected: { status: 'rejected', reason: refused, runId, metrics: finite({ rmAccuracy: accuracy, previousRmAccuracy: prev ?? NaN }) } };
    }
    if (!normPrompts.length) throw new Error('too few prompts in the store for training and evaluation');
    const norm = normaliseScores(rm, tok, sampleReplies(sft, tok, normPrompts, cfg.maxTokens, cfg.seed));
    rmMeta = saveCheckpoint(rmDir, {
      weights: await rm.exportWeights(),
      meta: { stage: 'reward', kind: 'reward', config: rm.config, tokenizerFingerprint: tok.fingerprint(), parent: cfg.sft, step: r.steps, metrics: { heldOutAccuracy: accuracy, heldOutEce: r.heldOut.ece, heldOutLoss: r.heldOut.loss, scoreOffset: norm.scoreOffset }, runConfig: { ...cfg, runId, dataWindow: ctx.window } },
      tokenizer: tok.toJSON(),
    });
  }
  const rewardVersion = await registerCheckpointVersion(db, { dir: rmDir, meta: rmMeta, stage: 'reward', runId, parentId: ctx.sftVersion });
  return { proxy: new RewardModelSource(rm, tok, { label: rewardVersion }), rewardVersion, accuracy };
}
