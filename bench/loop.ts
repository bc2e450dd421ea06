/**
 * The chat server while the online loop runs PPO beside it (LOOP=1): a temporary store seeded
 * with judgements, one loop iteration in the child process, and chat requests answered
 * throughout. The delay is `perf_hooks.monitorEventLoopDelay` on the server's thread, enabled
 * from the first PPO step to the end of the iteration.
 *
 * `benchLoop` serves and trains the "small" shape (random weights): the server's tokens/s over
 * 16 WebSocket streams while the loop trains (from its first PPO step on), as a share of the
 * same streams' tokens/s on the same server before the loop starts, and the event-loop delay p99
 * while it trains. Targets (issue 13): share ≥ 0.6, p99 < 50 ms.
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
import WebSocket from 'ws';
import { GPT } from '../model/gpt.ts';
import { saveCheckpoint } from '../model/checkpoint.ts';
import { benchTokenizer } from './bench-tokenizer.ts';
import { SHAPES } from './train.ts';

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
  /** With `streams`: tokens/s of the streams before the loop trained (idle) and while it trained. */
  idle_tokens_per_s?: number;
  training_tokens_per_s?: number;
  /** Stream requests that ended in an error (idle and training together). */
  stream_errors?: number;
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
  o: {
    ppoSteps?: number;
    timeoutMs?: number;
    loop?: Record<string, unknown>;
    afterIteration?: (p: LoopProbeContext) => Promise<void>;
    /** Writes the SFT checkpoint the server serves and the loop trains (default: the toy one). */
    sft?: (root: string) => Promise<string>;
    /** Streaming WebSocket chats kept in flight, measured idle (for `idleMs`, before the loop starts) and while PPO runs. */
    streams?: { n: number; maxTokens: number; idleMs: number };
  } = {},
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
  const sft = await (o.sft ?? saveToySft)(root);
  const databaseUrl = `sqlite:${join(root, 'feedback.sqlite')}`;
  const store = await openStore({ url: databaseUrl });
  await seedJudgements(store);
  const adminToken = randomBytes(18).toString('hex');
  const config = defaultServerConfig({ port: 0, host: '127.0.0.1', modelDir: sft, database: databaseUrl, loop: true, requestsPerMinute: 100_000, messagesPerSecond: 100_000, adminToken, registryPollMs: 100 });
  let idleTokensPerS: number | undefined;
  let streamErrors = 0;
  if (o.streams) {
    // The same server without the loop: what the streams get when nothing trains beside it.
    const idle = await startServer({ ...config, loop: false }, { store, ownStore: false, defaultMetrics: false, log: () => {} });
    try {
      await idle.ready;
      const load = streamLoad(`ws://127.0.0.1:${idle.port}/ws`, o.streams.n, o.streams.maxTokens);
      await sleep(o.streams.idleMs);
      const r = await load.stop();
      idleTokensPerS = r.tokensPerS;
      streamErrors += r.errors;
    } finally {
      await idle.close();
    }
  }
  let load: StreamLoad | undefined;
  let closing = false;
  const startLoad = (l: string) => {
    if (o.streams && !load && !closing && /ppo step \d+\//.test(l)) load = streamLoad(`ws://127.0.0.1:${srv.port}/ws`, o.streams.n, o.streams.maxTokens);
  };
  const srv = await startServer(config, { store, ownStore: false, defaultMetrics: false, log: (l) => (log(l), startLoad(l)), loop: toyLoopKnobs(root, sft, { ppoSteps: o.ppoSteps ?? 6, ...o.loop }) });
  const adminGet = async (path: string) => (await (await fetch(`${srv.url}/admin${path}`, { headers: { authorization: `Bearer ${adminToken}` } })).json()) as Record<string, unknown>;
  let chats = 0;
  let failures = 0;
  let servedAfter = '';
  let offered = '';
  let candidateServed = '';
  let trainingTokensPerS: number | undefined;
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
    if (load) {
      const r = await load.stop();
      trainingTokensPerS = r.tokensPerS;
      streamErrors += r.errors;
    }
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
    closing = true;
    await load?.stop();
    await srv.close();
    await store.close();
    rmSync(root, { recursive: true, force: true });
  }
  const ms = (ns: number) => Math.round((ns / 1e6) * 100) / 100;
  return { p99_ms: h.count ? ms(h.percentile(99)) : NaN, max_ms: h.count ? ms(h.max) : NaN, ppo_steps: ppoSteps, chats, chat_failures: failures, outcome, offered, candidate_served: candidateServed, served_after: servedAfter, log: lines,
    ...(o.streams ? { idle_tokens_per_s: idleTokensPerS, training_tokens_per_s: trainingTokensPerS, stream_errors: streamErrors } : {}),
  };
}

interface StreamLoad {
  /** Stops sending, waits for the replies in flight, and returns the tokens/s of every reply over the whole time. */
  stop(): Promise<{ tokensPerS: number; replies: number; errors: number }>;
}

/** `n` WebSocket chats, each sending its next message as soon as the previous reply ends. */
function streamLoad(wsUrl: string, n: number, maxTokens: number): StreamLoad {
  let running = true;
  let tokens = 0;
  let replies = 0;
  let errors = 0;
  const t0 = performance.now();
  const one = async (i: number): Promise<void> => {
    const ws = new WebSocket(wsUrl);
    let handler: (m: Record<string, unknown>) => void = () => {};
    ws.on('message', (d) => handler(JSON.parse(String(d)) as Record<string, unknown>));
    ws.on('error', () => handler({ type: 'error', code: 'socket_error' }));
    let open = true;
    ws.on('close', () => ((open = false), handler({ type: 'error', code: 'socket_closed' })));
    const next = (send: object | undefined, done: (m: Record<string, unknown>) => boolean) =>
      new Promise<Record<string, unknown>>((resolve) => {
        const timer = setTimeout(() => resolve({ type: 'error', code: 'timeout' }), 60_000);
        handler = (m) => {
          if (m.type === 'error' || done(m)) (clearTimeout(timer), resolve(m));
        };
        if (send) ws.send(JSON.stringify(send));
      });
    try {
      if ((await next(undefined, (m) => m.type === 'ready')).type !== 'ready') return void errors++;
      for (let turn = 0; running && open; turn++) {
        const conv = await next({ type: 'start', userId: `s${i}` }, (m) => m.type === 'conversation');
        if (conv.type === 'error') (errors++, await sleep(100));
        else {
          const reply = await next({ type: 'user_message', conversationId: conv.conversationId, content: `tell me about fruit number ${turn}`, params: { maxTokens, temperature: 1, topP: 1, seed: i * 1000 + turn } }, (m) => m.type === 'reply');
          if (reply.type === 'error') (errors++, await sleep(100));
          else (tokens += (reply.usage as { completionTokens: number }).completionTokens, replies++);
        }
      }
    } finally {
      ws.terminate();
    }
  };
  const all = Promise.all(Array.from({ length: n }, (_, i) => one(i)));
  let result: Promise<{ tokensPerS: number; replies: number; errors: number }> | undefined;
  return {
    stop() {
      running = false;
      result ??= all.then(() => ({ tokensPerS: Math.round((tokens * 1000) / (performance.now() - t0)), replies, errors }));
      return result;
    },
  };
}

/** A "small" (or tiny) SFT checkpoint with random weights and the benchmarks' tokenizer. */
function saveSft(shape: 'small' | 'tiny'): (root: string) => Promise<string> {
  return async (root) => {
    const s = SHAPES[shape];
    const tok = benchTokenizer(s.vocabSize);
    const config = { nLayer: s.nLayer, nHead: s.nHead, nEmbd: s.nEmbd, blockSize: s.blockSize, vocabSize: s.vocabSize };
    const gpt = GPT.create(config, 'policy', 41);
    const dir = join(root, 'sft');
    saveCheckpoint(dir, { weights: await gpt.exportWeights(), meta: { stage: 'sft', kind: 'policy', config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 1, metrics: {}, runConfig: {} }, tokenizer: tok.toJSON() });
    gpt.dispose();
    return dir;
  };
}

export async function benchLoop(o: { tiny?: boolean } = {}): Promise<Record<string, unknown>[]> {
  const shape = o.tiny ? 'tiny' : 'small';
  const streams = { n: o.tiny ? 4 : 16, maxTokens: o.tiny ? 8 : 32, idleMs: o.tiny ? 1500 : 6000 };
  const r = await runLoopProbe({
    ppoSteps: o.tiny ? 4 : 40,
    timeoutMs: o.tiny ? 90_000 : 120_000,
    sft: saveSft(shape),
    streams,
    // Every PPO step runs (the disagreement guard of the toy ensemble would stop PPO early), no checkpoints in between.
    loop: { disagreementTolerance: 1e9, checkpointEvery: 1000, evalEvery: 1000, maxTokens: o.tiny ? 6 : 24 },
  });
  const share = r.idle_tokens_per_s && r.training_tokens_per_s !== undefined ? +(r.training_tokens_per_s / r.idle_tokens_per_s).toFixed(3) : NaN;
  return [
    {
      bench: 'loop',
      shape,
      streams: streams.n,
      idle_tokens_per_s: r.idle_tokens_per_s,
      training_tokens_per_s: r.training_tokens_per_s,
      tokens_share: share,
      p99_ms: r.p99_ms,
      max_ms: r.max_ms,
      ppo_steps: r.ppo_steps,
      chats: r.chats,
      chat_failures: r.chat_failures,
      outcome: /^loop: (\w+)/.exec(r.outcome)?.[1] ?? 'none',
      stream_errors: r.stream_errors,
      // When the loop never reached PPO, where it was: the figures above then mean nothing.
      ...(r.ppo_steps ? {} : { last_log: r.log.filter((l) => !/^(GET|POST) /.test(l)).slice(-3) }),
    },
  ];
}
