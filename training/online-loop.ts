/**
 * The online loop: turns the feedback people leave into a better policy, in the background.
 * One iteration:
 *
 *   1. waits until at least `minNewJudgements` judgements arrived since the last successful
 *      iteration (pairs from picks, rankings and sibling thumbs, plus lone thumbs);
 *   2. retrains the reward model from the SFT trunk on all current judgements; refuses to go on
 *      when its held-out pairwise accuracy is below `minRewardAccuracy` (guard 1), or fell more than
 *      `maxAccuracyDrop` below the last iteration's while PPO keeps raising the proxy (guard 4);
 *   3. runs PPO from the current champion (alias `champion`, or SFT) with the KL measured against
 *      SFT, stopping early when the KL per reply exceeds `klBudget` (guard 2), or, when a gold
 *      scorer is given (simulated users' hidden rubric, never available in production), when the
 *      proxy reward rose while the gold reward fell by more than `goldTolerance` across the last
 *      `goldPatience` evaluations (guard 3);
 *   4. evaluates candidate and champion on held-out prompts from real conversations (proxy score,
 *      KL to SFT, gold score when available);
 *   5. writes both checkpoints, registers them as model versions, points the `candidate` alias at
 *      the new policy, and promotes it to `champion` only with `autoPromote` and when it beats the
 *      champion by `minScoreGain` within the KL budget (and does not lose on gold). Otherwise it
 *      waits for the admin.
 * Every iteration is a run (kind `loop`) in the store with its per-step metrics.
 *
 * Version ids follow the server's convention, `<checkpoint directory name>-<sha256[:12]>`, so
 * generations stamped by the server match registered versions.
 *
 *   node --import tsx training/online-loop.ts --database default --sft checkpoints/sft [--once]
 */
import { z } from 'zod';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { loadCheckpoint, readCheckpointMeta, saveCheckpoint, versionId, writeFileAtomic, type CheckpointMeta } from '../model/checkpoint.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import {
  finishRun,
  newId,
  getModelVersion,
  listRuns,
  getMetrics,
  logMetrics,
  promote,
  registerModelVersion,
  isLoopPaused,
  resolveAlias,
  startRun,
  type FeedbackStore,
} from '../feedback/index.ts';
import type { StoreOptions } from '../feedback/open-store.ts';
import { loadStorePreferences, splitGroups } from './preferences.ts';
import { normaliseScores, sampleReplies, trainRewardModel } from './reward-model.ts';
import { RewardModelSource, type RewardSource } from './reward-source.ts';
import { PpoTrainer, episodeKl, formatPpoStats, loadStorePrompts, ppoMetrics, sampleEpisodes, type PpoKnobs, type PpoTrainerState } from './ppo.ts';
import { mean } from './rlhf-common.ts';
import { isMain, runCli, stopRequested } from './cli.ts';

export const OnlineLoopConfig = z.object({
  database: z.string().default('default').describe('feedback store URL, or "default" (data/feedback.sqlite)'),
  sft: z.string().default('checkpoints/sft').describe('the SFT checkpoint: reward-model trunk and KL reference'),
  checkpoints: z.string().default('checkpoints').describe('directory new reward models and policies are written to'),
  minNewJudgements: z.number().int().nonnegative().default(50).describe('new judgements needed before an iteration runs'),
  pollSeconds: z.number().positive().default(60).describe('wait between checks for new feedback'),
  once: z.boolean().default(false).describe('run one iteration (or skip) and exit'),
  rewardEpochs: z.number().int().positive().default(2).describe('reward-model epochs per iteration'),
  rewardLr: z.number().positive().default(1e-4).describe('reward-model learning rate'),
  minRewardAccuracy: z.number().min(0).max(1).default(0.6).describe('guard: held-out pairwise accuracy the reward model must reach'),
  maxAccuracyDrop: z.number().min(0).max(1).default(0.1).describe('guard: stop when held-out accuracy falls this much below the last iteration\'s'),
  ppoSteps: z.number().int().positive().default(30).describe('PPO steps per iteration'),
  batchSize: z.number().int().positive().default(16).describe('PPO rollouts per step'),
  minibatchSize: z.number().int().positive().default(8).describe('PPO rollouts per gradient step'),
  epochs: z.number().int().positive().default(4).describe('PPO epochs per batch'),
  maxTokens: z.number().int().positive().default(48).describe('most tokens per sampled reply'),
  lr: z.number().positive().default(1e-5).describe('PPO learning rate'),
  klCoef: z.number().nonnegative().default(0.05).describe('β: KL coefficient (initial, adaptive towards klTarget)'),
  klTarget: z.number().positive().default(4).describe('adaptive controller target KL per reply (nats)'),
  klBudget: z.number().positive().default(10).describe('guard: PPO stops when the batch KL per reply to SFT exceeds this'),
  evalPrompts: z.number().int().positive().default(32).describe('held-out prompts for candidate vs champion'),
  evalEvery: z.number().int().positive().default(5).describe('PPO steps between proxy/gold evaluations'),
  goldPatience: z.number().int().positive().default(3).describe('guard: evaluations over which proxy up / gold down stops PPO'),
  goldTolerance: z.number().nonnegative().default(0.1).describe('guard: how far gold must fall over those evaluations (noise allowance)'),
  autoPromote: z.boolean().default(false).describe('promote the candidate to champion when it passes the gates'),
  minScoreGain: z.number().default(0.05).describe('gate: candidate proxy score must beat the champion by this'),
  seed: z.number().int().default(6).describe('seed for splits and sampling'),
  backend: z.string().default('').describe('force a tensor backend (tensorflow, wasm, cpu)'),
  checkpointEvery: z.number().int().positive().default(5).describe('PPO steps between resumable checkpoints (policy, value head, optimizer, KL coefficient)'),
  resume: z.boolean().default(true).describe('continue a run left `running` by a process that died (one loop per store)'),
});
export type OnlineLoopConfig = z.infer<typeof OnlineLoopConfig>;

export type IterationStatus = 'skipped' | 'rejected' | 'candidate' | 'promoted';

export interface IterationResult {
  status: IterationStatus;
  reason: string;
  runId?: string;
  rewardVersion?: string;
  policyVersion?: string;
  metrics: Record<string, number>;
}

/** A scorer that knows the truth (simulated users' rubric); only tests and simulations have one. */
export interface LoopOptions {
  gold?: RewardSource;
  log?: (line: string) => void;
  shouldStop?: () => boolean;
}

/** The version id of a checkpoint (see `versionId` in model/checkpoint.ts). */
export function checkpointVersionId(dir: string, meta: CheckpointMeta): string {
  return versionId(dir, meta.sha256);
}

async function countJudgementsSince(store: FeedbackStore, since: string | undefined): Promise<number> {
  let n = 0;
  for (const table of ['thumbs', 'comparisons', 'rankings'] as const) {
    let q = store.db.selectFrom(table).select((eb) => eb.fn.countAll<number | string>().as('n'));
    if (since) q = q.where('created_at', '>', since);
    n += Number((await q.executeTakeFirstOrThrow()).n);
  }
  return n;
}

/** Proxy (and gold) score and KL to SFT of a policy's sampled replies on fixed prompts. */
export async function evaluatePolicy(policy: GPT, sft: GPT, tok: Tokenizer, proxy: RewardSource, prompts: readonly ChatMessage[][], opts: { maxTokens: number; seed: number; gold?: RewardSource }): Promise<{ proxy: number; gold: number; kl: number; length: number }> {
  const eps = sampleEpisodes(policy, tok, prompts, { maxTokens: opts.maxTokens, temperature: 1, seed: opts.seed });
  const items = eps.map((e) => ({ prompt: e.prompt, reply: e.reply, replyIds: e.replyIds }));
  return {
    proxy: mean(await proxy.score(items)),
    gold: opts.gold ? mean(await opts.gold.score(items)) : NaN,
    kl: mean(episodeKl(policy, sft, tok, eps)),
    length: mean(eps.map((e) => e.replyIds.length)),
  };
}

/** The metrics an evaluation logs (the proxy/gold/KL curve of a run); gold only when it was measured. */
function evalMetrics(e: { proxy: number; gold: number; kl: number; length: number }): Record<string, number> {
  return Object.fromEntries(Object.entries({ eval_proxy: e.proxy, eval_gold: e.gold, eval_kl: e.kl, eval_length: e.length }).filter(([, v]) => Number.isFinite(v)));
}

/**
 * Goodhart guard: true when, across the last `patience` evaluations, the proxy score rose while
 * the gold score fell by more than `tolerance` (the latest evaluation against the one `patience`
 * evaluations before it). A net change over a window, not a step-by-step streak: one noisy
 * evaluation neither fires the guard nor hides a steady fall.
 */
export function proxyGoldDiverged(history: readonly { proxy: number; gold: number }[], patience: number, tolerance: number): boolean {
  if (history.length < patience + 1) return false;
  const from = history[history.length - 1 - patience]!;
  const to = history[history.length - 1]!;
  return to.proxy > from.proxy && from.gold - to.gold > tolerance;
}

/** The judgements an iteration trains on: every judgement up to `until`, `newJudgements` of them since `since`. */
export interface DataWindow {
  since: string | null;
  until: string;
  newJudgements: number;
  judgements: number;
  firstAt: string | null;
  lastAt: string | null;
  firstId: string | null;
  lastId: string | null;
  byKind: Record<string, number>;
}

/** Counts and bounds (time and id) of the judgements recorded up to `until`. */
export async function judgementWindow(store: FeedbackStore, since: string | null, until: string, newJudgements: number): Promise<DataWindow> {
  const w: DataWindow = { since, until, newJudgements, judgements: 0, firstAt: null, lastAt: null, firstId: null, lastId: null, byKind: {} };
  for (const table of ['thumbs', 'comparisons', 'rankings'] as const) {
    const r = await store.db
      .selectFrom(table)
      .select((eb) => [eb.fn.countAll<number | string>().as('n'), eb.fn.min('created_at').as('firstAt'), eb.fn.max('created_at').as('lastAt'), eb.fn.min('id').as('firstId'), eb.fn.max('id').as('lastId')])
      .where('created_at', '<=', until)
      .executeTakeFirstOrThrow();
    const n = Number(r.n);
    w.byKind[table] = n;
    w.judgements += n;
    if (!n) continue;
    const lo = <T extends string | null>(a: T, b: string) => (a === null || b < a ? b : a);
    const hi = <T extends string | null>(a: T, b: string) => (a === null || b > a ? b : a);
    w.firstAt = lo(w.firstAt, String(r.firstAt));
    w.lastAt = hi(w.lastAt, String(r.lastAt));
    w.firstId = lo(w.firstId, String(r.firstId));
    w.lastId = hi(w.lastId, String(r.lastId));
  }
  return w;
}

/** The run directory of an iteration's resumable PPO state (`step-NNNNNN` checkpoints and a `latest` pointer). */
export function ppoRunDir(checkpoints: string, stamp: string): string {
  return join(checkpoints, `run-${stamp}`);
}

function latestPpoCheckpoint(runDir: string): string | undefined {
  const pointer = join(runDir, 'latest');
  if (!existsSync(pointer)) return undefined;
  const dir = join(runDir, readFileSync(pointer, 'utf8').trim());
  return existsSync(dir) ? dir : undefined;
}

/** Removes temporary directories a killed process left behind (`.tmp-*`) and step checkpoints other than `keep`. */
function pruneRunDir(runDir: string, keep?: string): void {
  if (!existsSync(runDir)) return;
  for (const name of readdirSync(runDir)) {
    if (name.startsWith('.tmp-') || name.includes('.tmp-') || (name.startsWith('step-') && name !== keep)) rmSync(join(runDir, name), { recursive: true, force: true });
  }
}

function pruneTemp(dir: string, stamp: string): void {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) if (name.startsWith('.tmp-') && name.includes(stamp)) rmSync(join(dir, name), { recursive: true, force: true });
}

interface ResumePoint {
  runId: string;
  stamp: string;
  window: DataWindow;
  baseVersionId: string;
}

/** The run a dead process left `running` (the newest; older ones are closed as abandoned). */
async function findResumable(store: FeedbackStore, log: (l: string) => void): Promise<ResumePoint | undefined> {
  const running = await listRuns(store.db, { kind: 'loop', status: 'running' });
  let found: ResumePoint | undefined;
  for (const r of running) {
    const c = JSON.parse(r.config_json) as { stamp?: unknown; dataWindow?: DataWindow };
    if (!found && typeof c.stamp === 'string' && c.dataWindow && r.base_version_id) {
      found = { runId: r.id, stamp: c.stamp, window: c.dataWindow, baseVersionId: r.base_version_id };
      continue;
    }
    log(`loop: closing run ${r.id}, left running by a process that stopped`);
    await finishRun(store.db, r.id, { status: 'failed', error: 'abandoned: the process running it stopped' });
  }
  return found;
}

/** One iteration of the loop (see the file's contract); continues a run a killed process left behind when `cfg.resume`. */
export async function runOnlineIteration(store: FeedbackStore, cfg: OnlineLoopConfig, o: LoopOptions = {}): Promise<IterationResult> {
  const log = o.log ?? ((l: string) => console.error(l));
  const db = store.db;
  if (await isLoopPaused(db)) return { status: 'skipped', reason: 'paused by the admin (POST /admin/loop/resume resumes it)', metrics: {} };
  const resumed = cfg.resume ? await findResumable(store, log) : undefined;
  let fresh: number;
  let window: DataWindow;
  if (resumed) {
    window = resumed.window;
    fresh = window.newJudgements;
  } else {
    const last = (await listRuns(db, { kind: 'loop', status: 'succeeded' }))[0];
    const until = new Date().toISOString();
    fresh = await countJudgementsSince(store, last?.started_at);
    if (fresh < cfg.minNewJudgements) {
      return { status: 'skipped', reason: `${fresh} new judgements since the last iteration; waiting for ${cfg.minNewJudgements}`, metrics: { newJudgements: fresh } };
    }
    window = await judgementWindow(store, last?.started_at ?? null, until, fresh);
  }
  const sftCk = loadCheckpoint(cfg.sft, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(sftCk.tokenizer);
  const sftVersion = checkpointVersionId(cfg.sft, sftCk.meta);
  if (!(await getModelVersion(db, sftVersion))) {
    await registerModelVersion(db, { id: sftVersion, kind: 'policy', stage: 'sft', sha256: sftCk.meta.sha256, checkpoint: resolve(cfg.sft), config: { ...sftCk.meta.config }, metrics: sftCk.meta.metrics, notes: 'SFT policy: KL reference of PPO' });
  }
  const championVersion = resumed?.baseVersionId ?? (await resolveAlias(db, 'champion')) ?? sftVersion;
  const championDir = (await getModelVersion(db, championVersion))!.checkpoint;
  const stamp = resumed?.stamp ?? newId().toLowerCase();
  const runId = resumed?.runId ?? (await startRun(db, { kind: 'loop', config: { ...cfg, stamp, dataWindow: window }, baseVersionId: championVersion })).id;
  const runDir = ppoRunDir(cfg.checkpoints, stamp);
  if (resumed) {
    log(`loop: resuming run ${runId} (${stamp})`);
    pruneTemp(cfg.checkpoints, stamp);
  }
  const dataMetrics = { data_judgements: window.judgements, data_new_judgements: window.newJudgements };
  const models: GPT[] = [];
  const own = <T extends GPT>(m: T) => (models.push(m), m);
  try {
    // 2. Reward model (a resumed run reuses the one it saved).
    const sft = own(GPT.fromWeights(sftCk.meta.config, 'policy', sftCk.weights));
    const rmDir = join(cfg.checkpoints, `reward-${stamp}`);
    const allPrompts = await loadStorePrompts(store);
    const { train: trainPrompts, val: evalPrompts } = splitGroups(allPrompts, Math.min(0.5, cfg.evalPrompts / Math.max(1, allPrompts.length)), cfg.seed);
    let rm: GPT;
    let rmMeta: CheckpointMeta;
    let acc: number;
    if (existsSync(rmDir)) {
      const ck = loadCheckpoint(rmDir, { kind: 'reward', tokenizerFingerprint: tok.fingerprint() });
      rm = own(GPT.fromWeights(ck.meta.config, 'reward', ck.weights));
      rmMeta = ck.meta;
      acc = ck.meta.metrics.heldOutAccuracy ?? NaN;
      log(`loop: reusing reward model ${rmDir}`);
    } else {
      const data = await loadStorePreferences(store);
      const split = splitGroups(data.groups, 0.15, cfg.seed);
      rm = own(sft.clone('reward'));
      const rmResult = trainRewardModel({
        rm, tok, train: { groups: split.train, unpaired: data.unpaired }, val: split.val, log,
        cfg: { epochs: cfg.rewardEpochs, groupsPerBatch: 8, unpairedPerBatch: 8, unpairedCoef: 0.5, lr: cfg.rewardLr, minLr: cfg.rewardLr / 10, warmup: 5, weightDecay: 0, gradClip: 1, seed: cfg.seed },
      });
      acc = rmResult.heldOut.accuracy;
      await logMetrics(db, runId, 0, Object.fromEntries(Object.entries({ rm_heldout_accuracy: acc, rm_heldout_ece: rmResult.heldOut.ece, rm_heldout_loss: rmResult.heldOut.loss, new_judgements: fresh, ...dataMetrics }).filter(([, v]) => Number.isFinite(v))));
      if (!(acc >= cfg.minRewardAccuracy)) {
        const reason = `reward model held-out accuracy ${acc.toFixed(3)} is below ${cfg.minRewardAccuracy} over ${rmResult.heldOut.pairs} pairs; not training a policy on it`;
        await finishRun(db, runId, { status: 'failed', error: reason });
        return { status: 'rejected', reason, runId, metrics: { rmAccuracy: acc } };
      }
      const previous = (await listRuns(db, { kind: 'loop', status: 'succeeded' }))[0];
      const prevAcc = previous ? (await getMetrics(db, previous.id, { names: ['rm_heldout_accuracy'] }))[0]?.value : undefined;
      if (prevAcc !== undefined && acc < prevAcc - cfg.maxAccuracyDrop) {
        const reason = `Goodhart guard: held-out preference accuracy fell from ${prevAcc.toFixed(3)} to ${acc.toFixed(3)} since the last iteration, while the policy was trained to raise the proxy reward: the reward model no longer tracks what people prefer; stopping for the admin`;
        await finishRun(db, runId, { status: 'failed', error: reason });
        return { status: 'rejected', reason, runId, metrics: { rmAccuracy: acc, previousRmAccuracy: prevAcc } };
      }
      if (!trainPrompts.length || !evalPrompts.length) throw new Error(`too few prompts in the store (${allPrompts.length}) for training and evaluation`);
      const norm = normaliseScores(rm, tok, sampleReplies(sft, tok, evalPrompts, cfg.maxTokens, cfg.seed));
      rmMeta = saveCheckpoint(rmDir, {
        weights: await rm.exportWeights(),
        meta: { stage: 'reward', kind: 'reward', config: rm.config, tokenizerFingerprint: tok.fingerprint(), parent: cfg.sft, step: rmResult.steps, metrics: { heldOutAccuracy: acc, heldOutEce: rmResult.heldOut.ece, heldOutLoss: rmResult.heldOut.loss, scoreOffset: norm.scoreOffset }, runConfig: { ...cfg, runId, dataWindow: window } },
        tokenizer: tok.toJSON(),
      });
    }
    if (!trainPrompts.length || !evalPrompts.length) throw new Error(`too few prompts in the store (${allPrompts.length}) for training and evaluation`);
    const rewardVersion = checkpointVersionId(rmDir, rmMeta);
    if (!(await getModelVersion(db, rewardVersion))) {
      await registerModelVersion(db, { id: rewardVersion, kind: 'reward', stage: 'reward', sha256: rmMeta.sha256, runId, checkpoint: resolve(rmDir), config: { ...rm.config }, metrics: rmMeta.metrics, parentId: sftVersion });
    }

    // 3. PPO from the champion, KL to SFT; resumable every `checkpointEvery` steps.
    const champCk = loadCheckpoint(championDir, { kind: 'policy', config: sftCk.meta.config, tokenizerFingerprint: tok.fingerprint() });
    const champion = own(GPT.fromWeights(champCk.meta.config, 'policy', champCk.weights));
    const proxy = new RewardModelSource(rm, tok, { label: rewardVersion });
    const evalOpts = { maxTokens: cfg.maxTokens, seed: cfg.seed + 1, gold: o.gold };
    const knobs: Partial<PpoKnobs> = { steps: cfg.ppoSteps, batchSize: cfg.batchSize, minibatchSize: Math.min(cfg.minibatchSize, cfg.batchSize), epochs: cfg.epochs, maxTokens: cfg.maxTokens, lr: cfg.lr, minLr: cfg.lr / 10, klCoef: cfg.klCoef, adaptiveKl: true, klTarget: cfg.klTarget, klHorizon: 10 * cfg.batchSize, seed: cfg.seed };
    const resumeFrom = latestPpoCheckpoint(runDir);
    pruneRunDir(runDir, resumeFrom && basename(resumeFrom));
    let policy: GPT;
    let evals: { proxy: number; gold: number; kl: number; length: number }[];
    let trainerState: PpoTrainerState | undefined;
    let optimizer: Map<string, Float32Array> | undefined;
    let stopReason = '';
    if (resumeFrom) {
      const ck = loadCheckpoint(resumeFrom, { kind: 'policy', config: sftCk.meta.config, tokenizerFingerprint: tok.fingerprint(), withOptimizer: true });
      policy = own(GPT.fromWeights(ck.meta.config, 'policy', ck.weights));
      const rc = ck.meta.runConfig as { ppoState: PpoTrainerState; evals: typeof evals; stopReason: string };
      trainerState = rc.ppoState;
      evals = rc.evals;
      stopReason = rc.stopReason;
      optimizer = ck.optimizer;
      log(`loop: resuming PPO at step ${trainerState.step} from ${resumeFrom}`);
    } else {
      policy = own(champion.clone());
      evals = [await evaluatePolicy(policy, sft, tok, proxy, evalPrompts, evalOpts)];
      await logMetrics(db, runId, 0, evalMetrics(evals[0]!));
    }
    const trainer = new PpoTrainer({ policy, reference: sft, tok, reward: proxy, prompts: trainPrompts, knobs, log });
    if (trainerState) {
      const ema = optimizer && new Map([...optimizer].filter(([k]) => k.startsWith('ema.')).map(([k, v]) => [k.slice(4), v]));
      trainer.importState(trainerState, optimizer, ema);
    }
    let steps = trainerState?.step ?? 0;
    const saveState = async (): Promise<void> => {
      const name = `step-${String(steps).padStart(6, '0')}`;
      const optState = await trainer.exportOptimizer();
      if (trainer.ema) for (const [k, v] of await trainer.ema.exportWeights()) optState.set(`ema.${k}`, { data: v.data, shape: [...v.shape] });
      saveCheckpoint(join(runDir, name), {
        weights: await policy.exportWeights(),
        optimizer: optState,
        meta: { stage: 'policy', kind: 'policy', config: policy.config, tokenizerFingerprint: tok.fingerprint(), parent: championDir, step: steps, metrics: {}, runConfig: { runId, ppoState: trainer.exportState(), evals, stopReason } },
        tokenizer: tok.toJSON(),
      });
      writeFileAtomic(join(runDir, 'latest'), name);
      pruneRunDir(runDir, name);
      log(`loop: checkpoint at PPO step ${steps} (${join(runDir, name)})`);
    };
    try {
      while (steps < cfg.ppoSteps && !stopReason) {
        const s = await trainer.step();
        steps = s.step;
        log(`loop: ${formatPpoStats(s, cfg.ppoSteps)}`);
        await logMetrics(db, runId, s.step, ppoMetrics(s));
        if (s.kl > cfg.klBudget) stopReason = `KL per reply ${s.kl.toFixed(2)} exceeded the budget ${cfg.klBudget} at step ${s.step}`;
        if (!stopReason && s.step % cfg.evalEvery === 0) {
          const e = await evaluatePolicy(policy, sft, tok, proxy, evalPrompts, evalOpts);
          evals.push(e);
          await logMetrics(db, runId, s.step, evalMetrics(e));
          if (o.gold && proxyGoldDiverged(evals, cfg.goldPatience, cfg.goldTolerance)) {
            const from = evals[evals.length - 1 - cfg.goldPatience]!;
            stopReason = `proxy reward rose (${from.proxy.toFixed(3)} → ${e.proxy.toFixed(3)}) while gold reward fell (${from.gold.toFixed(3)} → ${e.gold.toFixed(3)}) over ${cfg.goldPatience} evaluations (step ${s.step})`;
          }
        }
        if (s.step % cfg.checkpointEvery === 0 && s.step < cfg.ppoSteps) await saveState();
        if (o.shouldStop?.() && !stopReason) stopReason = 'stop requested';
      }
    } finally {
      trainer.dispose();
    }
    if (stopReason) log(`loop: PPO stopped early: ${stopReason}`);

    // 4. Candidate vs champion.
    const cand = await evaluatePolicy(policy, sft, tok, proxy, evalPrompts, evalOpts);
    const champ = await evaluatePolicy(champion, sft, tok, proxy, evalPrompts, evalOpts);
    const metrics: Record<string, number> = Object.fromEntries(Object.entries({
      rmAccuracy: acc, ppoSteps: steps, candidateProxy: cand.proxy, championProxy: champ.proxy, candidateKl: cand.kl, championKl: champ.kl,
      candidateGold: cand.gold, championGold: champ.gold, candidateLength: cand.length, dataJudgements: window.judgements, dataNewJudgements: window.newJudgements,
    }).filter(([, v]) => Number.isFinite(v)));
    await logMetrics(db, runId, steps + 1, metrics);

    // 5. Register, and promote only through the gates.
    const polDir = join(cfg.checkpoints, `policy-${stamp}`);
    const polMeta = existsSync(polDir)
      ? readCheckpointMeta(polDir)
      : saveCheckpoint(polDir, {
          weights: await policy.exportWeights(),
          meta: { stage: 'policy', kind: 'policy', config: policy.config, tokenizerFingerprint: tok.fingerprint(), parent: championDir, step: steps, metrics, runConfig: { ...cfg, runId, reference: cfg.sft, reward: rewardVersion, stopReason, dataWindow: window } },
          tokenizer: tok.toJSON(),
        });
    const policyVersion = checkpointVersionId(polDir, polMeta);
    if (!(await getModelVersion(db, policyVersion))) {
      await registerModelVersion(db, { id: policyVersion, kind: 'policy', stage: 'policy', sha256: polMeta.sha256, runId, checkpoint: resolve(polDir), parentId: championVersion, config: { ...policy.config }, metrics, notes: stopReason || undefined });
    }
    await promote(db, { alias: 'candidate', versionId: policyVersion, actor: 'online-loop', reason: `proxy ${cand.proxy.toFixed(3)} vs champion ${champ.proxy.toFixed(3)}, KL ${cand.kl.toFixed(2)}` });
    const gates: string[] = [];
    if (!(cand.proxy >= champ.proxy + cfg.minScoreGain)) gates.push(`proxy gain ${(cand.proxy - champ.proxy).toFixed(3)} < ${cfg.minScoreGain}`);
    if (!(cand.kl <= cfg.klBudget)) gates.push(`KL ${cand.kl.toFixed(2)} > budget ${cfg.klBudget}`);
    if (o.gold && !(cand.gold >= champ.gold)) gates.push(`gold ${cand.gold.toFixed(3)} < champion ${champ.gold.toFixed(3)}`);
    let status: IterationStatus = 'candidate';
    let reason = gates.length ? `candidate registered; not promoted: ${gates.join('; ')}` : 'candidate registered; passes the gates, waiting for the admin';
    if (cfg.autoPromote && !gates.length) {
      await promote(db, { alias: 'champion', versionId: policyVersion, actor: 'online-loop', reason: `auto-promotion: proxy +${(cand.proxy - champ.proxy).toFixed(3)}, KL ${cand.kl.toFixed(2)}` });
      status = 'promoted';
      reason = 'candidate passed the gates and was promoted to champion';
    }
    if (stopReason) reason += ` (PPO stopped early: ${stopReason})`;
    await finishRun(db, runId, { status: 'succeeded', outputVersionId: policyVersion });
    rmSync(runDir, { recursive: true, force: true });
    log(`loop: ${reason}`);
    return { status, reason, runId, rewardVersion, policyVersion, metrics };
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
  const store = await openStore(o.store ?? (cfg.database === 'default' ? {} : { url: cfg.database }));
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
  await runCli('node --import tsx training/online-loop.ts --database default --sft checkpoints/sft [--once]', OnlineLoopConfig, 'LOOP', (cfg) => onlineLoop(cfg, { shouldStop: stopRequested() }));
}
