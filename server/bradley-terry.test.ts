import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fitBradleyTerry } from './bradley-terry.ts';

test('two versions: theta is the log-odds of the win rate, and the interval narrows with more games', () => {
  const few = fitBradleyTerry([{ winner: 'b', loser: 'a', count: 6 }, { winner: 'a', loser: 'b', count: 4 }], 'a');
  const many = fitBradleyTerry([{ winner: 'b', loser: 'a', count: 600 }, { winner: 'a', loser: 'b', count: 400 }], 'a');
  const b = many.find((s) => s.versionId === 'b')!;
  assert.ok(Math.abs(b.theta - Math.log(1.5)) < 0.01, `theta ${b.theta}`);
  assert.ok(b.low > 0, 'b is significantly better with 1000 games');
  const bf = few.find((s) => s.versionId === 'b')!;
  assert.ok(bf.low < 0 && bf.high > 0, 'not significant with 10 games');
  assert.deepEqual(many.find((s) => s.versionId === 'a'), { versionId: 'a', theta: 0, low: 0, high: 0, elo: 0, games: 1000 });
});

test('three versions are ordered by strength; an unbeaten version stays finite', () => {
  const s = fitBradleyTerry(
    [
      { winner: 'c', loser: 'b', count: 30 },
      { winner: 'b', loser: 'a', count: 20 },
      { winner: 'a', loser: 'b', count: 10 },
      { winner: 'c', loser: 'a', count: 5 },
    ],
    'a',
  );
  const th = Object.fromEntries(s.map((x) => [x.versionId, x.theta]));
  assert.ok(th.c! > th.b! && th.b! > th.a!, JSON.stringify(th));
  assert.ok(Number.isFinite(th.c));
});
