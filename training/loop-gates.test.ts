import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  arenaStep,
  ensembleDisagreementRising,
  goldGate,
  klEstimateToSft,
  klOverBudget,
  overOptimisationGuard,
  proxyGoldDiverged,
  proxyPreFilter,
  rewardAccuracyGuard,
  type ArenaFigures,
} from './loop-gates.ts';

const budget = { minScoreGain: 0.05, klBudget: 5 };

test('the pre-filter offers a candidate only when its proxy gain reaches minScoreGain within the KL budget', () => {
  assert.deepEqual(proxyPreFilter({ proxy: 0.3, kl: 2 }, { proxy: 0.2 }, budget), { offer: true, gain: 0.3 - 0.2, reasons: [] });
  const small = proxyPreFilter({ proxy: 0.22, kl: 2 }, { proxy: 0.2 }, budget);
  assert.equal(small.offer, false);
  assert.match(small.reasons[0]!, /proxy gain 0\.020 < 0\.05/);
  const far = proxyPreFilter({ proxy: 1, kl: 6 }, { proxy: 0 }, budget);
  assert.equal(far.offer, false);
  assert.match(far.reasons.join(), /KL to SFT 6\.00 > budget 5/);
  assert.equal(proxyPreFilter({ proxy: NaN, kl: 1 }, { proxy: 0 }, budget).offer, false, 'an unmeasured proxy is not a gain');
});

test('the reward-accuracy guard refuses a model below the floor or fallen since the last round', () => {
  const o = { minRewardAccuracy: 0.6, maxAccuracyDrop: 0.1 };
  assert.equal(rewardAccuracyGuard(0.7, undefined, o), undefined);
  assert.match(rewardAccuracyGuard(0.55, undefined, { ...o, pairs: 12 })!, /0\.550 is below 0\.6 over 12 pairs/);
  assert.match(rewardAccuracyGuard(0.65, 0.8, o)!, /fell from 0\.800 to 0\.650/);
  assert.equal(rewardAccuracyGuard(0.72, 0.8, o), undefined, 'a fall within maxAccuracyDrop is noise');
  assert.match(rewardAccuracyGuard(NaN, undefined, o)!, /below/);
});

test('after users reject a candidate the proxy preferred, the next round halves the steps and doubles β, and says why', () => {
  const carried = { ppoSteps: 30, klCoef: 0.04 };
  const o = { response: 'shrink' as const, configuredKlCoef: 0.05 };
  assert.deepEqual(overOptimisationGuard(undefined, carried, o), { ...carried, warmStartReward: true });
  assert.deepEqual(overOptimisationGuard({ action: 'promote', versionId: 'v1', at: 't1' }, carried, o), { ...carried, warmStartReward: true }, 'a promotion changes nothing');
  const g = overOptimisationGuard({ action: 'reject', versionId: 'v2', at: 't2', p: 0.31, interval: [0.2, 0.45], n: 120 }, carried, o);
  assert.equal(g.ppoSteps, 15);
  assert.equal(g.klCoef, 0.08);
  assert.equal(g.warmStartReward, true);
  assert.match(g.reason!, /over-optimisation guard: the proxy preferred candidate v2 but users rejected it head to head \(P\(candidate ≻ champion\) 0\.310, interval \[0\.200, 0\.450\] over 120 judgements\); this iteration runs 15 optimiser steps instead of 30 and β 0\.0800/);
  assert.equal(overOptimisationGuard({ action: 'reject', versionId: 'v', at: 't' }, { ppoSteps: 1, klCoef: 1 }, o).ppoSteps, 1, 'never zero steps');
  const r = overOptimisationGuard({ action: 'reject', versionId: 'v3', at: 't3' }, carried, { response: 'restart', configuredKlCoef: 0.05 });
  assert.deepEqual([r.ppoSteps, r.klCoef, r.warmStartReward], [30, 0.05, false]);
  assert.match(r.reason!, /starting back from the champion with β 0\.05 and a reward model trained afresh/);
});

test('ensemble disagreement rising while the proxy rises stops the optimiser; noise and honest gains do not', () => {
  const h = [{ proxy: 0, spread: 0.1 }, { proxy: 0.5, spread: 0.2 }, { proxy: 1, spread: 0.4 }];
  assert.equal(ensembleDisagreementRising(h, 2, 0.2), true);
  assert.equal(ensembleDisagreementRising(h, 3, 0.2), false, 'too few evaluations');
  assert.equal(ensembleDisagreementRising(h, 2, 0.35), false, 'a rise within the tolerance is noise');
  assert.equal(ensembleDisagreementRising([{ proxy: 0, spread: 0.3 }, { proxy: 1, spread: 0.1 }, { proxy: 2, spread: 0.3 }], 2, 0.05), false, 'one noisy evaluation does not fire it');
  assert.equal(ensembleDisagreementRising([{ proxy: 2, spread: 0.1 }, { proxy: 1, spread: 0.3 }, { proxy: 0, spread: 0.5 }], 2, 0.1), false, 'the proxy falling is not the proxy being gamed');
  assert.equal(ensembleDisagreementRising([{ proxy: 0, spread: NaN }, { proxy: 1, spread: NaN }], 1, 0), false, 'no ensemble, no guard');
});

test('the KL budget is on the total KL to SFT, also with the reference re-anchored to the champion', () => {
  assert.equal(klEstimateToSft(3, { reanchored: false, championKlToSft: 4 }), 3);
  assert.equal(klEstimateToSft(3, { reanchored: true, championKlToSft: 4 }), 7);
  assert.equal(klOverBudget(klEstimateToSft(3, { reanchored: true, championKlToSft: 4 }), 5), true, 'within budget to the champion, over it to SFT');
  assert.equal(klOverBudget(5, 5), false);
  assert.equal(klOverBudget(NaN, 5), true);
});

test('the gold guard and gate (ablation only) fire on proxy up / gold down and on a gold loss', () => {
  const h = [{ proxy: 0, gold: 1 }, { proxy: 1, gold: 0.9 }, { proxy: 2, gold: 0.8 }];
  assert.equal(proxyGoldDiverged(h, 2, 0.1), true);
  assert.equal(proxyGoldDiverged(h, 3, 0.1), false);
  assert.equal(proxyGoldDiverged(h, 2, 0.25), false);
  assert.equal(proxyGoldDiverged([{ proxy: 0, gold: 1 }, { proxy: 1, gold: 1.1 }, { proxy: 2, gold: 1.2 }], 2, 0.1), false);
  assert.equal(goldGate({ gold: 0.5 }, { gold: 0.4 }), undefined);
  assert.match(goldGate({ gold: 0.3 }, { gold: 0.4 })!, /gold 0\.300 < champion 0\.400/);
});

const arena = (o: Partial<ArenaFigures>): ArenaFigures => ({ candidate: 'c1', champion: 'k0', n: 40, ties: 30, bothBad: 2, p: 0.52, interval: [0.35, 0.69], decision: 'continue', ...o });

test('a tie-heavy, undecided arena keeps collecting; an applied verdict lets the loop train; an unapplied one waits for the admin', () => {
  assert.deepEqual(arenaStep(undefined), { action: 'train', reason: 'no candidate in the arena' });
  const open = arenaStep({ summary: arena({}), applied: null });
  assert.equal(open.action, 'wait');
  assert.match(open.reason, /in the arena, undecided: P\(candidate ≻ champion\) 0\.520, interval \[0\.350, 0\.690\] over 40 judgements \(30 ties, 2 both bad\); collecting/);
  const lost = arenaStep({ summary: arena({ decision: 'reject', p: 0.3, interval: [0.2, 0.45] }), applied: 'rejected' });
  assert.equal(lost.action, 'train');
  assert.match(lost.reason, /users rejected candidate c1/);
  assert.equal(arenaStep({ summary: arena({ decision: 'promote', p: 0.8, interval: [0.6, 0.9] }), applied: 'promoted' }).action, 'train');
  const unapplied = arenaStep({ summary: arena({ decision: 'promote', p: 0.8, interval: [0.6, 0.9] }), applied: null });
  assert.equal(unapplied.action, 'wait');
  assert.match(unapplied.reason, /waiting for the admin/);
});
