/**
 * Whether the store answers. A PostgreSQL server can go away or stall; the server must then
 * refuse chats (a reply that cannot be stored must not be generated) and say so in `/healthz`,
 * and come back by itself when the database does.
 *
 * The state is `ok` or `degraded`. It turns `degraded` on the first failure to get a connection
 * (reported by the pool wrapper in open-store.ts) or a failed probe, and `ok` on the next
 * connection or probe that succeeds. A probe (`select 1`, bounded by the pool's connect timeout)
 * runs every `probeMs`, so recovery is noticed within about a second even with no traffic.
 */

/** A store error that says "not now" (the server is down, slow or restarting), not "not this". */
export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
  readonly code = 'store_unavailable';
}

/**
 * A store error that says "busy" (every pooled connection is in use by queries that are
 * finishing, and a request waited past the connect timeout for one), not "down": answered with
 * `overloaded` and a retry, and never counted against the store's health.
 */
export class StoreBusyError extends Error {
  override readonly name = 'StoreBusyError';
  readonly code = 'overloaded';
}

const NET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'SQLITE_BUSY']);
// SQLSTATE: 08xxx connection exception, 57014 statement timeout, 57P01-03 shutdown / cannot connect now, 53300 too many connections.
const SQLSTATE = /^(08...|57014|57P0[123]|53300)$/;
const MESSAGES = /timeout exceeded when trying to connect|Connection terminated|Query read timeout|connection error|Connection ended|not queryable/i;

/** Whether `err` means the store is unreachable or too slow (worth a retry later). */
export function isStoreUnavailable(err: unknown): boolean {
  if (err instanceof StoreUnavailableError) return true;
  if (!(err instanceof Error) || err instanceof StoreBusyError) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (NET_CODES.has(code) || SQLSTATE.test(code))) return true;
  const cause = (err as { cause?: unknown }).cause;
  return MESSAGES.test(err.message) || (cause !== undefined && cause !== err && isStoreUnavailable(cause));
}

/** A snapshot of {@link StoreHealth}. */
export interface StoreHealthState {
  state: 'ok' | 'degraded';
  /** When the state last changed (ISO time). */
  since: string;
  /** Why it is degraded (the last failure's message). */
  lastError?: string;
  /** Failures seen since the store was opened. */
  failures: number;
  /** What to send as Retry-After while degraded. */
  retryAfterSeconds: number;
}

export interface StoreHealthOptions {
  /** How often to probe (default 1000 ms); 0 = never (failures and successes are still reported). */
  probeMs?: number;
  log?: (line: string) => void;
}

/** The store's health, maintained by failures, successes and a cheap periodic probe. */
export class StoreHealth {
  #state: StoreHealthState = { state: 'ok', since: new Date().toISOString(), failures: 0, retryAfterSeconds: 2 };
  #timer: NodeJS.Timeout | undefined;
  #probing = false;

  constructor(
    readonly probe: () => Promise<unknown>,
    readonly opts: StoreHealthOptions = {},
  ) {
    const ms = opts.probeMs ?? 1000;
    if (ms > 0) {
      this.#timer = setInterval(() => void this.check(), ms);
      this.#timer.unref();
    }
  }

  state(): StoreHealthState {
    return { ...this.#state };
  }

  /** Runs the probe now; resolves with the state after it. */
  async check(): Promise<StoreHealthState> {
    if (this.#probing) return this.state();
    this.#probing = true;
    try {
      await this.probe();
      this.succeeded();
    } catch (err) {
      this.failed(err);
    } finally {
      this.#probing = false;
    }
    return this.state();
  }

  succeeded(): void {
    if (this.#state.state === 'ok') return;
    this.opts.log?.(`store: reachable again after ${Math.round((Date.now() - Date.parse(this.#state.since)) / 100) / 10} s`);
    this.#state = { ...this.#state, state: 'ok', since: new Date().toISOString(), lastError: undefined };
  }

  failed(err: unknown): void {
    this.#state.failures++;
    const message = err instanceof Error ? err.message : String(err);
    if (this.#state.state === 'degraded') {
      this.#state.lastError = message;
      return;
    }
    this.opts.log?.(`store: unreachable (${message}); chats answer store_unavailable until it is back`);
    this.#state = { ...this.#state, state: 'degraded', since: new Date().toISOString(), lastError: message };
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
