import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { sql } from 'kysely';
import { openTempStore } from './temp-store.ts';
import { writeTransaction } from './transaction.ts';

const store = await openTempStore({ prefix: 'fb_trx' });
after(() => store.close());

test('a failed COMMIT is rolled back, so the connection takes the next transaction', async () => {
  const { db } = store;
  // A deferred foreign key is checked at COMMIT: the COMMIT fails and SQLite keeps the transaction open.
  await assert.rejects(
    writeTransaction(db, 'sqlite', async (trx) => {
      await sql`pragma defer_foreign_keys = on`.execute(trx);
      await sql`insert into messages (id, conversation_id, parent_id, role, content, created_at) values ('m-orphan', 'no-such-conversation', null, 'user', 'hi', '2026-01-01')`.execute(trx);
    }),
    /FOREIGN KEY/,
  );
  const n = await writeTransaction(db, 'sqlite', async (trx) => (await sql<{ n: number }>`select count(*) as n from messages`.execute(trx)).rows[0]!.n);
  assert.equal(n, 0, 'the failed transaction left nothing behind');
});
