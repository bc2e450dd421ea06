import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FeedbackError } from './errors.ts';
import {
  getModelVersion,
  listModelVersions,
  listPromotions,
  promote,
  registerModelVersion,
  resolveAlias,
  rollback,
  updateModelMetrics,
} from './model-versions.ts';
import { describeEachDialect } from './test-support.ts';

const code = (c: string) => (err: unknown) => err instanceof FeedbackError && err.code === c;

await describeEachDialect('model registry', (ctx) => {
  test('registers versions with lineage, config and metrics', async () => {
    const db = ctx.store().db;
    await registerModelVersion(db, { id: 'reg-sft', kind: 'policy', checkpoint: 'runs/sft', config: { nLayer: 4 } });
    await registerModelVersion(db, { id: 'reg-ppo', kind: 'policy', parentId: 'reg-sft', checkpoint: 'runs/ppo' });
    await registerModelVersion(db, { id: 'reg-rm', kind: 'reward', checkpoint: 'runs/rm', metrics: { acc: 0.7 } });
    await assert.rejects(registerModelVersion(db, { id: 'reg-sft', kind: 'policy', checkpoint: 'x' }), code('duplicate_id'));
    await assert.rejects(registerModelVersion(db, { id: 'reg-x', kind: 'policy', parentId: 'ghost', checkpoint: 'x' }), code('unknown_model_version'));
    assert.equal((await getModelVersion(db, 'reg-ppo'))!.parent_id, 'reg-sft');
    assert.deepEqual(JSON.parse((await getModelVersion(db, 'reg-sft'))!.config_json), { nLayer: 4 });
    const updated = await updateModelMetrics(db, 'reg-rm', { heldOutAcc: 0.68 });
    assert.deepEqual(JSON.parse(updated.metrics_json), { acc: 0.7, heldOutAcc: 0.68 });
    assert.deepEqual((await listModelVersions(db, { kind: 'reward' })).map((v) => v.id), ['reg-rm']);
  });

  test('promotes and rolls back an alias, logging every move', async () => {
    const db = ctx.store().db;
    for (const id of ['p1', 'p2', 'p3']) await registerModelVersion(db, { id, kind: 'policy', checkpoint: `ck/${id}` });
    await assert.rejects(rollback(db, { alias: 'champion' }), code('unknown_alias'));
    await promote(db, { alias: 'champion', versionId: 'p1', actor: 'admin' });
    await assert.rejects(rollback(db, { alias: 'champion' }), code('nothing_to_roll_back'));
    await promote(db, { alias: 'champion', versionId: 'p2' });
    await promote(db, { alias: 'champion', versionId: 'p3', reason: 'won eval' });
    await promote(db, { alias: 'candidate', versionId: 'p3' });
    await assert.rejects(promote(db, { alias: 'champion', versionId: 'ghost' }), code('unknown_model_version'));
    assert.equal(await resolveAlias(db, 'champion'), 'p3');
    await rollback(db, { alias: 'champion', reason: 'regressed' });
    assert.equal(await resolveAlias(db, 'champion'), 'p2');
    await rollback(db, { alias: 'champion' });
    assert.equal(await resolveAlias(db, 'champion'), 'p1');
    const log = await listPromotions(db, { alias: 'champion' });
    assert.deepEqual(
      log.map((e) => [e.action, e.from_version_id, e.to_version_id]),
      [
        ['promote', null, 'p1'],
        ['promote', 'p1', 'p2'],
        ['promote', 'p2', 'p3'],
        ['rollback', 'p3', 'p2'],
        ['rollback', 'p2', 'p1'],
      ],
    );
    assert.equal(log[2]!.reason, 'won eval');
    assert.equal(await resolveAlias(db, 'candidate'), 'p3');
  });

  test('the promotion log is append-only in the database itself', async () => {
    const db = ctx.store().db;
    await registerModelVersion(db, { id: 'ao1', kind: 'policy', checkpoint: 'x' });
    const entry = await promote(db, { alias: 'ao', versionId: 'ao1' });
    await assert.rejects(db.updateTable('promotion_log').set({ reason: 'rewritten' }).where('id', '=', entry.id).execute(), /append-only/);
    await assert.rejects(db.deleteFrom('promotion_log').where('id', '=', entry.id).execute(), /append-only/);
    assert.equal((await listPromotions(db, { alias: 'ao' }))[0]!.reason, null);
  });

  test('concurrent promotions are serialised: the log is one unbroken from/to chain', async () => {
    const db = ctx.store().db;
    const ids = Array.from({ length: 20 }, (_, i) => `race-${i}`);
    for (const id of ids) await registerModelVersion(db, { id, kind: 'policy', checkpoint: `ck/${id}` });
    // Twice: first racing to create the unset alias, then racing to move it.
    for (let round = 0; round < 2; round++) {
      await Promise.all(ids.map((versionId) => promote(db, { alias: 'race', versionId, actor: `a${round}` })));
    }
    const log = await listPromotions(db, { alias: 'race' });
    assert.equal(log.length, 40);
    assert.equal(log[0]!.from_version_id, null);
    for (let i = 1; i < log.length; i++) assert.equal(log[i]!.from_version_id, log[i - 1]!.to_version_id, `entry ${i} replaced what entry ${i - 1} set`);
    assert.equal(await resolveAlias(db, 'race'), log[log.length - 1]!.to_version_id);
  });
});
