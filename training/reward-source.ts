/**
 * Where PPO's reward comes from. One interface, three implementations, all interchangeable in a
 * PPO run:
 *
 *   - {@link RewardModelSource}: a trained reward model (its scalar head on the reply's `<|end|>`);
 *   - {@link RuleRewardSource}: a function written by hand (`(item) => number`), for rule-based
 *     rewards, tests and debugging;
 *   - {@link RemoteRewardSource}: a scorer behind HTTP (`POST` JSON, see below), with a timeout.
 *
 * A source returns one finite number per item, in order; anything else is an error that stops
 * the PPO step before any update (a reward that silently turned into NaN would wreck the policy).
 */
import type { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import type { ChatMessage } from '../model/chat-template.ts';
import { scoreExchanges } from './reward-model.ts';

/**
 * One reply to score: the conversation it answers, its text, and its token ids (as sampled).
 * Model-based sources score the text (canonically re-encoded); the ids are for sources that
 * want them (e.g. a remote scorer) and for the missing-`<|end|>` check.
 */
export interface RewardItem {
  prompt: ChatMessage[];
  reply: string;
  /** The sampled ids, including the closing `<|end|>` when the policy emitted it. */
  replyIds: number[];
}

/** Anything that scores replies. */
export interface RewardSource {
  /** One finite score per item, same order. */
  score(batch: readonly RewardItem[]): Promise<number[]>;
  /** A short description for logs and checkpoint metadata. */
  readonly name: string;
}

/** Stable codes of reward errors. */
export type RewardErrorCode = 'reward_timeout' | 'reward_http' | 'reward_bad_response' | 'reward_not_finite' | 'reward_unreachable';

export class RewardError extends Error {
  constructor(
    readonly code: RewardErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'RewardError';
  }
}

function checkScores(scores: unknown, n: number, from: string): number[] {
  if (!Array.isArray(scores) || scores.length !== n) {
    throw new RewardError('reward_bad_response', `${from}: expected ${n} scores, got ${Array.isArray(scores) ? scores.length : typeof scores}`);
  }
  scores.forEach((s, i) => {
    if (typeof s !== 'number' || !Number.isFinite(s)) throw new RewardError('reward_not_finite', `${from}: score ${i} is ${JSON.stringify(s)}, not a finite number`);
  });
  return scores as number[];
}

/**
 * Scores with a reward model (trained by reward-model.ts; its scores are normalised to SFT = 0).
 * It scores the canonical encoding of `reply` (the text) plus `<|end|>`, as in training, never
 * the sampled `replyIds` (BPE can sample a non-canonical id sequence of the same text).
 */
export class RewardModelSource implements RewardSource {
  readonly name: string;
  constructor(
    private readonly rm: GPT,
    private readonly tok: Tokenizer,
    private readonly opts: { batchSize?: number; label?: string } = {},
  ) {
    if (rm.kind !== 'reward') throw new Error(`RewardModelSource needs a reward model, got a ${rm.kind} model`);
    this.name = `reward-model${opts.label ? `:${opts.label}` : ''}`;
  }

  async score(batch: readonly RewardItem[]): Promise<number[]> {
    const s = scoreExchanges(this.rm, this.tok, batch.map((b) => ({ prompt: b.prompt, reply: b.reply })), this.opts.batchSize ?? 16);
    return checkScores(s, batch.length, this.name);
  }
}

/**
 * A reward written as a function.
 *
 * @example
 *   const polite = new RuleRewardSource('says please', (it) => (it.reply.includes('please') ? 1 : 0));
 */
export class RuleRewardSource implements RewardSource {
  constructor(
    readonly name: string,
    private readonly fn: (item: RewardItem) => number | Promise<number>,
  ) {}

  async score(batch: readonly RewardItem[]): Promise<number[]> {
    return checkScores(await Promise.all(batch.map((b) => this.fn(b))), batch.length, `rule "${this.name}"`);
  }
}

/**
 * A scorer over HTTP. Request: `POST <url>` with JSON
 * `{ "items": [{ "prompt": [{ role, content }], "reply": "…", "reply_ids": [...] }] }`;
 * response: `200` with JSON `{ "scores": [number, …] }` (one per item, same order).
 * Errors carry a stable code: `reward_timeout`, `reward_unreachable`, `reward_http` (non-2xx),
 * `reward_bad_response` (not JSON, wrong count), `reward_not_finite`.
 */
export class RemoteRewardSource implements RewardSource {
  readonly name: string;
  constructor(
    private readonly url: string,
    private readonly opts: { timeoutMs?: number; headers?: Record<string, string> } = {},
  ) {
    if (!/^https?:\/\//.test(url)) throw new Error(`remote reward URL must be http(s)://…, got ${JSON.stringify(url)}`);
    this.name = `remote:${url}`;
  }

  async score(batch: readonly RewardItem[]): Promise<number[]> {
    const timeoutMs = this.opts.timeoutMs ?? 30_000;
    const body = JSON.stringify({ items: batch.map((b) => ({ prompt: b.prompt, reply: b.reply, reply_ids: b.replyIds })) });
    let res: Response;
    try {
      res = await fetch(this.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...this.opts.headers },
        body,
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      const e = err as Error;
      if (e.name === 'TimeoutError' || e.name === 'AbortError') throw new RewardError('reward_timeout', `${this.name}: no answer within ${timeoutMs} ms`);
      throw new RewardError('reward_unreachable', `${this.name}: ${(e.cause as Error | undefined)?.message ?? e.message}`);
    }
    let text: string;
    try {
      text = await res.text();
    } catch {
      throw new RewardError('reward_timeout', `${this.name}: response body not read within ${timeoutMs} ms`);
    }
    if (!res.ok) throw new RewardError('reward_http', `${this.name}: HTTP ${res.status}: ${text.slice(0, 200)}`);
    let json: { scores?: unknown };
    try {
      json = JSON.parse(text) as { scores?: unknown };
    } catch {
      throw new RewardError('reward_bad_response', `${this.name}: response is not JSON: ${text.slice(0, 200)}`);
    }
    return checkScores(json?.scores, batch.length, this.name);
  }
}
