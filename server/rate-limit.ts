/**
 * Requests per client per minute: a sliding one-minute window per client key, the keys held in
 * an LRU so a crowd of clients cannot grow memory without bound.
 */
import { LRUCache } from 'lru-cache';
import { ChatError } from './errors.ts';

export class RateLimiter {
  readonly #hits: LRUCache<string, number[]>;

  constructor(
    readonly perMinute: number,
    maxClients = 100_000,
    private readonly now: () => number = Date.now,
  ) {
    this.#hits = new LRUCache({ max: maxClients });
  }

  /** Counts one request for `client`; throws `rate_limited` (429, Retry-After) past the limit. */
  take(client: string): void {
    const t = this.now();
    let hits = this.#hits.get(client);
    if (!hits) this.#hits.set(client, (hits = []));
    while (hits.length && hits[0]! <= t - 60_000) hits.shift();
    if (hits.length >= this.perMinute) {
      const retry = Math.max(1, Math.ceil((hits[0]! + 60_000 - t) / 1000));
      throw new ChatError('rate_limited', `more than ${this.perMinute} requests in a minute; retry in ${retry} s`, 429, retry);
    }
    hits.push(t);
  }
}

/** A token bucket (messages per second on one socket). */
export class TokenBucket {
  #tokens: number;
  #last: number;
  constructor(
    readonly ratePerSecond: number,
    readonly burst: number = ratePerSecond,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.#tokens = burst;
    this.#last = now();
  }

  /** Whether a token is there, without taking it. */
  peek(): boolean {
    const t = this.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((t - this.#last) / 1000) * this.ratePerSecond);
    this.#last = t;
    return this.#tokens >= 1;
  }

  take(): boolean {
    const t = this.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((t - this.#last) / 1000) * this.ratePerSecond);
    this.#last = t;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}
