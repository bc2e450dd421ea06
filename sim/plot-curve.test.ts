import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { arenaSeries, datasets, flatten, panelTitle, renderCurves, type SimResult } from './plot-curve.ts';

const arena = (p: number, lo: number, hi: number, decision: string, n: number) => ({ n, p, interval: [lo, hi] as [number, number], decision, length_controlled: { p: p - 0.1 } });
const SEED: SimResult = {
  kl_coef: 0.05,
  exploitable: false,
  gold_win_rate_vs_sft: 0.7,
  gold_win_rate_ci95: [0.64, 0.76],
  length_controlled_win_rate: 0.66,
  curve: [
    { round: 1, step: 0, kl: 0, proxy: -0.3, gold: 0.7 },
    { round: 1, step: 5, kl: 0.5, proxy: 0, gold: 0.75 },
    { round: 2, step: 0, kl: 1, proxy: 0.1, gold: 0.8 },
  ],
  rounds: [
    { round: 1, decisions: [{ by: 'proxy', action: 'offer' }], arena: null },
    { round: 2, decisions: [{ by: 'arena', action: 'reject' }, { by: 'guard', action: 'shorten' }, { by: 'proxy', action: 'offer' }], arena: arena(0.3, 0.2, 0.45, 'reject', 200) },
    { round: 3, decisions: [{ by: 'arena', action: 'promote' }], arena: arena(0.7, 0.55, 0.8, 'promote', 300) },
  ],
};

test('every evaluation is a point: gold and proxy against KL; the title says what the users and the guards did', () => {
  const [gold, proxy] = datasets(SEED);
  assert.deepEqual(gold!.data, [{ x: 0, y: 0.7 }, { x: 0.5, y: 0.75 }, { x: 1, y: 0.8 }]);
  assert.deepEqual(proxy!.data.map((p) => p.y), [-0.3, 0, 0.1]);
  assert.equal(panelTitle(SEED), 'honest users, KL coefficient 0.05 — gold win rate vs SFT 0.7 [0.64, 0.76], length-controlled 0.66; users promoted 1, rejected 1; guards acted 1×');
  assert.match(panelTitle({ ...SEED, exploitable: true, kl_coef: 0, gold_gate: true, rounds: [] }), /^users with a verbosity bias, no KL leash, gold-gate ablation — .*users promoted 0, rejected 0$/);
});

test('the arena per round: interval bars, the estimate and its length-controlled value, rounds without an arena left out', () => {
  const a = arenaSeries(SEED);
  assert.deepEqual(a.labels, ['round 2: reject (n 200)', 'round 3: promote (n 300)']);
  assert.deepEqual(a.interval, [[0.2, 0.45], [0.55, 0.8]]);
  assert.deepEqual(a.p, [0.3, 0.7]);
  assert.ok(Math.abs(a.lengthControlled[0]! - 0.2) < 1e-9);
});

test('a pooled line draws every seed\'s evaluations and the first seed\'s rounds', () => {
  const pooled: SimResult = { gold_win_rate_vs_sft: 0.71, per_seed: [SEED, { ...SEED, curve: [{ round: 1, step: 0, kl: 0, proxy: 0, gold: 0 }], rounds: [] }] };
  const f = flatten(pooled);
  assert.equal(f.curve!.length, 4);
  assert.equal(f.rounds!.length, 3);
  assert.equal(flatten(SEED), SEED);
});

const CHROMIUM = '/usr/bin/chromium';
const missing = existsSync(CHROMIUM) ? undefined : `${CHROMIUM} is missing (apt-get install -y chromium)`;
if (missing && process.env.CI) throw new Error(`plot test cannot run under CI: ${missing}`);

test('renders the panels to a PNG in headless Chromium', { skip: missing ? `skipped: ${missing}` : false }, async () => {
  const png = await renderCurves([SEED, { ...SEED, exploitable: true }]);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  const width = png.readUInt32BE(16), height = png.readUInt32BE(20);
  assert.ok(width > 1400 && height > 900, `two panels of two charts at 1.5x: ${width}x${height}`);
  assert.ok(png.length > 30_000, `drawn charts, not a blank page: ${png.length} bytes`);
});
