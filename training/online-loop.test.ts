import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { clearAlias, getMetrics, getRun, listModelVersions, listPromotions, listRuns, openTempStore, resolveAlias, setRegistrySetting, type FeedbackStore } from '../feedback/index.ts';
import { ALIAS } from '../feedback/aliases.ts';
import { OnlineLoopConfig, runOnlineIteration, type IterationResult } from './online-loop.ts';
import { RuleRewardSource } from './reward-source.ts';
import { saveToySft, seedArena, seedJudgements } from './loop-fixture.ts';
import { disposeServedModel, loadServedModel } from '../server/model-host.ts';

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

/** The admin withdraws the candidate from the arena (a clear, not a verdict). */
const withdraw = () => clearAlias(store.db, ALIAS.candidate, { actor: 'admin', action: 'clear' });

// The guards' cases are built for what the heads learn from these judgements, so they run without
// covariates (reward-covariates.test.ts and reward-ensemble.test.ts test those); the first test runs the default.
const cfg = (extra: Record<string, unknown>) =>
  OnlineLoopConfig.parse({
    rewardCovariates: 'none',
    sft: join(root, 'sft'), checkpoints: join(root, 'ck'), minNewJudgements: 10, rewardEpochs: 4, rewardLr: 3e-3, minRewardAccuracy: 0.6, ppoSteps: 3, batchSize: 8, minibatchSize: 4,
    epochs: 1, maxTokens: 6, lr: 1e-3, evalPrompts: 4, evalEvery: 2, klBudget: 1000, autoPromote: true, minScoreGain: -100, ...extra,
  });

test('an iteration trains a reward model, optimises from the champion, registers both and offers the candidate to the arena without moving the champion; then waits for new feedback', async () => {
  const c = cfg({ rewardCovariates: OnlineLoopConfig.shape.rewardCovariates.parse(undefined) });
  assert.equal(c.rewardCovariates, 'length+likelihood+echo');
  const r = await runOnlineIteration(store, c, { log: () => {} });
  assert.equal(r.status, 'offered', r.reason);
  assert.match(r.reason, /offered to the users' arena .*the users' head-to-head judgements decide/);
  assert.equal(await resolveAlias(store.db, ALIAS.candidate), r.policyVersion);
  const versions = await listModelVersions(store.db);
  const sft = versions.find((v) => v.stage === 'sft')!.id;
  assert.equal(await resolveAlias(store.db, ALIAS.champion), sft, 'a good proxy score never promotes: the champion of an empty registry is SFT, and stays');
  assert.deepEqual(versions.map((v) => v.kind).sort(), ['policy', 'policy', 'reward'], 'SFT, the reward model and the candidate');
  // The candidate names the reward ensemble it was trained against; a server serves it best of n by that ensemble.
  const served = await loadServedModel(versions.find((v) => v.id === r.policyVersion)!.checkpoint, { rerankN: 2 });
  assert.equal(served.reranker?.version, r.rewardVersion);
  assert.equal(served.reranker?.n, 2);
  disposeServedModel(served);
  assert.ok(r.metrics.rmAccuracy! >= 0.6);
  const run = await getRun(store.db, r.runId!);
  assert.equal(run?.status, 'succeeded');
  const names = new Set((await getMetrics(store.db, r.runId!)).map((m) => m.name));
  for (const n of ['rm_heldout_accuracy', 'rm_covariate_length', 'rm_covariate_likelihood', 'rm_covariate_echo', 'score', 'kl', 'clip_frac', 'value_loss', 'entropy', 'reply_length', 'eval_proxy', 'final_kl_coef']) assert.ok(names.has(n), `run metric ${n}`);
  assert.ok(!names.has('eval_gold'), 'no gold, no gold curve');
  const judging = await runOnlineIteration(store, { ...c, minNewJudgements: 0 }, { log: () => {} });
  assert.equal(judging.status, 'arena', 'while the candidate is before the users the loop collects their judgements');
  await withdraw();
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
async function freshIteration(name: string, extra: Record<string, unknown>, g: RuleRewardSource): Promise<IterationResult & { curve: Set<string> }> {
  const s = await openTempStore();
  try {
    await seedJudgements(s, 40, 12);
    const r = await runOnlineIteration(s, cfg({ checkpoints: join(root, name), minRewardAccuracy: 0, ...extra }), { gold: g, log: () => {} });
    return { ...r, curve: new Set((await getMetrics(s.db, r.runId!)).map((m) => m.name)) };
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
  assert.ok(a.curve.has('eval_gold'), 'and logged in the curve');
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

const pushOf = async (runId: string) => (JSON.parse((await getRun(store.db, runId))!.config_json) as { push: { ppoSteps: number; klCoef: number; reason?: string } }).push;

test('a candidate the proxy let through but users prefer the champion to is rejected, not promoted; the next iteration halves the steps, doubles β and says why', async () => {
  const offered = await runOnlineIteration(store, cfg({ checkpoints: join(root, 'ck8'), minNewJudgements: 0, minRewardAccuracy: 0, maxAccuracyDrop: 1 }), { log: () => {} });
  assert.equal(offered.status, 'offered', offered.reason);
  const candidate = (await resolveAlias(store.db, ALIAS.candidate))!;
  const champion = (await resolveAlias(store.db, ALIAS.champion))!;
  await seedArena(store, { candidate, champion, outcomes: Array(30).fill('loss') });
  const [last] = await listRuns(store.db, { kind: 'loop', status: 'succeeded' });
  const carried = (await getMetrics(store.db, last!.id, { names: ['final_kl_coef'] }))[0]!.value;
  const r = await runOnlineIteration(store, cfg({ checkpoints: join(root, 'ck6'), minNewJudgements: 0, ppoSteps: 4, minRewardAccuracy: 0, maxAccuracyDrop: 1 }), { log: () => {} });
  assert.equal(await resolveAlias(store.db, ALIAS.champion), champion, 'the champion stays');
  const reject = (await listPromotions(store.db, { alias: ALIAS.candidate })).at(-2)!;
  assert.deepEqual([reject.action, reject.from_version_id, reject.actor], ['reject', candidate, 'online-loop']);
  assert.equal(JSON.parse(reject.metrics_json!).arena.losses, 30, 'the rejection is logged with the arena figures');
  assert.match(r.reason, new RegExp(`^users rejected candidate ${candidate}: P\\(candidate ≻ champion\\) 0\\.000`));
  assert.equal(r.arena?.decision, 'reject');
  const push = await pushOf(r.runId!);
  assert.equal(push.ppoSteps, 2, 'half the steps');
  assert.equal(push.klCoef, 2 * carried, 'twice the β the last round ended with');
  assert.match(push.reason!, new RegExp(`over-optimisation guard: the proxy preferred candidate ${candidate} but users rejected it head to head .*over 30 judgements`));
  assert.match(r.reason, /over-optimisation guard/);
  assert.equal(r.metrics.ppoSteps, 2);
  assert.equal(r.status, 'offered', r.reason);
  await withdraw();
  const after = await runOnlineIteration(store, cfg({ checkpoints: join(root, 'ck9'), minNewJudgements: 0, ppoSteps: 4, minRewardAccuracy: 0, maxAccuracyDrop: 1 }), { log: () => {} });
  const next = await pushOf(after.runId!);
  assert.deepEqual([next.ppoSteps, next.reason], [4, undefined], 'once per verdict: the round after the guarded one pushes as configured');
  assert.equal(next.klCoef, (await getMetrics(store.db, r.runId!, { names: ['final_kl_coef'] }))[0]!.value, 'with the β the guarded round ended with');
});

test('a tie-heavy arena keeps collecting: status arena, no training, the candidate stays; a clear win waits for the admin without autoPromote and promotes with it', async () => {
  const candidate = (await resolveAlias(store.db, ALIAS.candidate))!;
  const champion = (await resolveAlias(store.db, ALIAS.champion))!;
  await seedArena(store, { candidate, champion, outcomes: [...Array(36).fill('tie'), 'win', 'win', 'loss', 'both_bad'], seed: 7 });
  const runs = (await listRuns(store.db, {})).length;
  const c = cfg({ checkpoints: join(root, 'ck7'), minNewJudgements: 0, minRewardAccuracy: 0, maxAccuracyDrop: 1 });
  const r = await runOnlineIteration(store, c, { log: () => {} });
  assert.equal(r.status, 'arena', r.reason);
  assert.match(r.reason, /in the arena, undecided: .* over 40 judgements \(36 ties, 1 both bad\); collecting judgements, not training; the arena share is 0/);
  assert.deepEqual([r.arena?.n, r.arena?.ties, r.arena?.decision], [40, 36, 'continue']);
  assert.equal(r.metrics.arenaN, 40);
  assert.equal((await listRuns(store.db, {})).length, runs, 'nothing trained while the users judge');
  assert.equal(await resolveAlias(store.db, ALIAS.candidate), candidate);

  await seedArena(store, { candidate, champion, outcomes: Array(60).fill('win'), seed: 8 });
  const waiting = await runOnlineIteration(store, { ...c, autoPromote: false }, { log: () => {} });
  assert.equal(waiting.status, 'arena');
  assert.match(waiting.reason, /the arena says promote .*waiting for the admin/);
  assert.equal(await resolveAlias(store.db, ALIAS.champion), champion, 'without autoPromote the admin applies the verdict');
  const promoted = await runOnlineIteration(store, c, { log: () => {} });
  assert.equal(await resolveAlias(store.db, ALIAS.champion), candidate, 'the users promoted it');
  assert.match(promoted.reason, new RegExp(`^users promoted candidate ${candidate}`));
  assert.equal((await getRun(store.db, promoted.runId!))?.base_version_id, candidate, 'the next round starts from the new champion');
  assert.equal((await pushOf(promoted.runId!)).reason, undefined, 'a promotion turns the guard off');
});

test('the loop runs each optimiser (rloo, dpo) with the same gates and logs, and with the reference re-anchored to the champion still measures the KL to SFT', async () => {
  for (const [algorithm, reanchor] of [['rloo', true], ['dpo', false]] as const) {
    const s = await openTempStore();
    try {
      await seedJudgements(s, 40, 12);
      const r = await runOnlineIteration(s, cfg({ checkpoints: join(root, `alg-${algorithm}`), minRewardAccuracy: 0, algorithm, reanchor, rlooK: 2, minScoreGain: 100 }), { log: () => {} });
      assert.equal(r.status, 'rejected', `${algorithm}: ${r.reason}`);
      assert.match(r.reason, /not offered: proxy gain/, 'the pre-filter gates every algorithm');
      const names = new Set((await getMetrics(s.db, r.runId!)).map((m) => m.name));
      for (const n of ['kl', 'kl_coef', 'eval_proxy', 'eval_kl', 'final_kl_coef']) assert.ok(names.has(n), `${algorithm}: run metric ${n}`);
      if (reanchor) assert.ok(names.has('kl_sft'), 'KL to SFT beside the KL to the champion');
      assert.ok((await listModelVersions(s.db, { kind: 'policy' })).some((v) => v.id === r.policyVersion && v.run_id === r.runId), 'registered as a version of its run');
    } finally {
      await s.close();
    }
  }
});

test('ensemble disagreement rising with the proxy stops the optimiser and says so; with a wide tolerance the same run goes the whole way', async () => {
  const runWith = async (disagreementTolerance: number) => {
    const s = await openTempStore();
    try {
      await seedJudgements(s, 40, 12);
      return await runOnlineIteration(s, cfg({ checkpoints: join(root, `spread-${disagreementTolerance}`), minRewardAccuracy: 0, ppoSteps: 16, evalEvery: 2, disagreementPatience: 3, disagreementTolerance }), { log: () => {} });
    } finally {
      await s.close();
    }
  };
  // The toy policy's evaluation replies move little from step to step (each reply's draws pick
  // tokens by their running weight in id order, so a small change of the policy changes few of
  // them), and so do the proxy and the disagreement: a tolerance of 0 stops the run at the first
  // window where both rose at all. The rule's thresholds are tested in loop-gates.test.ts.
  const stopped = await runWith(0);
  assert.match(stopped.reason, /PPO stopped early: ensemble disagreement guard: proxy rose \(.*\) while the reward models' disagreement rose \(std .*\) over 3 evaluations/);
  assert.ok(stopped.metrics.ppoSteps! < 16, `stopped at step ${stopped.metrics.ppoSteps}`);
  const full = await runWith(1000);
  assert.equal(full.metrics.ppoSteps, 16, full.reason);
  assert.doesNotMatch(full.reason, /stopped early/);
});
