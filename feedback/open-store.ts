/**
 * Opens the feedback store: SQLite in `data/feedback.sqlite` by default (no set-up), or
 * PostgreSQL when the URL (option or `DATABASE_URL`) is `postgres://…`. Migrations run on open.
 *
 * Durability on SQLite: WAL journal with `synchronous=NORMAL` by default. A judgement is
 * acknowledged only after its COMMIT returned, and by then its WAL frames are in the operating
 * system's page cache: it survives the process being killed (`kill -9`, a crash), which a test
 * proves. What NORMAL does not survive is a power loss or an OS crash before the next WAL
 * checkpoint syncs: the last commits may be lost (the database stays consistent). Set
 * `synchronous: 'full'` to sync the WAL on every commit (power-loss safe, each group commit then
 * pays one fsync). `SQLITE_SYNCHRONOUS=full|normal` in the environment sets the default.
 *
 * PostgreSQL down or slow: a connection is given up after `connectTimeoutMs` (default 2 s) and a
 * statement after `statementTimeoutMs` (default 10 s), so nothing waits forever; the store's
 * `health` (store-health.ts) turns `degraded` on such failures and back to `ok` when a probe
 * or a connection succeeds. A wait for a pooled connection that times out while connections
 * keep coming back (every one busy with queries that finish) is saturation, not an outage: it
 * throws `StoreBusyError` (`overloaded`, retry) and leaves the health as it is.
 */
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import SqliteDatabase from 'better-sqlite3';
import { LRUCache } from 'lru-cache';
import { CompiledQuery, Kysely, PostgresDialect, SqliteDialect, SqliteDriver, sql, type DatabaseConnection, type Driver, type SqliteDatabase as KyselySqliteDatabase } from 'kysely';
import pg from 'pg';
import { JudgementWriter, type JudgementWriterOptions } from './judgement-writer.ts';
import { migrateToLatest } from './migrate.ts';
import { StoreBusyError, StoreHealth } from './store-health.ts';
import { StorableTextPlugin } from './text-plugin.ts';
import { WalCheckpointer } from './wal-checkpointer.ts';
import type { Database, DialectName } from './schema.ts';

/** Options for {@link openStore}. */
export interface StoreOptions {
  /** `postgres://…` / `postgresql://…`, or `sqlite:<path>`; default `DATABASE_URL`, else SQLite. */
  url?: string;
  /** Where the default SQLite file lives; default `<project>/data`. */
  dataDir?: string;
  /** PostgreSQL only: the schema to use (created if missing, set as the search_path). */
  schema?: string;
  /**
   * SQLite only: `normal` (default; survives a killed process) or `full` (also survives power
   * loss); default from `SQLITE_SYNCHRONOUS`.
   */
  synchronous?: 'full' | 'normal';
  /** PostgreSQL only: give up connecting after this long (default 2000 ms). */
  connectTimeoutMs?: number;
  /** PostgreSQL only: `statement_timeout` of every connection (default 10000 ms). */
  statementTimeoutMs?: number;
  /** How often the store's health is probed while the server runs (default 1000 ms; 0 = never). */
  healthProbeMs?: number;
  /** Where the store's health and checkpointer changes are logged (default stderr). */
  log?: (line: string) => void;
  /**
   * SQLite only: WAL checkpoints run in a background thread this often (default 1000 ms), off
   * the commit path; 0 leaves them to SQLite's automatic checkpoint inside commits.
   */
  checkpointIntervalMs?: number;
  /** Run migrations on open (default true). */
  migrate?: boolean;
  /** PostgreSQL pool size (default 10). */
  poolSize?: number;
  /** Options for the group-commit judgement writer. */
  writer?: JudgementWriterOptions;
}

/** An open store. */
export interface FeedbackStore {
  db: Kysely<Database>;
  dialect: DialectName;
  /** Where it lives: the SQLite file path, or the PostgreSQL schema name. */
  location: string;
  /** Group-commit writer for judgements (thumbs, comparisons, rankings). */
  writer: JudgementWriter;
  /** Whether the store answers (always `ok` for SQLite unless a failure was reported). */
  health: StoreHealth;
  /** SQLite with background checkpoints: the supervised checkpointer (its `restarts` is a metric). */
  checkpointer?: WalCheckpointer;
  /** Flushes the writer, then closes the database. */
  close(): Promise<void>;
}

/** `<project root>/data`, the git-ignored home of the default SQLite file. */
export const DEFAULT_DATA_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'data');

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** Tells which dialect a URL (or its absence) selects. */
export function dialectOf(url: string | undefined): DialectName {
  return url !== undefined && /^postgres(ql)?:\/\//.test(url) ? 'postgres' : 'sqlite';
}

/**
 * Opens (and migrates) the store.
 * @example
 * const store = await openStore();                          // data/feedback.sqlite
 * const pgStore = await openStore({ url: 'postgres://postgres@127.0.0.1:5432/test' });
 * const r = await store.writer.submit({ kind: 'thumb', messageId, raterId: 'u1', value: 'up' });
 * await store.close();
 */
export async function openStore(options: StoreOptions = {}): Promise<FeedbackStore> {
  const opts = Object.freeze({ ...options });
  const url = opts.url ?? (process.env.DATABASE_URL || undefined);
  const log = opts.log ?? ((l: string) => console.error(l));
  const opened = dialectOf(url) === 'postgres' ? await openPostgres(url!, opts) : openSqlite(url, opts, log);
  if (opts.migrate !== false) await migrateToLatest(opened.db, opened.dialect, opened.schema);
  const health = opened.health ?? new StoreHealth(async () => {}, { probeMs: 0 });
  if (!opened.health) opened.health = health;
  const writer = new JudgementWriter(opened.db, opened.dialect, { ...opts.writer, health });
  return {
    db: opened.db,
    dialect: opened.dialect,
    location: opened.location,
    writer,
    health,
    checkpointer: opened.checkpointer,
    async close() {
      health.stop();
      await writer.close();
      await opened.beforeClose?.();
      await opened.db.destroy();
    },
  };
}

interface Opened {
  db: Kysely<Database>;
  dialect: DialectName;
  location: string;
  schema?: string;
  health?: StoreHealth;
  checkpointer?: WalCheckpointer;
  beforeClose?: () => Promise<void> | undefined;
}

/**
 * Transactions start with `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes
 * fails at once with SQLITE_BUSY_SNAPSHOT when another connection (the online-loop process, a
 * second server) committed in between; an immediate one waits on `busy_timeout` instead.
 */
class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
}

class ImmediateSqliteDialect extends SqliteDialect {
  private readonly database: KyselySqliteDatabase;
  constructor(database: SqliteDatabase.Database) {
    const cached = withStatementCache(database);
    super({ database: cached });
    this.database = cached;
  }
  override createDriver(): Driver {
    return new ImmediateSqliteDriver({ database: this.database });
  }
}

/** Distinct SQL texts whose prepared statements are kept. */
export const STATEMENT_CACHE = 256;

/**
 * The database as Kysely sees it, with its prepared statements kept. Kysely prepares every query
 * it runs, and SQLite's parse and plan of a small INSERT costs about as much as running it: each
 * served reply stores a few rows. The statements of the last STATEMENT_CACHE distinct texts are
 * kept, least recently used first out (bulk inserts of many sizes make many texts). A statement
 * still iterating (a streamed select) is not handed out again: a fresh one is prepared. SQLite
 * prepares a kept statement again by itself when the schema changes under it.
 */
export function withStatementCache(database: SqliteDatabase.Database): KyselySqliteDatabase {
  const kept = new LRUCache<string, SqliteDatabase.Statement>({ max: STATEMENT_CACHE });
  return {
    prepare(text: string) {
      const hit = kept.get(text);
      if (hit && !hit.busy) return hit;
      const statement = database.prepare(text);
      if (!hit) kept.set(text, statement);
      return statement;
    },
    close() {
      kept.clear();
      database.close();
    },
  };
}

/** `synchronous` from the option, else `SQLITE_SYNCHRONOUS`, else NORMAL. */
export function sqliteSynchronous(option: StoreOptions['synchronous'], env: string | undefined = process.env.SQLITE_SYNCHRONOUS): 'NORMAL' | 'FULL' {
  const v = option ?? (env ? env.toLowerCase() : 'normal');
  if (v !== 'normal' && v !== 'full') throw new Error(`SQLITE_SYNCHRONOUS must be normal or full, got ${JSON.stringify(env)}`);
  return v === 'full' ? 'FULL' : 'NORMAL';
}

function openSqlite(url: string | undefined, opts: StoreOptions, log: (line: string) => void): Opened {
  if (url !== undefined && /^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new Error(`unsupported database URL scheme in ${JSON.stringify(url.split('://')[0])}: use postgres:// or sqlite:<path>`);
  }
  const file = url?.startsWith('sqlite:')
    ? url.slice('sqlite:'.length)
    : url !== undefined && url !== ''
      ? url
      : join(opts.dataDir ?? DEFAULT_DATA_DIR, 'feedback.sqlite');
  mkdirSync(dirname(resolve(file)), { recursive: true });
  const database = new SqliteDatabase(file);
  database.pragma('journal_mode = WAL');
  const sync = sqliteSynchronous(opts.synchronous);
  database.pragma(`synchronous = ${sync}`);
  database.pragma('busy_timeout = 5000');
  database.pragma('foreign_keys = ON');
  database.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);
  const interval = opts.checkpointIntervalMs ?? 1000;
  let checkpointer: WalCheckpointer | undefined;
  if (interval > 0) {
    database.pragma('wal_autocheckpoint = 0');
    checkpointer = new WalCheckpointer(resolve(file), { intervalMs: interval, synchronous: sync, log });
  }
  const db = new Kysely<Database>({ dialect: new ImmediateSqliteDialect(database), plugins: [new StorableTextPlugin()] });
  return { db, dialect: 'sqlite', location: resolve(file), checkpointer, beforeClose: () => checkpointer?.stop() };
}

async function openPostgres(url: string, opts: StoreOptions): Promise<Opened> {
  if (opts.schema !== undefined && !SCHEMA_NAME.test(opts.schema)) {
    throw new Error(`invalid PostgreSQL schema name ${JSON.stringify(opts.schema)}`);
  }
  if (opts.schema) {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query(`create schema if not exists "${opts.schema}"`);
    } finally {
      await client.end();
    }
  }
  const statementTimeout = opts.statementTimeoutMs ?? 10_000;
  const connectTimeoutMs = opts.connectTimeoutMs ?? 2000;
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.poolSize ?? 10,
    connectionTimeoutMillis: connectTimeoutMs,
    keepAlive: true,
    options: [`-c statement_timeout=${statementTimeout}`, ...(opts.schema ? [`-c search_path="${opts.schema}"`] : [])].join(' '),
  });
  let health: StoreHealth | undefined;
  // An idle client that loses its connection is dropped by the pool; the next query reconnects.
  pool.on('error', (err) => health?.failed(err));
  // Every query of Kysely starts with pool.connect(): its failures and successes are the health signal.
  const connect = pool.connect.bind(pool) as (cb?: unknown) => Promise<pg.PoolClient>;
  const watchedClients = new WeakSet<pg.PoolClient>();
  // When a connection last came back to the pool: queries are finishing, so the store is up.
  let lastRelease = 0;
  const watched = async () => {
    try {
      const client = await connect();
      health?.succeeded();
      // A checked-out client whose connection drops between two statements emits 'error'; unheard, it would crash the process.
      if (!watchedClients.has(client)) {
        watchedClients.add(client);
        client.on('error', (err) => health?.failed(err));
      }
      return client;
    } catch (err) {
      // Waiting in the pool's queue past the timeout while connections keep coming back is
      // saturation (too many requests at once), not an outage: busy, and the health stays.
      if (pool.totalCount >= pool.options.max && Date.now() - lastRelease < connectTimeoutMs && /timeout exceeded when trying to connect/.test((err as Error).message)) {
        throw new StoreBusyError(`every one of the store's ${pool.options.max} connections is busy; retry later`, { cause: err });
      }
      health?.failed(err);
      throw err;
    }
  };
  pool.on('release', () => (lastRelease = Date.now()));
  (pool as { connect: unknown }).connect = (cb?: unknown) => (cb === undefined ? watched() : connect(cb)); // pool.query passes a callback
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }), plugins: [new StorableTextPlugin()] });
  const schema = opts.schema ?? (await sql<{ s: string }>`select current_schema() as s`.execute(db)).rows[0]!.s;
  health = new StoreHealth(() => sql`select 1`.execute(db), { probeMs: opts.healthProbeMs ?? 1000, log: opts.log ?? ((l) => console.error(l)) });
  return { db, dialect: 'postgres', location: schema, schema, health };
}
