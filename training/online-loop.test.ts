import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { getMetrics, getRun, listModelVersions, listRuns, openTempStore, resolveAlias, setRegistrySetting, type FeedbackStore } from '../feedback/index.ts';
import { ALIAS } from '../feedback/aliases.ts';
import { OnlineLoopConfig, runOnlineIteration, type IterationResult } from './online-loop.ts';
import { RuleRewardSource } from './reward-source.ts';
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
    sft: join(root, 'sft'), checkpoints: join(root, 'ck'), minNewJudgements: 10, rewardEpochs: 4, rewardLr: 3e-3, minRewardAccuracy: 0.6, ppoSteps: 3, batchSize: 8, minibatchSize: 4,
    epochs: 1, maxTokens: 6, lr: 1e-3, evalPrompts: 4, evalEvery: 2, klBudget: 1000, autoPromote: true, minScoreGain: -100, ...extra,
  });

test('an iteration trains a reward model, optimises from the champion, registers both and offers the candidate to the arena without moving the champion; then waits for new feedback', async () => {
  const c = cfg({});
  const champion = await resolveAlias(store.db, ALIAS.champion);
  const r = await runOnlineIteration(store, c, { log: () => {} });
  assert.equal(r.status, 'offered', r.reason);
  assert.match(r.reason, /offered to the users' arena .*the users' head-to-head judgements decide/);
  assert.equal(await resolveAlias(store.db, ALIAS.candidate), r.policyVersion);
  assert.equal(await resolveAlias(store.db, ALIAS.champion), champion, 'a good proxy score never promotes: the users decide');
  const versions = await listModelVersions(store.db);
  assert.deepEqual(versions.map((v) => v.kind).sort(), ['policy', 'policy', 'reward'], 'SFT, the reward model and the candidate');
  assert.ok(r.metrics.rmAccuracy! >= 0.6);
  const run = await getRun(store.db, r.runId!);
  assert.equal(run?.status, 'succeeded');
  const names = new Set((await getMetrics(store.db, r.runId!)).map((m) => m.name));
  for (const n of ['rm_heldout_accuracy', 'score', 'kl', 'clip_frac', 'value_loss', 'entropy', 'reply_length', 'eval_proxy', 'final_kl_coef']) assert.ok(names.has(n), `run metric ${n}`);
  assert.ok(!names.has('eval_gold'), 'no gold, no gold curve');
  const again = await runOnlineIteration(store, c, { log: () => {} });
  assert.equal(again.status, 'skipped');
  assert.match(again.reason, /waiting for 10/);
  const windowOf = async (id: string) => (JSON.parse((await getRun(store.db, id))!.config_json) as { dataWindow: { since: string | null; judgements: number; newJudgements: number; byKind: Record<string, number> } }).dataWindow;
  const w1 = await windowOf(r.runId!);
  assert.deepEqual([w1.since, w1.judgements, w1.newJudgements, w1.byKind.comparisons], [null, 40, 40, 40], 'the first run trained on the 40 seeded comparisons');
});

test('a candidate the proxy does not prefer by minScoreGain is registered but not offered; β carries over from the last round', async () => {
  const offered = await resolveAlias(store.db, ALIAS.candidate);
  const [last] = await listRuns(store.db, { kind: 'loop', status: 'succeeded' });
  const carried = (await getMetrics(store.db, last!.id, { names: ['final_kl_coef'] }))[0]!.value;
  const held = await runOnlineIteration(store, cfg({ minNewJudgements: 0, minScoreGain: 100, checkpoints: join(root, 'ck3') }), { log: () => {} });
  assert.equal(held.status, 'rejected');
  assert.match(held.reason, /not offered: proxy gain -?\d\.\d+ < 100/);
  assert.equal(await resolveAlias(store.db, ALIAS.candidate), offered, 'the arena keeps the candidate it had');
  const run = JSON.parse((await getRun(store.db, held.runId!))!.config_json) as { push: { klCoef: number; ppoSteps: number }; dataWindow: { since: string; newJudgements: number } };
  assert.equal(run.push.klCoef, carried, 'β starts where the last round ended');
  assert.notEqual(carried, 0.05, 'the adaptive controller moved β in the last round');
  assert.equal(run.dataWindow.since, last!.started_at, 'a later run counts what arrived since the last successful one');
  assert.equal(run.dataWindow.newJudgements, 0);
});

test('a reward model below the accuracy guard stops the iteration before any policy is trained', async () => {
  const before = (await listModelVersions(store.db)).length;
  const r = await runOnlineIteration(store, cfg({ checkpoints: join(root, 'ck2'), minNewJudgements: 0, minRewardAccuracy: 1, rewardLr: 1e-12 }), { log: () => {} });
  assert.equal(r.status, 'rejected');
  assert.match(r.reason, /held-out accuracy 0\.\d+ is below 1 /);
  assert.equal((await listModelVersions(store.db)).length, before);
  assert.equal((await getRun(store.db, r.runId!))?.status, 'failed');
});

test('held-out preference accuracy falling below the last iteration\'s stops the loop (Goodhart guard)', async () => {
  const before = (await listModelVersions(store.db)).length;
  const r = await runOnlineIteration(store, cfg({ checkpoints: join(root, 'ck5'), minNewJudgements: 0, minRewardAccuracy: 0, rewardLr: 1e-12, rewardWarmStart: false }), { log: () => {} });
  assert.equal(r.status, 'rejected');
  assert.match(r.reason, /Goodhart guard: held-out preference accuracy fell from [01]\.\d+ to 0\.\d+/);
  assert.ok(r.metrics.rmAccuracy! < r.metrics.previousRmAccuracy! - 0.1);
  assert.equal((await listModelVersions(store.db)).length, before, 'no policy trained or registered');
});

test('a loop paused by the admin skips its iterations, whatever feedback waits, until resumed', async () => {
  const runs = (await listRuns(store.db, {})).length;
  await setRegistrySetting(store.db, 'loop_paused', true);
  const r = await runOnlineIteration(store, cfg({ checkpoints: join(root, 'ck4'), minNewJudgements: 0 }), { log: () => {} });
  assert.equal(r.status, 'skipped');
  assert.match(r.reason, /paused/);
  assert.equal((await listRuns(store.db, {})).length, runs, 'no run started while paused');
  await setRegistrySetting(store.db, 'loop_paused', false);
});

/** A gold scorer that likes one half of the replies (by a hash of the text) and, with sign −1, the other half; it records that it was used. */
function gold(sign: 1 | -1, calls: { n: number }): RuleRewardSource {
  return new RuleRewardSource(`gold ${sign}`, (it) => {
    calls.n++;
    let h = 0;
    for (const ch of it.reply) h = (h * 31 + ch.charCodeAt(0)) % 1009;
    return sign * (h / 1009);
  });
}

/** One first iteration on a fresh store seeded like the shared one. */
async function freshIteration(name: string, extra: Record<string, unknown>, g: RuleRewardSource): Promise<IterationResult> {
  const s = await openTempStore();
  try {
    await seedJudgements(s, 40, 12);
    return await runOnlineIteration(s, cfg({ checkpoints: join(root, name), minRewardAccuracy: 0, ...extra }), { gold: g, log: () => {} });
  } finally {
    await s.close();
  }
}

test('gold never decides: two opposite golds give the same decisions, reasons and figures, and gold is only reported', async () => {
  const plus = { n: 0 };
  const minus = { n: 0 };
  const a = await freshIteration('gold-a', {}, gold(1, plus));
  const b = await freshIteration('gold-b', {}, gold(-1, minus));
  assert.ok(plus.n > 0 && minus.n > 0, 'gold was measured (for the report)');
  assert.equal(a.status, b.status);
  assert.equal(a.reason, b.reason);
  const noGold = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).filter(([k]) => !/gold/i.test(k)));
  assert.deepEqual(noGold(a.metrics), noGold(b.metrics), 'the same training, whatever gold says');
  assert.equal(Math.sign(a.metrics.candidateGold! - a.metrics.championGold!), -Math.sign(b.metrics.candidateGold! - b.metrics.championGold!), 'the two golds disagree about the candidate');
  assert.notEqual(a.metrics.candidateGold, a.metrics.championGold);
  // The ablation, where gold does gate: the same two golds now disagree about promotion.
  const ga = await freshIteration('gold-c', { goldGate: true }, gold(1, { n: 0 }));
  const gb = await freshIteration('gold-d', { goldGate: true }, gold(-1, { n: 0 }));
  assert.deepEqual([ga.status, gb.status].sort(), ['candidate', 'promoted'], `${ga.reason} / ${gb.reason}`);
});
