/**
 * The one WebSocket client of the chat protocol (`/ws`), typed with the protocol's own message
 * types (`server/ws-protocol.ts`): the command-line chat and the simulated users both speak
 * through it.
 *
 * Every request gets a fresh `requestId`; its promise resolves with every server message about it,
 * up to its terminal one (`conversation`, `reply`, `candidates`, `feedback_ack`, `pong`), and
 * rejects with a `WsError` carrying the server's stable `code` when the server answers `error`,
 * `timeout` when nothing terminal arrives in time, or `closed` when the socket closes first.
 * `retrying` retries `overloaded` and `rate_limited` with a growing pause.
 *
 * @example
 *   const c = await WsClient.connect('ws://127.0.0.1:8080/ws');
 *   const { conversationId } = await c.start();
 *   const reply = await c.say(conversationId, 'What does lucid mean?', { maxTokens: 32 });
 *   await c.feedback({ type: 'thumb', messageId: reply.messageId, value: 'up' });
 *   c.close();
 */
import WebSocket from 'ws';
import type { ClientMessage, Sampling, ServerMessage } from '../server/ws-protocol.ts';

/** A server message of one type. */
export type ServerMsg<T extends ServerMessage['type']> = Extract<ServerMessage, { type: T }>;
export type ReplyMessage = ServerMsg<'reply'>;
export type FeedbackAck = ServerMsg<'feedback_ack'>;
export type ConversationMessage = ServerMsg<'conversation'>;
export type CandidatesMessage = ServerMsg<'candidates'>;

type WithoutRequestId<T> = T extends unknown ? Omit<T, 'requestId'> : never;
/** A client message as the caller writes it; the client adds the `requestId`. */
export type OutgoingMessage = WithoutRequestId<ClientMessage>;
export type FeedbackMessage = Extract<OutgoingMessage, { type: 'thumb' | 'comparison' | 'ranking' }>;

/** A refusal by the server (its `code`), or `timeout` / `closed` / `invalid_response` on this side. */
export class WsError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'WsError';
  }
}

export interface ConnectOptions {
  /** How long to wait for `ready` (default 30 s). */
  timeoutMs?: number;
  /** Headers of the upgrade request (an API key, a session cookie). */
  headers?: Record<string, string>;
}

export interface RequestOptions {
  timeoutMs?: number;
  /** Sees every message of the request as it arrives (deltas, replies). */
  onMessage?: (m: ServerMessage) => void;
}

const RETRIED = new Set(['overloaded', 'rate_limited']);

/** The environment variable a command-line client reads its API key from (never a command-line flag: those show in `ps`). */
export const API_KEY_ENV = 'RLHF_API_KEY';

/** Upgrade headers that carry the API key of `env` (`RLHF_API_KEY`), if one is set. */
export function authHeaders(env: NodeJS.ProcessEnv = process.env): Record<string, string> | undefined {
  const key = env[API_KEY_ENV]?.trim();
  return key ? { authorization: `Bearer ${key}` } : undefined;
}

interface Pending {
  msgs: ServerMessage[];
  done: (m: ServerMessage) => boolean;
  onMessage?: (m: ServerMessage) => void;
  resolve: (ms: ServerMessage[]) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class WsClient {
  #n = 0;
  readonly #pending = new Map<string, Pending>();
  #unsolicited: ((m: ServerMessage) => void) | undefined;
  #closed = false;

  private constructor(
    private readonly ws: WebSocket,
    /** The server's `ready` message: its model version, limits and heartbeat. */
    readonly ready: ServerMsg<'ready'>,
  ) {
    ws.on('message', (data) => {
      let m: ServerMessage;
      try {
        m = JSON.parse(String(data)) as ServerMessage;
      } catch {
        return;
      }
      const rid = 'requestId' in m && typeof m.requestId === 'string' ? m.requestId : undefined;
      const p = rid === undefined ? undefined : this.#pending.get(rid);
      if (!p) return void this.#unsolicited?.(m);
      if (m.type === 'error') return void (this.#settle(rid!), p.reject(new WsError(m.code, m.message)));
      p.msgs.push(m);
      p.onMessage?.(m);
      if (p.done(m)) (this.#settle(rid!), p.resolve(p.msgs));
    });
    ws.on('close', () => {
      this.#closed = true;
      for (const [id, p] of this.#pending) (this.#settle(id), p.reject(new WsError('closed', 'socket closed')));
    });
    ws.on('error', () => {});
  }

  /** Opens a socket and waits for the server's `ready`. */
  static connect(url: string, o: ConnectOptions = {}): Promise<WsClient> {
    const ms = o.timeoutMs ?? 30_000;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, o.headers ? { headers: o.headers } : undefined);
      const fail = (e: Error): void => (clearTimeout(timer), ws.off('message', first), reject(e));
      const timer = setTimeout(() => (ws.terminate(), fail(new WsError('timeout', `no ready from ${url} within ${ms} ms`))), ms);
      const first = (data: WebSocket.RawData): void => {
        clearTimeout(timer);
        const m = JSON.parse(String(data)) as ServerMessage;
        if (m.type !== 'ready') return void (ws.close(), reject(new WsError(m.type === 'error' ? m.code : 'invalid_response', `expected ready, got ${String(data).slice(0, 200)}`)));
        ws.off('error', fail);
        ws.off('close', onClose);
        resolve(new WsClient(ws, m));
      };
      const onClose = (code: number): void => fail(new WsError('closed', `socket closed (${code}) before ready`));
      ws.once('message', first);
      ws.once('error', fail);
      ws.once('close', onClose);
    });
  }

  /**
   * Who the server says this socket is (`ready.user.id`: the identity of the upgrade request),
   * or undefined from a server that does not say (the `start` message's `userId` then names the rater).
   */
  get identity(): string | undefined {
    const user = (this.ready as { user?: { id?: unknown } }).user;
    return typeof user?.id === 'string' ? user.id : undefined;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Messages that belong to no request of this client (an `error` without a known requestId). */
  onUnsolicited(fn: (m: ServerMessage) => void): void {
    this.#unsolicited = fn;
  }

  onClose(fn: (code: number) => void): void {
    this.ws.on('close', fn);
  }

  #settle(id: string): void {
    const p = this.#pending.get(id);
    if (p) clearTimeout(p.timer);
    this.#pending.delete(id);
  }

  /** Sends `msg` with a fresh requestId; resolves with its messages up to the first one `done` accepts. */
  request(msg: OutgoingMessage, done: (m: ServerMessage) => boolean, o: RequestOptions = {}): Promise<ServerMessage[]> {
    const requestId = `c${++this.#n}`;
    const ms = o.timeoutMs ?? 120_000;
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(new WsError('closed', 'socket closed'));
      const timer = setTimeout(() => (this.#pending.delete(requestId), reject(new WsError('timeout', `no answer to ${msg.type} within ${ms} ms`))), ms);
      this.#pending.set(requestId, { msgs: [], done, resolve, reject, timer, ...(o.onMessage ? { onMessage: o.onMessage } : {}) });
      this.ws.send(JSON.stringify({ ...msg, requestId }));
    });
  }

  /** Like `request`, retrying `overloaded` and `rate_limited` (up to `attempts` times, pausing 200 ms × attempt). */
  async retrying(msg: OutgoingMessage, done: (m: ServerMessage) => boolean, o: RequestOptions & { attempts?: number } = {}): Promise<ServerMessage[]> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request(msg, done, o);
      } catch (e) {
        if (!(e instanceof WsError) || !RETRIED.has(e.code) || attempt >= (o.attempts ?? 20)) throw e;
        await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      }
    }
  }

  /** Starts a conversation (or resumes `conversationId`). */
  async start(o: { userId?: string; conversationId?: string; system?: string; title?: string } = {}): Promise<ConversationMessage> {
    const ms = await this.request({ type: 'start', ...o }, (m) => m.type === 'conversation');
    return last(ms, 'conversation');
  }

  /** A user message and its streamed reply (deltas go to `onMessage`). */
  async say(conversationId: string, content: string, params?: Sampling, o: RequestOptions & { parentId?: string } = {}): Promise<ReplyMessage> {
    const { parentId, ...ro } = o;
    const ms = await this.retrying({ type: 'user_message', conversationId, content, ...(params ? { params } : {}), ...(parentId ? { parentId } : {}) }, (m) => m.type === 'reply', ro);
    return last(ms, 'reply');
  }

  /** Another reply to the same user message: a sibling of the assistant message `messageId`. */
  async regenerate(conversationId: string, messageId: string, params?: Sampling, o: RequestOptions = {}): Promise<ReplyMessage> {
    const ms = await this.retrying({ type: 'regenerate', conversationId, messageId, ...(params ? { params } : {}) }, (m) => m.type === 'reply', o);
    return last(ms, 'reply');
  }

  /** Two candidates (to a new user message `content`, or to the existing `parentId`), in candidate order, and the `candidates` message. */
  async compare(conversationId: string, to: { content: string } | { parentId: string }, params?: Sampling, o: RequestOptions = {}): Promise<{ replies: [ReplyMessage, ReplyMessage]; candidates: CandidatesMessage }> {
    const ms = await this.retrying({ type: 'compare', conversationId, ...to, ...(params ? { params } : {}) }, (m) => m.type === 'candidates', o);
    const candidates = last(ms, 'candidates');
    const replies = ms.filter((m): m is ReplyMessage => m.type === 'reply');
    const byId = (id: string | undefined): ReplyMessage => {
      const r = replies.find((x) => x.messageId === id);
      if (!r) throw new WsError('invalid_response', `candidate ${String(id)} has no reply`);
      return r;
    };
    return { replies: [byId(candidates.messageIds[0]), byId(candidates.messageIds[1])], candidates };
  }

  /** A thumb, comparison or ranking; resolves with its `feedback_ack`. */
  async feedback(msg: FeedbackMessage, o: RequestOptions = {}): Promise<FeedbackAck> {
    const ms = await this.retrying(msg, (m) => m.type === 'feedback_ack', o);
    return last(ms, 'feedback_ack');
  }

  close(): void {
    this.ws.close();
  }
}

function last<T extends ServerMessage['type']>(ms: readonly ServerMessage[], type: T): ServerMsg<T> {
  const m = ms.at(-1);
  if (!m || m.type !== type) throw new WsError('invalid_response', `expected ${type}, got ${m?.type ?? 'nothing'}`);
  return m as ServerMsg<T>;
}
