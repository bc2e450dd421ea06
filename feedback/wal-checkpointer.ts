/**
 * Background WAL checkpoints for the SQLite store. A checkpoint copies committed pages from the
 * WAL into the database file and syncs it, which can take tens of milliseconds; run inside a
 * commit (SQLite's automatic checkpoint) it would stall every writer waiting on that commit.
 * So the store turns automatic checkpoints off and this worker thread, with its own connection,
 * runs a PASSIVE checkpoint (never blocks writers or readers) every `intervalMs`.
 * Under continuous writes the WAL can only be reset during a pause; `journal_size_limit`
 * truncates it afterwards.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

// Plain CommonJS so the worker needs no TypeScript loader.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.file);
db.pragma('busy_timeout = 1000');
db.pragma('synchronous = ' + workerData.synchronous);
const checkpoint = () => { try { db.pragma('wal_checkpoint(PASSIVE)'); } catch {} };
const timer = setInterval(checkpoint, workerData.intervalMs);
parentPort.on('message', (m) => {
  if (m !== 'stop') return;
  clearInterval(timer);
  checkpoint();
  db.close();
  parentPort.close();
});
`;

/** Options of {@link WalCheckpointer}. */
export interface WalCheckpointerOptions {
  intervalMs: number;
  synchronous: 'NORMAL' | 'FULL';
  /** Where a death and a restart of the thread are logged (default stderr). */
  log?: (line: string) => void;
}

/**
 * A running checkpointer; {@link stop} it before closing the database. It is supervised: a
 * thread that dies (an exception, out of memory, killed) is restarted after a backoff
 * (100 ms doubling to 30 s, reset after a minute of good health), counted in `restarts` and
 * logged, since with automatic checkpoints off a dead checkpointer lets the WAL grow without bound.
 */
export class WalCheckpointer {
  #worker!: Worker;
  #stopping = false;
  #restarts = 0;
  #streak = 0;
  #startedAt = 0;
  #timer: NodeJS.Timeout | undefined;
  #exited: Promise<void> = Promise.resolve();
  readonly #driver: string;

  constructor(
    readonly file: string,
    readonly options: WalCheckpointerOptions,
  ) {
    if (!(options.intervalMs > 0)) throw new RangeError(`intervalMs must be positive, got ${options.intervalMs}`);
    this.#driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.#spawn();
  }

  /** Times the thread died and was started again. */
  get restarts(): number {
    return this.#restarts;
  }

  /** The current thread (a fault drill may terminate it). */
  get worker(): Worker {
    return this.#worker;
  }

  #spawn(): void {
    const { intervalMs, synchronous } = this.options;
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { driver: this.#driver, file: this.file, intervalMs, synchronous } });
    worker.unref();
    this.#worker = worker;
    this.#startedAt = Date.now();
    let error = '';
    worker.on('error', (err) => (error = err.message));
    this.#exited = new Promise((resolve) =>
      worker.once('exit', (code) => {
        resolve();
        if (this.#stopping) return;
        if (Date.now() - this.#startedAt > 60_000) this.#streak = 0;
        const delay = Math.min(30_000, 100 * 2 ** this.#streak++);
        this.#restarts++;
        (this.options.log ?? ((l: string) => console.error(l)))(`store: WAL checkpointer died (exit ${code}${error ? `: ${error}` : ''}); restarting in ${delay} ms (restart ${this.#restarts})`);
        this.#timer = setTimeout(() => {
          if (!this.#stopping) this.#spawn();
        }, delay);
        this.#timer.unref();
      }),
    );
  }

  /** Runs one last checkpoint and ends the thread. */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    this.#worker.ref();
    this.#worker.postMessage('stop');
    await this.#exited;
  }
}
