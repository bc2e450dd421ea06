/**
 * Step 3 of an iteration: policy optimisation from the champion, resumable. The reference is SFT
 * (or the champion with `reanchor`); every `checkpointEvery` steps the policy, optimiser state and
 * β are saved in the run directory, and a process killed mid-run continues from the last one.
 * Stops early when the KL per reply to SFT exceeds the budget, when the reward ensemble's
 * disagreement rises with the proxy (`ensembleDisagreementRising`), when asked to stop, or (the
 * `goldGate` ablation only) when the proxy rises while gold falls.
 */
import { basename, join } from 'node:path';
import { GPT } from '../model/gpt.ts';
import { loadCheckpoint, saveCheckpoint, writeFileAtomic } from '../model/checkpoint.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { logMetrics } from '../feedback/index.ts';
import { createPolicyOptimizer, formatOptimizerStats, optimizerMetrics, type PolicyOptimizerKnobs } from './policy-optimizer.ts';
import type { PreferenceData } from './preferences.ts';
import type { RewardSource } from './reward-source.ts';
import { ensembleDisagreementRising, klEstimateToSft, klOverBudget, proxyGoldDiverged, type PolicyEval } from './loop-gates.ts';
import { evalMetrics, evaluatePolicy, type EvalSampling } from './loop-eval.ts';
import { latestPpoCheckpoint, pruneRunDir, type IterationContext } from './loop-run.ts';

/** What policy optimisation hands to evaluation and registration. */
export interface OptimisedPolicy {
  /** The weights to ship (EMA when on). */
  shipped: GPT;
  steps: number;
  stopReason: string;
  evals: PolicyEval[];
  /** β at the end of the run (carried over to the next round). */
  finalKlCoef: number;
}

/** Runs (or continues) the iteration's optimiser from `champion`; `championEval` is the champion's evaluation (step 0 of the curve). */
export async function optimisePolicy(
  ctx: IterationContext,
  m: { sft: GPT; champion: GPT; championEval: PolicyEval; proxy: RewardSource; trainPrompts: ChatMessage[][]; evalPrompts: readonly ChatMessage[][]; evalOpts: EvalSampling; preferences?: PreferenceData },
): Promise<OptimisedPolicy> {
  const { cfg, db, tok, runId, runDir, log, o } = ctx;
  const total = ctx.push.ppoSteps;
  const knobs: PolicyOptimizerKnobs = {
    steps: total, batchSize: cfg.batchSize, minibatchSize: Math.min(cfg.minibatchSize, cfg.batchSize), epochs: cfg.epochs, maxTokens: cfg.maxTokens, temperature: cfg.temperature,
    lr: cfg.lr, minLr: cfg.lr / 10, klCoef: ctx.push.klCoef, adaptiveKl: true, klTarget: cfg.klTarget, klHorizon: 10 * cfg.batchSize, seed: cfg.seed, rlooK: cfg.rlooK, dpoBeta: cfg.dpoBeta,
  };
  const reference = cfg.reanchor ? m.champion : m.sft;
  const resumeFrom = latestPpoCheckpoint(runDir);
  pruneRunDir(runDir, resumeFrom && basename(resumeFrom));
  let policy: GPT;
  let evals: PolicyEval[];
  let resumed: { step: number; state: unknown; optimizer?: Map<string, Float32Array> } | undefined;
  let stopReason = '';
  if (resumeFrom) {
    const ck = loadCheckpoint(resumeFrom, { kind: 'policy', config: ctx.sftCk.meta.config, tokenizerFingerprint: tok.fingerprint(), withOptimizer: true });
    policy = ctx.own(GPT.fromWeights(ck.meta.config, 'policy', ck.weights));
    const rc = ck.meta.runConfig as { optimizerState: unknown; step: number; evals: PolicyEval[]; stopReason: string };
    resumed = { step: rc.step, state: rc.optimizerState, optimizer: ck.optimizer };
    evals = rc.evals.map(reviveEval);
    stopReason = rc.stopReason;
    log(`loop: resuming PPO at step ${rc.step} from ${resumeFrom}`);
  } else {
    policy = ctx.own(m.champion.clone());
    evals = [m.championEval];
    await logMetrics(db, runId, 0, evalMetrics(m.championEval));
  }
  const opt = createPolicyOptimizer({
    algorithm: cfg.algorithm, policy, reference, ...(cfg.reanchor ? { klReference: m.sft } : {}), tok, reward: m.proxy, prompts: m.trainPrompts,
    ...(m.preferences ? { preferences: m.preferences } : {}), knobs, log,
  });
  if (resumed) opt.importState(resumed.state, resumed.optimizer);
  let steps = resumed?.step ?? 0;
  const saveState = async (): Promise<void> => {
    const name = `step-${String(steps).padStart(6, '0')}`;
    const optState = await opt.exportOptimizer();
    saveCheckpoint(join(runDir, name), {
      weights: await policy.exportWeights(),
      optimizer: optState,
      meta: { stage: 'policy', kind: 'policy', config: policy.config, tokenizerFingerprint: tok.fingerprint(), parent: ctx.championDir, step: steps, metrics: {}, runConfig: { runId, algorithm: cfg.algorithm, step: steps, optimizerState: opt.exportState(), evals, stopReason } },
      tokenizer: tok.toJSON(),
    });
    writeFileAtomic(join(runDir, 'latest'), name);
    pruneRunDir(runDir, name);
    log(`loop: checkpoint at PPO step ${steps} (${join(runDir, name)})`);
  };
  let finalKlCoef = ctx.push.klCoef;
  let shipped = policy;
  try {
    while (steps < total && !stopReason) {
      const s = await opt.step();
      steps = s.step;
      finalKlCoef = s.klCoef;
      log(`loop: ${formatOptimizerStats(s, total)}`);
      await logMetrics(db, runId, s.step, optimizerMetrics(s));
      const klToSft = s.klSft ?? klEstimateToSft(s.kl, { reanchored: cfg.reanchor, championKlToSft: m.championEval.kl });
      if (klOverBudget(klToSft, cfg.klBudget)) stopReason = `KL per reply to SFT ${klToSft.toFixed(2)} exceeded the budget ${cfg.klBudget} at step ${s.step}`;
      if (!stopReason && s.step % cfg.evalEvery === 0) {
        const e = await evaluatePolicy(policy, m.sft, tok, m.proxy, m.evalPrompts, { ...m.evalOpts, gold: o.gold });
        evals.push(e);
        await logMetrics(db, runId, s.step, evalMetrics(e));
        stopReason = evalStopReason(ctx, evals, s.step);
      }
      if (s.step % cfg.checkpointEvery === 0 && s.step < total) await saveState();
      if (o.shouldStop?.() && !stopReason) stopReason = 'stop requested';
    }
    finalKlCoef = opt.klCoef;
    // An EMA belongs to the optimiser and goes with it: keep a copy to ship.
    shipped = opt.shipped === policy ? policy : ctx.own(opt.shipped.clone());
  } finally {
    opt.dispose();
  }
  if (stopReason) log(`loop: PPO stopped early: ${stopReason}`);
  return { shipped, steps, stopReason, evals, finalKlCoef };
}

/** An evaluation read back from JSON (where NaN, the unmeasured, became null). */
function reviveEval(e: PolicyEval): PolicyEval {
  const n = (v: unknown) => (typeof v === 'number' ? v : NaN);
  return { proxy: n(e.proxy), kl: n(e.kl), length: n(e.length), spread: n(e.spread), gold: n(e.gold) };
}

/** Why an evaluation stops the optimiser ('' to go on): KL to SFT measured over budget, disagreement rising with the proxy, or (ablation) gold falling. */
function evalStopReason(ctx: IterationContext, evals: readonly PolicyEval[], step: number): string {
  const { cfg, o } = ctx;
  const e = evals[evals.length - 1]!;
  if (klOverBudget(e.kl, cfg.klBudget)) return `measured KL per reply to SFT ${e.kl.toFixed(2)} exceeded the budget ${cfg.klBudget} (step ${step})`;
  if (ensembleDisagreementRising(evals, cfg.disagreementPatience, cfg.disagreementTolerance)) {
    const from = evals[evals.length - 1 - cfg.disagreementPatience]!;
    return `ensemble disagreement guard: proxy rose (${from.proxy.toFixed(3)} → ${e.proxy.toFixed(3)}) while the reward models' disagreement rose (std ${from.spread.toFixed(3)} → ${e.spread.toFixed(3)}) over ${cfg.disagreementPatience} evaluations (step ${step}): the policy is going where the reward models do not agree`;
  }
  if (cfg.goldGate && o.gold && proxyGoldDiverged(evals, cfg.goldPatience, cfg.goldTolerance)) {
    const from = evals[evals.length - 1 - cfg.goldPatience]!;
    return `gold guard (ablation): proxy reward rose (${from.proxy.toFixed(3)} → ${e.proxy.toFixed(3)}) while gold reward fell (${from.gold.toFixed(3)} → ${e.gold.toFixed(3)}) over ${cfg.goldPatience} evaluations (step ${step})`;
  }
  return '';
}
