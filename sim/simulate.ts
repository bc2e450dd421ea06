/**
 * `npm run simulate`: a population of simulated users (`sim-users.ts`) chats with a server over
 * the public WebSocket protocol and judges its replies with a hidden rubric (`gold-rubric.ts`).
 *
 *   npm run simulate -- --url ws://127.0.0.1:8080/ws --users 8 --judgements 200
 *       users only, against a running server (its store and loop are its own business)
 *
 *   npm run simulate -- --json [--seeds 3 --seed 1 --rounds 4 --judgements-per-round 1500 …]
 *       the whole story (`story.ts`), once per seed s, s+1, …, s+N−1: the loop exactly as
 *       `LOOP=1` runs it, the users' judgements its only signal and their blind head-to-head
 *       judgements its promotion gate; gold is measured for the report only. One JSON line per
 *       seed as it finishes, then the LAST line pools them:
 *       {seeds, gold_in_decisions, gold_win_rate_vs_sft, gold_win_rate_ci95, length_controlled_win_rate, length_controlled_ci95,
 *        parts_delta, kl_to_sft, minutes, per_seed: [{…the same fields, rounds, curve…}]}
 *
 *   --preset over-optimisation   few judgements, long PPO with a weak leash: the proxy rises, the
 *                                users' head-to-head interval falls below ½, the arena rejects the
 *                                candidate and the over-optimisation guard says why
 *   --preset verbosity           users with a verbosity bias (`--exploitable`): the arena promotes
 *                                what they prefer; the length-controlled win rate shows it is length
 *   --gold-gate                  the ablation: the old gold guard and gold gate in the loop
 *                                (`cfg.goldGate`); reported with `gold_in_decisions: true`
 *
 * A missing `data/dialogues.{train,val}.jsonl` is built first (`npm run build-data`'s defaults).
 */
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { isMain, runCommand } from '../cli/command.ts';
import { ConfigError, parseConfig } from '../cli/config.ts';
import { GoldRubric, readDefinitionPrompts, type DefinitionPrompt } from './gold-rubric.ts';
import { runPopulation, type SessionResult } from './sim-users.ts';
import { API_KEY_ENV, authHeaders } from '../client/ws-client.ts';
import { comparisonFigures } from './report.ts';
import { COVARIATE_SETS } from '../training/covariate-sets.ts';
import { mean, round3 } from './stats.ts';
import type { StoryOptions, StoryResult } from './story.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Option values a preset sets (explicit flags win). */
export const PRESETS = {
  'over-optimisation': { judgementsPerRound: 400, rounds: 3, ppoSteps: 200, lr: 2e-4, klCoef: 0.01, klBudget: 40, minRewardAccuracy: 0.55 },
  verbosity: { exploitable: true },
} as const satisfies Record<string, Partial<Omit<StoryOptions, 'seed'>>>;
export type Preset = keyof typeof PRESETS;

const ALGORITHMS = ['ppo', 'rloo', 'dpo'] as const;
const PRESET_NAMES = Object.keys(PRESETS) as [Preset, ...Preset[]];
const int = (min = 0) => z.number().int().min(min);
const nonNegative = () => z.number().nonnegative();

/** The simulation's options (`--kebab-case` on the command line, `SIMULATE_<UPPER_SNAKE>` in the environment). */
export const SimConfig = z.object({
  url: z.string().optional().describe(`users only, against a running server's ws URL (default: the whole story); its API key from ${API_KEY_ENV}`),
  json: z.boolean().default(false).describe('the whole story; a JSON line per seed, the pooled one last'),
  seeds: int(1).default(1).describe('stories to run, seeds s..s+n-1'),
  seed: int().default(1).describe('first seed of users, judges and the loop'),
  preset: z.enum(PRESET_NAMES).optional().describe('over-optimisation | verbosity (see the README); flags given win'),
  rounds: int().default(4).describe('chat-then-train rounds, then one judging round'),
  users: int(1).default(16).describe('simulated users chatting concurrently'),
  judgementsPerRound: int().default(1500).describe('judgements (sessions) per round'),
  judgements: int().default(100).describe('with --url: judgements in all'),
  minutes: nonNegative().default(30).describe('wall-time budget per story; no training round starts past it'),
  klCoef: nonNegative().default(0.6).describe('PPO KL coefficient β of the first round (the loop\'s default); 0 removes the leash and the KL budget'),
  klBudget: nonNegative().default(10).describe("the loop's KL budget per reply to SFT (nats)"),
  exploitable: z.boolean().default(false).describe('users judge with a verbosity bias (gold stays honest)'),
  goldGate: z.boolean().default(false).describe("ablation: the loop's gold guard and gold gate on (reported apart)"),
  algorithm: z.enum(ALGORITHMS).default('ppo').describe(ALGORITHMS.join(' | ')),
  userTemperature: nonNegative().default(1).describe("sampling temperature of the users' chats and of the final comparison"),
  ppoSteps: int(1).default(40).describe('policy-optimisation steps per round'),
  lr: nonNegative().default(5e-5).describe('policy learning rate'),
  evalPrompts: int(1).default(256).describe('held-out prompts of the final champion-vs-SFT comparison'),
  samplesPerPrompt: int(1).default(4).describe('replies per held-out prompt and side, paired by seed'),
  arenaAlpha: z.number().gt(0).lt(1).default(0.05).describe("error rate of the arena's always-valid interval"),
  arenaMaxJudgements: int(1).default(1500).describe('head-to-head judgements after which an undecided candidate is rejected'),
  sft: z.string().default('checkpoints/sft').describe('SFT checkpoint'),
  data: z.string().default('data').describe('dialogues.{train,val}.jsonl; built when missing'),
  minRewardAccuracy: nonNegative().default(0.6).describe("the loop's guard on reward-model held-out accuracy"),
  rewardCovariates: z.enum(COVARIATE_SETS).optional().describe("the loop's rewardCovariates (default: the loop's)"),
  rewardHeads: z.enum(['on', 'auto']).optional().describe("the loop's rewardHeads (default: the loop's)"),
  rewardLengthWeight: nonNegative().optional().describe("the loop's rewardLengthWeight: weight of λ·words in the optimiser's reward (default: the loop's)"),
  rerankN: int(1).optional().describe("the servers' best-of-n for loop-trained versions (1 = off; default: the server's)"),
  keep: z.boolean().default(false).describe('keep the temporary stores and checkpoints'),
  raw: z.boolean().default(false).describe("with --json: every seed's line also carries its per-prompt comparison (for --pool)"),
  pool: z.string().optional().describe("comma-separated files of seeds' --raw lines (stories run apart, e.g. one seed per process): print their pooled line; nothing is run"),
});

export const USAGE = 'npm run simulate -- [--json] [--preset over-optimisation|verbosity] [options]   (or --url ws://host:8080/ws: users only; or --pool seed-1.json,seed-2.json: pool seeds run apart)';
export const ENV_PREFIX = 'SIMULATE';

/** The options of a run; `loop`: loop config keys set as given (tests). */
export type SimOptions = z.infer<typeof SimConfig> & Pick<StoryOptions, 'loop'> & { poolFiles?: string[] };

/** `plain` with its preset's values put under the flags and environment given (a preset sits above the defaults only). */
function withPreset(plain: Readonly<z.infer<typeof SimConfig>>, argv: readonly string[], env: Record<string, string | undefined>): SimOptions {
  const o: SimOptions = plain.preset ? parseConfig(SimConfig, { argv, env, envPrefix: ENV_PREFIX, overrides: PRESETS[plain.preset] }) : { ...plain };
  // The loop's own knobs, set only when given.
  const loop: Record<string, unknown> = {};
  if (o.rewardCovariates !== undefined) loop.rewardCovariates = o.rewardCovariates;
  if (o.rewardLengthWeight !== undefined) loop.rewardLengthWeight = o.rewardLengthWeight;
  if (o.rewardHeads !== undefined) loop.rewardHeads = o.rewardHeads;
  return Object.keys(loop).length ? { ...o, loop: { ...o.loop, ...loop } } : o;
}

/** The options from argv, or 'help'; throws ConfigError on bad input. */
export function parseSimArgs(argv: readonly string[], env: Record<string, string | undefined> = {}): SimOptions | 'help' {
  if (argv.includes('--help') || argv.includes('-h')) return 'help';
  return withFiles(withPreset(parseConfig(SimConfig, { argv, env, envPrefix: ENV_PREFIX }), argv, env));
}

/** The files of `--pool a.json,b.json`. */
function withFiles(o: SimOptions): SimOptions {
  if (o.pool === undefined) return o;
  const files = o.pool.split(',').filter(Boolean);
  if (!files.length) throw new ConfigError("--pool needs the files holding the seeds' --raw lines");
  return { ...o, poolFiles: files };
}

const log = (line: string): void => void process.stderr.write(`simulate: ${line}\n`);

/** The definition prompts of the dialogue files in `dir`, building the files first when they are missing (`build`: BuildDataConfig keys; tests make it small). */
export async function dialoguePrompts(dir: string, say: (l: string) => void = log, build: Record<string, unknown> = {}): Promise<{ train: DefinitionPrompt[]; val: DefinitionPrompt[] }> {
  const f = (n: string): string => resolve(ROOT, dir, `dialogues.${n}.jsonl`);
  if (!existsSync(f('train')) || !existsSync(f('val'))) {
    say(`${dir}/dialogues.{train,val}.jsonl are missing: building them (npm run build-data, a few minutes)…`);
    const { buildData, BuildDataConfig } = await import('../training/build-data.ts');
    const t0 = Date.now();
    buildData(BuildDataConfig.parse({ ...build, out: resolve(ROOT, dir) }), { log: (l) => say(`build-data: ${l}`) });
    say(`built ${dir}/ in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  }
  return { train: readDefinitionPrompts(f('train')), val: readDefinitionPrompts(f('val')) };
}

/** Users only, against a running server. */
async function usersOnly(o: SimOptions): Promise<void> {
  const { train } = await dialoguePrompts(o.data);
  const rubric = new GoldRubric(train, { exploitable: o.exploitable });
  const t0 = Date.now();
  const headers = authHeaders();
  const out = await runPopulation(o.url!, { users: o.users, sessions: o.judgements, prompts: train, rubric, seed: o.seed, ...(headers ? { headers } : {}) });
  const summary = { judgements: out.length, byKind: countKinds(out), meanGold: round3(mean(out.flatMap((s) => s.gold))), seconds: (Date.now() - t0) / 1000 };
  if (o.json) console.log(JSON.stringify(summary));
  else log(JSON.stringify(summary));
}

function countKinds(out: readonly SessionResult[]): Record<string, number> {
  const k: Record<string, number> = {};
  for (const s of out) k[s.kind] = (k[s.kind] ?? 0) + 1;
  return k;
}

/** A story's result as printed: everything but the raw per-prompt comparison. */
export function printable(r: StoryResult): Omit<StoryResult, 'comparison'> {
  const { comparison: _raw, ...rest } = r;
  return rest;
}

/** The last JSON line: the figures pooled over seeds (bootstrap over every seed's prompts), and each seed's. */
export function pooled(results: readonly StoryResult[], firstSeed: number): Record<string, unknown> {
  const figures = comparisonFigures(results.map((r) => r.comparison), firstSeed);
  return {
    seeds: results.length,
    gold_in_decisions: results.some((r) => r.gold_in_decisions),
    gold_win_rate_vs_sft: figures.gold_win_rate_vs_sft,
    gold_win_rate_ci95: figures.gold_win_rate_ci95,
    length_controlled_win_rate: figures.length_controlled_win_rate,
    length_controlled_ci95: figures.length_controlled_ci95,
    parts_delta: figures.parts_delta,
    kl_to_sft: round3(mean(results.map((r) => r.kl_to_sft ?? NaN))),
    minutes: round3(results.reduce((a, r) => a + (r.minutes ?? 0), 0)),
    gold: figures.gold,
    gold_sft: figures.gold_sft,
    exploitable: results[0]?.exploitable ?? false,
    gold_gate: results[0]?.gold_gate ?? false,
    kl_coef: results[0]?.kl_coef ?? null,
    rerank_n: results[0]?.rerank_n ?? null,
    per_seed: results.map(printable),
  };
}

type RunStory = (o: StoryOptions, prompts: { train: DefinitionPrompt[]; val: DefinitionPrompt[] }, log: (l: string) => void) => Promise<StoryResult>;

/** The whole story for every seed (`run`: the story; tests pass a stand-in); prints a line per seed (with --json and several seeds) and returns the pooled report. */
export async function stories(o: SimOptions, say: (l: string) => void = log, print: (line: string) => void = (l) => console.log(l), run?: RunStory): Promise<Record<string, unknown>> {
  const prompts = await dialoguePrompts(o.data, say);
  const story: RunStory = run ?? (await import('./story.ts')).story;
  const results: StoryResult[] = [];
  for (let s = o.seed; s < o.seed + o.seeds; s++) {
    const { url: _u, json: _j, seeds: _n, judgements: _t, data: _d, preset: _p, raw: _r, pool: _f, ...storyOptions } = o;
    const r = await story({ ...storyOptions, seed: s }, prompts, say);
    results.push(r);
    if (o.json && (o.seeds > 1 || o.raw)) print(JSON.stringify(o.raw ? r : printable(r)));
  }
  return pooled(results, o.seed);
}

/**
 * The pooled line of stories run apart: every line of `texts` that is a seed's --raw result (it
 * carries `comparison`), distinct seeds, pooled as one `--seeds N` run pools them.
 */
export function poolRawLines(texts: readonly string[]): Record<string, unknown> {
  const results: StoryResult[] = [];
  for (const text of texts)
    for (const line of text.split('\n')) {
      if (!line.trim().startsWith('{')) continue;
      const r = JSON.parse(line) as Partial<StoryResult>;
      if (r.comparison && typeof r.seed === 'number') results.push(r as StoryResult);
    }
  if (!results.length) throw new Error('no --raw seed lines (with their comparison) to pool');
  const seeds = results.map((r) => r.seed);
  if (new Set(seeds).size !== seeds.length) throw new Error(`seed ${seeds.find((s, i) => seeds.indexOf(s) !== i)} appears twice`);
  results.sort((a, b) => a.seed - b.seed);
  return pooled(results, results[0]!.seed);
}

async function main(o: SimOptions): Promise<void> {
  if (o.poolFiles) return void console.log(JSON.stringify(poolRawLines(o.poolFiles.map((f) => readFileSync(f, 'utf8')))));
  if (o.url) return usersOnly(o);
  const result = await stories(o);
  if (o.json) console.log(JSON.stringify(result));
  else log(JSON.stringify(result, null, 2));
}

if (isMain(import.meta.url)) {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));
  const argv = process.argv.slice(2);
  await runCommand({ usage: USAGE, schema: SimConfig, envPrefix: ENV_PREFIX }, (plain) => main(withFiles(withPreset(plain, argv, process.env))), argv);
  process.exit(process.exitCode ?? 0);
}
