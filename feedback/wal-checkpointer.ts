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

/** A running checkpointer; {@link stop} it before closing the database. */
export class WalCheckpointer {
  readonly #worker: Worker;
  readonly #exited: Promise<void>;

  constructor(file: string, options: { intervalMs: number; synchronous: 'NORMAL' | 'FULL' }) {
    if (!(options.intervalMs > 0)) throw new RangeError(`intervalMs must be positive, got ${options.intervalMs}`);
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.#worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { driver, file, intervalMs: options.intervalMs, synchronous: options.synchronous },
    });
    this.#worker.unref();
    this.#exited = new Promise((resolve) => this.#worker.once('exit', () => resolve()));
    this.#worker.on('error', () => {}); // a failed checkpointer only means a longer WAL
  }

  /** Runs one last checkpoint and ends the thread. */
  async stop(): Promise<void> {
    this.#worker.ref();
    this.#worker.postMessage('stop');
    await this.#exited;
  }
}
