/**
 * One story (one seed) of `npm run simulate -- --json`: the online loop exactly as `LOOP=1` runs
 * it, with simulated users as its only signal.
 *
 *   a server on the SFT checkpoint with a temporary store (its champion alias followed live);
 *   round r = 1..rounds:
 *     1. the users chat and judge over /ws (thumbs, comparisons, rankings); once a candidate
 *        exists the story, as an admin, has set `PUT /admin/arena {"share":1}`, so every
 *        `compare` is a blind champion-vs-candidate pair and its judgement a head-to-head one;
 *     2. one `runOnlineIteration`: the arena decides first (promote / reject / keep collecting,
 *        from the users' head-to-head judgements only); when no candidate is pending it trains a
 *        reward model on the users' judgements, optimises the policy, and offers a new candidate
 *        if the proxy pre-filter lets it through;
 *   then a last judging round: the users chat once more (judging the last candidate) and the arena
 *   decides one more time; no training.
 *   Finally the champion and a second server on the SFT checkpoint (its own store) answer the same
 *   held-out prompts, `samplesPerPrompt` seeds each, scored by the honest rubric.
 *
 * Gold (the honest rubric) reaches the loop as `LoopOptions.gold`, which the loop uses for its
 * logs (`eval_gold`) only, unless `goldGate` (the ablation, reported apart). Every decision a
 * round took is recorded with what took it: `arena`, `proxy` (the pre-filter), `guard` (the
 * reward-model, KL, disagreement and over-optimisation guards) or `gold` (only under the ablation).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GoldRewardSource, GoldRubric, NoisyJudge, Rng, type DefinitionPrompt } from './gold-rubric.ts';
import { runPopulation, type SessionResult } from './sim-users.ts';
import { defaultServerConfig } from '../server/config.ts';
import { awaitServed, awaitServing, servedVersion, setArenaShare, startServerProcess } from './server-process.ts';
import { compareServers, type Comparison } from './compare.ts';
import { bayesCeiling, heldOutPairs, mean, round3 } from './stats.ts';
import { comparisonFigures, type ComparisonFigures } from './report.ts';
import { getMetrics } from '../feedback/runs.ts';
import { listPromotions, type FeedbackStore } from '../feedback/index.ts';
import type { ArenaSummary } from '../feedback/arena.ts';
import { ALIAS } from '../feedback/aliases.ts';
import type { IterationResult } from '../training/online-loop.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The knobs of one story (the CLI's options, resolved). */
export interface StoryOptions {
  seed: number;
  rounds: number;
  users: number;
  judgementsPerRound: number;
  minutes: number;
  klCoef: number;
  /** The loop's KL budget per reply to SFT (nats); lifted when `klCoef` is 0. */
  klBudget: number;
  exploitable: boolean;
  goldGate: boolean;
  ppoSteps: number;
  lr: number;
  userTemperature: number;
  evalPrompts: number;
  samplesPerPrompt: number;
  minRewardAccuracy: number;
  arenaAlpha: number;
  arenaMaxJudgements: number;
  algorithm: 'ppo' | 'rloo' | 'dpo';
  sft: string;
  keep: boolean;
  /** The servers' best-of-n for loop-trained versions (`--rerank-n`; undefined: the server's default). */
  rerankN?: number;
  /** Loop config keys set as given (a preset's or a test's), after the story's own. */
  loop?: Record<string, unknown>;
}

/** One decision a round took, and what took it. */
export interface Decision {
  by: 'arena' | 'proxy' | 'guard' | 'gold';
  action: string;
  detail: string;
}

/** The arena as the report shows it. */
export interface ArenaFigures {
  candidate: string;
  champion: string;
  n: number;
  p: number | null;
  interval: [number | null, number | null];
  decision: ArenaSummary['decision'];
  length_controlled: { p: number | null; interval: [number | null, number | null]; length_coef: number | null };
}

export interface RoundReport {
  round: number;
  /** 'train' rounds chat then run an iteration; the last, 'judge', chats then decides the arena only. */
  phase: 'train' | 'judge';
  served: string;
  judgements: number;
  head_to_head: number;
  users_gold: number | null;
  status: string;
  reason: string;
  decisions: Decision[];
  arena: ArenaFigures | null;
  /** The reward model's accuracy on the fixed evaluation split (over `rm_eval_pairs` pairs, as the loop logged it). */
  rm_eval_accuracy: number | null;
  rm_eval_pairs: number;
  /** 1 when the users' val judgements dropped the reward heads for the covariates alone (`--reward-heads auto`), 0 when kept. */
  rm_heads_dropped: number | null;
  /** The best accuracy any model could reach on the users' labels of the evaluation split's pairs so far (`eval_pairs` of them). */
  bayes_ceiling: number | null;
  eval_pairs: number;
  metrics: Record<string, number | null>;
}

/** One evaluation of a run's policy on held-out prompts: KL to SFT per reply, the proxy and gold scores. */
export interface CurvePoint {
  round?: number;
  step: number;
  kl: number;
  proxy: number;
  gold: number;
}

/** One move of the champion alias, from the promotion log, and whether it carried the users' arena figures. */
export interface ChampionMove {
  from: string | null;
  to: string;
  action: string;
  actor: string | null;
  reason: string | null;
  /** The move was the arena's (the log row carries its summary). */
  by_arena: boolean;
}

export interface StoryResult extends ComparisonFigures {
  seed: number;
  gold_in_decisions: boolean;
  kl_to_sft: number | null;
  minutes: number | null;
  champion: string;
  sft: string;
  judgements: number;
  eval_prompts: number;
  samples_per_prompt: number;
  exploitable: boolean;
  gold_gate: boolean;
  kl_coef: number;
  /** The servers' best-of-n for loop-trained versions (1 = each reply is one sample). */
  rerank_n: number;
  rounds: RoundReport[];
  /** Every move of the champion alias after the server first set it (start-up), from the promotion log. */
  champion_moves: ChampionMove[];
  curve: CurvePoint[];
  /** The raw comparison (per prompt), for pooling over seeds; not printed. */
  comparison: Comparison;
}

/** The arena's figures as the report shows them. */
export function arenaFigures(s: ArenaSummary): ArenaFigures {
  const lc = s.lengthControlled;
  return {
    candidate: s.candidate, champion: s.champion, n: s.n, p: round3(s.p), interval: [round3(s.interval[0]), round3(s.interval[1])], decision: s.decision,
    length_controlled: { p: round3(lc.p), interval: [round3(lc.interval[0]), round3(lc.interval[1])], length_coef: round3(lc.lengthCoef) },
  };
}

const GOLD = /\bgold\b/i;
/** Most tokens of a user's reply, of the loop's rollouts and evaluations, and of the final comparison. */
const USER_MAX_TOKENS = 48;
/** The simulated users' Bradley–Terry temperature (NoisyJudge's default). */
const JUDGE_TEMPERATURE = new NoisyJudge(new Rng(1)).temperature;

/**
 * What an iteration decided, and what decided it (pure). The arena's verdict on the pending
 * candidate comes first; then what happened to the new policy: a guard stopped training or
 * stopped PPO early, the proxy pre-filter offered it or held it back. A reason that names gold
 * is a gold decision, whatever the status: that is how a leak of gold into the gates would show.
 */
export function decisionsOf(res: Pick<IterationResult, 'status' | 'reason' | 'arena'>): Decision[] {
  const out: Decision[] = [];
  if (res.arena) out.push({ by: 'arena', action: res.arena.decision, detail: `${res.arena.n} head-to-head judgements, p ${res.arena.p.toFixed(3)} [${res.arena.interval[0].toFixed(3)}, ${res.arena.interval[1].toFixed(3)}]` });
  const reason = res.reason;
  // The loop appends ` (PPO stopped early: <why>)` last.
  const early = /\(PPO stopped early: (.*)\)$/s.exec(reason)?.[1];
  if (early) out.push({ by: GOLD.test(early) ? 'gold' : 'guard', action: 'stop_ppo', detail: early });
  const guardNote = /over-optimi[sz]ation guard[^;]*/i.exec(reason)?.[0];
  if (guardNote) out.push({ by: 'guard', action: 'shorten', detail: guardNote });
  const rest = early ? reason.replace(early, '') : reason;
  switch (res.status) {
    case 'offered':
      out.push({ by: 'proxy', action: 'offer', detail: reason });
      break;
    case 'candidate':
      out.push({ by: GOLD.test(rest) ? 'gold' : 'proxy', action: 'not_offered', detail: reason });
      break;
    case 'rejected':
      // Not offered by the pre-filter (a proxy gain too small; a KL over budget is the guard's), or a guard refused to train.
      if (/not offered/.test(rest)) out.push({ by: GOLD.test(rest) ? 'gold' : /proxy gain/.test(rest) ? 'proxy' : 'guard', action: 'not_offered', detail: reason });
      else out.push({ by: GOLD.test(rest) ? 'gold' : 'guard', action: 'stop', detail: reason });
      break;
    case 'promoted':
      // A promotion outside the arena: only the ablation's gold gate or an old proxy gate does that.
      if (!res.arena) out.push({ by: GOLD.test(rest) ? 'gold' : 'proxy', action: 'promote', detail: reason });
      break;
    default:
      break;
  }
  return out;
}

function countKinds(out: readonly SessionResult[]): Record<string, number> {
  const k: Record<string, number> = {};
  for (const s of out) k[s.kind] = (k[s.kind] ?? 0) + 1;
  return k;
}

function shuffle<T>(xs: readonly T[], rng: Rng): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** Every move of the champion alias after it was first set (the server's start-up), oldest first, and whether the arena made it. */
export async function championMovesOf(store: FeedbackStore): Promise<ChampionMove[]> {
  return (await listPromotions(store.db, { alias: ALIAS.champion }))
    .filter((m) => m.from_version_id !== null)
    .map((m) => ({ from: m.from_version_id, to: m.to_version_id, action: String(m.action), actor: m.actor, reason: m.reason, by_arena: m.metrics_json !== null && 'arena' in (JSON.parse(m.metrics_json) as object) }));
}

/** The proxy/gold/KL evaluations a loop run logged, in step order. */
export async function evalCurve(store: FeedbackStore, runId: string): Promise<CurvePoint[]> {
  const rows = await getMetrics(store.db, runId, { names: ['eval_kl', 'eval_proxy', 'eval_gold'] });
  const byStep = new Map<number, Partial<Record<string, number>>>();
  for (const m of rows) byStep.set(m.step, { ...byStep.get(m.step), [m.name]: m.value });
  return [...byStep]
    .filter(([, v]) => v.eval_kl !== undefined && v.eval_proxy !== undefined && v.eval_gold !== undefined)
    .sort(([a], [b]) => a - b)
    .map(([step, v]) => ({ step, kl: round3(v.eval_kl!)!, proxy: round3(v.eval_proxy!)!, gold: round3(v.eval_gold!)! }));
}

/** The loop knobs' defaults the story may find missing in an older loop (dropped when left at them). */
const KNOB_DEFAULTS: Record<string, unknown> = { algorithm: 'ppo', arenaAlpha: 0.05, arenaMaxJudgements: 1500, goldGate: false };

/**
 * The loop config the story asks for, checked against the loop's knobs: a knob the loop does not
 * have is an error when set to anything but its default (a silently dropped `--algorithm rloo`
 * would report PPO's figures as RLOO's).
 */
export function loopConfig(shape: Record<string, unknown>, wanted: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(wanted)) {
    if (Object.hasOwn(shape, k)) out[k] = v;
    else if (!(k in KNOB_DEFAULTS) || KNOB_DEFAULTS[k] !== v) throw new Error(`the online loop has no knob ${k} (asked for ${JSON.stringify(v)})`);
  }
  return out;
}

/** The story (see the file's comment). `prompts`: the dialogue files' definition prompts. */
export async function story(o: StoryOptions, prompts: { train: DefinitionPrompt[]; val: DefinitionPrompt[] }, log: (l: string) => void): Promise<StoryResult> {
  const t0 = Date.now();
  const deadline = t0 + o.minutes * 60_000;
  const { train, val } = prompts;
  const honest = new GoldRubric([...train, ...val]);
  const users = new GoldRubric(train, { exploitable: o.exploitable });
  const evalSet = shuffle(val, new Rng(o.seed + 17)).slice(0, o.evalPrompts);
  const tmp = mkdtempSync(join(tmpdir(), 'simulate-'));
  const dbUrl = `sqlite:${join(tmp, 'feedback.sqlite')}`;
  const sftDir = resolve(ROOT, o.sft);
  log(`seed ${o.seed}: temporary store and checkpoints in ${tmp}`);

  // The loop runs in this process between rounds; the servers are child processes.
  const { initBackend } = await import('../model/backend.ts');
  const { openStore, resolveAlias, getModelVersion } = await import('../feedback/index.ts');
  const { decideArena } = await import('../feedback/arena.ts');
  const { splitByContext, promptText } = await import('../training/reward-ensemble.ts');
  const { Tokenizer } = await import('../model/tokenizer.ts');
  const { loadCheckpoint } = await import('../model/checkpoint.ts');
  const { OnlineLoopConfig, runOnlineIteration } = await import('../training/online-loop.ts');
  await initBackend({ log });
  const sftCk = loadCheckpoint(sftDir, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(sftCk.tokenizer);
  const gold = new GoldRewardSource(honest, tok.specialId('<|end|>'));

  const server = await startServerProcess({ modelDir: sftDir, databaseUrl: dbUrl, name: 'champion', log, rerankN: o.rerankN });
  const store = await openStore({ url: dbUrl });
  const rounds: RoundReport[] = [];
  const curve: CurvePoint[] = [];
  const sessions: SessionResult[] = [];
  let arenaOpen = false;
  try {
    const cfg = OnlineLoopConfig.parse(loopConfig(OnlineLoopConfig.shape, {
      database: dbUrl, sft: sftDir, checkpoints: join(tmp, 'checkpoints'), minNewJudgements: 1, once: true, rewardEpochs: 1, rewardLr: 3e-4,
      // Rollouts and evaluation sample as the users' replies are (their temperature, the server's top-p, 48 tokens).
      ppoSteps: o.ppoSteps, batchSize: 16, minibatchSize: 8, epochs: 4, maxTokens: USER_MAX_TOKENS, temperature: o.userTemperature, lr: o.lr, klCoef: o.klCoef,
      klBudget: o.klCoef === 0 ? 1e9 : o.klBudget,
      evalPrompts: 64, evalEvery: 5, minRewardAccuracy: o.minRewardAccuracy, autoPromote: true, seed: o.seed,
      algorithm: o.algorithm, arenaAlpha: o.arenaAlpha, arenaMaxJudgements: o.arenaMaxJudgements, goldGate: o.goldGate,
      ...o.loop,
    }));
    // The reward model's fixed evaluation split: a context's split is a hash of its text (one user turn here).
    const isEval = (prompt: string): boolean => splitByContext(promptText([{ role: 'user', content: prompt }])) === 'eval';
    const totalRounds = o.rounds + 1;
    for (let r = 1; r <= totalRounds; r++) {
      const phase = r === totalRounds ? 'judge' : 'train';
      if (phase === 'train' && Date.now() > deadline) {
        log(`seed ${o.seed}: the ${o.minutes}-minute budget is spent; judging the last candidate`);
        continue;
      }
      // The users meet what the registry says: the champion, and the candidate once offered (loaded before anyone chats).
      const [wantChampion, wantCandidate] = await Promise.all([resolveAlias(store.db, ALIAS.champion), resolveAlias(store.db, ALIAS.candidate)]);
      const serving = wantChampion ? await awaitServing(server, { champion: wantChampion, candidate: arenaOpen ? wantCandidate : undefined }) : undefined;
      if (serving && (serving.champion !== wantChampion || (arenaOpen && serving.candidate !== wantCandidate))) throw new Error(`the server serves ${JSON.stringify(serving)}, not champion ${wantChampion} and candidate ${wantCandidate}`);
      const served = await servedVersion(server);
      const out = await runPopulation(server.wsUrl, { users: o.users, sessions: o.judgementsPerRound, prompts: train, rubric: users, seed: o.seed, round: r, userOptions: { rankSize: 4, params: { temperature: o.userTemperature, maxTokens: USER_MAX_TOKENS } } });
      sessions.push(...out);
      const h2h = out.filter((s) => s.revealed).length;
      const usersGold = mean(out.flatMap((s) => s.gold));
      log(`seed ${o.seed} round ${r}: ${out.length} judgements on ${served} (${JSON.stringify(countKinds(out))}, ${h2h} head to head), users' mean score ${usersGold.toFixed(3)}`);
      let res: Pick<IterationResult, 'status' | 'reason' | 'arena' | 'metrics' | 'runId'>;
      if (phase === 'train') {
        res = await runOnlineIteration(store, cfg, { gold, log });
      } else if (o.goldGate) {
        res = { status: 'skipped', reason: 'gold-gate ablation: the arena does not decide', metrics: {} };
      } else {
        const d = await decideArena(store.db, { apply: cfg.autoPromote, actor: 'online-loop', alpha: o.arenaAlpha, maxJudgements: o.arenaMaxJudgements });
        res = d ? { status: 'arena', reason: d.applied ? `arena: candidate ${d.applied}` : 'arena: undecided; the candidate keeps collecting judgements', arena: d.summary, metrics: {} } : { status: 'skipped', reason: 'no candidate to judge', metrics: {} };
      }
      const pairs = heldOutPairs(sessions, isEval);
      const rm = res.runId ? Object.fromEntries((await getMetrics(store.db, res.runId, { names: ['rm_eval_accuracy', 'rm_eval_pairs', 'rm_heads_dropped'] })).map((m) => [m.name, m.value])) : {};
      const report: RoundReport = {
        round: r, phase, served, judgements: out.length, head_to_head: h2h, users_gold: round3(usersGold),
        status: res.status, reason: res.reason, decisions: decisionsOf(res), arena: res.arena ? arenaFigures(res.arena) : null,
        rm_eval_accuracy: round3(rm.rm_eval_accuracy ?? NaN), rm_eval_pairs: rm.rm_eval_pairs ?? 0, rm_heads_dropped: rm.rm_heads_dropped ?? null, bayes_ceiling: round3(bayesCeiling(pairs, JUDGE_TEMPERATURE)), eval_pairs: pairs.length,
        metrics: Object.fromEntries(Object.entries(res.metrics).map(([k, v]) => [k, round3(v)])),
      };
      rounds.push(report);
      if (res.runId) curve.push(...(await evalCurve(store, res.runId)).map((p) => ({ round: r, ...p })));
      log(`seed ${o.seed} round ${r}: ${res.status}: ${res.reason}`);
      log(`seed ${o.seed} round ${r}: decisions ${JSON.stringify(report.decisions.map((d) => `${d.by}:${d.action}`))}; reward model eval accuracy ${report.rm_eval_accuracy} over ${report.rm_eval_pairs} pairs (Bayes ceiling ${report.bayes_ceiling} over ${pairs.length} held-out pairs)`);
      if (!arenaOpen && !o.goldGate && (await resolveAlias(store.db, ALIAS.candidate))) {
        await setArenaShare(server, 1);
        arenaOpen = true;
        log(`seed ${o.seed} round ${r}: a candidate exists; PUT /admin/arena {"share":1}: every compare is now a blind champion-vs-candidate pair`);
      }
      const champion = await resolveAlias(store.db, ALIAS.champion);
      if (champion && champion !== served) log(`seed ${o.seed} round ${r}: the champion is now ${champion}`);
    }

    const sftVersion = await startSftServer(sftDir, tmp, log);
    const champion = (await resolveAlias(store.db, ALIAS.champion)) ?? sftVersion.version;
    const served = await awaitServed(server, champion);
    if (served !== champion) throw new Error(`the server serves ${served}, not the champion ${champion}`);
    const params = { temperature: o.userTemperature, maxTokens: USER_MAX_TOKENS };
    let cmp: Comparison;
    try {
      cmp = await compareServers(server.wsUrl, sftVersion.server.wsUrl, evalSet, honest, { params, samples: o.samplesPerPrompt });
    } finally {
      await sftVersion.server.stop();
    }
    const figures = comparisonFigures(cmp, o.seed);
    log(`seed ${o.seed}: champion ${cmp.versionA} vs SFT ${cmp.versionB} on ${evalSet.length} held-out prompts × ${o.samplesPerPrompt}: gold win rate ${figures.gold_win_rate_vs_sft} ${JSON.stringify(figures.gold_win_rate_ci95)}, length-controlled ${figures.length_controlled_win_rate} ${JSON.stringify(figures.length_controlled_ci95)}`);
    const championRow = await getModelVersion(store.db, champion);
    const kl = championRow && champion !== sftVersion.version ? await klToSft(championRow.checkpoint, sftDir, evalSet, o.seed, params) : 0;
    const decisions = rounds.flatMap((r) => r.decisions);
    const championMoves = await championMovesOf(store);
    return {
      seed: o.seed,
      // Gold decided something when the ablation was on, a decision's reason names gold, or the champion moved without the users' arena.
      gold_in_decisions: o.goldGate || decisions.some((d) => d.by === 'gold') || championMoves.some((m) => !m.by_arena),
      ...figures,
      kl_to_sft: round3(kl),
      minutes: round3((Date.now() - t0) / 60_000),
      champion: cmp.versionA,
      sft: cmp.versionB,
      judgements: sessions.length,
      eval_prompts: evalSet.length,
      samples_per_prompt: o.samplesPerPrompt,
      exploitable: o.exploitable,
      gold_gate: o.goldGate,
      kl_coef: o.klCoef,
      rerank_n: o.rerankN ?? defaultServerConfig().rerankN,
      rounds,
      champion_moves: championMoves,
      curve,
      comparison: cmp,
    };
  } finally {
    await store.close();
    await server.stop();
    if (!o.keep) rmSync(tmp, { recursive: true, force: true });
  }
}

/** A server on the SFT checkpoint with its own store (so its champion stays SFT), and the version it serves. */
async function startSftServer(sftDir: string, tmp: string, log: (l: string) => void): Promise<{ server: Awaited<ReturnType<typeof startServerProcess>>; version: string }> {
  const server = await startServerProcess({ modelDir: sftDir, databaseUrl: `sqlite:${join(tmp, 'sft-reference.sqlite')}`, name: 'sft', log });
  return { server, version: await servedVersion(server) };
}

/** Mean KL per reply of the champion to SFT on the held-out prompts: the champion's own samples at the final comparison's sampling settings (the loop's evaluation sampler). */
export async function klToSft(championDir: string, sftDir: string, prompts: readonly DefinitionPrompt[], seed: number, sampling: { maxTokens: number; temperature: number }): Promise<number> {
  const { GPT } = await import('../model/gpt.ts');
  const { Tokenizer } = await import('../model/tokenizer.ts');
  const { loadCheckpoint } = await import('../model/checkpoint.ts');
  const { DEFAULT_SAMPLING } = await import('../model/sampling.ts');
  const { episodeKl } = await import('../training/ppo.ts');
  const { sampleForEval } = await import('../training/loop-eval.ts');
  const s = loadCheckpoint(sftDir, { kind: 'policy' });
  const c = loadCheckpoint(championDir, { kind: 'policy' });
  const tok = Tokenizer.fromJSON(s.tokenizer);
  const sft = GPT.fromWeights(s.meta.config, 'policy', s.weights);
  const champion = GPT.fromWeights(c.meta.config, 'policy', c.weights);
  try {
    const eps = sampleForEval(champion, tok, prompts.map((p) => [{ role: 'user' as const, content: p.prompt }]), { ...sampling, topP: DEFAULT_SAMPLING.topP, seed: seed + 2 });
    return mean(episodeKl(champion, sft, tok, eps));
  } finally {
    champion.dispose();
    sft.dispose();
  }
}
