import { test } from 'node:test';
import assert from 'node:assert/strict';
import { anyApiKeys, createApiKey, findApiKey, hashApiKey, listApiKeys, revokeApiKey } from './api-keys.ts';
import { exportPreferencePairs, exportUnpaired } from './export.ts';
import { messagesOwnedBy, submitJudgements } from './judgements.ts';
import { pairsByVersion, thumbsByVersion } from './version-feedback.ts';
import { describeEachDialect, seedContext } from './test-support.ts';

async function count<T>(it: AsyncIterable<T>): Promise<number> {
  let n = 0;
  for await (const _ of it) n++;
  return n;
}

await describeEachDialect('api keys', (ctx) => {
  test('a key is shown once, stored only as its sha256, found by its value and listed without it', async () => {
    const db = ctx.store().db;
    const { key, info } = await createApiKey(db, { userId: 'alice', name: 'laptop' });
    assert.match(key, /^rk_[\w-]{43}$/);
    assert.equal(info.userId, 'alice');
    const row = await db.selectFrom('api_keys').selectAll().where('id', '=', info.id).executeTakeFirstOrThrow();
    assert.equal(row.key_hash, hashApiKey(key));
    assert.ok(!Object.values(row).includes(key), 'the plain key is not stored');
    assert.equal((await findApiKey(db, key))?.id, info.id);
    assert.equal(await findApiKey(db, key.slice(0, -1) + (key.endsWith('A') ? 'B' : 'A')), undefined);
    assert.equal(await findApiKey(db, 'Bearer junk'), undefined);
    const listed = await listApiKeys(db);
    assert.ok(listed.some((k) => k.id === info.id && k.prefix === key.slice(0, 9)));
    assert.ok(!JSON.stringify(listed).includes(key));
    assert.equal(await anyApiKeys(db), true);
  });

  test('a key without a user names a user of its own; a bad user id is refused', async () => {
    const db = ctx.store().db;
    const a = await createApiKey(db);
    const b = await createApiKey(db);
    assert.notEqual(a.info.userId, b.info.userId);
    await assert.rejects(createApiKey(db, { userId: 'has space' }), (e: { code?: string }) => e.code === 'invalid_input');
  });

  test('a revoked key stops working; revoking with exclusion takes its judgements out of every training export', async () => {
    const db = ctx.store().db;
    const bad = await createApiKey(db, { userId: 'mallory' });
    const good = await createApiKey(db, { userId: 'ann' });
    const s = await seedContext(db, { n: 2, userId: 'mallory', modelVersionId: ['vm-a', 'vm-b'] });
    const t = await seedContext(db, { n: 2, userId: 'ann' });
    const r = await submitJudgements(db, [
      { kind: 'comparison', a: s.replies[0]!, b: s.replies[1]!, choice: 'a', raterId: 'mallory', keyId: bad.info.id },
      { kind: 'thumb', messageId: s.replies[0]!, value: 'up', raterId: 'mallory', keyId: bad.info.id },
      { kind: 'comparison', a: t.replies[0]!, b: t.replies[1]!, choice: 'b', raterId: 'ann', keyId: good.info.id },
    ]);
    assert.ok(r.every((x) => x.ok), JSON.stringify(r));
    const pairs = async (rater: string) => count(exportPreferencePairs(db, { rater }));
    assert.equal(await pairs('mallory'), 1); // the comparison (a lone thumb makes no pair)
    assert.equal(await count(exportUnpaired(db, { rater: 'mallory' })), 1); // the thumb
    const annBefore = await pairs('ann');
    assert.equal(annBefore, 1);

    const thumbsOf = async (v: string) => (await thumbsByVersion(db)).find((t) => t.versionId === v)?.up ?? 0;
    const pairOf = async () => (await pairsByVersion(db)).filter((p) => p.winner === 'vm-a' && p.loser === 'vm-b').reduce((a, p) => a + p.count, 0);
    assert.deepEqual([await thumbsOf('vm-a'), await pairOf()], [1, 1]);
    const revoked = await revokeApiKey(db, bad.info.id, { actor: 'admin', reason: 'poisoning', excludeFromTraining: true });
    assert.equal(revoked.excludedJudgements, 2);
    assert.ok(revoked.info.revokedAt && revoked.info.excludedFromTraining);
    assert.equal(revoked.info.revokedBy, 'admin');
    assert.equal(await findApiKey(db, bad.key), undefined);
    assert.equal(await pairs('mallory'), 0);
    assert.equal(await count(exportUnpaired(db, { rater: 'mallory' })), 0);
    assert.deepEqual([await thumbsOf('vm-a'), await pairOf()], [0, 0], 'promotion figures skip them too');
    assert.equal(await pairs('ann'), annBefore, 'other raters keep their judgements');
    await assert.rejects(revokeApiKey(db, 'key_nope', { actor: 'admin' }), (e: { code?: string }) => e.code === 'unknown_api_key');
  });

  test('ownership: only messages of the user\'s own conversations count as theirs', async () => {
    const db = ctx.store().db;
    const mine = await seedContext(db, { n: 2, userId: 'owner-1' });
    const theirs = await seedContext(db, { n: 1, userId: 'owner-2' });
    const owned = await messagesOwnedBy(db, 'owner-1', [...mine.replies, ...theirs.replies, 'ghost']);
    assert.deepEqual([...owned].sort(), [...mine.replies].sort());
  });
});
