import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { submitJudgements } from './judgements.ts';
import { openTempStore } from './temp-store.ts';
import { seedContext } from './test-support.ts';

async function pages(store: Awaited<ReturnType<typeof openTempStore>>, pragma: string): Promise<number> {
  const { sql } = await import('kysely');
  const row = (await sql.raw(`pragma ${pragma}`).execute(store.db)).rows[0] as Record<string, number>;
  return Object.values(row)[0]!;
}

for (const intervalMs of [40, 0]) {
  test(`committed pages reach the database file ${intervalMs ? 'from the background checkpointer' : 'only via SQLite when it is off'}`, async () => {
    const store = await openTempStore({ checkpointIntervalMs: intervalMs });
    try {
      const s = await seedContext(store.db, { n: 4 });
      await submitJudgements(
        store.db,
        Array.from({ length: 500 }, (_, i) => ({ kind: 'thumb', messageId: s.replies[i % 4], raterId: `r${i}`, value: 'up', comment: 'x'.repeat(200) })),
      );
      await sleep(300);
      const expected = (await pages(store, 'page_count')) * (await pages(store, 'page_size'));
      const onDisk = statSync(store.location).size;
      if (intervalMs) assert.equal(onDisk, expected, 'the database file holds every page');
      else assert.ok(onDisk < expected, 'with neither checkpointer nor auto-checkpoint threshold reached, pages stay in the WAL');
    } finally {
      await store.close();
    }
  });
}

test('a checkpointer thread that dies is restarted, counted and logged, and checkpoints again', async () => {
  const lines: string[] = [];
  const store = await openTempStore({ checkpointIntervalMs: 40, log: (l) => lines.push(l) });
  try {
    const cp = store.checkpointer!;
    const first = cp.worker;
    await first.terminate(); // the thread dies
    for (let i = 0; i < 100 && cp.worker === first; i++) await sleep(20);
    assert.notEqual(cp.worker, first, 'a new thread was started');
    assert.equal(cp.restarts, 1);
    assert.match(lines.join('\n'), /WAL checkpointer died .*restarting/);
    const s = await seedContext(store.db, { n: 2 });
    await submitJudgements(store.db, Array.from({ length: 200 }, (_, i) => ({ kind: 'thumb', messageId: s.replies[i % 2], raterId: `q${i}`, value: 'up', comment: 'y'.repeat(200) })));
    await sleep(300);
    assert.equal(statSync(store.location).size, (await pages(store, 'page_count')) * (await pages(store, 'page_size')), 'the new thread checkpoints');
  } finally {
    await store.close();
  }
});
