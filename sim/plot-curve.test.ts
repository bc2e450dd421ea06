import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { datasets, panelTitle, renderCurves } from './plot-curve.ts';

const RESULT = {
  kl_coef: 0.05,
  exploitable: false,
  gold_win_rate_vs_sft: 0.7,
  curve: [
    { round: 1, step: 0, kl: 0, proxy: -0.3, gold: 0.7 },
    { round: 1, step: 5, kl: 0.5, proxy: 0, gold: 0.75 },
    { round: 2, step: 0, kl: 1, proxy: 0.1, gold: 0.8 },
  ],
};

test('every evaluation is a point: gold and proxy against KL', () => {
  const [gold, proxy] = datasets(RESULT);
  assert.deepEqual(gold!.data, [{ x: 0, y: 0.7 }, { x: 0.5, y: 0.75 }, { x: 1, y: 0.8 }]);
  assert.deepEqual(proxy!.data.map((p) => p.y), [-0.3, 0, 0.1]);
  assert.match(panelTitle(RESULT), /honest users, KL coefficient 0.05 — gold win rate vs SFT 0.7/);
  const stopped = { ...RESULT, exploitable: true, kl_coef: 0, iterations: [{ round: 1, status: 'candidate', reason: 'not promoted (PPO stopped early: proxy reward rose (0.1 → 1.2) while gold reward fell (0.5 → 0.1) over 3 evaluations (step 15))' }] };
  assert.match(panelTitle(stopped), /verbosity bias, no KL leash — gold win rate vs SFT 0.7; guard stopped PPO in 1\/1 rounds/);
});

const CHROMIUM = '/usr/bin/chromium';
const missing = existsSync(CHROMIUM) ? undefined : `${CHROMIUM} is missing (apt-get install -y chromium)`;
if (missing && process.env.CI) throw new Error(`plot test cannot run under CI: ${missing}`);

test('renders the panels to a PNG in headless Chromium', { skip: missing ? `skipped: ${missing}` : false }, async () => {
  const png = await renderCurves([RESULT, { ...RESULT, exploitable: true }]);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  const width = png.readUInt32BE(16), height = png.readUInt32BE(20);
  assert.ok(width > 1400 && height > 500, `two panels at 1.5x: ${width}x${height}`);
  assert.ok(png.length > 20_000, `a drawn chart, not a blank page: ${png.length} bytes`);
});
