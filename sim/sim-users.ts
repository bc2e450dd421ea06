/**
 * Simulated users: scripted people who chat with the server ONLY through the public WebSocket
 * protocol (README, "WebSocket /ws") and judge its replies with the hidden gold rubric plus
 * Bradley–Terry noise (`gold-rubric.ts`). One session is one of:
 *
 *   - thumb:      `user_message`, then `thumb` up/down;
 *   - comparison: `compare` (two candidates), then `comparison` a/b;
 *   - ranking:    `user_message`, `regenerate` (k−1 times), then `ranking` best first.
 */
import WebSocket from 'ws';
import { GoldRubric, NoisyJudge, Rng, type DefinitionPrompt } from './gold-rubric.ts';

type Msg = Record<string, unknown>;

export class ProtocolError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'ProtocolError';
  }
}

export interface Reply {
  messageId: string;
  content: string;
  finishReason: string;
  modelVersion: string;
  candidate?: number;
}

/** A WebSocket client of the chat protocol: each request resolves with its messages, up to the terminal one. */
export class ChatSocket {
  #n = 0;
  readonly #pending = new Map<string, { msgs: Msg[]; done: (m: Msg) => boolean; resolve: (ms: Msg[]) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  ready: Msg | undefined;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as Msg;
      const p = typeof m.requestId === 'string' ? this.#pending.get(m.requestId) : undefined;
      if (!p) return;
      if (m.type === 'error') {
        this.#settle(m.requestId as string);
        p.reject(new ProtocolError(String(m.code), String(m.message)));
        return;
      }
      p.msgs.push(m);
      if (p.done(m)) {
        this.#settle(m.requestId as string);
        p.resolve(p.msgs);
      }
    });
    ws.on('close', () => {
      for (const [id, p] of this.#pending) {
        this.#settle(id);
        p.reject(new ProtocolError('closed', 'socket closed'));
      }
    });
    ws.on('error', () => {});
  }

  #settle(id: string): void {
    const p = this.#pending.get(id);
    if (p) clearTimeout(p.timer);
    this.#pending.delete(id);
  }

  static connect(url: string, ms = 30_000): Promise<ChatSocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const s = new ChatSocket(ws);
      const timer = setTimeout(() => (ws.terminate(), reject(new Error(`no ready from ${url} within ${ms} ms`))), ms);
      ws.once('message', (data) => {
        clearTimeout(timer);
        s.ready = JSON.parse(String(data)) as Msg;
        resolve(s);
      });
      ws.once('error', (e) => (clearTimeout(timer), reject(e)));
    });
  }

  /** Sends `msg` with a fresh requestId; resolves with every message about it up to the one `done` accepts. */
  request(msg: Msg, done: (m: Msg) => boolean, ms = 120_000): Promise<Msg[]> {
    const requestId = `s${++this.#n}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => (this.#pending.delete(requestId), reject(new ProtocolError('timeout', `no answer to ${String(msg.type)} within ${ms} ms`))), ms);
      this.#pending.set(requestId, { msgs: [], done, resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...msg, requestId }));
    });
  }

  /** Like `request`, retrying `overloaded` and `rate_limited` a few times. */
  async retrying(msg: Msg, done: (m: Msg) => boolean): Promise<Msg[]> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request(msg, done);
      } catch (e) {
        if (!(e instanceof ProtocolError) || !['overloaded', 'rate_limited'].includes(e.code) || attempt >= 20) throw e;
        await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      }
    }
  }

  async start(userId: string): Promise<string> {
    const [m] = await this.request({ type: 'start', userId }, (x) => x.type === 'conversation');
    return String(m!.conversationId);
  }

  async say(conversationId: string, content: string, params: Msg): Promise<Reply> {
    const ms = await this.retrying({ type: 'user_message', conversationId, content, params }, (x) => x.type === 'reply');
    return toReply(ms.at(-1)!);
  }

  async regenerate(conversationId: string, messageId: string, params?: Msg): Promise<Reply> {
    const ms = await this.retrying({ type: 'regenerate', conversationId, messageId, ...(params ? { params } : {}) }, (x) => x.type === 'reply');
    return toReply(ms.at(-1)!);
  }

  /** Two candidates to a new user message, in candidate order. */
  async compare(conversationId: string, content: string, params?: Msg): Promise<[Reply, Reply]> {
    const ms = await this.retrying({ type: 'compare', conversationId, content, ...(params ? { params } : {}) }, (x) => x.type === 'candidates');
    const ids = ms.at(-1)!.messageIds as string[];
    const replies = ms.filter((x) => x.type === 'reply').map(toReply);
    const byId = (id: string) => {
      const r = replies.find((x) => x.messageId === id);
      if (!r) throw new ProtocolError('invalid_response', `candidate ${id} has no reply`);
      return r;
    };
    return [byId(ids[0]!), byId(ids[1]!)];
  }

  /** Any feedback message (`thumb`, `comparison`, `ranking`); resolves with its `feedback_ack`. */
  async feedback(msg: Msg): Promise<Msg> {
    const ms = await this.retrying(msg, (x) => x.type === 'feedback_ack');
    return ms.at(-1)!;
  }

  close(): void {
    this.ws.close();
  }
}

function toReply(m: Msg): Reply {
  return {
    messageId: String(m.messageId),
    content: String(m.content),
    finishReason: String(m.finishReason),
    modelVersion: String(m.modelVersion),
    ...(typeof m.candidate === 'number' ? { candidate: m.candidate } : {}),
  };
}

export type SessionKind = 'thumb' | 'comparison' | 'ranking';

export interface SessionResult {
  kind: SessionKind;
  prompt: string;
  replies: Reply[];
  gold: number[];
  /** What the user sent: 'up' | 'down', 'a' | 'b' | 'tie', or the ranking order (indices of `replies`; empty = not rankable). */
  judgement: string | number[];
  feedbackId: string;
}

export interface UserOptions {
  /** Sampling params of every request (README: temperature, maxTokens, …). */
  params?: Msg;
  /** Replies ranked in a ranking session (2–16). */
  rankSize?: number;
}

/** One scripted person: a user id, a socket, and a judge with its own seeded noise. */
export class SimUser {
  readonly judge: NoisyJudge;
  readonly rng: Rng;
  constructor(
    readonly userId: string,
    readonly socket: ChatSocket,
    readonly rubric: GoldRubric,
    seed: number,
    readonly opts: UserOptions = {},
  ) {
    this.rng = new Rng(seed);
    this.judge = new NoisyJudge(new Rng(seed ^ 0x5bd1e995));
  }

  #gold(prompt: string, r: Reply): number {
    return this.rubric.score(prompt, r.content, r.finishReason === 'stop');
  }

  get params(): Msg {
    return { temperature: 0.9, maxTokens: 48, ...this.opts.params };
  }

  /** A session of the given kind (or a random one) on `p`. */
  async session(p: DefinitionPrompt, kind?: SessionKind): Promise<SessionResult> {
    const k = kind ?? this.rng.pick(['thumb', 'comparison', 'comparison', 'ranking'] as const);
    const conv = await this.socket.start(this.userId);
    if (k === 'thumb') {
      const r = await this.socket.say(conv, p.prompt, this.params);
      const g = this.#gold(p.prompt, r);
      const value = this.judge.thumb(g);
      const ack = await this.socket.feedback({ type: 'thumb', messageId: r.messageId, value, ...(value === 'down' ? { reason: 'unhelpful' } : {}) });
      return { kind: k, prompt: p.prompt, replies: [r], gold: [g], judgement: value, feedbackId: String(ack.id) };
    }
    if (k === 'comparison') {
      const [a, b] = await this.socket.compare(conv, p.prompt, this.params);
      const gold = [this.#gold(p.prompt, a), this.#gold(p.prompt, b)];
      const choice = this.judge.compare(gold[0]!, gold[1]!);
      const ack = await this.socket.feedback({ type: 'comparison', a: a.messageId, b: b.messageId, choice });
      return { kind: k, prompt: p.prompt, replies: [a, b], gold, judgement: choice, feedbackId: String(ack.id) };
    }
    const first = await this.socket.say(conv, p.prompt, this.params);
    const replies = [first];
    for (let i = 1; i < Math.max(2, this.opts.rankSize ?? 3); i++) replies.push(await this.socket.regenerate(conv, first.messageId, this.params));
    const gold = replies.map((r) => this.#gold(p.prompt, r));
    const order = this.judge.rankDistinct(gold);
    const ack = order.length
      ? await this.socket.feedback({ type: 'ranking', candidates: order.map((i) => replies[i]!.messageId) })
      : await this.socket.feedback({ type: 'ranking', candidates: replies.map((r) => r.messageId), notRankable: true });
    return { kind: k, prompt: p.prompt, replies, gold, judgement: order, feedbackId: String(ack.id) };
  }
}

/** `n` users on `url` run `sessions` sessions in all on random prompts, concurrently; returns every session. */
export async function runPopulation(url: string, o: { users: number; sessions: number; prompts: readonly DefinitionPrompt[]; rubric: GoldRubric; seed: number; userOptions?: UserOptions; round?: number }): Promise<SessionResult[]> {
  const sockets = await Promise.all(Array.from({ length: o.users }, () => ChatSocket.connect(url)));
  const users = sockets.map((s, i) => new SimUser(`sim-user-${i}`, s, o.rubric, o.seed * 1000 + (o.round ?? 0) * 97 + i, o.userOptions));
  const out: SessionResult[] = [];
  let left = o.sessions;
  try {
    await Promise.all(users.map(async (u) => {
      while (left > 0) {
        left--;
        out.push(await u.session(u.rng.pick(o.prompts)));
      }
    }));
  } finally {
    sockets.forEach((s) => s.close());
  }
  return out;
}
