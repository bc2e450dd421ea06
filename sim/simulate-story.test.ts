/**
 * The whole story of `npm run simulate -- --json`, small: a server on the committed SFT model,
 * simulated users over /ws, one loop iteration (reward model, a few PPO steps, gates), the final
 * champion-vs-SFT comparison on held-out prompts. Checks the plumbing and the report, not the
 * figures (those take the full run; see the README).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildData, BuildDataConfig } from '../training/build-data.ts';
import { parseSimArgs, story } from './simulate.ts';

test('one round of the story: judgements in, a loop iteration, a comparison with SFT out', async () => {
  const data = mkdtempSync(join(tmpdir(), 'story-data-'));
  try {
    buildData(BuildDataConfig.parse({ out: data, trainDialogues: 300, valDialogues: 120, maxDocsPerSource: 2 }), { log: () => {} });
    const o = parseSimArgs(['--json', '--data', data, '--rounds', '1', '--users', '4', '--judgements-per-round', '48', '--ppo-steps', '5', '--eval-prompts', '12', '--min-reward-accuracy', '0', '--minutes', '10']);
    assert.notEqual(o, 'help');
    if (o === 'help') return;
    const r = await story(o);
    assert.equal(r.rounds, 1);
    assert.equal(r.judgements, 48);
    assert.equal(r.eval_prompts, 12);
    const win = r.gold_win_rate_vs_sft as number;
    assert.ok(win >= 0 && win <= 1, `win rate ${win}`);
    assert.equal(typeof r.gold_reward, 'number');
    assert.equal(typeof r.minutes, 'number');
    const [it] = r.iterations as { status: string; ppoSteps: number; rmAccuracy: number }[];
    assert.ok(it && ['promoted', 'candidate'].includes(it.status), `iteration ${JSON.stringify(it)}`);
    assert.ok(it.ppoSteps >= 1 && it.ppoSteps <= 5);
    // Every PPO evaluation of the round is on the curve, starting at step 0 (the champion, KL 0).
    const curve = r.curve as { round: number; step: number; kl: number; proxy: number; gold: number }[];
    assert.ok(curve.length >= 2, `curve ${JSON.stringify(curve)}`);
    assert.deepEqual([curve[0]!.round, curve[0]!.step], [1, 0]);
    assert.ok(Math.abs(curve[0]!.kl) < 1e-6, `the SFT champion's KL to SFT is 0, got ${curve[0]!.kl}`);
    assert.ok(curve.every((p) => [p.kl, p.proxy, p.gold].every(Number.isFinite)));
    // The champion is what the server served at the end: SFT, or the promoted candidate.
    assert.match(String(r.champion), it.status === 'promoted' ? /^policy-/ : /^sft-/);
  } finally {
    rmSync(data, { recursive: true, force: true });
  }
});
