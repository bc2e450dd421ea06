import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { getMetrics, getRun, listModelVersions, listRuns, openTempStore, resolveAlias, setRegistrySetting, type FeedbackStore } from '../feedback/index.ts';
import { OnlineLoopConfig, proxyGoldDiverged, runOnlineIteration } from './online-loop.ts';
import { saveToySft, seedJudgements } from './loop-fixture.ts';

let root: string;
let store: FeedbackStore;

before(async () => {
  await initBackend({ backend: 'wasm', log: () => {} });
  root = mkdtempSync(join(tmpdir(), 'loop-'));
  await saveToySft(root);
  store = await openTempStore();
  await seedJudgements(store, 40, 12);
});
after(() => store.close());

const cfg = (extra: Record<string, unknown>) =>
  OnlineLoopConfig.parse({
    sft: '', checkpoints: '', minNewJudgements: 10, rewardEpochs: 4, rewardLr: 3e-3, minRewardAccuracy: 0.6, ppoSteps: 3, batchSize: 8, minibatchSize: 4,
    epochs: 1, maxTokens: 6, lr: 1e-3, evalPrompts: 4, evalEvery: 2, klBudget: 1000, autoPromote: true, minScoreGain: -100, ...extra,
  });

test('an iteration trains a reward model, runs PPO from the champion, registers both and promotes through the gates; then waits for new feedback', async () => {
  const c = cfg({ sft: join(root, 'sft'), checkpoints: join(root, 'ck') });
  const r = await runOnlineIteration(store, c, { log: () => {} });
  assert.equal(r.status, 'promoted', r.reason);
  assert.equal(await resolveAlias(store.db, 'champion'), r.policyVersion);
  assert.equal(await resolveAlias(store.db, 'candidate'), r.policyVersion);
  const versions = await listModelVersions(store.db);
  assert.deepEqual(versions.map((v) => v.kind).sort(), ['policy', 'policy', 'reward'], 'SFT, the reward model and the candidate');
  assert.ok(r.metrics.rmAccuracy! >= 0.6);
  const run = await getRun(store.db, r.runId!);
  assert.equal(run?.status, 'succeeded');
  const names = new Set((await getMetrics(store.db, r.runId!)).map((m) => m.name));
  for (const n of ['rm_heldout_accuracy', 'score', 'kl', 'clip_frac', 'value_loss', 'entropy', 'reply_length', 'eval_proxy']) assert.ok(names.has(n), `run metric ${n}`);
  const again = await runOnlineIteration(store, c, { log: () => {} });
  assert.equal(again.status, 'skipped');
  assert.match(again.reason, /waiting for 10/);
  const held = await runOnlineIteration(store, { ...c, minNewJudgements: 0, minScoreGain: 100, checkpoints: join(root, 'ck3') }, { log: () => {} });
  assert.equal(held.status, 'candidate');
  assert.match(held.reason, /not promoted: proxy gain/);
  assert.equal(await resolveAlias(store.db, 'champion'), r.policyVersion, 'the champion stays');
  assert.equal(await resolveAlias(store.db, 'candidate'), held.policyVersion);
  const windowOf = async (id: string) => (JSON.parse((await getRun(store.db, id))!.config_json) as { dataWindow: { since: string | null; judgements: number; newJudgements: number; byKind: Record<string, number> } }).dataWindow;
  const w1 = await windowOf(r.runId!);
  assert.deepEqual([w1.since, w1.judgements, w1.newJudgements, w1.byKind.comparisons], [null, 40, 40, 40], 'the first run trained on the 40 seeded comparisons');
  const w3 = await windowOf(held.runId!);
  assert.equal(w3.since, run!.started_at, 'a later run counts what arrived since the last successful one');
  assert.deepEqual([w3.judgements, w3.newJudgements], [40, 0]);
});

test('a reward model below the accuracy guard stops the iteration before any policy is trained', async () => {
  const before = (await listModelVersions(store.db)).length;
  const r = await runOnlineIteration(store, cfg({ sft: join(root, 'sft'), checkpoints: join(root, 'ck2'), minNewJudgements: 0, minRewardAccuracy: 1, rewardLr: 1e-12 }), { log: () => {} });
  assert.equal(r.status, 'rejected');
  assert.match(r.reason, /held-out accuracy 0\.\d+ is below 1 /);
  assert.equal((await listModelVersions(store.db)).length, before);
  assert.equal((await getRun(store.db, r.runId!))?.status, 'failed');
});

test('held-out preference accuracy falling below the last iteration\'s stops the loop (Goodhart guard)', async () => {
  const before = (await listModelVersions(store.db)).length;
  const r = await runOnlineIteration(store, cfg({ sft: join(root, 'sft'), checkpoints: join(root, 'ck5'), minNewJudgements: 0, minRewardAccuracy: 0, rewardLr: 1e-12 }), { log: () => {} });
  assert.equal(r.status, 'rejected');
  assert.match(r.reason, /Goodhart guard: held-out preference accuracy fell from [01]\.\d+ to 0\.\d+/);
  assert.ok(r.metrics.rmAccuracy! < (r.metrics as Record<string, number>).previousRmAccuracy! - 0.1);
  assert.equal((await listModelVersions(store.db)).length, before, 'no policy trained or registered');
});

test('a loop paused by the admin skips its iterations, whatever feedback waits, until resumed', async () => {
  const runs = (await listRuns(store.db, {})).length;
  await setRegistrySetting(store.db, 'loop_paused', true);
  const r = await runOnlineIteration(store, cfg({ sft: join(root, 'sft'), checkpoints: join(root, 'ck4'), minNewJudgements: 0 }), { log: () => {} });
  assert.equal(r.status, 'skipped');
  assert.match(r.reason, /paused/);
  assert.equal((await listRuns(store.db, {})).length, runs, 'no run started while paused');
  await setRegistrySetting(store.db, 'loop_paused', false);
});

test('the Goodhart guard fires when, across the window, proxy rose and gold fell by more than the tolerance', () => {
  const h = [{ proxy: 0, gold: 1 }, { proxy: 1, gold: 0.9 }, { proxy: 2, gold: 0.8 }];
  assert.equal(proxyGoldDiverged(h, 2, 0.1), true);
  assert.equal(proxyGoldDiverged(h, 3, 0.1), false, 'too few evaluations');
  assert.equal(proxyGoldDiverged(h, 2, 0.25), false, 'a fall within the tolerance is noise');
  // One noisy evaluation inside the window does not hide a steady fall ...
  assert.equal(proxyGoldDiverged([...h, { proxy: 2.5, gold: 0.85 }, { proxy: 3, gold: 0.6 }], 3, 0.1), true);
  // ... nor does a single dip fire it.
  assert.equal(proxyGoldDiverged([{ proxy: 0, gold: 1 }, { proxy: 1, gold: 0.8 }, { proxy: 2, gold: 1 }], 2, 0.1), false);
  // Gold rising with the proxy is what training is for.
  assert.equal(proxyGoldDiverged([{ proxy: 0, gold: 1 }, { proxy: 1, gold: 1.1 }, { proxy: 2, gold: 1.2 }], 2, 0.1), false);
  // Gold falling while the proxy falls too is not the proxy being gamed.
  assert.equal(proxyGoldDiverged([{ proxy: 2, gold: 1 }, { proxy: 1, gold: 0.8 }, { proxy: 0, gold: 0.5 }], 2, 0.1), false);
});
