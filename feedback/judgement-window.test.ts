import assert from 'node:assert/strict';
import { test } from 'node:test';
import { submitJudgements } from './judgements.ts';
import { countJudgementsSince, judgementWindow, unorderedComparisons } from './judgement-window.ts';
import { describeEachDialect, seedContext } from './test-support.ts';

await describeEachDialect('judgement window', (ctx) => {
  test('counts every kind since a time, bounds the window by time and id, and lists the unordered comparisons', async () => {
    const db = ctx.store().db;
    const s = await seedContext(db, { n: 3 });
    const early = await submitJudgements(db, [
      { kind: 'thumb', messageId: s.replies[0]!, raterId: 'r1', value: 'up' },
      { kind: 'comparison', contextId: s.contextId, a: s.replies[0]!, b: s.replies[1]!, choice: 'both_bad', raterId: 'r1' },
    ]);
    const cut = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 5));
    const late = await submitJudgements(db, [
      { kind: 'comparison', contextId: s.contextId, a: s.replies[1]!, b: s.replies[2]!, choice: 'tie', raterId: 'r2' },
      { kind: 'ranking', candidates: [s.replies[2]!, s.replies[0]!, s.replies[1]!], raterId: 'r3' },
    ]);
    assert.ok([...early, ...late].every((r) => r.ok));
    assert.equal(await countJudgementsSince(db, null), 4);
    assert.equal(await countJudgementsSince(db, cut), 2, 'only what came after the cut');
    const until = new Date().toISOString();
    const w = await judgementWindow(db, cut, until, 2);
    assert.deepEqual([w.since, w.until, w.judgements, w.newJudgements, w.byKind], [cut, until, 4, 2, { thumbs: 1, comparisons: 2, rankings: 1 }]);
    const ids = [...early, ...late].map((r) => (r as { id: string }).id).sort();
    assert.deepEqual([w.firstId, w.lastId], [ids[0], ids[ids.length - 1]]);
    assert.ok(w.firstAt! <= cut && w.lastAt! <= until);
    assert.equal((await judgementWindow(db, null, cut, 2)).judgements, 2, 'nothing after `until` counts');
    assert.deepEqual((await unorderedComparisons(db, { choices: ['both_bad'] })).map((c) => [c.choice, c.aId, c.bId]), [['both_bad', s.replies[0], s.replies[1]]]);
    assert.deepEqual((await unorderedComparisons(db, { choices: ['both_bad', 'tie'], since: cut })).map((c) => c.choice), ['tie']);
    assert.deepEqual(await unorderedComparisons(db, { choices: [] }), []);
  });
});
