/**
 * `npm run simulate`: a population of simulated users (`sim-users.ts`) chats with a server over
 * the public WebSocket protocol and judges its replies with a hidden gold rubric
 * (`gold-rubric.ts`).
 *
 *   npm run simulate -- --url ws://127.0.0.1:8080/ws --users 8 --judgements 200
 *       users only, against a running server (its store and loop are its own business)
 *
 *   npm run simulate -- --json [--rounds 4 --users 16 --judgements-per-round 1500 --minutes 30
 *                               --seed 1 --kl-coef 0.05 --exploitable]
 *       the whole story on one machine: a server on `checkpoints/sft` with a temporary store, the
 *       users chat and judge, the online loop (in this process, between rounds) trains a reward
 *       model and runs PPO and its gate promotes (or not), the server follows the champion alias,
 *       and so on for every round. Finally the champion and a second server on the SFT checkpoint
 *       (its own store, so its champion stays SFT) answer the same held-out prompts with the same
 *       seeds, and one JSON line goes to stdout:
 *       {"rounds","judgements","gold_win_rate_vs_sft","kl_to_sft","proxy_reward","gold_reward","minutes",…}
 *       plus `comparisons` (the comparison at the users' temperature, the headline, and at the
 *       server's default, with the mean rubric parts of each side), `iterations` (per round: the
 *       version the users judged, their mean score under their own rubric `users_gold`, the
 *       loop's status, reason and metrics) and `curve` (every PPO evaluation: KL, proxy, gold).
 *
 * The loop sees the judgements in the store only. The honest rubric is handed to it as `gold`
 * (a `RewardSource` for evaluation: its Goodhart guard and gold gate), never as training signal.
 * With `--exploitable` the users judge with a rubric that has a loophole while the gold signal
 * stays honest; `--kl-coef 0` removes the KL leash (and the KL budget guard).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GoldRewardSource, GoldRubric, readDefinitionPrompts, Rng, type DefinitionPrompt } from './gold-rubric.ts';
import { runPopulation, type SessionResult } from './sim-users.ts';
import { WsClient } from '../client/ws-client.ts';
import { getMetrics } from '../feedback/runs.ts';
import { DEFAULT_SAMPLING } from '../model/sampling.ts';
import type { FeedbackStore } from '../feedback/index.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export const HELP = `npm run simulate -- [options]
  --url <ws url>               users only, against a running server (default: the whole story)
  --json                       the whole story; print one JSON line at the end
  --rounds <n>                 chat-then-train rounds (default 4)
  --users <n>                  simulated users chatting concurrently (default 16)
  --judgements-per-round <n>   judgements (sessions) per round (default 1500)
  --judgements <n>             with --url: judgements in all (default 100)
  --minutes <m>                wall-time budget; no new round starts past it (default 30)
  --seed <n>                   seed of users, judges and the loop (default 1)
  --kl-coef <β>                PPO KL coefficient; 0 removes the leash and the KL budget (default 0.05)
  --exploitable                users judge with a rubric that has a loophole (gold stays honest)
  --user-temperature <t>       sampling temperature of the users' chats and of the final comparison (default 1)
  --ppo-steps <n>              PPO steps per round (default 40)
  --lr <x>                     PPO learning rate (default 5e-5)
  --eval-prompts <n>           held-out prompts of the final champion-vs-SFT comparison (default 256)
  --sft <dir>                  SFT checkpoint (default checkpoints/sft)
  --data <dir>                 where dialogues.{train,val}.jsonl are (default data, from npm run build-data)
  --min-reward-accuracy <x>    the loop's guard on reward-model held-out accuracy (default 0.6)
  --keep                       keep the temporary store and checkpoints
`;

export interface SimOptions {
  url?: string;
  json: boolean;
  rounds: number;
  users: number;
  judgementsPerRound: number;
  judgements: number;
  minutes: number;
  seed: number;
  klCoef: number;
  exploitable: boolean;
  ppoSteps: number;
  userTemperature: number;
  lr: number;
  evalPrompts: number;
  sft: string;
  data: string;
  minRewardAccuracy: number;
  keep: boolean;
}

export function parseSimArgs(argv: readonly string[]): SimOptions | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      help: { type: 'boolean' }, url: { type: 'string' }, json: { type: 'boolean' }, rounds: { type: 'string' }, users: { type: 'string' },
      'judgements-per-round': { type: 'string' }, judgements: { type: 'string' }, minutes: { type: 'string' }, seed: { type: 'string' },
      'kl-coef': { type: 'string' }, exploitable: { type: 'boolean' }, 'ppo-steps': { type: 'string' }, 'user-temperature': { type: 'string' }, lr: { type: 'string' },
      'eval-prompts': { type: 'string' }, sft: { type: 'string' }, data: { type: 'string' }, 'min-reward-accuracy': { type: 'string' }, keep: { type: 'boolean' },
    },
  });
  if (values.help) return 'help';
  const num = (name: string, v: string | undefined, d: number, int = true): number => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0 || (int && !Number.isInteger(n))) throw new Error(`--${name} must be a ${int ? 'non-negative integer' : 'non-negative number'}, got ${v}`);
    return n;
  };
  return {
    ...(values.url ? { url: values.url } : {}),
    json: values.json ?? false,
    rounds: num('rounds', values.rounds, 4),
    users: Math.max(1, num('users', values.users, 16)),
    judgementsPerRound: num('judgements-per-round', values['judgements-per-round'], 1500),
    judgements: num('judgements', values.judgements, 100),
    minutes: num('minutes', values.minutes, 30, false),
    seed: num('seed', values.seed, 1),
    klCoef: num('kl-coef', values['kl-coef'], 0.05, false),
    exploitable: values.exploitable ?? false,
    ppoSteps: Math.max(1, num('ppo-steps', values['ppo-steps'], 40)),
    lr: num('lr', values.lr, 5e-5, false),
    userTemperature: num('user-temperature', values['user-temperature'], 1, false),
    evalPrompts: Math.max(1, num('eval-prompts', values['eval-prompts'], 256)),
    sft: values.sft ?? 'checkpoints/sft',
    data: values.data ?? 'data',
    minRewardAccuracy: num('min-reward-accuracy', values['min-reward-accuracy'], 0.6, false),
    keep: values.keep ?? false,
  };
}

const log = (line: string): void => void process.stderr.write(`simulate: ${line}\n`);

export interface ServerChild {
  child: ChildProcess;
  port: number;
  wsUrl: string;
  httpUrl: string;
  stop(): Promise<void>;
}

/** Starts `server/main.ts` as a child process on an ephemeral port of 127.0.0.1 and waits for /healthz. */
export async function startServerProcess(o: { modelDir: string; databaseUrl: string; name: string }): Promise<ServerChild> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts', '--port', '0', '--host', '127.0.0.1', '--model-dir', o.modelDir, '--database-url', o.databaseUrl, '--requests-per-minute', '1000000', '--messages-per-second', '100000'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const reap = (): void => void child.kill('SIGKILL');
  process.once('exit', reap);
  child.once('exit', () => process.off('exit', reap));
  const port = await new Promise<number>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${o.name} server did not start within 60 s:\n${err}`)), 60_000);
    child.stderr!.on('data', (d) => {
      err += String(d);
      const m = err.match(/listening on [^:\s]+:(\d+)/);
      if (m) (clearTimeout(timer), res(Number(m[1])));
    });
    child.once('exit', (code) => (clearTimeout(timer), rej(new Error(`${o.name} server exited (${code}):\n${err}`))));
  });
  child.once('exit', (code, signal) => log(`${o.name} server exited (${code ?? signal}); its last output:\n${err.slice(-3000)}`));
  const httpUrl = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    const r = await fetch(`${httpUrl}/healthz`).catch(() => undefined);
    if (r?.ok) break;
    if (i > 600 || child.exitCode !== null) throw new Error(`${o.name} server never became healthy:\n${err}`);
    await new Promise((r2) => setTimeout(r2, 100));
  }
  return {
    child, port, httpUrl, wsUrl: `ws://127.0.0.1:${port}/ws`,
    stop: () => new Promise<void>((res) => {
      if (child.exitCode !== null) return res();
      child.once('exit', () => res());
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    }),
  };
}

/**
 * The version a server serves. Retries network errors: after the loop has held this process's
 * event loop for seconds, the pooled keep-alive connection may be one the server already closed.
 */
async function servedVersion(httpUrl: string): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      const r = (await (await fetch(`${httpUrl}/healthz`)).json()) as { modelVersion?: string };
      return String(r.modelVersion);
    } catch (e) {
      if (attempt >= 3) throw new Error(`GET ${httpUrl}/healthz: ${(e as Error).message} (${String(((e as Error).cause as Error | undefined)?.message ?? '')})`);
    }
  }
}

/** Mean rubric parts of a set of replies (and their mean length in words). */
export type RubricParts = Record<'format' | 'overlap' | 'length' | 'empty' | 'clean' | 'words', number>;

/** The same held-out prompts, same seeds, to two servers; gold scores of both replies and the mean parts of each side's. */
export async function compareServers(a: string, b: string, prompts: readonly DefinitionPrompt[], rubric: GoldRubric, params: Record<string, unknown>): Promise<{ winRate: number; goldA: number; goldB: number; partsA: RubricParts; partsB: RubricParts }> {
  const [sa, sb] = await Promise.all([WsClient.connect(a), WsClient.connect(b)]);
  let wins = 0, ga = 0, gb = 0;
  const zero = (): RubricParts => ({ format: 0, overlap: 0, length: 0, empty: 0, clean: 0, words: 0 });
  const partsA = zero(), partsB = zero();
  const add = (into: RubricParts, prompt: string, reply: { content: string; finishReason: string }): number => {
    const br = rubric.breakdown(prompt, reply.content, reply.finishReason === 'stop');
    for (const k of ['format', 'overlap', 'length', 'empty', 'clean'] as const) into[k] += br[k] / prompts.length;
    into.words += reply.content.trim().split(/\s+/).filter(Boolean).length / prompts.length;
    return rubric.score(prompt, reply.content, reply.finishReason === 'stop');
  };
  try {
    await Promise.all([0, 1, 2, 3].map(async (lane) => {
      for (let i = lane; i < prompts.length; i += 4) {
        const p = prompts[i]!;
        const ps = { ...params, seed: 1000 + i };
        const [ra, rb] = await Promise.all([sa.say((await sa.start({ userId: 'sim-eval' })).conversationId, p.prompt, ps), sb.say((await sb.start({ userId: 'sim-eval' })).conversationId, p.prompt, ps)]);
        const sA = add(partsA, p.prompt, ra);
        const sB = add(partsB, p.prompt, rb);
        ga += sA;
        gb += sB;
        wins += sA > sB ? 1 : sA === sB ? 0.5 : 0;
      }
    }));
  } finally {
    sa.close();
    sb.close();
  }
  const r3 = (x: RubricParts): RubricParts => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, round3(v) ?? NaN])) as RubricParts;
  return { winRate: wins / prompts.length, goldA: ga / prompts.length, goldB: gb / prompts.length, partsA: r3(partsA), partsB: r3(partsB) };
}

function dialoguePrompts(dir: string): { train: DefinitionPrompt[]; val: DefinitionPrompt[] } {
  const f = (n: string) => resolve(ROOT, dir, `dialogues.${n}.jsonl`);
  if (!existsSync(f('train')) || !existsSync(f('val'))) throw new Error(`${dir}/dialogues.{train,val}.jsonl are missing: run \`npm run build-data\` first`);
  return { train: readDefinitionPrompts(f('train')), val: readDefinitionPrompts(f('val')) };
}

/** Users only, against a running server. */
async function usersOnly(o: SimOptions): Promise<void> {
  const { train } = dialoguePrompts(o.data);
  const rubric = new GoldRubric(train, { exploitable: o.exploitable });
  const t0 = Date.now();
  const out = await runPopulation(o.url!, { users: o.users, sessions: o.judgements, prompts: train, rubric, seed: o.seed });
  const summary = { judgements: out.length, byKind: countKinds(out), meanGold: mean(out.flatMap((s) => s.gold)), seconds: (Date.now() - t0) / 1000 };
  if (o.json) console.log(JSON.stringify(summary));
  else log(JSON.stringify(summary));
}

function countKinds(out: readonly SessionResult[]): Record<string, number> {
  const k: Record<string, number> = {};
  for (const s of out) k[s.kind] = (k[s.kind] ?? 0) + 1;
  return k;
}

const mean = (xs: readonly number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const round3 = (x: number): number | null => (Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null);

/** The whole story (see the file's comment). */
export async function story(o: SimOptions): Promise<Record<string, unknown>> {
  const t0 = Date.now();
  const deadline = t0 + o.minutes * 60_000;
  const { train, val } = dialoguePrompts(o.data);
  const honest = new GoldRubric([...train, ...val]);
  const users = new GoldRubric(train, { exploitable: o.exploitable });
  const evalSet = shuffle(val, new Rng(o.seed + 17)).slice(0, o.evalPrompts);
  const tmp = mkdtempSync(join(tmpdir(), 'simulate-'));
  const dbUrl = `sqlite:${join(tmp, 'feedback.sqlite')}`;
  const sftDir = resolve(ROOT, o.sft);
  log(`temporary store and checkpoints in ${tmp}`);

  // The loop runs in this process between rounds; the servers are child processes.
  const { initBackend } = await import('../model/backend.ts');
  const { openStore } = await import('../feedback/index.ts');
  const { Tokenizer } = await import('../model/tokenizer.ts');
  const { loadCheckpoint } = await import('../model/checkpoint.ts');
  const { OnlineLoopConfig, runOnlineIteration } = await import('../training/online-loop.ts');
  await initBackend({ log });
  const tok = Tokenizer.fromJSON(loadCheckpoint(sftDir, { kind: 'policy' }).tokenizer);
  const gold = new GoldRewardSource(honest, tok.specialId('<|end|>'));

  const server = await startServerProcess({ modelDir: sftDir, databaseUrl: dbUrl, name: 'champion' });
  const store = await openStore({ url: dbUrl });
  const iterations: (Record<string, number | null | string> & { round: number; status: string })[] = [];
  const curve: CurvePoint[] = [];
  let judgements = 0;
  let rounds = 0;
  try {
    const cfg = OnlineLoopConfig.parse({
      database: dbUrl, sft: sftDir, checkpoints: join(tmp, 'checkpoints'), minNewJudgements: 1, once: true, rewardEpochs: 1, rewardLr: 3e-4,
      ppoSteps: o.ppoSteps, batchSize: 16, minibatchSize: 8, epochs: 4, maxTokens: 32, lr: o.lr, klCoef: o.klCoef,
      ...(o.klCoef === 0 ? { klBudget: 1e9 } : {}),
      evalPrompts: 64, evalEvery: 5, minRewardAccuracy: o.minRewardAccuracy, autoPromote: true, seed: o.seed,
    });
    for (let r = 1; r <= o.rounds && Date.now() < deadline; r++) {
      const served = await servedVersion(server.httpUrl);
      const out = await runPopulation(server.wsUrl, { users: o.users, sessions: o.judgementsPerRound, prompts: train, rubric: users, seed: o.seed, round: r, userOptions: { rankSize: 4, params: { temperature: o.userTemperature, maxTokens: 48 } } });
      judgements += out.length;
      log(`round ${r}: ${out.length} judgements on ${served} (${JSON.stringify(countKinds(out))}), users' mean score ${mean(out.flatMap((s) => s.gold)).toFixed(3)}`);
      const res = await runOnlineIteration(store, cfg, { gold, log: (l) => log(l) });
      rounds = r;
      iterations.push({ round: r, served, users_gold: round3(mean(out.flatMap((s) => s.gold))), status: res.status, reason: res.reason, ...Object.fromEntries(Object.entries(res.metrics).map(([k, v]) => [k, round3(v)])) });
      if (res.runId) curve.push(...(await evalCurve(store, res.runId)).map((p) => ({ round: r, ...p })));
      log(`round ${r}: ${res.status}: ${res.reason}`);
      if (res.status === 'promoted' && res.policyVersion) {
        for (let i = 0; i < 100 && (await servedVersion(server.httpUrl)) !== res.policyVersion; i++) await new Promise((x) => setTimeout(x, 100));
        log(`round ${r}: the server now serves ${await servedVersion(server.httpUrl)}`);
      }
    }
    const champion = await servedVersion(server.httpUrl);
    const sftServer = await startServerProcess({ modelDir: sftDir, databaseUrl: `sqlite:${join(tmp, 'sft-reference.sqlite')}`, name: 'sft' });
    // The headline comparison samples as the users chat; the server's default temperature is reported beside it.
    const comparisons: { temperature: number; win_rate: number | null; gold: number | null; gold_sft: number | null; champion_parts: RubricParts; sft_parts: RubricParts }[] = [];
    try {
      for (const temperature of [...new Set([o.userTemperature, DEFAULT_SAMPLING.temperature])]) {
        const c = await compareServers(server.wsUrl, sftServer.wsUrl, evalSet, honest, { temperature, maxTokens: 48 });
        comparisons.push({ temperature, win_rate: round3(c.winRate), gold: round3(c.goldA), gold_sft: round3(c.goldB), champion_parts: c.partsA, sft_parts: c.partsB });
        log(`champion ${champion} vs SFT at temperature ${temperature} on ${evalSet.length} held-out prompts: gold win rate ${c.winRate.toFixed(3)}, gold ${c.goldA.toFixed(3)} vs ${c.goldB.toFixed(3)}`);
      }
    } finally {
      await sftServer.stop();
    }
    const headline = comparisons[0]!;
    // KL to SFT and proxy score of the final champion, from the last iteration that measured them.
    const measured = (key: 'Kl' | 'Proxy'): number | null => {
      for (const it of [...iterations].reverse()) {
        const v = it.status === 'promoted' ? it[`candidate${key}`] : it[`champion${key}`];
        if (typeof v === 'number') return v;
      }
      return null;
    };
    return {
      rounds,
      judgements,
      gold_win_rate_vs_sft: headline.win_rate,
      kl_to_sft: measured('Kl'),
      proxy_reward: measured('Proxy'),
      gold_reward: headline.gold,
      gold_reward_sft: headline.gold_sft,
      minutes: round3((Date.now() - t0) / 60_000),
      champion,
      eval_prompts: evalSet.length,
      comparisons,
      kl_coef: o.klCoef,
      exploitable: o.exploitable,
      iterations,
      curve,
    };
  } finally {
    await store.close();
    await server.stop();
    if (!o.keep) rmSync(tmp, { recursive: true, force: true });
  }
}

/** One evaluation of a PPO run's policy on held-out prompts: KL to SFT per reply, the proxy (reward model) and gold scores. */
export interface CurvePoint {
  round?: number;
  step: number;
  kl: number;
  proxy: number;
  gold: number;
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

function shuffle<T>(xs: readonly T[], rng: Rng): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

async function main(): Promise<void> {
  const o = parseSimArgs(process.argv.slice(2));
  if (o === 'help') return void console.log(HELP);
  if (o.url) return usersOnly(o);
  const result = await story(o);
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
