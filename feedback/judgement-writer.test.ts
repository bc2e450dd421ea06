import assert from 'node:assert/strict';
import { test } from 'node:test';
import { listThumbs } from './judgement-queries.ts';
import { JudgementWriter } from './judgement-writer.ts';
import { openStore } from './open-store.ts';
import { StoreUnavailableError } from './store-health.ts';
import type { KyselyPlugin } from 'kysely';
import { describeEachDialect, seedContext } from './test-support.ts';

await describeEachDialect('judgement writer', (ctx) => {
  test('groups concurrent submissions into few transactions, each acknowledged after commit', async () => {
    const store = ctx.store();
    const s = await seedContext(store.db, { n: 4 });
    const writer = new JudgementWriter(store.db, store.dialect, { maxBatch: 16 });
    const inputs = Array.from({ length: 64 }, (_, i) => ({
      kind: 'thumb' as const,
      messageId: s.replies[i % 4]!,
      raterId: `w${i}`,
      value: i % 2 ? ('up' as const) : ('down' as const),
    }));
    const results = await Promise.all(inputs.map((input) => writer.submit(input)));
    assert.ok(results.every((r) => r.ok));
    assert.equal(writer.stats.submitted, 64);
    assert.ok(writer.stats.batches <= 8, `expected at most 8 batches, got ${writer.stats.batches}`);
    assert.equal(writer.stats.largestBatch, 16);
    let stored = 0;
    for (const id of s.replies) stored += (await listThumbs(store.db, id)).length;
    assert.equal(stored, 64);
  });

  test('a refused item is answered with its error while the rest of its batch lands', async () => {
    const store = ctx.store();
    const s = await seedContext(store.db, { n: 2 });
    const [good, bad, alsoGood] = await Promise.all([
      store.writer.submit({ kind: 'thumb', messageId: s.replies[0], raterId: 'x', value: 'up' }),
      store.writer.submit({ kind: 'comparison', a: s.replies[0], b: s.replies[1], choice: 'maybe', raterId: 'x' }),
      store.writer.submit({ kind: 'comparison', a: s.replies[0], b: s.replies[1], choice: 'tie', raterId: 'x' }),
    ]);
    assert.ok(good!.ok && alsoGood!.ok);
    assert.ok(!bad!.ok);
    assert.equal(bad.error.code, 'invalid_choice');
  });

  test('while the store is unreachable a batch is retried with backoff and acknowledged only once committed', async () => {
    const store = ctx.store();
    const s = await seedContext(store.db, { n: 1 });
    let failures = 3;
    // The first three statements fail as a refused connection would (transaction control passes).
    const flaky: KyselyPlugin = {
      transformQuery(args) {
        if (args.node.kind !== 'RawNode' && failures > 0) {
          failures--;
          throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
        }
        return args.node;
      },
      async transformResult(args) {
        return args.result;
      },
    };
    const writer = new JudgementWriter(store.db.withPlugin(flaky), store.dialect, { retryForMs: 10_000 });
    const r = await writer.submit({ kind: 'thumb', messageId: s.replies[0], raterId: 'flaky', value: 'up' });
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(writer.stats.retries, 3);
    assert.equal((await listThumbs(store.db, s.replies[0]!, { raterId: 'flaky' })).length, 1);
    failures = 1_000_000;
    const gaveUp = new JudgementWriter(store.db.withPlugin(flaky), store.dialect, { retryForMs: 200 });
    await assert.rejects(gaveUp.submit({ kind: 'thumb', messageId: s.replies[0], raterId: 'never', value: 'up' }), /ECONNREFUSED/);
  });

  test('the queue is bounded: past maxQueue a submission is refused at once', async () => {
    const store = ctx.store();
    const s = await seedContext(store.db, { n: 1 });
    const writer = new JudgementWriter(store.db, store.dialect, { maxQueue: 2 });
    const subs = ['q1', 'q2', 'q3'].map((raterId) => writer.submit({ kind: 'thumb', messageId: s.replies[0], raterId, value: 'up' }));
    await assert.rejects(subs[2]!, StoreUnavailableError);
    assert.ok((await subs[0]!).ok && (await subs[1]!).ok);
    assert.equal(writer.stats.refused, 1);
  });

  test('close flushes what is queued and then refuses new work', async () => {
    const store = ctx.store();
    const s = await seedContext(store.db, { n: 1 });
    const writer = new JudgementWriter(store.db, store.dialect);
    const pending = writer.submit({ kind: 'thumb', messageId: s.replies[0], raterId: 'closer', value: 'up' });
    await writer.close();
    assert.ok((await pending).ok);
    await assert.rejects(writer.submit({ kind: 'thumb', messageId: s.replies[0], raterId: 'closer', value: 'down' }), /closed/);
  });

  test('two stores writing one database never leave two current judgements on a subject', async () => {
    const first = ctx.store();
    const second = await openStore(
      first.dialect === 'postgres'
        ? { url: process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test', schema: first.location, migrate: false }
        : { url: `sqlite:${first.location}`, migrate: false },
    );
    try {
      const s = await seedContext(first.db, { n: 1 });
      const submit = (i: number) =>
        (i % 2 ? first : second).writer.submit({ kind: 'thumb', messageId: s.replies[0], raterId: 'racer', value: i % 3 ? 'up' : 'down' });
      const results = await Promise.all(Array.from({ length: 40 }, (_, i) => submit(i)));
      assert.ok(results.every((r) => r.ok));
      assert.equal((await listThumbs(first.db, s.replies[0]!)).length, 1);
      assert.equal((await listThumbs(first.db, s.replies[0]!, { history: true })).length, 40);
    } finally {
      await second.close();
    }
  });
});
