/**
 * Serving speed through the real server (in-process, ephemeral port, temporary SQLite store),
 * over WebSocket, on the "small" shape with random weights:
 *
 * - `concurrency: 1` and `16`: aggregate generated tokens per second over that many simultaneous
 *   streams, with time-to-first-token percentiles (from sending `user_message` to the first `delta`);
 * - `ttft_idle_100`: time to first token at idle for a 100-token prompt;
 * - `decode_step_ms_n1` / `_n16`: the model's own batched decode step, measured directly, so a
 *   slow figure can be told apart from server overhead;
 * - `idle_ws`: memory added by 1,000 idle WebSocket connections (clients in a child process).
 *
 * Run: `node --import tsx bench/generate.ts [--json]` (or through `bench/main.ts` once registered).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { initBackend } from '../model/backend.ts';
import { saveCheckpoint } from '../model/checkpoint.ts';
import { GPT, disposeCache } from '../model/gpt.ts';
import { Tokenizer, type TokenizerJSON } from '../model/tokenizer.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { defaultServerConfig } from '../server/config.ts';
import { loadServedModel, type ServedModel } from '../server/model-host.ts';
import { startServer, type RunningServer } from '../server/server.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';

type Line = Record<string, unknown>;
const SMALL = { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 2048 } as const;

function smallTokenizer(): Tokenizer {
  const path = join(import.meta.dirname, '..', 'data', 'tokenizer.json');
  if (existsSync(path)) {
    const tok = Tokenizer.fromJSON(JSON.parse(readFileSync(path, 'utf8')) as TokenizerJSON);
    if (tok.vocabSize === SMALL.vocabSize) return tok;
  }
  let text = '';
  for (let i = 0; text.length < 400_000; i++) text += `sentence ${i} about word${i % 997} and thing${(i * 7) % 1009}, number ${i * 13}. `;
  return Tokenizer.train(text, { vocabSize: SMALL.vocabSize });
}

async function smallModel(dir: string): Promise<ServedModel> {
  const tok = smallTokenizer();
  const config = { ...SMALL, vocabSize: tok.vocabSize };
  const gpt = GPT.create(config, 'policy', 1);
  saveCheckpoint(join(dir, 'small'), {
    weights: await gpt.exportWeights(),
    meta: { stage: 'sft', kind: 'policy', config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 0, metrics: {}, runConfig: {} },
    tokenizer: tok.toJSON(),
  });
  gpt.dispose();
  return await loadServedModel(join(dir, 'small'));
}

class Client {
  readonly ws: WebSocket;
  #handlers = new Set<(m: Record<string, unknown>) => void>();
  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as Record<string, unknown>;
      for (const h of this.#handlers) h(m);
    });
  }
  async open(): Promise<void> {
    await this.wait((m) => m.type === 'ready');
  }
  wait(pred: (m: Record<string, unknown>) => boolean, onMsg?: (m: Record<string, unknown>) => void): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('bench: no answer within 120 s')), 120_000);
      const h = (m: Record<string, unknown>) => {
        onMsg?.(m);
        if (m.type === 'error') {
          clearTimeout(timer);
          this.#handlers.delete(h);
          reject(new Error(`bench: server error ${String(m.code)}: ${String(m.message)}`));
        } else if (pred(m)) {
          clearTimeout(timer);
          this.#handlers.delete(h);
          resolve(m);
        }
      };
      this.#handlers.add(h);
    });
  }
  async conversation(): Promise<string> {
    const p = this.wait((m) => m.type === 'conversation');
    this.ws.send(JSON.stringify({ type: 'start', userId: 'bench' }));
    return String((await p).conversationId);
  }
  /** Sends a user message; resolves with TTFT (ms) and generated tokens. */
  async turn(conversationId: string, content: string, maxTokens: number, seed: number): Promise<{ ttftMs: number; tokens: number; ms: number }> {
    const t0 = performance.now();
    let first = 0;
    const p = this.wait(
      (m) => m.type === 'reply',
      (m) => {
        if (m.type === 'delta' && !first) first = performance.now();
      },
    );
    this.ws.send(JSON.stringify({ type: 'user_message', conversationId, content, params: { maxTokens, temperature: 1, topP: 1, seed } }));
    const reply = await p;
    const end = performance.now();
    return { ttftMs: (first || end) - t0, tokens: (reply.usage as { completionTokens: number }).completionTokens, ms: end - t0 };
  }
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** Words that make a prompt of about `tokens` tokens under `tok`. */
function promptOf(tok: Tokenizer, tokens: number): string {
  let text = '';
  let i = 0;
  while (tok.encode(text).length < tokens - 4) text += `word${i++ % 50} `;
  return text.trim();
}

async function concurrency(srv: RunningServer, model: ServedModel, n: number, rounds: number): Promise<Line> {
  const url = `ws://127.0.0.1:${srv.port}/ws`;
  const clients = Array.from({ length: n }, () => new Client(url));
  await Promise.all(clients.map((c) => c.open()));
  const convs = await Promise.all(clients.map((c) => c.conversation()));
  const prompt = promptOf(model.tok, 20);
  const maxTokens = 96;
  await clients[0]!.turn(convs[0]!, prompt, 8, 0); // warm-up
  const ttfts: number[] = [];
  let tokens = 0;
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) {
    const fresh = await Promise.all(clients.map((c) => c.conversation()));
    const res = await Promise.all(clients.map((c, i) => c.turn(fresh[i]!, prompt, maxTokens, r * 100 + i)));
    for (const x of res) {
      ttfts.push(x.ttftMs);
      tokens += x.tokens;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  clients.forEach((c) => c.ws.terminate());
  return {
    bench: 'generate',
    shape: 'small',
    concurrency: n,
    tokens_per_s: Math.round(tokens / seconds),
    ttft_p50_ms: +pct(ttfts, 50).toFixed(1),
    ttft_p99_ms: +pct(ttfts, 99).toFixed(1),
    tokens,
    streams: n * rounds,
  };
}

async function idleTtft(srv: RunningServer, model: ServedModel): Promise<Line> {
  const c = new Client(`ws://127.0.0.1:${srv.port}/ws`);
  await c.open();
  const prompt = promptOf(model.tok, 100);
  const ttfts: number[] = [];
  for (let i = 0; i < 12; i++) {
    const conv = await c.conversation();
    ttfts.push((await c.turn(conv, prompt, 1, i)).ttftMs);
  }
  c.ws.terminate();
  const warm = ttfts.slice(2);
  return { bench: 'ttft_idle', shape: 'small', prompt_tokens: model.tok.encode(prompt).length + 3, ttft_p50_ms: +pct(warm, 50).toFixed(1), ttft_p99_ms: +pct(warm, 99).toFixed(1) };
}

function decodeSteps(model: ServedModel): Line {
  const out: Line = { bench: 'decode_step', shape: 'small' };
  for (const n of [1, 16]) {
    const caches = Array.from({ length: n }, (_, i) => model.gpt.prefill(Array.from({ length: 20 }, (_, j) => 10 + ((i + j) % 100))).cache);
    model.gpt.decodeStep(caches, caches.map(() => 7));
    const steps = 30;
    const t0 = performance.now();
    for (let s = 0; s < steps; s++) model.gpt.decodeStep(caches, caches.map(() => 7));
    const ms = (performance.now() - t0) / steps;
    out[`step_ms_n${n}`] = +ms.toFixed(2);
    out[`tokens_per_s_n${n}`] = Math.round((n * 1000) / ms);
    for (const c of caches) disposeCache(c);
  }
  return out;
}

const CLIENT_SCRIPT = `
const WebSocket = require('ws');
const [url, n] = [process.argv[1], Number(process.argv[2])];
const socks = [];
let open = 0;
for (let i = 0; i < n; i++) {
  const ws = new WebSocket(url);
  ws.on('open', () => { if (++open === n) process.stdout.write('open\\n'); });
  ws.on('error', (e) => { process.stderr.write(String(e) + '\\n'); process.exit(1); });
  socks.push(ws);
}
process.stdin.on('data', () => process.exit(0));
`;

async function idleSockets(srv: RunningServer, n: number): Promise<Line> {
  const gc = (globalThis as { gc?: () => void }).gc;
  const settle = async () => {
    gc?.();
    await new Promise((r) => setTimeout(r, 300));
  };
  await settle();
  const before = process.memoryUsage();
  const child = spawn(process.execPath, ['-e', CLIENT_SCRIPT, `ws://127.0.0.1:${srv.port}/ws`, String(n)], { cwd: join(import.meta.dirname, '..'), stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d) => String(d).includes('open') && resolve());
    child.on('exit', (code) => reject(new Error(`bench: socket client exited with ${code}`)));
    setTimeout(() => reject(new Error('bench: sockets did not open within 60 s')), 60_000);
  });
  const t0 = Date.now();
  while (srv.ws.connections < n && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 50));
  await settle();
  const after = process.memoryUsage();
  const held = srv.ws.connections;
  child.stdin.write('x');
  await new Promise((r) => child.on('exit', r));
  return {
    bench: 'idle_ws',
    connections: held,
    // RSS moves with the allocator's whims; the larger of the RSS and the JS heap growth.
    added_mb: +(Math.max(after.rss - before.rss, after.heapUsed - before.heapUsed) / 2 ** 20).toFixed(1),
    added_rss_mb: +((after.rss - before.rss) / 2 ** 20).toFixed(1),
    added_heap_mb: +((after.heapUsed - before.heapUsed) / 2 ** 20).toFixed(1),
  };
}

/** Runs every serving benchmark and returns one line per figure. */
export async function benchGenerate(): Promise<Line[]> {
  await initBackend({ log: () => {} });
  const dir = mkdtempSync(join(tmpdir(), 'bench-generate-'));
  const store = await openTempStore({ prefix: 'bench' });
  const model = await smallModel(dir);
  const config = defaultServerConfig({ port: 0, host: '127.0.0.1', requestsPerMinute: 100_000, messagesPerSecond: 10_000, heartbeatMs: 600_000, maxTokens: 256, maxConnectionsPerAddress: 5000, maxConnections: 5000, startTimeoutMs: 600_000, maxInFlightPerUser: 64 });
  const srv = await startServer(config, { model, store, ownStore: true, defaultMetrics: false, log: () => {} });
  await srv.ready;
  try {
    const lines: Line[] = [];
    lines.push(await concurrency(srv, model, 1, 3));
    lines.push(await concurrency(srv, model, 16, 1));
    lines.push(await idleTtft(srv, model));
    lines.push(decodeSteps(model));
    lines.push(await idleSockets(srv, 1000));
    return lines;
  } finally {
    await srv.close();
    model.gpt.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx bench/generate.ts [--json]', schema: z.object(jsonOption), envPrefix: 'BENCH' }, async ({ json }) => printFigures(await benchGenerate(), json));
  // Something below the server (not a socket, timer or child: none is left) keeps the loop
  // alive for about a minute after everything is closed; do not wait for it.
  process.exit(process.exitCode ?? 0);
}
