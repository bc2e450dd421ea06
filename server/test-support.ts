/**
 * Test helpers: a tiny random policy and tokenizer saved as a real checkpoint, a server on an
 * ephemeral port with a temporary SQLite store, and a WebSocket client that waits for messages.
 */
import { createServer, connect, type Server as NetServer, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { initBackend } from '../model/backend.ts';
import { saveCheckpoint } from '../model/checkpoint.ts';
import { GPT, type GPTConfig } from '../model/gpt.ts';
import { Tokenizer } from '../model/tokenizer.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { defaultServerConfig, type ServerConfig } from './config.ts';
import { loadServedModel, type ServedModel } from './model-host.ts';
import { startServer, type RunningServer, type StartOptions } from './server.ts';

const TEXT = 'the cat sat on the mat. the dog sat on the log. what does lucid mean? clear and easy to understand. '.repeat(8);

/** Saves a random tiny policy checkpoint and returns its directory. */
export async function makeTinyCheckpoint(cfg: Partial<GPTConfig> = {}, seed = 7): Promise<string> {
  await initBackend({ backend: 'wasm', log: () => {} });
  const vocabSize = cfg.vocabSize ?? 300;
  const tok = Tokenizer.train(TEXT, { vocabSize });
  const config: GPTConfig = { nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 64, ...cfg, vocabSize: tok.vocabSize };
  const gpt = GPT.create(config, 'policy', seed);
  const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'sft');
  saveCheckpoint(dir, {
    weights: await gpt.exportWeights(),
    meta: { stage: 'sft', kind: 'policy', config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 0, metrics: {}, runConfig: {} },
    tokenizer: tok.toJSON(),
  });
  gpt.dispose();
  return dir;
}

export async function tinyModel(cfg: Partial<GPTConfig> = {}): Promise<ServedModel> {
  return await loadServedModel(await makeTinyCheckpoint(cfg));
}

/**
 * `model` whose decode steps, on the event loop or off it (`decodeStepAsync`), first keep the
 * event loop busy for `busyMs` (so a reply holds its slot for a while) and report their batch
 * size and whether they run off the event loop to `onStep`.
 */
export function watchedSteps(model: ServedModel, { busyMs = 0, onStep }: { busyMs?: number; onStep?: (size: number, offThread: boolean) => void }): ServedModel {
  const base = model.gpt;
  const gpt = Object.create(base) as typeof base;
  const before = (size: number, offThread = false) => {
    onStep?.(size, offThread);
    const until = performance.now() + busyMs;
    while (performance.now() < until);
  };
  gpt.decodeStep = (caches, tokens, sample) => {
    before(caches.length);
    return base.decodeStep(caches, tokens, sample);
  };
  gpt.decodeStepAsync = (caches, tokens, sample) => {
    before(caches.length, true);
    return base.decodeStepAsync(caches, tokens, sample);
  };
  return { ...model, gpt };
}

export interface TestServer extends RunningServer {
  config: ServerConfig;
  model: ServedModel;
  wsUrl: string;
}

/** A ready server on 127.0.0.1:0 with a temporary store (deleted on close). */
export async function startTestServer(overrides: Partial<ServerConfig> = {}, opts: StartOptions & { modelConfig?: Partial<GPTConfig> } = {}): Promise<TestServer> {
  const model = opts.model ?? (await tinyModel(opts.modelConfig));
  const store = opts.store ?? (await openTempStore({ prefix: 'srv' }));
  const config = defaultServerConfig({ port: 0, host: '127.0.0.1', ...overrides });
  const srv = await startServer(config, { defaultMetrics: false, log: () => {}, ...opts, model, store, ownStore: true });
  await srv.ready;
  return Object.assign(srv, { config, model, wsUrl: `ws://127.0.0.1:${srv.port}/ws` });
}

/** A WebSocket client that buffers server messages and waits for the next one matching a predicate. */
export class TestClient {
  readonly messages: Record<string, unknown>[] = [];
  closed: { code: number; reason: string } | undefined;
  /** The `name=value` of the cookie the server set on the 101 response (local mode's anonymous identity). */
  cookie: string | undefined;
  readonly #waiters: { pred: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void; seen: number }[] = [];
  #closeWaiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('upgrade', (res) => {
      const set = res.headers['set-cookie'];
      if (set?.length) this.cookie = set[0]!.split(';')[0];
    });
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as Record<string, unknown>;
      this.messages.push(m);
      for (const w of [...this.#waiters]) {
        if (w.pred(m)) {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: String(reason) };
      this.#closeWaiters.forEach((f) => f());
    });
    ws.on('error', () => {});
  }

  /** Connects (optionally with headers: `Authorization`, `Cookie`, `Origin`) and waits for `ready`. */
  static async connect(url: string, headers: Record<string, string> = {}): Promise<TestClient> {
    const ws = new WebSocket(url, { headers });
    const c = new TestClient(ws);
    await c.next((m) => m.type === 'ready');
    return c;
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }

  /** The first message (already received or future) matching `pred`, within `ms`. */
  next(pred: (m: Record<string, unknown>) => boolean, ms = 10_000, from = 0): Promise<Record<string, unknown>> {
    const found = this.messages.slice(from).find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching message within ${ms} ms; got ${JSON.stringify(this.messages.slice(-5))}`)), ms);
      this.#waiters.push({ pred, resolve: (m) => (clearTimeout(timer), resolve(m)), seen: this.messages.length });
    });
  }

  /** Sends `msg` and waits for the first later message matching `pred`. */
  async request(msg: unknown, pred: (m: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>> {
    const from = this.messages.length;
    this.send(msg);
    return this.next(pred, ms, from);
  }

  waitClosed(ms = 10_000): Promise<{ code: number; reason: string }> {
    if (this.closed) return Promise.resolve(this.closed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
      this.#closeWaiters.push(() => (clearTimeout(timer), resolve(this.closed!)));
    });
  }

  close(): void {
    this.ws.close();
  }
}

export function rmDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** A TCP proxy in front of PostgreSQL that can be cut (listener closed, open connections reset) and opened again on the same port. */
export class CuttableProxy {
  #server: NetServer | undefined;
  readonly #sockets = new Set<Socket>();
  port = 0;
  constructor(
    readonly host: string,
    readonly targetPort: number,
  ) {}

  async open(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.targetPort, this.host);
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => server.listen(this.port, '127.0.0.1', r));
    this.port = (server.address() as { port: number }).port;
    this.#server = server;
  }

  cut(): void {
    this.#server?.close();
    this.#server = undefined;
    for (const s of this.#sockets) s.destroy();
  }
}
