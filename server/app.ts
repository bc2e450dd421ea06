/**
 * The HTTP app (Hono): health, metrics, `/session` (identity for the web page) and the
 * OpenAI-compatible routes. No CORS headers are sent (cross-origin pages cannot read any answer);
 * the WebSocket's Origin check is in ws-handler.ts. Errors are thrown as
 * `ChatError`s and turned into responses in the one `onError` below, in OpenAI's error shape
 * (`{ error: { message, type, code, param } }`) with `Retry-After` on 429 and 503.
 * Testable without a socket through `app.request()`.
 */
import { Hono, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { adminRoutes, type AdminDeps } from './admin-routes.ts';
import type { ChatService } from './chat-service.ts';
import type { ServerConfig } from './config.ts';
import { ChatError, openAIErrorType, toChatError } from './errors.ts';
import type { ServerMetrics } from './metrics.ts';
import type { ModelRegistry } from './model-registry.ts';
import { feedbackRoutes } from './feedback-routes.ts';
import { openAIRoutes } from './openai-routes.ts';
import { staticRoutes } from './static-routes.ts';
import type { Auth, Meter } from './auth.ts';
import { sessionRoutes } from './session-routes.ts';

export interface AppDeps {
  /** Undefined until the model and store are ready. */
  chat: () => ChatService | undefined;
  config: ServerConfig;
  metrics: ServerMetrics;
  auth: Auth;
  meter: Meter;
  /** The model registry, for `/healthz` (a champion that failed to load and is being retried). */
  registry?: () => ModelRegistry | undefined;
  /** The `/admin` routes' dependencies (absent: no admin routes at all). */
  admin?: AdminDeps;
}

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();

  // 200 `ok`; 503 `loading`, or `degraded` while the store is unreachable (chats are refused then).
  app.get('/healthz', (c) => {
    const chat = deps.chat();
    if (!chat) return c.json({ status: 'loading' }, 503, { 'Retry-After': '1' });
    const { store } = chat.deps;
    const health = store.health.state();
    const registry = deps.registry?.()?.state();
    const body = {
      status: health.state === 'ok' ? 'ok' : 'degraded',
      modelVersion: chat.model.version,
      store: { dialect: store.dialect, ...health, pendingJudgements: store.writer.pending, ...(store.checkpointer ? { checkpointerRestarts: store.checkpointer.restarts } : {}) },
      ...(registry ? { registry: { champion: registry.champion, ...(registry.pendingLoad ? { pendingLoad: registry.pendingLoad } : {}), ...(registry.lastError ? { lastError: registry.lastError } : {}) } } : {}),
    };
    if (health.state !== 'ok') return c.json(body, 503, { 'Retry-After': String(health.retryAfterSeconds) });
    return c.json(body);
  });

  app.get('/metrics', async (c) => {
    const body = await deps.metrics.registry.metrics();
    return c.body(body, 200, { 'Content-Type': deps.metrics.registry.contentType });
  });

  app.use('/v1/*', limitBody(deps.config.maxMessageBytes));
  if (deps.admin) {
    app.use('/admin/*', limitBody(64 * 1024));
    app.route('/admin', adminRoutes(deps.admin));
  }
  app.use('/session', limitBody(4096));
  app.route('/session', sessionRoutes(deps.auth));
  // Before the OpenAI routes, whose `/v1/*` middleware would otherwise check the caller a second time.
  app.route('/v1/feedback', feedbackRoutes({ chat: deps.chat, auth: deps.auth, meter: deps.meter }));
  app.route('/v1', openAIRoutes({ chat: deps.chat, auth: deps.auth, meter: deps.meter, maxN: deps.config.maxN }));
  app.route('/', staticRoutes());

  app.notFound((c) => {
    deps.metrics.errors.inc({ code: 'not_found' });
    return c.json({ error: { message: 'no such route', type: 'not_found_error', code: 'not_found', param: null } }, 404);
  });

  app.onError((err, c) => {
    const e = toChatError(err);
    if (e.code === 'internal_error') console.error('request failed:', err);
    deps.metrics.errors.inc({ code: e.code });
    const headers: Record<string, string> = {};
    if (e.retryAfter !== undefined) headers['Retry-After'] = String(e.retryAfter);
    return c.json({ error: { message: e.message, type: openAIErrorType(e.status), code: e.code, param: e.param ?? null } }, e.status as 400, headers);
  });

  return app;
}

/**
 * Refuses a body over `maxSize` bytes with `message_too_large`. A body whose length the request
 * declares (`Content-Length`, no `Transfer-Encoding`) is checked from that header alone: Node's
 * parser never reads past it, and the route then reads the body straight from the socket. Hono's
 * `bodyLimit`, which takes every other body, first reads `c.req.raw.body`, and on Node's server
 * that builds a whole web `Request` and streams the body through web streams: 2.5% of the
 * server's time at 16 OpenAI streams.
 */
function limitBody(maxSize: number): MiddlewareHandler {
  const tooLarge = () => new ChatError('message_too_large', `the request body is over ${maxSize} bytes`);
  const streamed = bodyLimit({
    maxSize,
    onError: () => {
      throw tooLarge();
    },
  });
  return async (c, next) => {
    const length = c.req.header('content-length');
    if (length === undefined || c.req.header('transfer-encoding') !== undefined || !/^\d+$/.test(length)) return streamed(c, next);
    if (Number(length) > maxSize) throw tooLarge();
    await next();
  };
}
