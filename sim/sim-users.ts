/**
 * Simulated users: scripted people who chat with the server ONLY through the public WebSocket
 * protocol (README, "WebSocket /ws"), with the one typed client (`client/ws-client.ts`), and
 * judge its replies with their hidden rubric plus Bradley–Terry noise (`gold-rubric.ts`). Each
 * user is one socket, so one identity to a server that takes identities from the upgrade.
 * One session is one of:
 *
 *   - thumb:      `user_message`, then `thumb` up/down;
 *   - comparison: `compare` (two candidates), then `comparison` a/b/tie; when the server answers
 *                 with a blind arena pair (champion vs candidate), the same judgement is a
 *                 head-to-head one and its acknowledgement reveals the two versions;
 *   - ranking:    `user_message`, `regenerate` (k−1 times), then `ranking` best first.
 */
import { WsClient, type ReplyMessage } from '../client/ws-client.ts';
import type { Sampling } from '../server/ws-protocol.ts';
import { GoldRubric, NoisyJudge, Rng, type DefinitionPrompt } from './gold-rubric.ts';

/** A reply as a simulated user sees it. */
export interface Reply {
  messageId: string;
  content: string;
  finishReason: string;
  /** `"hidden"` on an arena pair until the judgement is stored. */
  modelVersion: string;
  candidate?: number;
  /** Part of a blind head-to-head pair (champion vs candidate). */
  arena?: boolean;
}

function toReply(m: ReplyMessage): Reply {
  const arena = m.arena === true;
  return {
    messageId: m.messageId,
    content: m.content,
    finishReason: m.finishReason,
    modelVersion: m.modelVersion,
    ...(typeof m.candidate === 'number' ? { candidate: m.candidate } : {}),
    ...(arena ? { arena } : {}),
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
  /** An arena pair: the versions behind a and b, as the acknowledgement revealed them. */
  revealed?: { a: string; b: string };
}

export interface UserOptions {
  /** Sampling params of every request (README: temperature, maxTokens, …). */
  params?: Sampling;
  /** Replies ranked in a ranking session (2–16). */
  rankSize?: number;
}

/** One scripted person: a user id, a socket, and a judge with its own seeded noise. */
export class SimUser {
  readonly judge: NoisyJudge;
  readonly rng: Rng;
  constructor(
    readonly userId: string,
    readonly socket: WsClient,
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

  get params(): Sampling {
    return { temperature: 0.9, maxTokens: 48, ...this.opts.params };
  }

  /** A session of the given kind (or a random one) on `p`. */
  async session(p: DefinitionPrompt, kind?: SessionKind): Promise<SessionResult> {
    const k = kind ?? this.rng.pick(['thumb', 'comparison', 'comparison', 'ranking'] as const);
    const conv = (await this.socket.start({ userId: this.userId })).conversationId;
    if (k === 'thumb') {
      const r = toReply(await this.socket.say(conv, p.prompt, this.params));
      const g = this.#gold(p.prompt, r);
      const value = this.judge.thumb(g);
      const ack = await this.socket.feedback({ type: 'thumb', messageId: r.messageId, value, ...(value === 'down' ? { reason: 'unhelpful' } : {}) });
      return { kind: k, prompt: p.prompt, replies: [r], gold: [g], judgement: value, feedbackId: ack.id };
    }
    if (k === 'comparison') {
      const { replies } = await this.socket.compare(conv, { content: p.prompt }, this.params);
      const [a, b] = replies.map(toReply) as [Reply, Reply];
      const gold = [this.#gold(p.prompt, a), this.#gold(p.prompt, b)];
      const choice = this.judge.compare(gold[0]!, gold[1]!);
      const ack = await this.socket.feedback({ type: 'comparison', a: a.messageId, b: b.messageId, choice });
      const revealed = ack.revealed;
      return { kind: k, prompt: p.prompt, replies: [a, b], gold, judgement: choice, feedbackId: ack.id, ...(revealed ? { revealed } : {}) };
    }
    const first = toReply(await this.socket.say(conv, p.prompt, this.params));
    const replies = [first];
    for (let i = 1; i < Math.max(2, this.opts.rankSize ?? 3); i++) replies.push(toReply(await this.socket.regenerate(conv, first.messageId, this.params)));
    const gold = replies.map((r) => this.#gold(p.prompt, r));
    const order = this.judge.rankDistinct(gold);
    const ack = order.length
      ? await this.socket.feedback({ type: 'ranking', candidates: order.map((i) => replies[i]!.messageId) })
      : await this.socket.feedback({ type: 'ranking', candidates: replies.map((r) => r.messageId), notRankable: true });
    return { kind: k, prompt: p.prompt, replies, gold, judgement: order, feedbackId: ack.id };
  }
}

/** `n` users on `url` run `sessions` sessions in all on random prompts, concurrently; returns every session. */
export async function runPopulation(url: string, o: { users: number; sessions: number; prompts: readonly DefinitionPrompt[]; rubric: GoldRubric; seed: number; userOptions?: UserOptions; round?: number; headers?: Record<string, string> }): Promise<SessionResult[]> {
  const sockets = await Promise.all(Array.from({ length: o.users }, () => WsClient.connect(url, o.headers ? { headers: o.headers } : {})));
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
