import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NoisyJudge, Rng } from './gold-rubric.ts';
import { bayesCeiling, clusterBootstrap, heldOutPairs, pairedBootstrap, promptWin } from './stats.ts';
import type { SessionResult } from './sim-users.ts';

const bernoulli = (n: number, p: number, seed: number): number[] => {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => (rng.next() < p ? 1 : 0));
};

test('the bootstrap interval contains the point estimate, is seeded, and narrows with more prompts', () => {
  const small = pairedBootstrap(bernoulli(50, 0.7, 1), { seed: 3 });
  const large = pairedBootstrap(bernoulli(800, 0.7, 2), { seed: 3 });
  for (const b of [small, large]) assert.ok(b.interval[0] <= b.mean && b.mean <= b.interval[1], JSON.stringify(b));
  const width = (b: typeof small): number => b.interval[1] - b.interval[0];
  // Width ∝ 1/√n: 16 times the prompts, about a quarter of the width.
  assert.ok(width(large) < width(small) / 2.5, `${width(small)} → ${width(large)}`);
  assert.ok(Math.abs(width(small) - 2 * 1.96 * Math.sqrt(0.21 / 50)) < 0.06, `normal-theory width ≈ 0.25, got ${width(small)}`);
  assert.deepEqual(pairedBootstrap(bernoulli(50, 0.7, 1), { seed: 3 }), small, 'same seed, same interval');
  assert.deepEqual(pairedBootstrap([0.5, 0.5, 0.5]).interval, [0.5, 0.5]);
  assert.equal(pairedBootstrap([]).units, 0);
});

test('the cluster bootstrap keeps a prompt\'s samples together: copies of one draw widen its interval, independent draws do not', () => {
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const draws = bernoulli(200, 0.6, 5);
  // Four identical samples per prompt carry one draw's information; four independent draws carry four.
  const copies = draws.map((x) => [x, x, x, x]);
  const independent = Array.from({ length: 200 }, (_, i) => bernoulli(4, 0.6, 100 + i));
  const w = (iv: [number, number]) => iv[1] - iv[0];
  const wc = w(clusterBootstrap(copies, mean, { seed: 2 }));
  const wi = w(clusterBootstrap(independent, mean, { seed: 2 }));
  assert.ok(Math.abs(wc - 2 * 1.96 * Math.sqrt(0.24 / 200)) < 0.03, `copies: the width of 200 draws, ≈ 0.136; got ${wc}`);
  assert.ok(wi < wc * 0.65, `independent samples narrow it by about half: ${wc} → ${wi}`);
  const iv = clusterBootstrap(copies, mean, { seed: 2 });
  assert.ok(iv[0] <= mean(draws) && mean(draws) <= iv[1]);
  assert.deepEqual(clusterBootstrap(copies, mean, { seed: 2 }), iv, 'seeded');
  assert.deepEqual(clusterBootstrap([], mean), [NaN, NaN]);
});

test('a prompt\'s win pairs samples by seed; ties count one half', () => {
  assert.equal(promptWin([1, 2, 3, 4], [0, 2, 5, 1]), (1 + 0.5 + 0 + 1) / 4);
  assert.throws(() => promptWin([1], [1, 2]), /paired/);
});

test('Bayes ceiling: noiseless labels reach 1, pure noise 0.5, and it is what a gold-knowing model scores', () => {
  const distinct = [{ winner: 1, loser: 0 }, { winner: 0.2, loser: 0.9 }];
  assert.equal(bayesCeiling(distinct, 0), 1);
  assert.ok(bayesCeiling(distinct, 1e-6) > 0.999);
  assert.equal(bayesCeiling([{ winner: 0.3, loser: 0.3 }, { winner: 2, loser: 2 }], 0.3), 0.5);
  assert.ok(Math.abs(bayesCeiling(distinct, 1e6) - 0.5) < 1e-3);
  assert.ok(Number.isNaN(bayesCeiling([], 0.3)));
  // Draw labels as the simulated users do; a model that ranks by gold agrees with them as often as the ceiling says.
  const judge = new NoisyJudge(new Rng(7), 0.3, 1, 0);
  const rng = new Rng(8);
  const pairs: { winner: number; loser: number }[] = [];
  let agree = 0;
  for (let i = 0; i < 4000; i++) {
    const a = rng.next() * 2, b = rng.next() * 2;
    const choice = judge.compare(a, b);
    const [winner, loser] = choice === 'a' ? [a, b] : [b, a];
    pairs.push({ winner, loser });
    if (winner >= loser) agree++;
  }
  assert.ok(Math.abs(agree / pairs.length - bayesCeiling(pairs, 0.3)) < 0.02, `${agree / pairs.length} vs ${bayesCeiling(pairs, 0.3)}`);
});

test('held-out pairs: picks and every pair of a ranking, in the users\' order, on the kept prompts only; ties and thumbs state none', () => {
  const s = (kind: SessionResult['kind'], prompt: string, gold: number[], judgement: SessionResult['judgement']): SessionResult => ({ kind, prompt, gold, judgement, replies: [], feedbackId: 'x' });
  const sessions = [
    s('comparison', 'p1', [1, 2], 'b'),
    s('comparison', 'p1', [1, 1.01], 'tie'),
    s('thumb', 'p1', [1], 'up'),
    s('ranking', 'p1', [0, 1, 2], [2, 0, 1]),
    s('ranking', 'p1', [1, 1], []),
    s('comparison', 'p2', [1, 2], 'a'),
  ];
  assert.deepEqual(heldOutPairs(sessions, (p) => p === 'p1'), [
    { winner: 2, loser: 1 },
    { winner: 2, loser: 0 }, { winner: 2, loser: 1 }, { winner: 0, loser: 1 },
  ]);
});
