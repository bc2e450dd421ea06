/**
 * Starts the chat server in-process: HTTP (Hono on Node) and the `/ws` WebSocket endpoint on one
 * port, the feedback store, the scheduler and the session cache. Listening starts first (so
 * `/healthz` can say "loading"); the model and store load next; then the server is ready.
 * `main.ts` is the command-line entry; tests and the benchmark call `startServer` directly.
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import { openStore, type FeedbackStore } from '../feedback/open-store.ts';
import { createApp } from './app.ts';
import { ChatService } from './chat-service.ts';
import { storeUrl } from '../cli/options.ts';
import type { ServerConfig } from './config.ts';
import { ServerMetrics } from './metrics.ts';
import { loadServedModel, type ServedModel } from './model-host.ts';
import { ModelRegistry } from './model-registry.ts';
import { Auth, isLoopback, Meter } from './auth.ts';
import { anyApiKeys } from '../feedback/api-keys.ts';
import { ChatError } from './errors.ts';
import { Scheduler, type SchedulerOptions } from './scheduler.ts';
import { SessionCache } from './session-cache.ts';
import { ChatWebSocketServer } from './ws-handler.ts';
import { startLoopProcess, type LoopHost } from './loop-host.ts';

export interface StartOptions {
  /** A model already loaded (tests); default: load `config.modelDir`. */
  model?: ServedModel;
  /** A store already open (tests); default: open from `config.database` / `config.dataDir`. */
  store?: FeedbackStore;
  /** Close the store on `close()` (default: only when this function opened it). */
  ownStore?: boolean;
  /** Process metrics (CPU, memory, event-loop lag) in /metrics; default true. */
  defaultMetrics?: boolean;
  reuse?: SchedulerOptions['reuse'];
  log?: (line: string) => void;
  /** Loop knobs when `config.loop` is on (tests); default: LOOP_<NAME> from the environment. */
  loop?: Record<string, unknown>;
}

export interface RunningServer {
  readonly url: string;
  readonly port: number;
  readonly http: Server;
  readonly ws: ChatWebSocketServer;
  readonly metrics: ServerMetrics;
  /** Resolves when the model and store are loaded (rejects if loading failed). */
  readonly ready: Promise<ChatService>;
  chat(): ChatService | undefined;
  /** The online-loop process, when `config.loop` is on. */
  loop(): LoopHost | undefined;
  close(): Promise<void>;
}

/**
 * @example
 *   const srv = await startServer(loadServerConfig());
 *   await srv.ready;  // GET /healthz now answers 200
 */
export async function startServer(config: ServerConfig, opts: StartOptions = {}): Promise<RunningServer> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const metrics = new ServerMetrics({ defaultMetrics: opts.defaultMetrics ?? true });
  let chat: ChatService | undefined;
  let registry: ModelRegistry | undefined;
  let store: FeedbackStore | undefined;
  const ownStore = opts.ownStore ?? !opts.store;
  if (!isLoopback(config.host)) {
    // Anonymous identities are for one machine: elsewhere, keys (or an explicit opt-in) first.
    store = opts.store ?? (await openStore({ url: storeUrl(config.database), dataDir: config.dataDir, schema: config.databaseSchema, log }));
    if (!(await anyApiKeys(store.db))) {
      if (!config.allowAnonymous) {
        if (ownStore) await store.close();
        throw new ChatError('anonymous_refused', `refusing to listen on ${config.host} with no API key: anyone who can reach it could chat and judge as anyone. Create a key (npm run keys -- create --user <name>), listen on 127.0.0.1, or pass --allow-anonymous`, 400);
      }
      log(`warning: listening on ${config.host} with no API key (--allow-anonymous): every browser is an anonymous user`);
    }
  }
  const auth = new Auth({ store: () => store, config });
  const meter = new Meter(config);
  const getChat = () => chat;
  const admin = { token: config.adminToken || undefined, registry: () => registry, store: () => store, log, onKeyCreated: () => auth.noteKeyCreated(), trustProxy: config.trustProxy };
  const app = createApp({ chat: getChat, config, metrics, auth, meter, admin, registry: () => registry });
  if (!admin.token) log('admin routes disabled: no ADMIN_TOKEN configured');
  const http = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, port: config.port, hostname: config.host }, () => resolve(s as Server));
  });
  const ws = new ChatWebSocketServer(http, { chat: getChat, config, metrics, auth, meter });
  const port = (http.address() as AddressInfo).port;
  let scheduler: Scheduler | undefined;
  let loopHost: LoopHost | undefined;

  const ready = (async () => {
    const { initBackend } = await import('../model/backend.ts');
    await initBackend({ log });
    const model = opts.model ?? (await loadServedModel(config.modelDir, { rerankN: config.rerankN }));
    store ??= opts.store ?? (await openStore({ url: storeUrl(config.database), dataDir: config.dataDir, schema: config.databaseSchema, log }));
    metrics.watchStore(store);
    scheduler = new Scheduler(model, { maxBatch: config.maxBatch, maxQueue: config.maxQueue, prefillTokensPerStep: config.prefillTokensPerStep, asyncStep: config.asyncStep, decodeSliceMs: config.decodeSliceMs, retryAfterSeconds: config.retryAfterSeconds, reuse: opts.reuse, metrics });
    registry = new ModelRegistry({
      store,
      scheduler,
      listenUrl: storeUrl(config.database) ?? process.env.DATABASE_URL,
      pollMs: config.registryPollMs,
      modelCacheBytes: config.modelCacheBytes,
      rerankN: config.rerankN,
      log,
      onSwap: (m) => metrics.setModel(m.version),
    });
    metrics.setModel(model.version);
    await registry.start();
    const sessions = new SessionCache(config.sessionCacheBytes);
    chat = new ChatService({ store, scheduler, sessions, config, metrics, registry });
    if (config.loop) loopHost = startLoopProcess(config, { loop: opts.loop, log });
    log((await anyApiKeys(store.db)) ? 'identity: API keys required (/v1 and /ws)' : `identity: local mode, an anonymous identity per browser${isLoopback(config.host) ? '' : ' (--allow-anonymous)'}`);
    log(`serving ${registry.champion.version} (${model.gpt.numParams} parameters, context ${model.gpt.config.blockSize}) on port ${port}; store: ${store.dialect} ${store.location}`);
    return chat;
  })();
  ready.catch(() => {}); // the caller observes failures through `ready`

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    http,
    ws,
    metrics,
    ready,
    chat: getChat,
    loop: () => loopHost,
    async close() {
      scheduler?.close();
      await registry?.close();
      await ws.close();
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections?.();
      });
      await ready.catch(() => undefined);
      await loopHost?.stop();
      if (store && ownStore) await store.close();
    },
  };
}
