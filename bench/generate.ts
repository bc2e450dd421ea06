/**
 * Serving speed through the real server (in-process, ephemeral port, temporary SQLite store),
 * on the "small" shape with random weights. Every figure of one run is measured side by side:
 *
 * - `generate` lines, one per door and concurrency (WebSocket at 1, 16 and 32 streams, the OpenAI
 *   route streaming SSE at 1 and 16): N clients, in a process of their own
 *   (bench/stream-clients.ts), each keep one reply in flight for `seconds` (a new conversation
 *   and a user message, or a `POST /v1/chat/completions` with `stream`, as soon as the previous
 *   reply ended). `tokens_per_s` counts tokens delivered to the clients;
 *   `ttft_p50_ms`/`_p99_ms` run from sending the request to its first streamed text.
 *   Beside it, the same run measures the model's own batched decode step at that batch size
 *   and at the mean context the server's steps decoded at (`profile.mean_context`, tokens in
 *   each sequence's cache): `step_tokens_per_s`, the step called in a loop with nothing around
 *   it, and `server_share` = tokens_per_s / step_tokens_per_s. `share_bound` is the share a
 *   server with nothing around the model would reach: the steps for the delivered tokens at the
 *   step alone's speed, plus each admitted prompt's prefill (model work the step alone does not
 *   count) at the speed of a prompt of `mean_prompt_tokens` prefilled alone (`prefill_ms`, the
 *   best of 20). `profile` splits the wall time into the
 *   scheduler's and doors' stages (server/serve-profile.ts: admit, step, sample, detokenize,
 *   emit, write) and `other` (the rest of the event loop: reading frames, handlers, the store,
 *   timers, GC), as shares
 *   of the wall time, with `idle` (the event loop waiting), `frames_per_token`, the mean rows
 *   per decode step and their mean context. With `--async-step` the server runs its steps off the event loop
 *   (`asyncStep`); `step` then overlaps the other stages (`steps_off_thread`).
 * - `ttft_idle`: time to first token at idle for a 100-token prompt;
 * - `openai_request`: the server's CPU time per short request (a non-streamed chat completion of
 *   one token, 8 in flight from a child process): what a request costs around its decoding;
 * - `decode_step`: the model's batched decode step alone at batch 1, 16 and 32 (the best of three
 *   runs of 29 steps back to back), and at batch 16 the median step back to back
 *   (`step_ms_n16_back_to_back`) and right after a millisecond's busy wait of the JS thread
 *   (`step_ms_n16_after_1ms`), as the server's steps follow its event loop's work;
 * - `idle_ws`: memory added by 1,000 idle WebSocket connections (clients in a child process).
 *
 * With `--peer PATH` (the PyTorch peer, `torch_gpt.py`; `--peer-python` picks the interpreter,
 * default `python3`), the peer's decoding runs right after each `generate` line, and the line
 * gets `peer_tokens_per_s` (its batch 1 for one stream, its batch n for n streams), `ratio`,
 * `peer_batch`, the peer's PyTorch version and threads, and `peer_cpu_steal` over that run: both
 * sides of a ratio are measured within seconds of each other.
 *
 * Run: `node --import tsx bench/generate.ts [--json] [--seconds S] [--peer PATH [--peer-python PY]]`.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Session } from 'node:inspector/promises';
import { performance as perfHooks } from 'node:perf_hooks';
import { initBackend } from '../model/backend.ts';
import { saveCheckpoint } from '../model/checkpoint.ts';
import { GPT, disposeCache } from '../model/gpt.ts';
import { Tokenizer, type TokenizerJSON } from '../model/tokenizer.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { defaultServerConfig } from '../server/config.ts';
import { loadServedModel, type ServedModel } from '../server/model-host.ts';
import { startServer, type RunningServer } from '../server/server.ts';
import { STAGES, type ServeProfile } from '../server/serve-profile.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';
import { Client, type Door, type LoadResult, type LoadSpec } from './stream-clients.ts';
import { stealMeter } from './cpu-steal.ts';
import { peerDecoder, type PeerDecode, type PeerDecodeRun, type PeerDecoder } from './peer.ts';

type Line = Record<string, unknown>;
const SHAPES = {
  small: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 2048 },
  tiny: { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 512 },
} as const;
export type GenerateShape = keyof typeof SHAPES;

export interface GenerateBenchOptions {
  shape?: GenerateShape;
  /** Seconds of sustained load per `generate` line (default 3). */
  seconds?: number;
  /** Stream counts of the WebSocket lines (default 1, 16, 32). */
  wsStreams?: readonly number[];
  /** Stream counts of the OpenAI lines (default 1, 16). */
  openaiStreams?: readonly number[];
  /**
   * Runs the PyTorch peer's decoding now (`peerDecoder`): each line is compared with a peer run
   * made right after it, so that both sides see the same machine (a shared VM's speed moves
   * within minutes).
   */
  peer?: PeerDecoder;
  /** Skip the 1,000-socket memory line. */
  skipIdle?: boolean;
  /** Serve with the decode step on a worker thread (`asyncStep`), to compare with the default. */
  asyncStep?: boolean;
  /** The server's `decodeSliceMs` (default: the server's default), to compare. */
  decodeSliceMs?: number;
}

/** Fills a `generate` line's peer columns from the peer's run beside it, for `batch` streams. */
function addPeer(line: Line, tokensPerS: number, p: PeerDecode, batch: number): void {
  if ('skipped' in p) {
    line.peer_skipped = p.skipped;
    return;
  }
  const figure = batch === 1 ? p.batch1TokensPerS : p.batchTokensPerS;
  line.peer_tokens_per_s = figure;
  line.peer_batch = batch;
  line.ratio = +(tokensPerS / figure).toFixed(3);
  line.peer_torch = p.version;
  line.peer_threads = p.threads;
  if (p.cpuSteal !== undefined) line.peer_cpu_steal = p.cpuSteal;
}

function benchTokenizer(vocabSize: number): Tokenizer {
  const path = join(import.meta.dirname, '..', 'data', 'tokenizer.json');
  if (existsSync(path)) {
    const tok = Tokenizer.fromJSON(JSON.parse(readFileSync(path, 'utf8')) as TokenizerJSON);
    if (tok.vocabSize === vocabSize) return tok;
  }
  let text = '';
  for (let i = 0; text.length < (vocabSize > 1000 ? 400_000 : 60_000); i++) text += `sentence ${i} about word${i % 997} and thing${(i * 7) % 1009}, number ${i * 13}. `;
  return Tokenizer.train(text, { vocabSize });
}

async function benchModel(dir: string, shape: GenerateShape): Promise<ServedModel> {
  const tok = benchTokenizer(SHAPES[shape].vocabSize);
  const config = { ...SHAPES[shape], vocabSize: tok.vocabSize };
  const gpt = GPT.create(config, 'policy', 1);
  saveCheckpoint(join(dir, shape), {
    weights: await gpt.exportWeights(),
    meta: { stage: 'sft', kind: 'policy', config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 0, metrics: {}, runConfig: {} },
    tokenizer: tok.toJSON(),
  });
  gpt.dispose();
  return await loadServedModel(join(dir, shape));
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};

/** Words that make a prompt of about `tokens` tokens under `tok`. */
function promptOf(tok: Tokenizer, tokens: number): string {
  let text = '';
  let i = 0;
  while (tok.encode(text).length < tokens - 4) text += `word${i++ % 50} `;
  return text.trim();
}

/**
 * The model's batched decode step alone, `steps` times at batch n, over caches that start at
 * `prompt` tokens (so the steps attend to `prompt + steps / 2` on average): ms per step, the
 * best of `runs` runs (each on fresh caches), as the machine's other work only slows a run.
 */
function stepAlone(model: ServedModel, n: number, steps = 30, prompt = 20, runs = 3): number {
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    best = Math.min(
      best,
      withCaches(model, n, prompt, (step) => {
        step();
        const t0 = performance.now();
        for (let s = 1; s < steps; s++) step();
        return (performance.now() - t0) / (steps - 1);
      }),
    );
  }
  return best;
}

/** One prompt of `tokens` tokens prefilled alone: ms, the best of `runs`. */
function prefillAlone(model: ServedModel, tokens: number, runs = 20): number {
  const ids = Array.from({ length: tokens }, (_, j) => 10 + (j % 100));
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    const { cache } = model.gpt.prefill(ids);
    best = Math.min(best, performance.now() - t0);
    disposeCache(cache);
  }
  return best;
}

/** Runs `fn` over `n` fresh caches prefilled with `prompt` tokens each; `step` decodes one token in all of them. */
function withCaches<T>(model: ServedModel, n: number, prompt: number, fn: (step: () => void) => T): T {
  const caches = Array.from({ length: n }, (_, i) => model.gpt.prefill(Array.from({ length: prompt }, (_, j) => 10 + ((i + j) % 100))).cache);
  try {
    return fn(() => void model.gpt.decodeStep(caches, caches.map(() => 7)));
  } finally {
    for (const c of caches) disposeCache(c);
  }
}

/**
 * The step at batch n when the JS thread has just spent `gapMs` elsewhere (a busy wait that
 * touches no memory), as a step in the server follows a turn of the event loop: ms per step, the
 * median of `steps` steps over caches that start at `prompt` tokens (as `stepAlone`'s do), each
 * step after its own gap.
 * On a VM whose last-level cache other guests share, the weights and caches leave the cache
 * within a millisecond even though this process touched nothing else.
 */
function stepAfterGap(model: ServedModel, n: number, gapMs: number, steps = 30, prompt = 20): number {
  prompt = Math.max(1, Math.min(prompt, model.gpt.config.blockSize - steps - 2));
  const times = withCaches(model, n, prompt, (step) => {
    step();
    const out: number[] = [];
    for (let s = 0; s < steps; s++) {
      const end = performance.now() + gapMs;
      while (performance.now() < end);
      const t0 = performance.now();
      step();
      out.push(performance.now() - t0);
    }
    return out;
  });
  return pct(times, 50);
}

/**
 * Stage shares of the wall time. `idle` is the event loop's idle time (waiting in the poll
 * phase). Steps run off the event loop (`steps_off_thread`, their share of all steps) count in
 * `step` from launch to landing, overlapping the other stages; `other` is what the loop did
 * beyond the stages on it.
 */
function profileOf(prof: ServeProfile, wallMs: number, idleMs: number, tokens: number): Line {
  const share = (ms: number) => +(ms / wallMs).toFixed(3);
  const out: Line = {};
  let staged = -prof.offThreadStepMs;
  for (const s of STAGES) {
    out[s] = share(prof.ms[s]);
    staged += prof.ms[s];
  }
  out.idle = share(idleMs);
  out.other = share(Math.max(0, wallMs - idleMs - staged));
  out.steps_off_thread = prof.counts.steps ? +(prof.counts.offThreadSteps / prof.counts.steps).toFixed(3) : 0;
  out.frames_per_token = tokens ? +(prof.counts.frames / tokens).toFixed(3) : 0;
  out.mean_batch = prof.counts.steps ? +(prof.counts.rows / prof.counts.steps).toFixed(1) : 0;
  out.mean_context = prof.counts.rows ? +(prof.counts.context / prof.counts.rows).toFixed(1) : 0;
  out.step_ms = prof.counts.steps ? +(prof.ms.step / prof.counts.steps).toFixed(3) : 0;
  return out;
}

/**
 * Starts the clients of `spec` in a child process (bench/stream-clients.ts) and waits until they
 * are open and warmed up; `go` then runs the load and resolves with what the clients measured.
 */
async function childLoad(spec: LoadSpec): Promise<{ go: () => Promise<LoadResult> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'stream-clients.ts'), JSON.stringify(spec)], { cwd: join(import.meta.dirname, '..'), stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const line = async () => {
    const next = await lines.next();
    if (next.done) throw new Error('bench: the stream clients ended without an answer (their error is above)');
    return next.value;
  };
  if ((await line()) !== 'ready') throw new Error('bench: the stream clients did not start');
  return {
    go: async () => {
      child.stdin.end('go\n');
      return JSON.parse(await line()) as LoadResult;
    },
  };
}

/**
 * With `BENCH_CPU_PROFILE` set to a directory, starts V8's CPU profiler on the server's thread
 * and returns what stops it and writes `<name>.cpuprofile` there (for Chrome's DevTools).
 */
async function cpuProfile(name: string): Promise<(() => Promise<void>) | undefined> {
  const dir = process.env.BENCH_CPU_PROFILE;
  if (!dir) return undefined;
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  return async () => {
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(join(dir, `${name}.cpuprofile`), JSON.stringify(profile));
    session.disconnect();
  };
}

/** `n` clients (in a process of their own) keep one reply each in flight for `seconds`; tokens delivered per second, TTFT, profile. */
async function sustained(srv: RunningServer, model: ServedModel, door: Door, n: number, seconds: number, peer: PeerDecoder | undefined, peerRuns: Map<number, PeerDecodeRun>): Promise<Line> {
  const load = await childLoad({ url: srv.url, door, n, seconds, prompt: promptOf(model.tok, 20), maxTokens: 96 });
  const prof = srv.chat()!.deps.scheduler.profile;
  prof.reset();
  prof.enabled = true;
  const cpu = await cpuProfile(`${door}-${n}`);
  const elu0 = perfHooks.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  const steal = stealMeter();
  const t0 = performance.now();
  const { ttfts, tokens, replies, cpuUs: clientCpuUs } = await load.go();
  const wallMs = performance.now() - t0;
  const cpuSteal = steal();
  const idleMs = perfHooks.eventLoopUtilization(elu0).idle;
  const cpuUs = process.cpuUsage(cpu0);
  prof.enabled = false;
  await cpu?.();
  const tokensPerS = Math.round((tokens * 1000) / wallMs);
  // The step alone at the batch and the mean context the server decoded at.
  const steps = 30;
  const context = prof.counts.rows ? prof.counts.context / prof.counts.rows : 20 + steps / 2;
  const stepMs = stepAlone(model, n, steps, Math.max(1, Math.min(model.gpt.config.blockSize - steps - 1, Math.round(context - steps / 2))));
  const stepTps = Math.round((n * 1000) / stepMs);
  // What bounds server_share even with nothing around the model: the prompts' prefills are model
  // work the step alone does not count. Steps at the step alone's speed for the tokens delivered
  // and each prompt prefilled at the prefill alone's speed (at the mean prompt length).
  const meanPrompt = prof.counts.prompts ? prof.counts.promptTokens / prof.counts.prompts : 0;
  const prefillMs = meanPrompt ? prefillAlone(model, Math.round(meanPrompt)) : 0;
  const stepsMs = (tokens / n) * stepMs;
  const shareBound = tokens ? stepsMs / (stepsMs + prof.counts.prompts * prefillMs) : 1;
  const line: Line = {
    bench: 'generate',
    door,
    shape: model.gpt.config.nEmbd === 128 ? 'small' : 'tiny',
    concurrency: n,
    tokens_per_s: tokensPerS,
    ttft_p50_ms: +pct(ttfts, 50).toFixed(1),
    ttft_p99_ms: +pct(ttfts, 99).toFixed(1),
    step_tokens_per_s: stepTps,
    server_share: +(tokensPerS / stepTps).toFixed(3),
    prefill_ms: +prefillMs.toFixed(3),
    mean_prompt_tokens: +meanPrompt.toFixed(1),
    share_bound: +shareBound.toFixed(3),
    // CPU time of the server's process (its event loop and native threads; not the clients')
    // per delivered token: steadier than tokens/s when other processes share the machine.
    cpu_us_per_token: tokens ? Math.round((cpuUs.user + cpuUs.system) / tokens) : 0,
    // The load generator's own CPU per token: on a small machine it competes with the server.
    client_cpu_us_per_token: tokens ? Math.round(clientCpuUs / tokens) : 0,
    tokens,
    replies,
    seconds: +(wallMs / 1000).toFixed(2),
    ...(cpuSteal !== undefined ? { cpu_steal: cpuSteal } : {}),
    profile: profileOf(prof, wallMs, idleMs, prof.counts.tokens),
  };
  if (peer) {
    // Right after the line: one stream against the peer's batch 1, n streams against its batch n.
    const batch = n === 1 ? 16 : n;
    const run = peer(batch);
    if (!('skipped' in run)) peerRuns.set(batch, run);
    addPeer(line, tokensPerS, run, n);
  }
  return line;
}

async function idleTtft(srv: RunningServer, model: ServedModel): Promise<Line> {
  const c = new Client(`ws://127.0.0.1:${srv.port}/ws`);
  await c.open();
  const prompt = promptOf(model.tok, Math.min(100, model.gpt.config.blockSize - 24)); // 100 tokens on the small shape
  const ttfts: number[] = [];
  for (let i = 0; i < 12; i++) ttfts.push((await c.turn(prompt, 1, i)).ttftMs);
  c.ws.terminate();
  const warm = ttfts.slice(2);
  return { bench: 'ttft_idle', prompt_tokens: model.tok.encode(prompt).length + 3, ttft_p50_ms: +pct(warm, 50).toFixed(1), ttft_p99_ms: +pct(warm, 99).toFixed(1) };
}

/** The step alone at batch 1, 16 and 32, beside the peer's runs made during the serving lines (the last at each batch). */
function decodeSteps(model: ServedModel, peerRuns: ReadonlyMap<number, PeerDecodeRun>): Line {
  const out: Line = { bench: 'decode_step' };
  const last = [...peerRuns.values()].pop();
  for (const n of [1, 16, 32]) {
    const ms = stepAlone(model, n);
    out[`step_ms_n${n}`] = +ms.toFixed(2);
    out[`tokens_per_s_n${n}`] = Math.round((n * 1000) / ms);
    const p = n === 1 ? last?.batch1TokensPerS : peerRuns.get(n)?.batchTokensPerS;
    if (p) out[`peer_tokens_per_s_n${n}`] = p;
  }
  if (last) out.peer_torch = last.version;
  // The same step right after a millisecond of other work, beside one right after the last.
  const warm = stepAfterGap(model, 16, 0);
  const cold = stepAfterGap(model, 16, 1);
  out.step_ms_n16_back_to_back = +warm.toFixed(3);
  out.step_ms_n16_after_1ms = +cold.toFixed(3);
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

const REQUEST_CLIENT_SCRIPT = `
const [url, n, c] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const body = JSON.stringify({ model: 'champion', messages: [{ role: 'user', content: 'word1 word2 word3' }], max_tokens: 1 });
let sent = 0;
async function one() {
  while (sent < n) {
    sent++;
    const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const text = await r.text();
    if (r.status !== 200) { process.stderr.write(r.status + ' ' + text + '\\n'); process.exit(1); }
  }
}
Promise.all(Array.from({ length: c }, one)).then(() => process.exit(0));
`;

/**
 * The server's CPU time per short OpenAI request: `n` non-streamed chat completions of one token,
 * `concurrency` in flight, from a child process (so the clients' CPU is not counted), after a
 * warm-up of `n / 4`.
 */
async function requestCpu(srv: RunningServer, n: number, concurrency = 8): Promise<Line> {
  const run = (count: number) =>
    new Promise<void>((resolve, reject) => {
      const child = spawn(process.execPath, ['-e', REQUEST_CLIENT_SCRIPT, `${srv.url}/v1/chat/completions`, String(count), String(concurrency)], { stdio: ['ignore', 'ignore', 'inherit'] });
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`bench: request client exited with ${code}`))));
    });
  await run(Math.max(concurrency, Math.round(n / 4)));
  const steal = stealMeter();
  const profile = await cpuProfile('openai-request');
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await run(n);
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await profile?.();
  const cpuSteal = steal();
  return {
    bench: 'openai_request',
    requests: n,
    concurrency,
    cpu_us_per_request: Math.round((cpu.user + cpu.system) / n),
    requests_per_s: Math.round((n * 1000) / wallMs),
    ...(cpuSteal !== undefined ? { cpu_steal: cpuSteal } : {}),
  };
}

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
export async function benchGenerate(opts: GenerateBenchOptions = {}): Promise<Line[]> {
  const shape = opts.shape ?? 'small';
  const seconds = opts.seconds ?? 3;
  await initBackend({ log: () => {} });
  const dir = mkdtempSync(join(tmpdir(), 'bench-generate-'));
  const store = await openTempStore({ prefix: 'bench' });
  const model = await benchModel(dir, shape);
  const config = defaultServerConfig({ port: 0, host: '127.0.0.1', requestsPerMinute: 1_000_000, messagesPerSecond: 100_000, heartbeatMs: 600_000, maxTokens: 256, maxConnectionsPerAddress: 5000, maxConnections: 5000, startTimeoutMs: 600_000, maxInFlightPerUser: 64, asyncStep: opts.asyncStep ?? false, ...(opts.decodeSliceMs !== undefined ? { decodeSliceMs: opts.decodeSliceMs } : {}) });
  const srv = await startServer(config, { model, store, ownStore: true, defaultMetrics: false, log: () => {} });
  await srv.ready;
  try {
    const lines: Line[] = [];
    const peerRuns = new Map<number, PeerDecodeRun>();
    for (const n of opts.wsStreams ?? [1, 16, 32]) lines.push(await sustained(srv, model, 'ws', n, seconds, opts.peer, peerRuns));
    for (const n of opts.openaiStreams ?? [1, 16]) lines.push(await sustained(srv, model, 'openai', n, seconds, opts.peer, peerRuns));
    lines.push(await idleTtft(srv, model));
    lines.push(await requestCpu(srv, shape === 'tiny' ? 40 : 1500));
    lines.push(decodeSteps(model, peerRuns));
    if (!opts.skipIdle) lines.push(await idleSockets(srv, 1000));
    return lines;
  } finally {
    await srv.close();
    model.gpt.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

const streams = z
  .string()
  .regex(/^\d+(,\d+)*$/, 'a comma-separated list of stream counts')
  .transform((v) => v.split(',').map(Number));

const GenerateBenchConfig = z.object({
  ...jsonOption,
  shape: z.enum(['small', 'tiny']).default('small').describe('model shape (tiny: a quick check)'),
  seconds: z.number().positive().default(3).describe('seconds of sustained load per generate line'),
  wsStreams: streams.optional().describe('WebSocket stream counts (default 1,16,32)'),
  openaiStreams: streams.optional().describe('OpenAI streaming stream counts (default 1,16)'),
  skipIdle: z.boolean().default(false).describe('skip the 1,000 idle sockets line'),
  asyncStep: z.boolean().default(false).describe('serve with the decode step on a worker thread (the server\'s asyncStep), to compare'),
  decodeSliceMs: z.number().nonnegative().optional().describe('the server\'s decodeSliceMs (0: one decode step per event-loop turn), to compare with its default'),
  peer: z.string().optional().describe('PyTorch peer script (torch_gpt.py), run in the same session (default: PEER_SCRIPT)'),
  peerPython: z.string().optional().describe('the Python that runs the peer (default: PEER_PYTHON, else python3)'),
});

if (isMain(import.meta.url)) {
  await runCommand(
    { usage: 'node --import tsx bench/generate.ts [--json] [--seconds S] [--ws-streams 1,16,32] [--openai-streams 1,16] [--async-step] [--decode-slice-ms MS] [--peer PATH [--peer-python PY]]', schema: GenerateBenchConfig, envPrefix: 'BENCH' },
    async (cfg) => {
      const script = cfg.peer ?? process.env.PEER_SCRIPT;
      const peer = script ? peerDecoder(script, cfg.peerPython ?? process.env.PEER_PYTHON ?? 'python3', SHAPES.small) : undefined;
      printFigures(await benchGenerate({ shape: cfg.shape, seconds: cfg.seconds, wsStreams: cfg.wsStreams, openaiStreams: cfg.openaiStreams, skipIdle: cfg.skipIdle, asyncStep: cfg.asyncStep, decodeSliceMs: cfg.decodeSliceMs, peer }), cfg.json);
    },
  );
  // Something below the server (not a socket, timer or child: none is left) keeps the loop
  // alive for about a minute after everything is closed; do not wait for it.
  process.exit(process.exitCode ?? 0);
}
