/**
 * Group commit for judgements. Submissions that arrive while the database is busy (or within
 * the same turn of the event loop) are queued and written together in one transaction; each
 * promise resolves only after that transaction's COMMIT, so "acknowledged" means "durable".
 * One transaction per batch instead of per judgement is what makes thousands of writes per
 * second possible on SQLite with a synced WAL.
 *
 * If a batch fails as a whole (a storage error, or a concurrent writer in another process
 * taking the same subject first), each item is retried alone (up to 3 times) so the others
 * still land; an item that still fails rejects its promise with the underlying error.
 *
 * The store down, slow or busy (a connection refused or timed out, a statement timeout, every
 * pooled connection in use): the batch is retried whole with exponential backoff (50 ms doubling to 2 s) for up to `retryForMs`; its
 * promises stay pending meanwhile, so nothing is acknowledged that was not committed, and it
 * rejects with the last error only after that. The queue is bounded (`maxQueue`): past it,
 * `submit` rejects at once with a `StoreUnavailableError` instead of holding memory without end.
 */
import type { Kysely } from 'kysely';
import { applyJudgements, type JudgementResult } from './judgements.ts';
import type { JudgementInput } from './judgement-input.ts';
import type { Database, DialectName } from './schema.ts';
import { isStoreUnavailable, StoreBusyError, StoreUnavailableError, type StoreHealth } from './store-health.ts';
import { writeTransaction } from './transaction.ts';

/** Options for {@link JudgementWriter}. */
export interface JudgementWriterOptions {
  /** Most judgements per transaction (default 256). */
  maxBatch?: number;
  /**
   * Batches in flight at once (default 1 on SQLite, whose one connection serialises them
   * anyway; 4 on PostgreSQL, where commits of several connections overlap).
   */
  concurrency?: number;
  /** Most judgements waiting (default 10,000); past it `submit` rejects with StoreUnavailableError. */
  maxQueue?: number;
  /** How long a batch is retried while the store is unreachable (default 30,000 ms). */
  retryForMs?: number;
  /** Told of unreachable-store failures and of commits that succeed. */
  health?: StoreHealth;
}

interface Pending {
  input: unknown;
  resolve: (r: JudgementResult) => void;
  reject: (err: unknown) => void;
}

/** Counters since the writer was made. */
export interface JudgementWriterStats {
  submitted: number;
  batches: number;
  largestBatch: number;
  /** Batch attempts that failed because the store was unreachable, and were retried. */
  retries: number;
  /** Submissions refused because the queue was full. */
  refused: number;
}

/** Queues judgements and commits them in batches; see the module docs. */
export class JudgementWriter {
  readonly #db: Kysely<Database>;
  readonly #dialect: DialectName;
  readonly #maxBatch: number;
  readonly #concurrency: number;
  readonly #maxQueue: number;
  readonly #retryForMs: number;
  readonly #health: StoreHealth | undefined;
  #queue: Pending[] = [];
  #scheduled = false;
  #inFlight = 0;
  #idle: (() => void)[] = [];
  #closed = false;
  readonly stats: JudgementWriterStats = { submitted: 0, batches: 0, largestBatch: 0, retries: 0, refused: 0 };

  constructor(db: Kysely<Database>, dialect: DialectName, options: JudgementWriterOptions = {}) {
    const maxBatch = options.maxBatch ?? 256;
    const concurrency = options.concurrency ?? (dialect === 'postgres' ? 4 : 1);
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new RangeError(`maxBatch must be a positive integer, got ${maxBatch}`);
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new RangeError(`concurrency must be a positive integer, got ${concurrency}`);
    }
    this.#db = db;
    this.#dialect = dialect;
    this.#maxBatch = maxBatch;
    this.#concurrency = concurrency;
    this.#maxQueue = options.maxQueue ?? 10_000;
    this.#retryForMs = options.retryForMs ?? 30_000;
    this.#health = options.health;
  }

  /** Judgements submitted and not yet committed or refused. */
  get pending(): number {
    return this.#queue.length;
  }

  /**
   * Stores one judgement; resolves once it is committed (or refused: `{ ok: false, error }`).
   * @example
   * const r = await store.writer.submit({ kind: 'comparison', a, b, choice: 'a', raterId: 'u1' });
   * if (!r.ok) reply({ type: 'error', code: r.error.code, message: r.error.message });
   */
  submit(input: JudgementInput | unknown): Promise<JudgementResult> {
    if (this.#closed) return Promise.reject(new Error('judgement writer is closed'));
    if (this.#queue.length >= this.#maxQueue) {
      this.stats.refused++;
      return Promise.reject(new StoreUnavailableError(`the judgement queue is full (${this.#maxQueue} waiting): the store is not keeping up; retry later`));
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ input, resolve, reject });
      this.stats.submitted++;
      this.#schedule();
    });
  }

  /** Resolves when everything submitted so far has been committed. */
  flush(): Promise<void> {
    if (this.#queue.length === 0 && this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Flushes, then refuses further submissions. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.flush();
  }

  // Waiting one turn of the event loop lets concurrent submitters join the same batch.
  #schedule(): void {
    if (this.#scheduled || this.#inFlight >= this.#concurrency) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight < this.#concurrency && this.#queue.length > 0) {
      const batch = this.#queue.splice(0, this.#maxBatch);
      this.stats.batches++;
      this.stats.largestBatch = Math.max(this.stats.largestBatch, batch.length);
      this.#inFlight++;
      void this.#commit(batch).finally(() => {
        this.#inFlight--;
        if (this.#queue.length > 0) this.#pump();
        else if (this.#inFlight === 0) for (const done of this.#idle.splice(0)) done();
      });
    }
  }

  async #commit(batch: Pending[]): Promise<void> {
    let results: JudgementResult[];
    const t0 = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        results = await writeTransaction(this.#db, this.#dialect, (trx) => applyJudgements(trx, batch.map((p) => p.input)));
        this.#health?.succeeded();
        break;
      } catch (err) {
        const busy = err instanceof StoreBusyError; // every connection in use: wait like an outage, but the store is up
        if (busy || isStoreUnavailable(err)) {
          if (!busy) this.#health?.failed(err);
          if (Date.now() - t0 < this.#retryForMs) {
            this.stats.retries++;
            await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** attempt)));
            continue;
          }
          for (const p of batch) p.reject(err);
          return;
        }
        for (const p of batch) await this.#commitAlone(p);
        return;
      }
    }
    batch.forEach((p, i) => p.resolve(results[i]!));
  }

  async #commitAlone(p: Pending, attempts = 3): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        const [r] = await writeTransaction(this.#db, this.#dialect, (trx) => applyJudgements(trx, [p.input]));
        p.resolve(r!);
        return;
      } catch (err) {
        if (attempt >= attempts) {
          p.reject(err);
          return;
        }
      }
    }
  }
}
