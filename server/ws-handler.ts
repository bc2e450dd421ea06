/**
 * The WebSocket door: one `Connection` per socket, speaking the protocol of `ws-protocol.ts`.
 *
 * - Frames are capped by `ws`'s `maxPayload` (an oversized frame closes the socket with 1009);
 *   binary frames, bad JSON and invalid messages get an `error` and the socket stays open.
 * - A flood is throttled per socket (`rate_limited` errors), and a socket that keeps flooding is
 *   closed with 1008. Generation requests also count against the per-client per-minute limit.
 * - A heartbeat pings every `heartbeatMs`; a socket that did not answer the previous ping is terminated.
 * - Every callback is guarded: a failing handler answers `internal_error` and never kills the socket.
 * - When a socket closes, its replies in flight are cancelled, which frees their batch slots.
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import type { ChatService, ReplyRun } from './chat-service.ts';
import type { ServerConfig } from './config.ts';
import { ChatError, toChatError } from './errors.ts';
import type { ServerMetrics } from './metrics.ts';
import { TokenBucket, type RateLimiter } from './rate-limit.ts';
import type { Turn } from './session-cache.ts';
import { parseClientMessage, type ClientMessage, type ServerMessage } from './ws-protocol.ts';

export interface WsDeps {
  /** Undefined until the model and store are ready. */
  chat: () => ChatService | undefined;
  config: ServerConfig;
  metrics: ServerMetrics;
  limiter: RateLimiter;
}

/** Close codes the server uses (RFC 6455). */
export const CLOSE = { policy: 1008, tooBig: 1009, goingAway: 1001, tryLater: 1013 } as const;

class Connection {
  isAlive = true;
  userId: string;
  readonly runs = new Map<string, ReplyRun>();
  readonly #bucket: TokenBucket;
  #throttled = 0;
  #nextRequest = 1;

  constructor(
    readonly ws: WebSocket,
    readonly clientKey: string,
    readonly deps: WsDeps,
  ) {
    this.userId = `anon-${randomBytes(6).toString('hex')}`;
    this.#bucket = new TokenBucket(deps.config.messagesPerSecond, deps.config.messagesPerSecond * 2);
  }

  send(msg: ServerMessage): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    if (this.ws.bufferedAmount > this.deps.config.maxSocketBufferBytes) {
      this.close(CLOSE.policy, 'reader too slow');
      return;
    }
    if (msg.type === 'error') this.deps.metrics.errors.inc({ code: msg.code });
    this.ws.send(JSON.stringify(msg));
  }

  error(code: string, message: string, requestId?: string): void {
    this.send({ type: 'error', code, message, ...(requestId !== undefined ? { requestId } : {}) });
  }

  close(code: number, reason: string): void {
    this.cancelAll();
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.terminate();
    }
  }

  cancelAll(): void {
    for (const run of this.runs.values()) run.cancel();
  }

  onFrame(data: RawData, isBinary: boolean): void {
    this.isAlive = true;
    if (!this.#bucket.take()) {
      this.#throttled++;
      if (this.#throttled >= this.deps.config.floodCloseAfter) this.close(CLOSE.policy, 'too many messages');
      else this.error('rate_limited', `more than ${this.deps.config.messagesPerSecond} messages per second; slow down`);
      return;
    }
    this.#throttled = 0;
    if (isBinary) return this.error('binary_not_supported', 'send JSON text frames');
    const text = Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data as ArrayBuffer).toString('utf8');
    const parsed = parseClientMessage(text);
    if (!parsed.ok) return this.error(parsed.code, parsed.message, parsed.requestId);
    const rid = 'requestId' in parsed.msg ? parsed.msg.requestId : undefined;
    this.handle(parsed.msg).catch((err: unknown) => {
      const e = toChatError(err);
      if (e.code === 'internal_error') console.error('ws handler failed:', err);
      this.error(e.code, e.message, rid);
    });
  }

  #requestId(given: string | undefined): string {
    return given ?? `req-${this.#nextRequest++}`;
  }

  #chat(): ChatService {
    const chat = this.deps.chat();
    if (!chat) throw new ChatError('not_ready', 'the model is still loading');
    return chat;
  }

  async handle(msg: ClientMessage): Promise<void> {
    switch (msg.type) {
      case 'ping':
        return this.send({ type: 'pong', ...(msg.requestId ? { requestId: msg.requestId } : {}) });
      case 'start':
        return this.#start(msg);
      case 'user_message':
      case 'regenerate':
      case 'compare':
        return this.#generate(msg);
      case 'cancel': {
        const run = this.runs.get(msg.requestId);
        if (!run) return this.error('unknown_request', `no reply in flight with requestId ${msg.requestId}`, msg.requestId);
        run.cancel();
        return;
      }
      case 'thumb':
      case 'comparison':
      case 'ranking':
        return this.#judge(msg);
    }
  }

  async #start(msg: Extract<ClientMessage, { type: 'start' }>): Promise<void> {
    const chat = this.#chat();
    if (msg.userId) this.userId = msg.userId;
    const resumed = msg.conversationId !== undefined;
    const state = resumed ? await chat.load(msg.conversationId!, this.userId) : await chat.start(this.userId, { system: msg.system, title: msg.title });
    this.send({
      type: 'conversation',
      ...(msg.requestId ? { requestId: msg.requestId } : {}),
      conversationId: state.id,
      resumed,
      messages: state.path.map((t) => ({ id: t.id, role: t.role, content: t.content })),
      modelVersion: chat.model.version,
    });
  }

  async #generate(msg: Extract<ClientMessage, { type: 'user_message' | 'regenerate' | 'compare' }>): Promise<void> {
    const chat = this.#chat();
    const requestId = this.#requestId(msg.requestId);
    if (this.runs.has(requestId)) throw new ChatError('duplicate_request', `requestId ${requestId} is already in flight`);
    this.deps.limiter.take(this.clientKey);
    const state = await chat.load(msg.conversationId, this.userId);
    const release = chat.claim(state.id);
    try {
      const opts = chat.options(msg.params);
      let context: Turn[];
      let userMessageId: string | undefined;
      if (msg.type === 'regenerate') {
        const thread = await chat.threadTo(state, msg.messageId);
        if (thread[thread.length - 1]!.role !== 'assistant') throw new ChatError('invalid_request', `message ${msg.messageId} is not an assistant reply`);
        context = thread.slice(0, -1);
      } else if (msg.type === 'compare' && msg.parentId) {
        context = await chat.threadTo(state, msg.parentId);
        if (context[context.length - 1]!.role !== 'user') throw new ChatError('invalid_request', `message ${msg.parentId} is not a user message`);
      } else {
        const content = msg.content!;
        // Check the prompt fits before storing anything.
        const base = msg.type === 'user_message' && msg.parentId ? await chat.threadTo(state, msg.parentId) : state.path;
        const trial = [...(base[base.length - 1]?.role === 'user' ? base.slice(0, -1) : base), { id: '', role: 'user' as const, content }];
        chat.prompt(trial, opts.maxTokens);
        context = await chat.addUserMessage(state, content, msg.type === 'user_message' ? msg.parentId : undefined);
        userMessageId = context[context.length - 1]!.id;
      }
      const n = msg.type === 'compare' ? 2 : 1;
      const tag = (i: number) => (n > 1 ? { candidate: i } : {});
      const onDelta = (i: number, text: string) => this.send({ type: 'delta', requestId, text, ...tag(i) });
      // Arena: champion against candidate, blind (versions hidden until the comparison's ack).
      const arenaRun = msg.type === 'compare' ? chat.compareArena(state, state.id, context, opts, onDelta) : undefined;
      const blind = arenaRun ? ({ arena: true } as const) : {};
      const run = arenaRun ?? chat.reply(state, state.id, context, opts, n, 'ws', onDelta);
      this.runs.set(requestId, run);
      const parentId = context[context.length - 1]!.id;
      for (let i = 0; i < n; i++) this.send({ type: 'reply_start', requestId, conversationId: state.id, parentId, ...(userMessageId ? { userMessageId } : {}), ...tag(i) });
      try {
        const replies = await run.done;
        for (const r of replies) {
          this.send({
            type: 'reply',
            requestId,
            conversationId: state.id,
            messageId: r.messageId,
            parentId: r.parentId,
            content: r.content,
            modelVersion: arenaRun ? 'hidden' : r.result.version,
            finishReason: r.result.finishReason,
            usage: { promptTokens: r.result.promptTokens, completionTokens: r.result.completionTokens, totalTokens: r.result.promptTokens + r.result.completionTokens },
            ...(r.droppedMessages ? { contextTruncated: { droppedMessages: r.droppedMessages } } : {}),
            ...tag(r.candidate),
            ...blind,
          });
        }
        if (n > 1) this.send({ type: 'candidates', requestId, contextId: parentId, messageIds: replies.map((r) => r.messageId), ...blind });
      } finally {
        this.runs.delete(requestId);
      }
    } finally {
      release();
    }
  }

  async #judge(msg: Extract<ClientMessage, { type: 'thumb' | 'comparison' | 'ranking' }>): Promise<void> {
    const chat = this.#chat();
    const requestId = this.#requestId(msg.requestId);
    const { type, requestId: _r, ...rest } = msg;
    const kind = type;
    const r = await chat.deps.store.writer.submit({ ...rest, kind, raterId: this.userId });
    if (!r.ok) return this.error(r.error.code, r.error.message, requestId);
    const revealed = msg.type === 'comparison' ? await chat.arenaReveal(msg.a, msg.b) : undefined;
    this.send({ type: 'feedback_ack', requestId, kind: r.kind, id: r.id, duplicate: r.duplicate, ...(revealed ? { revealed } : {}) });
  }
}

/** The `/ws` endpoint on an HTTP server. */
export class ChatWebSocketServer {
  readonly wss: WebSocketServer;
  readonly #connections = new Set<Connection>();
  readonly #heartbeat: NodeJS.Timeout;

  constructor(
    server: Server,
    readonly deps: WsDeps,
  ) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: deps.config.maxMessageBytes, perMessageDeflate: false, clientTracking: false });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#upgrade(req, socket, head));
    this.#heartbeat = setInterval(() => this.#beat(), deps.config.heartbeatMs);
    this.#heartbeat.unref();
  }

  get connections(): number {
    return this.#connections.size;
  }

  #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/ws') {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    if (!this.deps.chat()) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.#connect(ws, req));
  }

  #connect(ws: WebSocket, req: IncomingMessage): void {
    const conn = new Connection(ws, req.socket.remoteAddress ?? 'unknown', this.deps);
    this.#connections.add(conn);
    this.deps.metrics.sockets.set(this.#connections.size);
    ws.on('message', (data, isBinary) => {
      try {
        conn.onFrame(data, isBinary);
      } catch (err) {
        console.error('ws frame handler failed:', err);
        conn.error('internal_error', 'internal error');
      }
    });
    ws.on('pong', () => {
      conn.isAlive = true;
    });
    ws.on('error', (err: Error & { code?: string }) => {
      // ws closes the socket itself (1009 for an oversized frame, 1002 for a protocol error).
      this.deps.metrics.errors.inc({ code: err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'message_too_large' : 'ws_protocol_error' });
    });
    ws.on('close', () => {
      conn.cancelAll();
      this.#connections.delete(conn);
      this.deps.metrics.sockets.set(this.#connections.size);
    });
    const chat = this.deps.chat()!;
    const c = this.deps.config;
    conn.send({
      type: 'ready',
      modelVersion: chat.model.version,
      limits: { maxMessageBytes: c.maxMessageBytes, maxTokens: c.maxTokens, maxPromptTokens: c.maxPromptTokens, contextTokens: chat.model.gpt.config.blockSize, requestsPerMinute: c.requestsPerMinute, messagesPerSecond: c.messagesPerSecond },
      heartbeatMs: c.heartbeatMs,
    });
  }

  #beat(): void {
    for (const conn of this.#connections) {
      if (!conn.isAlive) {
        conn.cancelAll();
        conn.ws.terminate();
        continue;
      }
      conn.isAlive = false;
      try {
        conn.ws.ping();
      } catch {
        conn.ws.terminate();
      }
    }
  }

  /** Closes every socket (1001), terminating those that do not finish the close handshake within `graceMs`. */
  async close(graceMs = 1000): Promise<void> {
    clearInterval(this.#heartbeat);
    for (const conn of this.#connections) conn.close(CLOSE.goingAway, 'server shutting down');
    const t0 = Date.now();
    while (this.#connections.size && Date.now() - t0 < graceMs) await new Promise((r) => setTimeout(r, 20));
    for (const conn of this.#connections) conn.ws.terminate();
    this.wss.close();
  }
}
