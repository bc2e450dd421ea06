/**
 * The online loop: turns the feedback people leave into a better policy, in the background.
 * Decisions come from the users' judgements only. A gold scorer (`LoopOptions.gold`: a simulated
 * users' hidden rubric, never available in production) is measured for the report (`eval_gold`
 * in the run's curve, `candidateGold`/`championGold`) and read by no decision, unless the
 * `goldGate` ablation is on (then the old gold guard and gold gate apply, and the arena is not
 * consulted). One call of {@link runOnlineIteration} (each step in its own file):
 *
 *   0. (loop-arena.ts) when a candidate exists: `decideArena` on the users' blind head-to-head
 *      judgements of candidate vs champion, applied when `autoPromote` (the champion moves only
 *      here). Undecided, or decided and not applied: status 'arena', nothing is trained: the
 *      arena's head-to-head pairs are the freshest on-policy judgements the next reward model can
 *      learn from (the very replies the proxy preferred, against the champion's), and a second
 *      candidate could not be judged before this one is. Decided and applied: logged, go on;
 *   1. waits until at least `minNewJudgements` judgements arrived since the last successful
 *      iteration (arena pairs included); sets how hard to push: β carried over from the last
 *      round, and after a rejection by the users the over-optimisation guard (half the steps and
 *      twice β, or `overOptimisation: restart`), saying why (loop-gates.ts);
 *   2. (loop-reward.ts) trains an ensemble of `rewardEnsemble` reward models on every current
 *      judgement split by a hash of the prompt text (train / val / a fixed eval set), warm-started
 *      from the last round's; refuses to go on when its accuracy on the fixed set is below
 *      `minRewardAccuracy` or fell more than `maxAccuracyDrop` since the last round;
 *   3. (loop-policy.ts) optimises the policy (`algorithm`: ppo, rloo or dpo) from the champion on
 *      'train' prompts against the pessimistic proxy mean − k·std, with the KL to SFT (or to the
 *      champion with `reanchor`, the total KL to SFT still measured and budgeted), resumable every
 *      `checkpointEvery` steps; stops early when the KL per reply to SFT exceeds `klBudget` or the
 *      ensemble's disagreement rises with the proxy;
 *   4. (loop-eval.ts) evaluates candidate and champion on 'eval' prompts (never a round's
 *      training prompts), sampled as users' replies are (`temperature`, `topP`, `maxTokens`);
 *   5. (loop-register.ts) writes and registers the candidate; offers it to the users (status
 *      'offered': the `candidate` alias, which the arena pits against the champion) only when its
 *      proxy beats the champion's by `minScoreGain` within the KL budget: the proxy is the model
 *      the policy was just optimised against, so it only filters (status 'rejected' otherwise).
 * Sampling: rollouts use `temperature` and `maxTokens` like users' replies but no top-p (the
 * optimiser's log-probabilities must be those of the distribution it samples); evaluation uses
 * the users' top-p too. Every iteration that trains is a run (kind `loop`) with its metrics.
 *
 * Version ids follow the server's convention, `<checkpoint directory name>-<sha256[:12]>`, so
 * generations stamped by the server match registered versions.
 *
 *   node --import tsx training/online-loop.ts --database default --sft checkpoints/sft [--once]
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { finishRun, getModelVersion, isLoopPaused, listRuns, logMetrics, newId, promote, resolveAlias, startRun, type FeedbackStore } from '../feedback/index.ts';
import type { StoreOptions } from '../feedback/open-store.ts';
import { ALIAS } from '../feedback/aliases.ts';
import { countJudgementsSince, judgementWindow, type DataWindow } from '../feedback/judgement-window.ts';
import { splitPreferences, splitPrompts, type PreferenceData } from './preferences.ts';
import { loadStorePrompts } from './ppo.ts';
import { overOptimisationGuard, type PushKnobs } from './loop-gates.ts';
import { evaluatePolicy, finite } from './loop-eval.ts';
import { carriedKlCoef, findResumable, lastCandidateVerdict, ppoRunDir, pruneTemp, type IterationContext } from './loop-run.ts';
import { prepareReward } from './loop-reward.ts';
import { optimisePolicy } from './loop-policy.ts';
import { registerAndGate } from './loop-register.ts';
import { arenaGate, arenaMetrics } from './loop-arena.ts';
import { registerCheckpointVersion } from './register-versions.ts';
import { OnlineLoopConfig, type IterationResult, type LoopOptions } from './loop-config.ts';
import { isMain, runCommand, stopRequested } from '../cli/command.ts';

export { OnlineLoopConfig, type IterationResult, type IterationStatus, type LoopOptions } from './loop-config.ts';

/** Step 1: the judgements this iteration trains on, or why it skips. */
async function dataWindow(store: FeedbackStore, cfg: OnlineLoopConfig): Promise<DataWindow | IterationResult> {
  const last = (await listRuns(store.db, { kind: 'loop', status: 'succeeded' }))[0];
  const until = new Date().toISOString();
  const fresh = await countJudgementsSince(store.db, last?.started_at);
  if (fresh < cfg.minNewJudgements) {
    return { status: 'skipped', reason: `${fresh} new judgements since the last iteration; waiting for ${cfg.minNewJudgements}`, metrics: { newJudgements: fresh } };
  }
  return judgementWindow(store.db, last?.started_at ?? null, until, fresh);
}

/** DPO's data: the 'train' split's judgements since the last round (fresh, near on-policy), or all of them when none of those has a pair. */
function dpoPreferences(data: PreferenceData, since: string | null): PreferenceData {
  const train = splitPreferences(data).train;
  if (!since) return train;
  const fresh = { groups: train.groups.filter((g) => g.createdAt !== undefined && g.createdAt > since), unpaired: train.unpaired.filter((u) => u.createdAt !== undefined && u.createdAt > since) };
  return fresh.groups.some((g) => g.pairs.length > 0) ? fresh : train;
}

/**
 * How hard this iteration pushes: β carried over from the last round, then the over-optimisation
 * guard for the first round after a rejection (once per verdict: β carried from a guarded round
 * is not doubled again).
 */
async function pushKnobs(store: FeedbackStore, cfg: OnlineLoopConfig): Promise<PushKnobs> {
  const carried = { ppoSteps: cfg.ppoSteps, klCoef: await carriedKlCoef(store.db, cfg.klCoef) };
  const verdict = await lastCandidateVerdict(store.db);
  const last = (await listRuns(store.db, { kind: 'loop', status: 'succeeded' }))[0];
  const fresh = verdict && (!last || verdict.at > last.started_at) ? verdict : undefined;
  return overOptimisationGuard(fresh, carried, { response: cfg.overOptimisation, configuredKlCoef: cfg.klCoef });
}

/** One iteration of the loop (see the file's contract); continues a run a killed process left behind when `cfg.resume`. */
export async function runOnlineIteration(store: FeedbackStore, cfg: OnlineLoopConfig, o: LoopOptions = {}): Promise<IterationResult> {
  if (await isLoopPaused(store.db)) return { status: 'skipped', reason: 'paused by the admin (POST /admin/loop/resume resumes it)', metrics: {} };
  const arena = cfg.goldGate ? undefined : await arenaGate(store, cfg, o);
  if (arena && 'wait' in arena) return arena.wait;
  const started = await startIteration(store, cfg, o);
  const result = 'status' in started ? started : await trainIteration(started);
  return arena?.arena ? { ...result, reason: `${arena.go}; then ${result.reason}`, arena: arena.arena, metrics: { ...arenaMetrics(arena.arena), ...result.metrics } } : result;
}

/** Step 1: the run (a new one on enough new judgements, or the one a killed process left), or why the iteration skips. */
async function startIteration(store: FeedbackStore, cfg: OnlineLoopConfig, o: LoopOptions): Promise<IterationContext | IterationResult> {
  const log = o.log ?? ((l: string) => console.error(l));
  const db = store.db;
  const resumed = cfg.resume ? await findResumable(store, log) : undefined;
  let window: DataWindow;
  if (resumed) window = resumed.window;
  else {
    const w = await dataWindow(store, cfg);
    if ('status' in w) return w;
    window = w;
  }
  const sftCk = loadCheckpoint(cfg.sft, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(sftCk.tokenizer);
  const sftVersion = await registerCheckpointVersion(db, { dir: cfg.sft, meta: sftCk.meta, stage: 'sft', notes: 'SFT policy: KL reference of PPO' });
  for (const alias of [ALIAS.sft, ALIAS.champion]) {
    // The arena pits the candidate against the champion alias: a store nothing was served from yet starts at SFT.
    if (!(await resolveAlias(db, alias))) await promote(db, { alias, versionId: sftVersion, actor: 'online-loop', reason: 'empty registry: the SFT checkpoint' });
  }
  const championVersion = resumed?.baseVersionId ?? (await resolveAlias(db, ALIAS.champion))!;
  const championDir = (await getModelVersion(db, championVersion))!.checkpoint;
  const push = resumed?.push ?? (await pushKnobs(store, cfg));
  if (push.reason) log(`loop: ${push.reason}`);
  const stamp = resumed?.stamp ?? newId().toLowerCase();
  const runId = resumed?.runId ?? (await startRun(db, { kind: 'loop', config: { ...cfg, stamp, dataWindow: window, push }, baseVersionId: championVersion })).id;
  if (resumed) {
    log(`loop: resuming run ${runId} (${stamp})`);
    pruneTemp(cfg.checkpoints, stamp);
  }
  return { store, db, cfg, o, log, runId, stamp, runDir: ppoRunDir(cfg.checkpoints, stamp), window, tok, sftCk, sftVersion, championVersion, championDir, push, own: (m) => m };
}

/** Steps 2–5 on a started run: reward ensemble and guards, optimisation, evaluation, registration and the pre-filter. */
async function trainIteration(started: IterationContext): Promise<IterationResult> {
  const models: GPT[] = [];
  const ctx: IterationContext = { ...started, own: (m) => (models.push(m), m) };
  const { store, db, cfg, o, tok, sftCk, runId, window } = ctx;
  try {
    const sft = ctx.own(GPT.fromWeights(sftCk.meta.config, 'policy', sftCk.weights));
    const allPrompts = await loadStorePrompts(store);
    const split = splitPrompts(allPrompts);
    const trainPrompts = split.train;
    const evalPrompts = (split.eval.length ? split.eval : split.val).slice(0, cfg.evalPrompts);
    const reward = await prepareReward(ctx, sft, split.val.length ? split.val : evalPrompts);
    if ('rejected' in reward) return reward.rejected;
    if (!trainPrompts.length || !evalPrompts.length) throw new Error(`too few prompts in the store (${allPrompts.length}: ${split.train.length} train, ${split.val.length} val, ${split.eval.length} eval) for training and evaluation`);

    const champCk = loadCheckpoint(ctx.championDir, { kind: 'policy', config: sftCk.meta.config, tokenizerFingerprint: tok.fingerprint() });
    const champion = ctx.own(GPT.fromWeights(champCk.meta.config, 'policy', champCk.weights));
    const evalOpts = { maxTokens: cfg.maxTokens, temperature: cfg.temperature, topP: cfg.topP, seed: cfg.seed + 1 };
    const champ = await evaluatePolicy(champion, sft, tok, reward.proxy, evalPrompts, { ...evalOpts, gold: o.gold });
    const preferences = cfg.algorithm === 'dpo' ? dpoPreferences(reward.data, window.since) : undefined;
    const policy = await optimisePolicy(ctx, { sft, champion, championEval: champ, proxy: reward.proxy, trainPrompts, evalPrompts, evalOpts, preferences });

    const cand = await evaluatePolicy(policy.shipped, sft, tok, reward.proxy, evalPrompts, { ...evalOpts, gold: o.gold });
    const metrics = finite({
      rmAccuracy: reward.accuracy, ppoSteps: policy.steps, candidateProxy: cand.proxy, championProxy: champ.proxy, candidateKl: cand.kl, championKl: champ.kl,
      candidateSpread: cand.spread, candidateGold: cand.gold, championGold: champ.gold, candidateLength: cand.length, klCoef: policy.finalKlCoef,
      dataJudgements: window.judgements, dataNewJudgements: window.newJudgements,
    });
    await logMetrics(db, runId, policy.steps + 1, metrics);
    return await registerAndGate(ctx, { policy, candidate: cand, champion: champ, rewardVersion: reward.rewardVersion, rewardDir: reward.rewardDir, metrics });
  } catch (err) {
    await finishRun(db, runId, { status: 'failed', error: (err as Error).message.slice(0, 10_000) }).catch(() => {});
    throw err;
  } finally {
    for (const m of models) m.dispose();
  }
}

/** Runs iterations until stopped (or once). Between iterations it waits `pollSeconds`, checking `shouldStop` every 250 ms. */
export async function onlineLoop(cfg: OnlineLoopConfig, o: LoopOptions & { store?: StoreOptions } = {}): Promise<IterationResult[]> {
  const log = o.log ?? ((l: string) => console.error(l));
  await initBackend({ backend: cfg.backend || undefined, log });
  const { openStore } = await import('../feedback/index.ts');
  const store = await openStore(o.store ?? { ...(cfg.database === 'default' ? {} : { url: cfg.database }), ...(cfg.databaseSchema ? { schema: cfg.databaseSchema } : {}) });
  const results: IterationResult[] = [];
  try {
    for (;;) {
      let r: IterationResult;
      try {
        r = await runOnlineIteration(store, cfg, o);
      } catch (err) {
        if (cfg.once) throw err;
        r = { status: 'skipped', reason: `iteration failed: ${(err as Error).message}`, metrics: {} };
        if (process.env.DEBUG) log(String((err as Error).stack));
      }
      results.push(r);
      log(`loop: ${r.status}: ${r.reason}`);
      if (cfg.once || o.shouldStop?.()) break;
      const until = Date.now() + cfg.pollSeconds * 1000;
      while (Date.now() < until && !o.shouldStop?.()) await sleep(Math.min(250, until - Date.now()));
      if (o.shouldStop?.()) break;
    }
  } finally {
    await store.close();
  }
  return results;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx training/online-loop.ts --database default --sft checkpoints/sft [--once]', schema: OnlineLoopConfig, envPrefix: 'LOOP' }, (cfg) => onlineLoop(cfg, { shouldStop: stopRequested() }));
}
