import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dialoguePrompts } from './simulate.ts';
import { runScript } from '../cli/test-support.ts';

const probe = (args: string[]) => runScript('sim/format-probe.ts', args, { timeoutMs: 120_000 });

/** Small dialogue files of its own, built once (a fresh clone has no data/). */
let data: string | undefined;
async function dataDir(): Promise<string> {
  if (!data) {
    data = join(mkdtempSync(join(tmpdir(), 'format-probe-')), 'data');
    await dialoguePrompts(data, () => {}, { trainDialogues: 200, valDialogues: 80, maxDocsPerSource: 2 });
  }
  return data;
}

const figures = (line: string) => Object.fromEntries([...line.matchAll(/(format|exact|gold|words|kl) (-?[\d.]+)/g)].map((m) => [m[1]!, Number(m[2])]));

test('the format probe measures SFT, the sharpness family and the optimiser on the committed model', { timeout: 150_000 }, async () => {
  const r = await probe(['--data', await dataDir(), '--steps', '2', '--every', '1', '--heldout', '6', '--sharpness', '1,1.5']);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  const sft = lines.find((l) => l.startsWith('sft: '))!;
  const s1 = lines.find((l) => l.startsWith('sharpness 1: '))!;
  const s15 = lines.find((l) => l.startsWith('sharpness 1.5: '))!;
  assert.ok(sft && s1 && s15, r.stdout);
  // s = 1 is SFT's own weights, sampled with the same seeds: the same replies, no KL.
  assert.equal(s1.slice('sharpness 1: '.length), sft.slice('sft: '.length));
  assert.equal(figures(sft).kl, 0);
  assert.ok(figures(s15).kl! > 0, `a sharper policy is another distribution: ${s15}`);
  for (const l of [sft, s15]) {
    const f = figures(l);
    assert.ok(f.format! >= 0 && f.format! <= 1 && f.exact! >= 0 && f.exact! <= f.format!, l);
  }
  assert.equal(lines.filter((l) => /^ppo step \d \(β [\d.]+\): format/.test(l)).length, 2, r.stdout);
});

test('the format probe\'s rejection-sampling fine-tuning runs its steps and moves the policy', { timeout: 150_000 }, async () => {
  const r = await probe(['--data', await dataDir(), '--algorithm', 'best-of-n', '--n', '2', '--steps', '2', '--every', '1', '--heldout', '6', '--sharpness', '']);
  assert.equal(r.code, 0, r.stderr);
  const steps = r.stdout.trim().split('\n').filter((l) => /^best-of-n step \d: format/.test(l));
  assert.equal(steps.length, 2, r.stdout);
  // The KL figure is the mean log-ratio over the held-out replies (6 here): of either sign for a
  // changed policy, exactly 0 for an unchanged one (sharpness 1 above).
  assert.notEqual(figures(steps[1]!).kl, 0, `two cross-entropy steps change the policy: ${steps[1]}`);
});

