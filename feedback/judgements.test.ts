import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Kysely } from 'kysely';
import { getJudgement, getJudgementHistory, listComparisons, listRankings, listThumbs } from './judgement-queries.ts';
import { applyJudgements, submitJudgement, submitJudgements } from './judgements.ts';
import { writeTransaction } from './transaction.ts';
import { addMessage } from './conversations.ts';
import { FeedbackError } from './errors.ts';
import type { Database } from './schema.ts';
import { describeEachDialect, seedContext } from './test-support.ts';

async function counts(db: Kysely<Database>): Promise<number[]> {
  const out: number[] = [];
  for (const t of ['thumbs', 'comparisons', 'rankings', 'ranking_items', 'idempotency_keys'] as const) {
    const r = await db.selectFrom(t).select((eb) => eb.fn.countAll<string | number>().as('n')).executeTakeFirstOrThrow();
    out.push(Number(r.n));
  }
  return out;
}

await describeEachDialect('judgements', (ctx) => {
  test('stores a thumb, a comparison and a ranking, keeping the ranking order', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 3 });
    const [t, c, r] = await submitJudgements(db, [
      { kind: 'thumb', messageId: s.replies[0]!, raterId: 'r1', value: 'down', reason: 'not_factual', comment: 'wrong' },
      { kind: 'comparison', contextId: s.contextId, a: s.replies[0]!, b: s.replies[1]!, choice: 'b', raterId: 'r1' },
      { kind: 'ranking', candidates: [s.replies[2]!, s.replies[0]!, s.replies[1]!], raterId: 'r1' },
    ]);
    assert.ok(t!.ok && c!.ok && r!.ok);
    const [thumb] = await listThumbs(db, s.replies[0]!);
    assert.equal(thumb!.value, 'down');
    assert.equal(thumb!.reason, 'not_factual');
    assert.equal(thumb!.comment, 'wrong');
    const [cmp] = await listComparisons(db, s.contextId);
    assert.deepEqual([cmp!.a_id, cmp!.b_id, cmp!.choice], [s.replies[0], s.replies[1], 'b']);
    const [rank] = await listRankings(db, s.contextId);
    assert.deepEqual(rank!.candidates, [s.replies[2], s.replies[0], s.replies[1]]);
    assert.equal(rank!.k, 3);
    assert.equal(rank!.not_rankable, 0);
  });

  test('with ownMessagesOnly a rater judges only replies in their own conversations; another\'s reply is unknown_message', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 2, userId: 'owner-a' });
    const [mine, theirs, open] = await submitJudgements(db, [
      { kind: 'thumb', messageId: s.replies[0]!, raterId: 'owner-a', value: 'up', ownMessagesOnly: true },
      { kind: 'comparison', a: s.replies[0]!, b: s.replies[1]!, choice: 'a', raterId: 'owner-b', ownMessagesOnly: true },
      { kind: 'comparison', a: s.replies[0]!, b: s.replies[1]!, choice: 'a', raterId: 'labeller' },
    ]);
    assert.ok(mine!.ok, JSON.stringify(mine));
    assert.deepEqual(theirs, { ok: false, error: { code: 'unknown_message', message: `no message ${s.replies[0]}` } });
    assert.ok(open!.ok, 'without the rule any rater may judge (labelling of exported replies)');
  });

  test('a comparison of an arena pair tells the versions that wrote a and b, also on a retry; other pairs tell nothing', async () => {
    const db = ctx.store().db;
    const arena = await seedContext(db, { n: 2, modelVersionId: ['champ-1', 'cand-1'], params: { temperature: 1, source: 'arena' } });
    const plain = await seedContext(db, { n: 2, modelVersionId: ['champ-1', 'cand-1'] });
    const pick = { kind: 'comparison', a: arena.replies[1]!, b: arena.replies[0]!, choice: 'a', raterId: 'r-arena', idempotencyKey: 'k1' } as const;
    const [a, p] = await submitJudgements(db, [pick, { kind: 'comparison', a: plain.replies[0]!, b: plain.replies[1]!, choice: 'b', raterId: 'r-arena' }]);
    assert.ok(a!.ok && p!.ok);
    assert.deepEqual(a.revealed, { a: 'cand-1', b: 'champ-1' });
    assert.equal(p.revealed, undefined);
    const [again] = await submitJudgements(db, [pick]);
    assert.ok(again!.ok && again.duplicate);
    assert.deepEqual(again.revealed, { a: 'cand-1', b: 'champ-1' });
  });

  test('batches judging the same subject in parallel transactions all land: one current row, the others history', async () => {
    const store = ctx.store();
    const s = await seedContext(store.db, { n: 2 });
    const one = (choice: 'a' | 'b') => writeTransaction(store.db, store.dialect, (trx) => applyJudgements(trx, [
      { kind: 'comparison', a: s.replies[0]!, b: s.replies[1]!, choice, raterId: 'r-race' },
      { kind: 'thumb', messageId: s.replies[0]!, value: choice === 'a' ? 'up' : 'down', raterId: 'r-race' },
    ]));
    const results = (await Promise.all(Array.from({ length: 8 }, (_, i) => one(i % 2 ? 'a' : 'b')))).flat();
    assert.ok(results.every((r) => r.ok), JSON.stringify(results.filter((r) => !r.ok)));
    for (const table of ['comparisons', 'thumbs'] as const) {
      const rows = await store.db.selectFrom(table).select('current').where('rater_id', '=', 'r-race').execute();
      assert.equal(rows.length, 8);
      assert.equal(rows.filter((r) => r.current === 1).length, 1, `${table}: exactly one current row`);
    }
  });

  test('refuses bad input with a stable code and writes nothing', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 2 });
    const other = await seedContext(db, { n: 1, prompt: 'another question' });
    const userMsg = s.contextId;
    const cases: [string, unknown][] = [
      ['unknown_message', { kind: 'thumb', messageId: 'nope', raterId: 'r', value: 'up' }],
      ['not_assistant_message', { kind: 'thumb', messageId: userMsg, raterId: 'r', value: 'up' }],
      ['invalid_thumb', { kind: 'thumb', messageId: s.replies[0], raterId: 'r', value: 'sideways' }],
      ['invalid_reason', { kind: 'thumb', messageId: s.replies[0], raterId: 'r', value: 'down', reason: 'boring' }],
      ['invalid_reason', { kind: 'thumb', messageId: s.replies[0], raterId: 'r', value: 'up', reason: 'unsafe' }],
      ['comment_too_long', { kind: 'thumb', messageId: s.replies[0], raterId: 'r', value: 'up', comment: 'x'.repeat(2001) }],
      ['context_mismatch', { kind: 'comparison', a: s.replies[0], b: other.replies[0], choice: 'a', raterId: 'r' }],
      ['context_mismatch', { kind: 'comparison', contextId: other.contextId, a: s.replies[0], b: s.replies[1], choice: 'a', raterId: 'r' }],
      ['not_assistant_message', { kind: 'comparison', a: s.replies[0], b: userMsg, choice: 'a', raterId: 'r' }],
      ['duplicate_candidate', { kind: 'comparison', a: s.replies[0], b: s.replies[0], choice: 'a', raterId: 'r' }],
      ['invalid_choice', { kind: 'comparison', a: s.replies[0], b: s.replies[1], choice: 'c', raterId: 'r' }],
      ['duplicate_candidate', { kind: 'ranking', candidates: [s.replies[0], s.replies[1], s.replies[0]], raterId: 'r' }],
      ['too_few_candidates', { kind: 'ranking', candidates: [s.replies[0]], raterId: 'r' }],
      ['unknown_message', { kind: 'ranking', candidates: [s.replies[0], 'ghost'], raterId: 'r' }],
      ['context_mismatch', { kind: 'ranking', candidates: [s.replies[0], other.replies[0]], raterId: 'r' }],
      ['invalid_input', { kind: 'thumb', messageId: s.replies[0], value: 'up' }],
      ['invalid_input', { kind: 'vote', messageId: s.replies[0], raterId: 'r' }],
      ['invalid_input', { kind: 'thumb', messageId: s.replies[0], raterId: 'r', value: 'up', extra: 1 }],
      ['invalid_input', null],
    ];
    const before = await counts(db);
    const results = await submitJudgements(db, cases.map(([, input]) => input));
    for (const [i, [code]] of cases.entries()) {
      const r = results[i]!;
      assert.ok(!r.ok, `case ${i} (${code}) was accepted`);
      assert.equal(r.error.code, code, `case ${i}: ${r.error.message}`);
      assert.ok(r.error.message.length > 0);
    }
    assert.deepEqual(await counts(db), before);
    await assert.rejects(
      submitJudgement(db, { kind: 'thumb', messageId: userMsg, raterId: 'r', value: 'up' }),
      (err: unknown) => err instanceof FeedbackError && err.code === 'not_assistant_message',
    );
  });

  test('a batch stores the good items even when others are refused', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 2 });
    const results = await submitJudgements(db, [
      { kind: 'thumb', messageId: s.replies[0], raterId: 'rb', value: 'up' },
      { kind: 'thumb', messageId: 'missing', raterId: 'rb', value: 'up' },
      { kind: 'thumb', messageId: s.replies[1], raterId: 'rb', value: 'down' },
    ]);
    assert.deepEqual(results.map((r) => r.ok), [true, false, true]);
    assert.equal((await listThumbs(db, s.replies[0]!)).length, 1);
    assert.equal((await listThumbs(db, s.replies[1]!)).length, 1);
  });

  test('a changed judgement counts, and the earlier one stays as history', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 2 });
    const first = await submitJudgement(db, { kind: 'thumb', messageId: s.replies[0]!, raterId: 'r1', value: 'up' });
    const second = await submitJudgement(db, { kind: 'thumb', messageId: s.replies[0]!, raterId: 'r1', value: 'down', reason: 'unhelpful' });
    await submitJudgement(db, { kind: 'thumb', messageId: s.replies[0]!, raterId: 'r2', value: 'up' });
    const current = await listThumbs(db, s.replies[0]!, { raterId: 'r1' });
    assert.deepEqual(current.map((t) => [t.id, t.value]), [[second, 'down']]);
    const history = await getJudgementHistory(db, 'thumb', first);
    assert.deepEqual(history.map((h) => [h.id, h.current]), [[first, 0], [second, 1]]);
    assert.equal((await listThumbs(db, s.replies[0]!)).length, 2, 'the other rater is untouched');

    const c1 = await submitJudgement(db, { kind: 'comparison', a: s.replies[0]!, b: s.replies[1]!, choice: 'a', raterId: 'r1' });
    const c2 = await submitJudgement(db, { kind: 'comparison', a: s.replies[1]!, b: s.replies[0]!, choice: 'tie', raterId: 'r1' });
    assert.deepEqual((await listComparisons(db, s.contextId)).map((c) => c.id), [c2], 'swapped order is the same pair');
    assert.equal((await getJudgementHistory(db, 'comparison', c1)).length, 2);
  });

  test('the same subject twice in one batch keeps only the last as current', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 2 });
    const rs = await submitJudgements(db, [
      { kind: 'ranking', candidates: [s.replies[0]!, s.replies[1]!], raterId: 'r1' },
      { kind: 'ranking', candidates: [s.replies[1]!, s.replies[0]!], raterId: 'r1' },
    ]);
    const current = await listRankings(db, s.contextId);
    assert.equal(current.length, 1);
    assert.ok(rs[1]!.ok);
    assert.equal(current[0]!.id, rs[1]!.id);
    assert.deepEqual(current[0]!.candidates, [s.replies[1], s.replies[0]]);
    assert.equal((await listRankings(db, s.contextId, { history: true })).length, 2);
  });

  test('a retried submission with the same idempotency key is stored once', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 2 });
    const input = { kind: 'comparison', a: s.replies[0]!, b: s.replies[1]!, choice: 'a', raterId: 'r1', idempotencyKey: 'k-1' } as const;
    const [a] = await submitJudgements(db, [input]);
    const [b, c] = await submitJudgements(db, [input, input]);
    assert.ok(a!.ok && b!.ok && c!.ok);
    assert.equal(a.duplicate, false);
    assert.equal(b.duplicate, true);
    assert.equal(b.id, a.id);
    assert.equal(c.id, a.id);
    assert.equal((await listComparisons(db, s.contextId, { history: true })).length, 1);
    const [other] = await submitJudgements(db, [{ ...input, raterId: 'r2' }]);
    assert.ok(other!.ok && !other.duplicate, 'keys are per rater');
    const [conflict] = await submitJudgements(db, [{ ...input, choice: 'b' }]);
    assert.ok(!conflict!.ok);
    assert.equal(conflict.error.code, 'idempotency_conflict');
  });

  test('a not-rankable ranking is stored with its candidates', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 3 });
    const id = await submitJudgement(db, { kind: 'ranking', candidates: s.replies, notRankable: true, raterId: 'r1' });
    const r = await getJudgement(db, 'ranking', id);
    assert.ok(r && 'candidates' in r);
    assert.equal(r.not_rankable, 1);
    assert.deepEqual(r.candidates, s.replies);
  });

  test('a reply at the root of a conversation cannot be compared', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 1 });
    const root = await addMessage(db, { conversationId: s.conversationId, role: 'assistant', content: 'Hello!' });
    const [r] = await submitJudgements(db, [{ kind: 'comparison', a: root.id, b: s.replies[0]!, choice: 'a', raterId: 'r' }]);
    assert.ok(!r!.ok);
    assert.equal(r.error.code, 'context_mismatch');
  });
});
