/**
 * Event-loop delay of the chat server while the online loop runs PPO beside it (LOOP=1): a tiny
 * SFT policy, a temporary store seeded with judgements, one loop iteration in the child process,
 * and chat requests answered throughout. The delay is `perf_hooks.monitorEventLoopDelay` on the
 * server's thread, enabled from the first PPO step to the end of the iteration.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { initBackend } from '../model/backend.ts';
import { openStore } from '../feedback/open-store.ts';
import { defaultServerConfig } from '../server/config.ts';
import { startServer } from '../server/server.ts';
import { saveToySft, seedJudgements, toyLoopKnobs } from '../training/loop-fixture.ts';

export interface LoopProbeResult {
  p99_ms: number;
  max_ms: number;
  ppo_steps: number;
  chats: number;
  chat_failures: number;
  /** The iteration's final log line (`loop: promoted: …`), or '' when it did not finish in time. */
  outcome: string;
  /** Model the server answers with after the iteration (the loop's promotion reaches it through the registry). */
  served_after: string;
  log: string[];
}

/** Starts a server with the loop on, runs one iteration with chats in flight, measures the event loop. */
export async function runLoopProbe(o: { ppoSteps?: number; timeoutMs?: number } = {}): Promise<LoopProbeResult> {
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
    if (/^loop: (promoted|candidate|rejected|skipped):/.test(l)) outcome = l;
  };
  await initBackend({ backend: 'wasm', log: () => {} });
  const sft = await saveToySft(root);
  const databaseUrl = `sqlite:${join(root, 'feedback.sqlite')}`;
  const store = await openStore({ url: databaseUrl });
  await seedJudgements(store);
  const config = defaultServerConfig({ port: 0, host: '127.0.0.1', modelDir: sft, databaseUrl, loop: true, requestsPerMinute: 100_000 });
  const srv = await startServer(config, { store, ownStore: false, defaultMetrics: false, log, loop: toyLoopKnobs(root, sft, { ppoSteps: o.ppoSteps ?? 6 }) });
  let chats = 0;
  let failures = 0;
  let servedAfter = '';
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
    const until = Date.now() + 5_000;
    while (outcome.startsWith('loop: promoted') && Date.now() < until) {
      servedAfter = ((await (await fetch(`${srv.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]?.id ?? '';
      if (!servedAfter.startsWith('sft-')) break;
      await sleep(100);
    }
  } finally {
    h.disable();
    await srv.close();
    await store.close();
    rmSync(root, { recursive: true, force: true });
  }
  const ms = (ns: number) => Math.round((ns / 1e6) * 100) / 100;
  return { p99_ms: h.count ? ms(h.percentile(99)) : NaN, max_ms: h.count ? ms(h.max) : NaN, ppo_steps: ppoSteps, chats, chat_failures: failures, outcome, served_after: servedAfter, log: lines };
}

export async function benchLoop(): Promise<Record<string, unknown>[]> {
  const r = await runLoopProbe({ ppoSteps: 60 });
  return [{ bench: 'loop_event_loop_delay', shape: 'small', p99_ms: r.p99_ms, max_ms: r.max_ms, ppo_steps: r.ppo_steps, chats: r.chats, chat_failures: r.chat_failures }];
}
