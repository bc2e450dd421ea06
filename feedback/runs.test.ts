import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FeedbackError } from './errors.ts';
import { registerModelVersion } from './model-versions.ts';
import { finishRun, getMetrics, getRun, listRuns, logMetrics, startRun } from './runs.ts';
import { describeEachDialect } from './test-support.ts';

const code = (c: string) => (err: unknown) => err instanceof FeedbackError && err.code === c;

await describeEachDialect('training runs', (ctx) => {
  test('a run records metrics over time and its outcome', async () => {
    const db = ctx.store().db;
    await registerModelVersion(db, { id: 'run-base', kind: 'policy', checkpoint: 'a' });
    await registerModelVersion(db, { id: 'run-out', kind: 'policy', checkpoint: 'b' });
    const run = await startRun(db, { kind: 'ppo', config: { klCoef: 0.1 }, baseVersionId: 'run-base' });
    assert.equal(run.status, 'running');
    await logMetrics(db, run.id, 0, { reward: 0.1, kl: 0 });
    await logMetrics(db, run.id, 10, { reward: 0.3, kl: 0.02 });
    await logMetrics(db, run.id, 10, { reward: 0.35 });
    const reward = await getMetrics(db, run.id, { names: ['reward'] });
    assert.deepEqual(reward.map((m) => [m.step, m.value]), [[0, 0.1], [10, 0.35]]);
    assert.equal((await getMetrics(db, run.id, { sinceStep: 5 })).length, 2);
    await finishRun(db, run.id, { status: 'succeeded', outputVersionId: 'run-out' });
    const done = await getRun(db, run.id);
    assert.equal(done!.status, 'succeeded');
    assert.equal(done!.output_version_id, 'run-out');
    assert.ok(done!.finished_at! >= done!.started_at);
    assert.ok((await listRuns(db, { kind: 'ppo', status: 'succeeded' })).some((r) => r.id === run.id));
  });

  test('refuses metrics for an unknown run, non-finite values and bad steps', async () => {
    const db = ctx.store().db;
    const run = await startRun(db, { kind: 'reward' });
    await assert.rejects(logMetrics(db, 'ghost', 0, { loss: 1 }), code('unknown_run'));
    await assert.rejects(logMetrics(db, run.id, 0, { loss: Number.NaN }), code('invalid_input'));
    await assert.rejects(logMetrics(db, run.id, -1, { loss: 1 }), code('invalid_input'));
    await assert.rejects(finishRun(db, 'ghost', { status: 'failed' }), code('unknown_run'));
    assert.deepEqual(await getMetrics(db, run.id), []);
  });
});
