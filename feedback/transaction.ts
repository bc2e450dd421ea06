/**
 * Transactions over either dialect.
 * `inTransaction` joins the caller's transaction when given one. `writeTransaction` is for
 * write-heavy batches: on SQLite it takes the write lock up front (`BEGIN IMMEDIATE`) so a batch
 * that reads before it writes waits on `busy_timeout` instead of failing with SQLITE_BUSY when
 * another connection (another process or worker) writes at the same time.
 *
 * A COMMIT can fail (SQLITE_BUSY past `busy_timeout`, SQLITE_FULL, a deferred foreign key, an
 * I/O error), and SQLite then leaves the transaction open on the connection: every later
 * `BEGIN` on it would fail with "cannot start a transaction within a transaction". So a failed
 * COMMIT is followed by a ROLLBACK (whose own failure is ignored: the transaction may already be
 * gone) and the COMMIT's error is rethrown.
 */
import { sql, type Kysely } from 'kysely';
import type { Database, DialectName } from './schema.ts';

/** Runs `fn` in a transaction, or inside `db` itself when `db` is already one. */
export async function inTransaction<T>(db: Kysely<Database>, fn: (trx: Kysely<Database>) => Promise<T>): Promise<T> {
  if (db.isTransaction) return fn(db);
  return db.transaction().execute(fn);
}

/** Runs `fn` in a write transaction; resolves only after COMMIT has returned. */
export async function writeTransaction<T>(
  db: Kysely<Database>,
  dialect: DialectName,
  fn: (trx: Kysely<Database>) => Promise<T>,
): Promise<T> {
  if (dialect === 'postgres' || db.isTransaction) return inTransaction(db, fn);
  return db.connection().execute(async (conn) => {
    await sql`begin immediate`.execute(conn);
    let result: T;
    try {
      result = await fn(conn);
    } catch (err) {
      await sql`rollback`.execute(conn);
      throw err;
    }
    try {
      await sql`commit`.execute(conn);
    } catch (err) {
      await sql`rollback`.execute(conn).catch(() => {});
      throw err;
    }
    return result;
  });
}
