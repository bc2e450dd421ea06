/**
 * Event-loop delay of the chat server while the online loop runs PPO beside it (LOOP=1): a tiny
 * SFT policy, a temporary store seeded with judgements, one loop iteration in the child process,
 * and chat requests answered throughout. The delay is `perf_hooks.monitorEventLoopDelay` on the
 * server's thread, enabled from the first PPO step to the end of the iteration.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { initBackend } from '../model/backend.ts';
import { openStore, type FeedbackStore } from '../feedback/open-store.ts';
import { resolveAlias } from '../feedback/model-versions.ts';
import { defaultServerConfig } from '../server/config.ts';
import { startServer } from '../server/server.ts';
import { saveToySft, seedJudgements, toyLoopKnobs } from '../training/loop-fixture.ts';

export interface LoopProbeResult {
  p99_ms: number;
  max_ms: number;
  ppo_steps: number;
  chats: number;
  chat_failures: number;
  /** The iteration's final log line (`loop: offered: …`, `loop: rejected: …`, …), or '' when it did not finish in time. */
  outcome: string;
  /** The version the loop offered to the arena (the store's `candidate` alias) after an `offered` outcome, else ''. */
  offered: string;
  /** The candidate the server loaded from the registry after the iteration (`/admin/canary`), '' when none within 5 s. */
  candidate_served: string;
  /** Model the server answers with (`/v1/models`) at the end: the champion, which only the users' arena moves. */
  served_after: string;
  log: string[];
}

/** What `afterIteration` gets: the server (still up, the loop process still running) and the probe's log. */
export interface LoopProbeContext {
  url: string;
  wsUrl: string;
  /** The server's ADMIN_TOKEN (random, per probe). */
  adminToken: string;
  store: FeedbackStore;
  /** Every log line so far (the server's and the loop process's). */
  log: readonly string[];
  /** Resolves with the first log line (from `from` on) matching `re`; rejects after `timeoutMs`. */
  waitForLog(re: RegExp, timeoutMs: number, from?: number): Promise<string>;
}

/**
 * Starts a server with the loop on, runs one iteration with chats in flight, measures the event
 * loop over it; then, with the server and the loop still running, `afterIteration` (tests: the
 * users' arena deciding on the offered candidate). `loop` overrides the toy loop knobs.
 */
export async function runLoopProbe(
  o: { ppoSteps?: number; timeoutMs?: number; loop?: Record<string, unknown>; afterIteration?: (p: LoopProbeContext) => Promise<void> } = {},
): Promise<LoopProbeResult> {
  const root = mkdtempSync(join(tmpdir(), 'loop-probe-'));
  const lines: string[] = [];
  const h = monitorEventLoopDelay({ resolution: 5 });
  let ppoSteps = 0;
  let outcome = '';
  const log = (l: string) => {
    lines.push(l);
    const m = /ppo step (\d+)\//.exec(l);
    if (m) {
      if (!ppoSteps) h.enable();
      ppoSteps = Number(m[1]);
    }
    if (!outcome && /^loop: (offered|promoted|candidate|rejected|skipped):/.test(l)) outcome = l;
  };
  await initBackend({ backend: 'wasm', log: () => {} });
  const sft = await saveToySft(root);
  const databaseUrl = `sqlite:${join(root, 'feedback.sqlite')}`;
  const store = await openStore({ url: databaseUrl });
  await seedJudgements(store);
  const adminToken = randomBytes(18).toString('hex');
  const config = defaultServerConfig({ port: 0, host: '127.0.0.1', modelDir: sft, database: databaseUrl, loop: true, requestsPerMinute: 100_000, adminToken, registryPollMs: 100 });
  const srv = await startServer(config, { store, ownStore: false, defaultMetrics: false, log, loop: toyLoopKnobs(root, sft, { ppoSteps: o.ppoSteps ?? 6, ...o.loop }) });
  const adminGet = async (path: string) => (await (await fetch(`${srv.url}/admin${path}`, { headers: { authorization: `Bearer ${adminToken}` } })).json()) as Record<string, unknown>;
  let chats = 0;
  let failures = 0;
  let servedAfter = '';
  let offered = '';
  let candidateServed = '';
  try {
    await srv.ready;
    const deadline = Date.now() + (o.timeoutMs ?? 50_000);
    while (!outcome && Date.now() < deadline) {
      const r = await fetch(`${srv.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'say a fruit' }], max_tokens: 4, seed: chats }),
      }).catch(() => undefined);
      if (r?.ok && ((await r.json()) as { choices?: unknown[] }).choices?.length) chats++;
      else failures++;
      await sleep(20);
    }
    h.disable();
    if (outcome.startsWith('loop: offered')) {
      offered = (await resolveAlias(store.db, 'candidate')) ?? '';
      const until = Date.now() + 5_000;
      while (offered && candidateServed !== offered && Date.now() < until) {
        candidateServed = String((await adminGet('/canary')).candidate ?? '');
        if (candidateServed !== offered) await sleep(100);
      }
    }
    if (o.afterIteration) {
      const waitForLog = async (re: RegExp, timeoutMs: number, from = 0): Promise<string> => {
        const until = Date.now() + timeoutMs;
        for (;;) {
          const hit = lines.slice(from).find((l) => re.test(l));
          if (hit !== undefined) return hit;
          if (Date.now() > until) throw new Error(`no log line matching ${re} within ${timeoutMs} ms; last lines:\n${lines.slice(-12).join('\n')}`);
          await sleep(100);
        }
      };
      await o.afterIteration({ url: srv.url, wsUrl: `ws://127.0.0.1:${srv.port}/ws`, adminToken, store, log: lines, waitForLog });
    }
    servedAfter = ((await (await fetch(`${srv.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]?.id ?? '';
  } finally {
    h.disable();
    await srv.close();
    await store.close();
    rmSync(root, { recursive: true, force: true });
  }
  const ms = (ns: number) => Math.round((ns / 1e6) * 100) / 100;
  return { p99_ms: h.count ? ms(h.percentile(99)) : NaN, max_ms: h.count ? ms(h.max) : NaN, ppo_steps: ppoSteps, chats, chat_failures: failures, outcome, offered, candidate_served: candidateServed, served_after: servedAfter, log: lines };
}

export async function benchLoop(): Promise<Record<string, unknown>[]> {
  const r = await runLoopProbe({ ppoSteps: 60 });
  return [{ bench: 'loop_event_loop_delay', shape: 'small', p99_ms: r.p99_ms, max_ms: r.max_ms, ppo_steps: r.ppo_steps, chats: r.chats, chat_failures: r.chat_failures }];
}
