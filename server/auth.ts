/**
 * Who is asking: the one place both doors (the WebSocket upgrade and the OpenAI routes) learn a
 * request's identity, and the per-identity meters they both spend from.
 *
 * Identity comes from the request, never from a message field:
 *  1. `Authorization: Bearer rk_…`: an API key (feedback/api-keys.ts); the identity is the key's
 *     user, and the key's id is recorded on what it writes.
 *  2. (WebSocket only) the `rlhf_session` cookie, made from a key by `POST /session {apiKey}`
 *     (HttpOnly, SameSite=Strict); sessions live in this process's memory and die with the key.
 *  3. Once any API key exists ("keys mode"), nothing else is accepted: `invalid_api_key` (401).
 *  4. Local mode (no key was ever made): each browser is an anonymous person of its own, named by
 *     the `rlhf_anon` cookie the server issues (a random 256-bit value; the user id is a hash of
 *     it, so knowing a user id does not let anyone become that user). A WebSocket without the
 *     cookie gets a fresh one on its 101 response, so two sockets without each other's cookie are
 *     two people. On `/v1` in local mode the identity is the client's address (a bearer value is
 *     ignored, so rotating it escapes nothing).
 *
 * Meters (all keyed by identity, held in LRUs so a crowd cannot grow memory without bound):
 * frames of every type per second, generation requests and judgements per minute, generation
 * requests in flight; failed key checks are metered per address.
 */
import { createHash, randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { anyApiKeys, findApiKey, getApiKey } from '../feedback/api-keys.ts';
import type { FeedbackStore } from '../feedback/open-store.ts';
import type { ServerConfig } from './config.ts';
import { ChatError } from './errors.ts';
import { RateLimiter, TokenBucket } from './rate-limit.ts';

/** The person behind a request. */
export interface Identity {
  /** Recorded as the conversation's user and the judgement's rater. */
  readonly userId: string;
  /** The API key's id (never the key); null when anonymous. */
  readonly keyId: string | null;
  readonly anonymous: boolean;
}

export const COOKIE = { session: 'rlhf_session', anon: 'rlhf_anon' } as const;

/** What a request shows of itself. */
export interface Credentials {
  authorization?: string;
  cookie?: string;
  /** The peer address (per-address meters and the local-mode /v1 identity). */
  address: string;
}

const TOKEN = /^[A-Za-z0-9_-]{43}$/;
const hash = (s: string) => createHash('sha256').update(s).digest('hex');

/** The cookies of a `Cookie` header, by name (the first of each name wins). */
export function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const name = part.slice(0, eq).trim();
    if (!out.has(name)) out.set(name, part.slice(eq + 1).trim());
  }
  return out;
}

/** Whether a WebSocket upgrade's `Origin` may connect: no Origin (not a browser), "*", a listed one, or (default) the same host. */
export function originAllowed(origin: string | undefined, host: string | undefined, allowed: string): boolean {
  if (origin === undefined) return true;
  const list = allowed.split(',').map((s) => s.trim()).filter(Boolean);
  if (list.includes('*')) return true;
  if (list.length) return list.includes(origin);
  try {
    return host !== undefined && new URL(origin).host === host;
  } catch {
    return false;
  }
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

interface Session {
  keyId: string;
  userId: string;
}

export class Auth {
  #keysKnown = false;
  #checkedAt = -Infinity;
  readonly #sessions: LRUCache<string, Session>;
  readonly #failures: RateLimiter;

  constructor(
    readonly o: { store: () => FeedbackStore | undefined; config: ServerConfig; now?: () => number },
  ) {
    this.#sessions = new LRUCache({ max: 100_000, ttl: o.config.sessionTtlSeconds * 1000 });
    this.#failures = new RateLimiter(o.config.authFailuresPerMinute, 100_000, o.now);
  }

  #db() {
    const store = this.o.store();
    if (!store) throw new ChatError('not_ready', 'the store is still loading', 503, 1);
    return store.db;
  }

  /** Whether keys are required: once any key exists (re-read at most every 2 s until one does), always. */
  async keysRequired(): Promise<boolean> {
    if (this.#keysKnown) return true;
    const now = (this.o.now ?? Date.now)();
    if (now - this.#checkedAt < 2000) return false;
    this.#checkedAt = now;
    this.#keysKnown = await anyApiKeys(this.#db());
    return this.#keysKnown;
  }

  /** A key was made in this process: keys mode from now on. */
  noteKeyCreated(): void {
    this.#keysKnown = true;
  }

  #refuse(address: string, message: string): never {
    this.#failures.take(`auth:${address}`); // past the limit this throws rate_limited instead
    throw new ChatError('invalid_api_key', message, 401);
  }

  /**
   * The identity of an `/v1` request (bearer key; in local mode the address).
   * Throws `invalid_api_key` (401), or `rate_limited` after too many failures from one address.
   */
  async forApi(c: Credentials): Promise<Identity> {
    const bearer = /^Bearer\s+(\S+)$/i.exec(c.authorization ?? '')?.[1];
    if (await this.keysRequired()) {
      if (!bearer) this.#refuse(c.address, 'an API key is required: Authorization: Bearer <key>');
      const key = await findApiKey(this.#db(), bearer);
      if (!key) this.#refuse(c.address, 'invalid or revoked API key');
      return { userId: key.userId, keyId: key.id, anonymous: false };
    }
    return { userId: `anon-addr-${hash(c.address).slice(0, 16)}`, keyId: null, anonymous: true };
  }

  /**
   * The identity of a WebSocket upgrade: a bearer key or a session cookie; in local mode the
   * anonymous cookie, a fresh one (returned as `setCookie`) when absent.
   */
  async forSocket(c: Credentials): Promise<{ identity: Identity; setCookie?: string }> {
    const cookies = parseCookies(c.cookie);
    if (await this.keysRequired()) {
      if (c.authorization) return { identity: await this.forApi(c) };
      const token = cookies.get(COOKIE.session);
      const s = token && TOKEN.test(token) ? this.#sessions.get(hash(token)) : undefined;
      if (s) {
        const key = await getApiKey(this.#db(), s.keyId);
        if (key && !key.revokedAt) return { identity: { userId: s.userId, keyId: s.keyId, anonymous: false } };
        this.#sessions.delete(hash(token!));
      }
      this.#refuse(c.address, 'an API key is required: sign in (POST /session) or send Authorization: Bearer <key>');
    }
    const anon = cookies.get(COOKIE.anon);
    if (anon && TOKEN.test(anon)) return { identity: anonymousIdentity(anon) };
    const fresh = randomBytes(32).toString('base64url');
    return { identity: anonymousIdentity(fresh), setCookie: this.cookie(COOKIE.anon, fresh, 365 * 24 * 3600) };
  }

  /** `POST /session {apiKey}`: a session cookie for a browser; throws `invalid_api_key`. */
  async createSession(apiKey: string, address: string): Promise<{ identity: Identity; setCookie: string }> {
    const key = await findApiKey(this.#db(), apiKey);
    if (!key) this.#refuse(address, 'invalid or revoked API key');
    const token = randomBytes(32).toString('base64url');
    this.#sessions.set(hash(token), { keyId: key.id, userId: key.userId });
    return { identity: { userId: key.userId, keyId: key.id, anonymous: false }, setCookie: this.cookie(COOKIE.session, token, this.o.config.sessionTtlSeconds) };
  }

  /** Ends the session named by a Cookie header; returns the Set-Cookie that clears it. */
  endSession(cookieHeader: string | undefined): string {
    const token = parseCookies(cookieHeader).get(COOKIE.session);
    if (token) this.#sessions.delete(hash(token));
    return this.cookie(COOKIE.session, '', 0);
  }

  /** A Set-Cookie value: HttpOnly, SameSite=Strict, Path=/ (Secure with `secureCookies`). */
  cookie(name: string, value: string, maxAgeSeconds: number): string {
    return `${name}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}${this.o.config.secureCookies ? '; Secure' : ''}`;
  }
}

export function anonymousIdentity(cookieValue: string): Identity {
  return { userId: `anon-${hash(cookieValue).slice(0, 20)}`, keyId: null, anonymous: true };
}

/** Per-identity meters both doors spend from. */
export class Meter {
  readonly #frames: LRUCache<string, TokenBucket>;
  readonly #inFlight = new Map<string, number>();
  readonly requests: RateLimiter;
  readonly judgements: RateLimiter;

  constructor(readonly config: ServerConfig) {
    this.#frames = new LRUCache({ max: 100_000 });
    this.requests = new RateLimiter(config.requestsPerMinute);
    this.judgements = new RateLimiter(config.judgementsPerMinute);
  }

  /** One frame (of any type) from `who`; false past `messagesPerSecond`. */
  frame(who: Identity): boolean {
    let b = this.#frames.get(who.userId);
    if (!b) this.#frames.set(who.userId, (b = new TokenBucket(this.config.messagesPerSecond, this.config.messagesPerSecond * 2)));
    return b.take();
  }

  /** One judgement; throws `rate_limited` past `judgementsPerMinute`. */
  judgement(who: Identity): void {
    this.judgements.take(who.userId);
  }

  /**
   * One generation request: counts against `requestsPerMinute` and holds one of the identity's
   * `maxInFlightPerUser` slots until the returned function is called (throws `rate_limited` /
   * `overloaded`, 429 with Retry-After).
   */
  enter(who: Identity): () => void {
    const n = this.#inFlight.get(who.userId) ?? 0;
    if (n >= this.config.maxInFlightPerUser) {
      throw new ChatError('overloaded', `${n} of your requests are already in flight (the limit is ${this.config.maxInFlightPerUser}); wait for one to finish`, 429, this.config.retryAfterSeconds);
    }
    this.requests.take(who.userId);
    this.#inFlight.set(who.userId, n + 1);
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const m = (this.#inFlight.get(who.userId) ?? 1) - 1;
      if (m <= 0) this.#inFlight.delete(who.userId);
      else this.#inFlight.set(who.userId, m);
    };
  }

  /** Requests in flight for `who` (tests, metrics). */
  inFlight(who: Identity): number {
    return this.#inFlight.get(who.userId) ?? 0;
  }
}
