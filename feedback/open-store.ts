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
 * pays one fsync).
 */
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import SqliteDatabase from 'better-sqlite3';
import { CompiledQuery, Kysely, PostgresDialect, SqliteDialect, SqliteDriver, sql, type DatabaseConnection, type Driver } from 'kysely';
import pg from 'pg';
import { JudgementWriter, type JudgementWriterOptions } from './judgement-writer.ts';
import { migrateToLatest } from './migrate.ts';
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
  /** SQLite only: `normal` (default; survives a killed process) or `full` (also survives power loss). */
  synchronous?: 'full' | 'normal';
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
  const opened = dialectOf(url) === 'postgres' ? await openPostgres(url!, opts) : openSqlite(url, opts);
  if (opts.migrate !== false) await migrateToLatest(opened.db, opened.dialect, opened.schema);
  const writer = new JudgementWriter(opened.db, opened.dialect, opts.writer);
  return {
    db: opened.db,
    dialect: opened.dialect,
    location: opened.location,
    writer,
    async close() {
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
  constructor(private readonly database: SqliteDatabase.Database) {
    super({ database });
  }
  override createDriver(): Driver {
    return new ImmediateSqliteDriver({ database: this.database });
  }
}

function openSqlite(url: string | undefined, opts: StoreOptions): Opened {
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
  const sync = opts.synchronous === 'full' ? 'FULL' : 'NORMAL';
  database.pragma(`synchronous = ${sync}`);
  database.pragma('busy_timeout = 5000');
  database.pragma('foreign_keys = ON');
  database.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);
  const interval = opts.checkpointIntervalMs ?? 1000;
  let checkpointer: WalCheckpointer | undefined;
  if (interval > 0) {
    database.pragma('wal_autocheckpoint = 0');
    checkpointer = new WalCheckpointer(resolve(file), { intervalMs: interval, synchronous: sync });
  }
  const db = new Kysely<Database>({ dialect: new ImmediateSqliteDialect(database) });
  return { db, dialect: 'sqlite', location: resolve(file), beforeClose: () => checkpointer?.stop() };
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
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.poolSize ?? 10,
    ...(opts.schema ? { options: `-c search_path="${opts.schema}"` } : {}),
  });
  // An idle client that loses its connection is dropped by the pool; the next query reconnects.
  pool.on('error', () => {});
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const schema = opts.schema ?? (await sql<{ s: string }>`select current_schema() as s`.execute(db)).rows[0]!.s;
  return { db, dialect: 'postgres', location: schema, schema };
}
