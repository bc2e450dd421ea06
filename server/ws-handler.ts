/**
 * The WebSocket door: one `Connection` per socket, speaking the protocol of `ws-protocol.ts`.
 *
 * - The upgrade is refused before any socket exists: a foreign `Origin` (403, `ALLOWED_ORIGINS`,
 *   same origin by default), too many connections in total (503) or from one address (429), no
 *   valid key or session in keys mode (401). The identity comes from the upgrade (`auth.ts`):
 *   never from a message field. In local mode a socket without the anonymous cookie gets one
 *   (Set-Cookie on the 101), so every cookie-less socket is a person of its own.
 * - A socket that sends no `start` within `startTimeoutMs` is closed (1008).
 * - Frames are capped by `ws`'s `maxPayload` (an oversized frame closes the socket with 1009);
 *   binary frames, bad JSON and invalid messages get an `error` and the socket stays open.
 * - Every frame, of every type, is metered per identity (`rate_limited` errors), and a socket that
 *   keeps flooding is closed with 1008. Generation requests count against the identity's
 *   per-minute limit and its in-flight cap (`overloaded`); judgements against their own limit.
 * - A heartbeat pings every `heartbeatMs`; a socket that did not answer the previous ping is terminated.
 * - Every callback is guarded: a failing handler answers `internal_error` and never kills the socket.
 * - Deltas of a reply that arrive within `deltaCoalesceMs` of its previous frame are held and
 *   sent together as one frame (the first one goes out at once; any other frame first flushes
 *   what is held, so order is kept). Frames are built as strings, without an object per token.
 * - When a socket closes, its replies in flight are cancelled, which frees their batch slots.
 *   A request is registered the moment its frame is handled, before the awaits that load the
 *   conversation and store the user message: a `cancel` or a close that arrives meanwhile marks
 *   it, and its reply is cancelled as soon as it is submitted (it decodes for nobody otherwise).
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket, type RawData } from 'ws';
import { originAllowed, type Auth, type Identity, type Meter } from './auth.ts';
import type { ChatService, ReplyRun } from './chat-service.ts';
import type { ServerConfig } from './config.ts';
import { ChatError, toChatError } from './errors.ts';
import type { ServerMetrics } from './metrics.ts';
import type { ServeProfile } from './serve-profile.ts';
import type { Turn } from './session-cache.ts';
import { parseClientMessage, type ClientMessage, type ServerMessage } from './ws-protocol.ts';

export interface WsDeps {
  /** Undefined until the model and store are ready. */
  chat: () => ChatService | undefined;
  config: ServerConfig;
  metrics: ServerMetrics;
  auth: Auth;
  meter: Meter;
}

/** Close codes the server uses (RFC 6455). */
export const CLOSE = { policy: 1008, tooBig: 1009, goingAway: 1001, tryLater: 1013 } as const;

const IDENTITY = Symbol('identity');
type UpgradeRequest = IncomingMessage & { [IDENTITY]?: { identity: Identity; setCookie?: string } };

/** The text of one reply (a request's candidate) waiting to be sent, and when its last frame went. */
interface DeltaStream {
  /** The frame up to the text: `{"type":"delta","requestId":…,"text":`. */
  readonly head: string;
  /** After the text: `,"candidate":i}` or `}`. */
  readonly tail: string;
  held: string;
  lastSent: number;
}

/** A generation request from its first frame on; `run` once it was submitted. */
interface InFlight {
  run?: ReplyRun;
  cancelled: boolean;
}

class Connection {
  isAlive = true;
  started = false;
  readonly runs = new Map<string, InFlight>();
  /** Set once the socket is going away: requests still being set up are cancelled at submission. */
  #ending = false;
  #throttled = 0;
  #nextRequest = 1;
  /** Replies with text held back (coalescing), flushed by `#flushTimer` or before any other frame. */
  readonly #holding = new Set<DeltaStream>();
  #flushTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly ws: WebSocket,
    readonly address: string,
    readonly identity: Identity,
    readonly deps: WsDeps,
  ) {}

  get userId(): string {
    return this.identity.userId;
  }

  send(msg: ServerMessage): void {
    if (this.#holding.size) this.#flush();
    if (msg.type === 'error') this.deps.metrics.errors.inc({ code: msg.code });
    this.#write(JSON.stringify(msg));
  }

  #profile(): ServeProfile | undefined {
    return this.deps.chat()?.deps.scheduler.profile;
  }

  #write(frame: string): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    if (this.ws.bufferedAmount > this.deps.config.maxSocketBufferBytes) {
      this.close(CLOSE.policy, 'reader too slow');
      return;
    }
    const prof = this.#profile();
    const t = prof?.now() ?? 0;
    this.ws.send(frame);
    prof?.wrote(t);
  }

  /** A reply's delta stream: frames of `{"type":"delta", requestId, text[, candidate]}`. */
  deltaStream(requestId: string, candidate?: number): DeltaStream {
    return { head: `{"type":"delta","requestId":${JSON.stringify(requestId)},"text":`, tail: candidate === undefined ? '}' : `,"candidate":${candidate}}`, held: '', lastSent: -Infinity };
  }

  /** Streams `text`: at once when the reply's last frame is `deltaCoalesceMs` old, else held for one frame. */
  delta(stream: DeltaStream, text: string): void {
    const now = performance.now();
    const wait = this.deps.config.deltaCoalesceMs;
    if (!stream.held && now - stream.lastSent >= wait) {
      stream.lastSent = now;
      this.#write(stream.head + JSON.stringify(text) + stream.tail);
      return;
    }
    stream.held += text;
    this.#holding.add(stream);
    this.#flushTimer ??= setTimeout(() => this.#flush(), Math.max(1, Math.ceil(stream.lastSent + wait - now)));
  }

  /** Sends every held text, one frame per reply. */
  #flush(): void {
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    const now = performance.now();
    for (const s of this.#holding) {
      const text = s.held;
      s.held = '';
      s.lastSent = now;
      this.#write(s.head + JSON.stringify(text) + s.tail);
    }
    this.#holding.clear();
  }

  error(code: string, message: string, requestId?: string): void {
    this.send({ type: 'error', code, message, ...(requestId !== undefined ? { requestId } : {}) });
  }

  close(code: number, reason: string): void {
    this.#dropHeld();
    this.cancelAll();
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.terminate();
    }
  }

  /** Forgets held text (the socket is going away). */
  #dropHeld(): void {
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    this.#holding.clear();
  }

  cancelAll(): void {
    this.#dropHeld();
    this.#ending = true;
    for (const r of this.runs.values()) {
      r.cancelled = true;
      r.run?.cancel();
    }
  }

  onFrame(data: RawData, isBinary: boolean): void {
    this.isAlive = true;
    if (!this.deps.meter.frame(this.identity)) {
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
        const r = this.runs.get(msg.requestId);
        if (!r) return this.error('unknown_request', `no reply in flight with requestId ${msg.requestId}`, msg.requestId);
        r.cancelled = true;
        r.run?.cancel();
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
    this.started = true; // msg.userId is ignored: the identity is the upgrade's
    const resumed = msg.conversationId !== undefined;
    if (!resumed) this.deps.meter.requests.take(this.userId); // a new conversation writes rows: it counts like a request
    const state = resumed ? await chat.load(msg.conversationId!, this.userId) : await chat.start(this.identity, { system: msg.system, title: msg.title });
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
    const inFlight: InFlight = { cancelled: this.#ending };
    this.runs.set(requestId, inFlight);
    try {
      await this.#generateIn(chat, msg, requestId, inFlight);
    } finally {
      this.runs.delete(requestId);
    }
  }

  async #generateIn(chat: ChatService, msg: Extract<ClientMessage, { type: 'user_message' | 'regenerate' | 'compare' }>, requestId: string, inFlight: InFlight): Promise<void> {
    chat.admit(msg.type === 'compare' ? 2 : 1);
    const leave = this.deps.meter.enter(this.identity);
    let release = () => {};
    try {
      const state = await chat.load(msg.conversationId, this.userId);
      release = chat.claim(state.id);
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
      const streams = Array.from({ length: n }, (_, i) => this.deltaStream(requestId, n > 1 ? i : undefined));
      const onDelta = (i: number, text: string) => this.delta(streams[i]!, text);
      // Arena: champion against candidate, blind (versions hidden until the comparison's ack).
      const arenaRun = msg.type === 'compare' ? chat.compareArena(state, state.id, context, opts, onDelta) : undefined;
      const blind = arenaRun ? ({ arena: true } as const) : {};
      const run = arenaRun ?? chat.reply(state, state.id, context, opts, n, 'ws', onDelta);
      inFlight.run = run;
      if (inFlight.cancelled) run.cancel(); // cancelled (or the socket closed) while it was being set up
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
      leave();
    }
  }

  async #judge(msg: Extract<ClientMessage, { type: 'thumb' | 'comparison' | 'ranking' }>): Promise<void> {
    const chat = this.#chat();
    const requestId = this.#requestId(msg.requestId);
    this.deps.meter.judgement(this.identity);
    const { type, requestId: _r, ...rest } = msg;
    const r = await chat.judge(this.identity, { ...rest, kind: type } as Parameters<ChatService['judge']>[1]);
    if (!r.ok) return this.error(r.error.code, r.error.message, requestId);
    this.send({ type: 'feedback_ack', requestId, kind: r.kind, id: r.id, duplicate: r.duplicate, ...(r.revealed ? { revealed: r.revealed } : {}) });
  }
}

/** The `/ws` endpoint on an HTTP server. */
export class ChatWebSocketServer {
  readonly wss: WebSocketServer;
  readonly #connections = new Set<Connection>();
  /** Connections (and upgrades being checked) per peer address. */
  readonly #perAddress = new Map<string, number>();
  #pending = 0;
  readonly #heartbeat: NodeJS.Timeout;

  constructor(
    server: Server,
    readonly deps: WsDeps,
  ) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: deps.config.maxMessageBytes, perMessageDeflate: false, clientTracking: false });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#upgrade(req, socket, head));
    // Local mode's anonymous cookie rides on the 101 response.
    this.wss.on('headers', (headers: string[], req: UpgradeRequest) => {
      const c = req[IDENTITY]?.setCookie;
      if (c) headers.push(`Set-Cookie: ${c}`);
    });
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
    const c = this.deps.config;
    const refuse = (status: string, code: string, message: string, extra = '') => {
      this.deps.metrics.errors.inc({ code });
      const body = JSON.stringify({ error: { code, message } });
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: application/json\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    };
    if (!originAllowed(req.headers.origin, req.headers.host, c.allowedOrigins)) return refuse('403 Forbidden', 'origin_not_allowed', `Origin ${req.headers.origin} may not open /ws`);
    if (this.#connections.size + this.#pending >= c.maxConnections) return refuse('503 Service Unavailable', 'too_many_connections', 'the server has too many connections', `Retry-After: ${c.retryAfterSeconds}\r\n`);
    const address = req.socket.remoteAddress ?? 'unknown';
    if ((this.#perAddress.get(address) ?? 0) >= c.maxConnectionsPerAddress) return refuse('429 Too Many Requests', 'too_many_connections', `more than ${c.maxConnectionsPerAddress} connections from one address`, `Retry-After: ${c.retryAfterSeconds}\r\n`);
    // The address holds a slot until its TCP socket closes, whatever happens to the upgrade.
    this.#count(address, +1);
    socket.once('close', () => this.#count(address, -1));
    this.#pending++;
    const done = () => {
      this.#pending--;
    };
    this.deps.auth
      .forSocket({ authorization: req.headers.authorization, cookie: req.headers.cookie, address })
      .then((who) => {
        done();
        if (socket.destroyed) return;
        (req as UpgradeRequest)[IDENTITY] = who;
        this.wss.handleUpgrade(req, socket, head, (ws) => this.#connect(ws, address, who.identity));
      }, (err: unknown) => {
        done();
        const e = toChatError(err);
        if (e.code === 'internal_error') console.error('ws upgrade identity check failed:', err);
        refuse(`${e.status} ${e.status === 401 ? 'Unauthorized' : e.status === 429 ? 'Too Many Requests' : 'Error'}`, e.code, e.message, e.retryAfter ? `Retry-After: ${e.retryAfter}\r\n` : '');
      })
      .catch((err: unknown) => {
        console.error('ws upgrade failed:', err);
        socket.destroy();
      });
  }

  #count(address: string, d: number): void {
    const n = (this.#perAddress.get(address) ?? 0) + d;
    if (n <= 0) this.#perAddress.delete(address);
    else this.#perAddress.set(address, n);
  }

  #connect(ws: WebSocket, address: string, identity: Identity): void {
    const conn = new Connection(ws, address, identity, this.deps);
    this.#connections.add(conn);
    const idle = setTimeout(() => {
      if (!conn.started) conn.close(CLOSE.policy, `no start within ${this.deps.config.startTimeoutMs} ms`);
    }, this.deps.config.startTimeoutMs);
    idle.unref();
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
      clearTimeout(idle);
      conn.cancelAll();
      this.#connections.delete(conn);
      this.deps.metrics.sockets.set(this.#connections.size);
    });
    const chat = this.deps.chat()!;
    const c = this.deps.config;
    conn.send({
      type: 'ready',
      modelVersion: chat.model.version,
      limits: { maxMessageBytes: c.maxMessageBytes, maxTokens: c.maxTokens, maxPromptTokens: c.maxPromptTokens, contextTokens: chat.model.gpt.config.blockSize, requestsPerMinute: c.requestsPerMinute, messagesPerSecond: c.messagesPerSecond, maxInFlightPerUser: c.maxInFlightPerUser, judgementsPerMinute: c.judgementsPerMinute },
      heartbeatMs: c.heartbeatMs,
      user: { id: identity.userId, anonymous: identity.anonymous },
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
