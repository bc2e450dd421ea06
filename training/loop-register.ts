/**
 * Step 5 of an iteration: the candidate's checkpoint is saved and registered, then gated.
 * By default the gate is the pre-filter (`proxyPreFilter`): a candidate that beats the champion's
 * proxy by `minScoreGain` within the KL budget is offered to the users (the `candidate` alias, so
 * the arena pits it against the champion); the champion moves only on the users' verdict. The
 * `goldGate` ablation keeps the old gates instead (proxy, KL and gold; with `autoPromote` the
 * champion moves directly).
 */
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { readCheckpointMeta, saveCheckpoint } from '../model/checkpoint.ts';
import { finishRun, logMetrics, promote } from '../feedback/index.ts';
import { ALIAS } from '../feedback/aliases.ts';
import { goldGate, proxyPreFilter, type PolicyEval } from './loop-gates.ts';
import { registerCheckpointVersion } from './register-versions.ts';
import type { OptimisedPolicy } from './loop-policy.ts';
import type { IterationContext } from './loop-run.ts';
import type { IterationResult, IterationStatus } from './loop-config.ts';

/** Saves, registers and gates the candidate; finishes the run. */
export async function registerAndGate(ctx: IterationContext, r: { policy: OptimisedPolicy; candidate: PolicyEval; champion: PolicyEval; rewardVersion: string; rewardDir: string; metrics: Record<string, number> }): Promise<IterationResult> {
  const { cfg, db, tok, runId, log } = ctx;
  const { candidate: cand, champion: champ, metrics } = r;
  const { stopReason, steps } = r.policy;
  const polDir = join(cfg.checkpoints, `policy-${ctx.stamp}`);
  const polMeta = existsSync(polDir)
    ? readCheckpointMeta(polDir)
    : saveCheckpoint(polDir, {
        weights: await r.policy.shipped.exportWeights(),
        meta: { stage: 'policy', kind: 'policy', config: r.policy.shipped.config, tokenizerFingerprint: tok.fingerprint(), parent: ctx.championDir, step: steps, metrics, runConfig: { ...cfg, runId, reference: cfg.reanchor ? ctx.championDir : cfg.sft, reward: r.rewardVersion, rewardDir: r.rewardDir, stopReason, dataWindow: ctx.window, push: ctx.push } },
        tokenizer: tok.toJSON(),
      });
  const policyVersion = await registerCheckpointVersion(db, { dir: polDir, meta: polMeta, stage: 'policy', runId, parentId: ctx.championVersion, metrics, notes: stopReason || undefined });
  await logMetrics(db, runId, steps + 1, { final_kl_coef: r.policy.finalKlCoef });
  const figures = `proxy ${cand.proxy.toFixed(3)} vs champion ${champ.proxy.toFixed(3)}, KL to SFT ${cand.kl.toFixed(2)}`;
  let status: IterationStatus;
  let reason: string;
  if (cfg.goldGate) {
    const gates = proxyPreFilter(cand, champ, cfg).reasons;
    const gold = ctx.o.gold ? goldGate(cand, champ) : undefined;
    if (gold) gates.push(gold);
    await promote(db, { alias: ALIAS.candidate, versionId: policyVersion, actor: 'online-loop', reason: figures });
    status = 'candidate';
    reason = gates.length ? `candidate registered; not promoted: ${gates.join('; ')}` : 'candidate registered; passes the gates, waiting for the admin';
    if (cfg.autoPromote && !gates.length) {
      await promote(db, { alias: ALIAS.champion, versionId: policyVersion, actor: 'online-loop', reason: `auto-promotion (gold-gate ablation): proxy +${(cand.proxy - champ.proxy).toFixed(3)}, KL ${cand.kl.toFixed(2)}` });
      status = 'promoted';
      reason = 'candidate passed the gates (gold-gate ablation) and was promoted to champion';
    }
  } else {
    const pre = proxyPreFilter(cand, champ, cfg);
    if (pre.offer) {
      await promote(db, { alias: ALIAS.candidate, versionId: policyVersion, actor: 'online-loop', reason: `offered to the arena: ${figures}` });
      status = 'offered';
      reason = `candidate offered to the users' arena (${figures}); the users' head-to-head judgements decide${cfg.autoPromote ? '' : ', the admin applies the verdict'}`;
    } else {
      status = 'rejected';
      reason = `candidate registered, not offered: ${pre.reasons.join('; ')}`;
    }
  }
  if (ctx.push.reason) reason += ` (${ctx.push.reason})`;
  if (stopReason) reason += ` (PPO stopped early: ${stopReason})`;
  await finishRun(db, runId, { status: 'succeeded', outputVersionId: policyVersion });
  rmSync(ctx.runDir, { recursive: true, force: true });
  log(`loop: ${reason}`);
  return { status, reason, runId, rewardVersion: r.rewardVersion, policyVersion, metrics };
}
