/**
 * Load through the real server (in-process, 127.0.0.1, ephemeral port, temporary SQLite store),
 * "small" shape with random weights: `clients` WebSocket chat clients (default 200) talk for
 * `seconds` (default 120) while judgements stream in and the champion is hot-swapped `swaps` times
 * (default 5) through `/admin/promote`, alternating two checkpoints, evenly spread over the run.
 *
 * Each client, in a loop: a user message (`maxTokens` 32), then a thumb on the reply; every fourth
 * turn a `compare` and a `comparison` judgement on the pair; a new conversation every five turns
 * (keeps prompts short). `overloaded` and `rate_limited` are answered by waiting `Retry-After`
 * (the server's 1 s) and trying again; they are counted like every other error.
 *
 * Figures: `ttft_p50_ms` / `ttft_p99_ms` from sending a message to its first `delta`;
 * `tokens_per_s` completion tokens of finished replies over the run; `errors` by code (protocol
 * errors, failed judgements, a socket that closed, a reply that never came: `timeout`); RSS of the
 * process (server and clients) sampled every second: `rss_mb_start` after the warm-up (the first
 * 10% of the run, at least 2 s), `rss_mb_end` at the end, `rss_mb_series` 10 samples over the run;
 * `session_cache_mb_end` (live conversations' KV caches, bounded by `session_cache_mb_limit`) and
 * `heap_mb_end` say where the memory is.
 * The server runs with its defaults except those that count per address (every client here shares
 * 127.0.0.1: the per-client request limit and the per-address connection cap) and a queue long
 * enough for every client (`maxQueue` = clients). Each client is its own anonymous identity.
 *
 * Run: `npm run bench -- --json --only load [--clients 200] [--seconds 120] [--swaps 5] [--shape small|tiny]`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { initBackend } from '../model/backend.ts';
import { readCheckpointMeta, saveCheckpoint, versionId } from '../model/checkpoint.ts';
import { GPT, type GPTConfig } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { registerModelVersion } from '../feedback/model-versions.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { defaultServerConfig } from '../server/config.ts';
import { loadServedModel } from '../server/model-host.ts';
import { startServer } from '../server/server.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { benchTokenizer } from './bench-tokenizer.ts';

const SHAPES = {
  small: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 2048 },
  tiny: { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 64, vocabSize: 300 },
} as const satisfies Record<string, Omit<GPTConfig, 'vocabSize'> & { vocabSize: number }>;
export type LoadShape = keyof typeof SHAPES;
const TOKEN = 'bench-load-admin-token-0123456789abcdef';

export interface LoadOptions {
  clients?: number;
  seconds?: number;
  swaps?: number;
  shape?: LoadShape;
}

async function save(dir: string, tok: Tokenizer, shape: LoadShape, seed: number): Promise<string> {
  const config = { ...SHAPES[shape], vocabSize: tok.vocabSize };
  const gpt = GPT.create(config, 'policy', seed);
  saveCheckpoint(dir, { weights: await gpt.exportWeights(), meta: { stage: 'sft', kind: 'policy', config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 0, metrics: {}, runConfig: {} }, tokenizer: tok.toJSON() });
  gpt.dispose();
  return dir;
}

const percentile = (sorted: number[], q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : 0);
const rssMb = () => +(process.memoryUsage().rss / 2 ** 20).toFixed(1);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One client's socket: sends a request and waits for the messages that end it. */
class LoadClient {
  readonly #ws: WebSocket;
  #handlers = new Set<(m: Record<string, unknown>) => void>();
  closed = false;
  #n = 0;

  constructor(url: string) {
    this.#ws = new WebSocket(url);
    this.#ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as Record<string, unknown>;
      for (const h of [...this.#handlers]) h(m);
    });
    this.#ws.on('close', () => {
      this.closed = true;
      for (const h of [...this.#handlers]) h({ type: 'error', code: 'socket_closed' });
    });
    this.#ws.on('error', () => {});
  }

  /** Sends `msg` (with a fresh requestId) and resolves with the first message `done` accepts, or an error about it. */
  request(msg: Record<string, unknown>, done: (m: Record<string, unknown>) => boolean, onMessage?: (m: Record<string, unknown>) => void, ms = 120_000): Promise<Record<string, unknown>> {
    const requestId = `r${++this.#n}`;
    return new Promise((resolve) => {
      const finish = (m: Record<string, unknown>) => {
        clearTimeout(timer);
        this.#handlers.delete(h);
        resolve(m);
      };
      const timer = setTimeout(() => finish({ type: 'error', code: 'timeout' }), ms);
      const h = (m: Record<string, unknown>) => {
        if (m.code === 'socket_closed') return finish(m);
        if (m.requestId !== requestId && !(m.type === 'error' && m.requestId === undefined)) return;
        onMessage?.(m);
        if (m.type === 'error' || done(m)) finish(m);
      };
      this.#handlers.add(h);
      if (this.closed || this.#ws.readyState !== WebSocket.OPEN) return finish({ type: 'error', code: 'socket_closed' });
      this.#ws.send(JSON.stringify({ ...msg, requestId }));
    });
  }

  ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      const h = (m: Record<string, unknown>) => {
        if (m.type === 'ready') (this.#handlers.delete(h), resolve());
        else if (m.code === 'socket_closed') reject(new Error('socket closed before ready'));
      };
      this.#handlers.add(h);
    });
  }

  close(): void {
    this.#ws.close();
  }
}

export async function benchLoad(opts: LoadOptions = {}): Promise<Record<string, unknown>> {
  const clients = opts.clients ?? 200;
  const seconds = opts.seconds ?? 120;
  const swaps = opts.swaps ?? 5;
  const shape = opts.shape ?? 'small';
  await initBackend({ log: () => {} });
  const root = mkdtempSync(join(tmpdir(), 'bench-load-'));
  const tok = benchTokenizer(SHAPES[shape].vocabSize);
  const dirA = await save(join(root, 'sft'), tok, shape, 1);
  const dirB = await save(join(root, 'ppo'), tok, shape, 2);
  const store = await openTempStore({ prefix: 'bench_load' });
  const config = defaultServerConfig({ port: 0, host: '127.0.0.1', adminToken: TOKEN, requestsPerMinute: 1_000_000, maxQueue: Math.max(64, clients), maxConnectionsPerAddress: clients + 8, maxConnections: Math.max(2000, clients + 8) });
  const srv = await startServer(config, { model: await loadServedModel(dirA), store, ownStore: true, defaultMetrics: false, log: () => {} });
  await srv.ready;
  const idA = srv.chat()!.model.version;
  const metaB = readCheckpointMeta(dirB);
  const idB = versionId(dirB, metaB.sha256);
  await registerModelVersion(store.db, { id: idB, kind: 'policy', checkpoint: dirB, sha256: metaB.sha256, stage: 'policy' });

  const ttft: number[] = [];
  const errors: Record<string, number> = {};
  const fail = (code: unknown) => (errors[String(code)] = (errors[String(code)] ?? 0) + 1);
  let tokens = 0;
  let replies = 0;
  let judgements = 0;
  let swapsDone = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const warmup = Math.max(2000, seconds * 100);
  const rss: { t: number; mb: number }[] = [];
  const sampler = setInterval(() => rss.push({ t: performance.now() - t0, mb: rssMb() }), 1000);
  const retryMs = config.retryAfterSeconds * 1000;

  const runClient = async (i: number) => {
    const c = new LoadClient(`ws://127.0.0.1:${srv.port}/ws`);
    await c.ready();
    let conversationId = '';
    for (let turn = 0; performance.now() < end; turn++) {
      if (turn % 5 === 0) {
        const conv = await c.request({ type: 'start' }, (m) => m.type === 'conversation');
        if (conv.type === 'error') {
          fail(conv.code);
          if (c.closed) return;
          await sleep(retryMs);
          turn = -1;
          continue;
        }
        conversationId = String(conv.conversationId);
      }
      const compare = turn % 4 === 3;
      const sent = performance.now();
      let first = 0;
      const got: Record<string, unknown>[] = [];
      const last = await c.request(
        { type: compare ? 'compare' : 'user_message', conversationId, content: `tell me about word${(i * 31 + turn) % 997}`, params: { maxTokens: 32, temperature: 1 } },
        (m) => (compare ? m.type === 'candidates' : m.type === 'reply'),
        (m) => {
          if (m.type === 'delta' && !first) first = performance.now();
          if (m.type === 'reply') got.push(m);
        },
      );
      if (last.type === 'error') {
        fail(last.code);
        if (c.closed) return;
        if (last.code === 'overloaded' || last.code === 'rate_limited') await sleep(retryMs);
        continue;
      }
      if (first) ttft.push(first - sent);
      for (const r of got) tokens += (r.usage as { completionTokens: number }).completionTokens;
      replies += got.length;
      const judgement = compare
        ? { type: 'comparison', a: (last.messageIds as string[])[0], b: (last.messageIds as string[])[1], choice: turn % 8 === 3 ? 'a' : 'b' }
        : { type: 'thumb', messageId: got[0]!.messageId, value: turn % 2 ? 'up' : 'down', ...(turn % 2 ? {} : { reason: 'unhelpful' }) };
      const ack = await c.request(judgement, (m) => m.type === 'feedback_ack');
      if (ack.type === 'error') fail(ack.code);
      else judgements++;
    }
    c.close();
  };

  const swapper = async () => {
    for (let s = 0; s < swaps; s++) {
      const at = t0 + (seconds * 1000 * (s + 0.5)) / swaps;
      await sleep(Math.max(0, at - performance.now()));
      const r = await fetch(`${srv.url}/admin/promote`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ versionId: s % 2 === 0 ? idB : idA, reason: 'bench load' }) });
      if (r.status === 200) swapsDone++;
      else fail(`swap_${((await r.json()) as { error?: { code?: string } }).error?.code ?? r.status}`);
    }
  };

  const all = [...Array.from({ length: clients }, (_, i) => runClient(i).catch(() => fail('client_failed'))), swapper()];
  await Promise.all(all);
  const elapsed = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  const sessionCacheMb = +(srv.chat()!.deps.sessions.bytes / 2 ** 20).toFixed(1);
  const heapMb = +(process.memoryUsage().heapUsed / 2 ** 20).toFixed(1);
  await srv.close();
  rmSync(root, { recursive: true, force: true });

  const sorted = [...ttft].sort((a, b) => a - b);
  const afterWarmup = rss.filter((s) => s.t >= warmup);
  const step = Math.max(1, Math.floor(rss.length / 10));
  return {
    bench: 'load',
    shape,
    clients,
    seconds: +elapsed.toFixed(1),
    swaps: swapsDone,
    ttft_p50_ms: +percentile(sorted, 0.5).toFixed(1),
    ttft_p99_ms: +percentile(sorted, 0.99).toFixed(1),
    tokens_per_s: +(tokens / elapsed).toFixed(1),
    replies,
    judgements,
    errors,
    rss_mb_start: afterWarmup[0]?.mb ?? rss[0]?.mb ?? rssMb(),
    rss_mb_end: rss[rss.length - 1]?.mb ?? rssMb(),
    rss_mb_series: rss.filter((_, k) => k % step === 0).map((s) => s.mb),
    session_cache_mb_end: sessionCacheMb,
    session_cache_mb_limit: +(config.sessionCacheBytes / 2 ** 20).toFixed(1),
    heap_mb_end: heapMb,
  };
}

if (isMain(import.meta.url)) {
  const LoadConfig = z.object({
    clients: z.number().int().positive().default(200).describe('concurrent WebSocket clients'),
    seconds: z.number().positive().default(120).describe('duration'),
    swaps: z.number().int().nonnegative().default(5).describe('hot swaps during the run'),
    shape: z.enum(['tiny', 'small']).default('small').describe('model shape'),
    json: z.boolean().default(true).describe('one JSON object on stdout (--no-json: key=value)'),
  });
  await runCommand({ usage: 'node --import tsx bench/load.ts [options]', schema: LoadConfig, envPrefix: 'BENCH' }, async ({ json, ...o }) => printFigures([await benchLoad(o)], json));
  process.exit(process.exitCode ?? 0);
}
