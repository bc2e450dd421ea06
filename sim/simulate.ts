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
 *       {seeds, gold_in_decisions, gold_win_rate_vs_sft, gold_win_rate_ci95, length_controlled_win_rate,
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
import { parseArgs } from 'node:util';
import { GoldRubric, readDefinitionPrompts, type DefinitionPrompt } from './gold-rubric.ts';
import { runPopulation, type SessionResult } from './sim-users.ts';
import { API_KEY_ENV, authHeaders } from '../client/ws-client.ts';
import { comparisonFigures } from './report.ts';
import { mean, round3 } from './stats.ts';
import type { StoryOptions, StoryResult } from './story.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Option values a preset sets (explicit flags win). */
export const PRESETS = {
  'over-optimisation': { judgementsPerRound: 400, rounds: 3, ppoSteps: 200, lr: 2e-4, klCoef: 0.01, klBudget: 40, minRewardAccuracy: 0.55 },
  verbosity: { exploitable: true },
} as const satisfies Record<string, Partial<SimOptions>>;
export type Preset = keyof typeof PRESETS;

export const HELP = `npm run simulate -- [options]
  --url <ws url>               users only, against a running server (default: the whole story);
                               its API key, if it wants one, from the environment: ${API_KEY_ENV}=rk_…
  --json                       the whole story; a JSON line per seed, the pooled one last
  --seeds <n>                  stories to run, seeds s..s+n-1 (default 1)
  --seed <s>                   first seed of users, judges and the loop (default 1)
  --preset <name>              over-optimisation | verbosity (see the README); flags given win
  --rounds <n>                 chat-then-train rounds, then one judging round (default 4)
  --users <n>                  simulated users chatting concurrently (default 16)
  --judgements-per-round <n>   judgements (sessions) per round (default 1500)
  --judgements <n>             with --url: judgements in all (default 100)
  --minutes <m>                wall-time budget per story; no training round starts past it (default 30)
  --kl-coef <β>                PPO KL coefficient; 0 removes the leash and the KL budget (default 0.05)
  --kl-budget <nats>           the loop's KL budget per reply to SFT (default 10, the loop's)
  --exploitable                users judge with a verbosity bias (gold stays honest)
  --gold-gate                  ablation: the loop's gold guard and gold gate on (reported apart)
  --algorithm <a>              ppo | rloo | dpo (default ppo)
  --user-temperature <t>       sampling temperature of the users' chats and of the final comparison (default 1)
  --ppo-steps <n>              policy-optimisation steps per round (default 40)
  --lr <x>                     policy learning rate (default 5e-5)
  --eval-prompts <n>           held-out prompts of the final champion-vs-SFT comparison (default 256)
  --samples-per-prompt <k>     replies per held-out prompt and side, paired by seed (default 4)
  --arena-alpha <a>            error rate of the arena's always-valid interval (default 0.05)
  --arena-max-judgements <n>   head-to-head judgements after which an undecided candidate is rejected (default 1500)
  --sft <dir>                  SFT checkpoint (default checkpoints/sft)
  --data <dir>                 dialogues.{train,val}.jsonl; built when missing (default data)
  --min-reward-accuracy <x>    the loop's guard on reward-model held-out accuracy (default 0.6)
  --reward-covariates <c>      the loop's rewardCovariates: none | length | length+likelihood (default: the loop's)
  --reward-length-weight <w>   the loop's rewardLengthWeight: weight of λ·words in the optimiser's reward (default: the loop's)
  --keep                       keep the temporary stores and checkpoints
  --raw                        with --json: every seed's line also carries its per-prompt comparison (for --pool)
  --pool <file>…               print the pooled line of the seeds' --raw lines in these files (stories run
                               apart, e.g. one seed per process); nothing is run
  --help                       this help
`;

export interface SimOptions extends Omit<StoryOptions, 'seed'> {
  url?: string;
  json: boolean;
  seed: number;
  seeds: number;
  judgements: number;
  data: string;
  preset?: Preset;
  /** Per-seed lines carry the per-prompt comparison. */
  raw: boolean;
  /** Files of --raw per-seed lines to pool (nothing is run). */
  pool?: string[];
}

const ALGORITHMS = ['ppo', 'rloo', 'dpo'] as const;
const REWARD_COVARIATES = ['none', 'length', 'length+likelihood'] as const;

export function parseSimArgs(argv: readonly string[]): SimOptions | 'help' {
  const { values, positionals } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      help: { type: 'boolean' }, url: { type: 'string' }, json: { type: 'boolean' }, rounds: { type: 'string' }, users: { type: 'string' },
      'judgements-per-round': { type: 'string' }, judgements: { type: 'string' }, minutes: { type: 'string' }, seed: { type: 'string' }, seeds: { type: 'string' },
      'kl-coef': { type: 'string' }, 'kl-budget': { type: 'string' }, exploitable: { type: 'boolean' }, 'gold-gate': { type: 'boolean' }, 'ppo-steps': { type: 'string' }, 'user-temperature': { type: 'string' }, lr: { type: 'string' },
      'eval-prompts': { type: 'string' }, 'samples-per-prompt': { type: 'string' }, sft: { type: 'string' }, data: { type: 'string' }, 'min-reward-accuracy': { type: 'string' }, keep: { type: 'boolean' },
      preset: { type: 'string' }, algorithm: { type: 'string' }, 'arena-alpha': { type: 'string' }, 'arena-max-judgements': { type: 'string' },
      'reward-covariates': { type: 'string' }, 'reward-length-weight': { type: 'string' }, raw: { type: 'boolean' }, pool: { type: 'boolean' },
    },
    allowPositionals: true,
  });
  if (values.help) return 'help';
  if (positionals.length && !values.pool) throw new Error(`unexpected argument ${positionals[0]} (files are read with --pool)`);
  if (values.pool && !positionals.length) throw new Error('--pool needs the files holding the seeds\' --raw lines');
  if (values.preset !== undefined && !Object.hasOwn(PRESETS, values.preset)) throw new Error(`--preset must be one of ${Object.keys(PRESETS).join(', ')}, got ${values.preset}`);
  const preset: Partial<SimOptions> = values.preset ? PRESETS[values.preset as Preset] : {};
  const num = (name: string, v: string | undefined, d: number, int = true): number => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0 || (int && !Number.isInteger(n))) throw new Error(`--${name} must be a ${int ? 'non-negative integer' : 'non-negative number'}, got ${v}`);
    return n;
  };
  const algorithm = values.algorithm ?? 'ppo';
  if (!(ALGORITHMS as readonly string[]).includes(algorithm)) throw new Error(`--algorithm must be one of ${ALGORITHMS.join(', ')}, got ${algorithm}`);
  const alpha = num('arena-alpha', values['arena-alpha'], 0.05, false);
  const loop: Record<string, unknown> = {};
  const covariates = values['reward-covariates'];
  if (covariates !== undefined) {
    if (!REWARD_COVARIATES.includes(covariates as (typeof REWARD_COVARIATES)[number])) throw new Error(`--reward-covariates must be one of ${REWARD_COVARIATES.join(', ')}, got ${covariates}`);
    loop.rewardCovariates = covariates;
  }
  if (values['reward-length-weight'] !== undefined) loop.rewardLengthWeight = num('reward-length-weight', values['reward-length-weight'], 1, false);
  if (!(alpha > 0 && alpha < 1)) throw new Error(`--arena-alpha must be in (0, 1), got ${alpha}`);
  return {
    ...(values.url ? { url: values.url } : {}),
    ...(values.preset ? { preset: values.preset as Preset } : {}),
    json: values.json ?? false,
    seed: num('seed', values.seed, 1),
    seeds: Math.max(1, num('seeds', values.seeds, 1)),
    rounds: num('rounds', values.rounds, preset.rounds ?? 4),
    users: Math.max(1, num('users', values.users, 16)),
    judgementsPerRound: num('judgements-per-round', values['judgements-per-round'], preset.judgementsPerRound ?? 1500),
    judgements: num('judgements', values.judgements, 100),
    minutes: num('minutes', values.minutes, 30, false),
    klCoef: num('kl-coef', values['kl-coef'], preset.klCoef ?? 0.05, false),
    klBudget: num('kl-budget', values['kl-budget'], preset.klBudget ?? 10, false),
    exploitable: values.exploitable ?? preset.exploitable ?? false,
    goldGate: values['gold-gate'] ?? false,
    algorithm: algorithm as (typeof ALGORITHMS)[number],
    ppoSteps: Math.max(1, num('ppo-steps', values['ppo-steps'], preset.ppoSteps ?? 40)),
    lr: num('lr', values.lr, preset.lr ?? 5e-5, false),
    userTemperature: num('user-temperature', values['user-temperature'], 1, false),
    evalPrompts: Math.max(1, num('eval-prompts', values['eval-prompts'], 256)),
    samplesPerPrompt: Math.max(1, num('samples-per-prompt', values['samples-per-prompt'], 4)),
    arenaAlpha: alpha,
    arenaMaxJudgements: Math.max(1, num('arena-max-judgements', values['arena-max-judgements'], 1500)),
    sft: values.sft ?? 'checkpoints/sft',
    data: values.data ?? 'data',
    minRewardAccuracy: num('min-reward-accuracy', values['min-reward-accuracy'], preset.minRewardAccuracy ?? 0.6, false),
    keep: values.keep ?? false,
    raw: values.raw ?? false,
    ...(values.pool ? { pool: positionals } : {}),
    ...(Object.keys(loop).length ? { loop } : {}),
  };
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
    parts_delta: figures.parts_delta,
    kl_to_sft: round3(mean(results.map((r) => r.kl_to_sft ?? NaN))),
    minutes: round3(results.reduce((a, r) => a + (r.minutes ?? 0), 0)),
    gold: figures.gold,
    gold_sft: figures.gold_sft,
    exploitable: results[0]?.exploitable ?? false,
    gold_gate: results[0]?.gold_gate ?? false,
    kl_coef: results[0]?.kl_coef ?? null,
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

async function main(): Promise<void> {
  let o: SimOptions | 'help';
  try {
    o = parseSimArgs(process.argv.slice(2));
  } catch (e) {
    log(`${(e as Error).message} (npm run simulate -- --help lists the options)`);
    process.exit(2);
  }
  if (o === 'help') return void console.log(HELP);
  if (o.pool) return void console.log(JSON.stringify(poolRawLines(o.pool.map((f) => readFileSync(f, 'utf8')))));
  if (o.url) return usersOnly(o);
  const result = await stories(o);
  if (o.json) console.log(JSON.stringify(result));
  else log(JSON.stringify(result, null, 2));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      log(`failed: ${(err as Error).stack ?? String(err)}`);
      process.exit(1);
    },
  );
}
