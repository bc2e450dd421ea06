import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../server/test-support.ts';
import { GoldRubric } from './gold-rubric.ts';
import { compareServers, type Comparison } from './compare.ts';
import { dialoguePrompts, parseSimArgs, poolRawLines, pooled, PRESETS, stories, type SimOptions } from './simulate.ts';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { championMovesOf, decisionsOf, klToSft, loopConfig, type StoryResult } from './story.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { promote, registerModelVersion } from '../feedback/index.ts';
import { comparisonFigures, outcomes } from './report.ts';

const PROMPTS = [
  { prompt: 'What does lucid mean?', word: 'lucid', gloss: 'clear and easy to understand' },
  { prompt: 'What does the cat mean?', word: 'cat', gloss: 'sat on the mat' },
  { prompt: 'What does the dog mean?', word: 'dog', gloss: 'sat on the log' },
];

test('options: defaults, values, presets (explicit flags win) and refusals', () => {
  const d = parseSimArgs([]);
  assert.notEqual(d, 'help');
  if (d === 'help') return;
  assert.equal(d.klBudget, 10);
  assert.deepEqual([d.rounds, d.klCoef, d.exploitable, d.goldGate, d.seeds, d.samplesPerPrompt, d.algorithm, d.arenaAlpha], [4, 0.6, false, false, 1, 4, 'ppo', 0.05]);
  const o = parseSimArgs(['--json', '--rounds', '2', '--users', '3', '--judgements-per-round', '40', '--minutes', '1.5', '--seed', '9', '--seeds', '3', '--kl-coef', '0', '--exploitable', '--gold-gate', '--algorithm', 'rloo']);
  if (o === 'help') return;
  assert.deepEqual([o.json, o.rounds, o.users, o.judgementsPerRound, o.minutes, o.seed, o.seeds, o.klCoef, o.exploitable, o.goldGate, o.algorithm], [true, 2, 3, 40, 1.5, 9, 3, 0, true, true, 'rloo']);
  const over = parseSimArgs(['--preset', 'over-optimisation', '--rounds', '5']);
  if (over === 'help') return;
  assert.deepEqual([over.preset, over.ppoSteps, over.judgementsPerRound, over.rounds, over.klBudget], ['over-optimisation', PRESETS['over-optimisation'].ppoSteps, PRESETS['over-optimisation'].judgementsPerRound, 5, 40]);
  assert.equal((parseSimArgs(['--preset', 'over-optimisation', '--kl-budget', '12']) as { klBudget: number }).klBudget, 12, 'a flag beats the preset');
  const verbose = parseSimArgs(['--preset', 'verbosity']);
  assert.ok(verbose !== 'help' && verbose.exploitable);
  assert.equal(parseSimArgs(['--help']), 'help');
  assert.throws(() => parseSimArgs(['--rounds', 'x']), /--rounds/);
  assert.throws(() => parseSimArgs(['--preset', 'nope']), /--preset must be one of over-optimisation, verbosity/);
  assert.throws(() => parseSimArgs(['--algorithm', 'sgd']), /--algorithm/);
  assert.throws(() => parseSimArgs(['--arena-alpha', '1']), /--arena-alpha/);
  assert.throws(() => parseSimArgs(['--bogus']));
  assert.equal(d.loop, undefined, 'no loop knob set: the loop\'s own defaults');
  const cov = parseSimArgs(['--reward-covariates', 'none', '--reward-length-weight', '0.5']);
  assert.ok(cov !== 'help');
  assert.deepEqual(cov.loop, { rewardCovariates: 'none', rewardLengthWeight: 0.5 });
  assert.throws(() => parseSimArgs(['--reward-covariates', 'spelling']), /--reward-covariates must be one of none, length, length\+likelihood/);
  assert.throws(() => parseSimArgs(['--reward-length-weight', '-1']), /--reward-length-weight/);
});

test('what took each decision: the arena first, then the pre-filter or a guard; a reason naming gold is gold\'s', () => {
  const arena = { candidate: 'c1', champion: 's', n: 120, wins: 30, losses: 80, ties: 3, bothBad: 0, alpha: 0.05, p: 0.31, interval: [0.2, 0.45] as [number, number], decision: 'reject' as const, lengthControlled: { p: 0.3, interval: [0.2, 0.4] as [number, number], lengthCoef: 0.1 } };
  assert.deepEqual(decisionsOf({ status: 'offered', reason: 'candidate offered to the users\' arena (proxy 0.4 vs champion 0.1) (over-optimisation guard: the proxy preferred candidate c1 but users rejected it head to head; this iteration runs 20 optimiser steps instead of 40)', arena }).map((d) => `${d.by}:${d.action}`), ['arena:reject', 'guard:shorten', 'proxy:offer']);
  assert.deepEqual(decisionsOf({ status: 'rejected', reason: 'candidate registered, not offered: proxy gain 0.010 < 0.05' }).map((d) => `${d.by}:${d.action}`), ['proxy:not_offered']);
  assert.deepEqual(decisionsOf({ status: 'rejected', reason: 'candidate registered, not offered: KL to SFT 12.00 > budget 10' }).map((d) => `${d.by}:${d.action}`), ['guard:not_offered']);
  assert.deepEqual(decisionsOf({ status: 'rejected', reason: 'reward model held-out accuracy 0.520 is below 0.6 over 40 pairs' }).map((d) => `${d.by}:${d.action}`), ['guard:stop']);
  assert.deepEqual(decisionsOf({ status: 'offered', reason: 'candidate offered (PPO stopped early: ensemble disagreement rose (0.1 → 0.3) while the proxy rose (step 15))' }).map((d) => `${d.by}:${d.action}`), ['guard:stop_ppo', 'proxy:offer']);
  assert.deepEqual(decisionsOf({ status: 'arena', reason: 'undecided', arena: { ...arena, decision: 'continue' } }).map((d) => `${d.by}:${d.action}`), ['arena:continue']);
  // The ablation's gates, and a leak of gold into an ordinary gate, show as gold.
  assert.deepEqual(decisionsOf({ status: 'candidate', reason: 'candidate registered; not promoted: gold 0.4 < champion 0.5' }).map((d) => d.by), ['gold']);
  assert.deepEqual(decisionsOf({ status: 'offered', reason: 'offered (PPO stopped early: proxy reward rose (0.1 → 0.5) while gold reward fell (0.9 → 0.6) over 3 evaluations (step 15))' }).map((d) => d.by), ['gold', 'proxy']);
  assert.deepEqual(decisionsOf({ status: 'skipped', reason: '0 new judgements' }), []);
});

test('the loop config: knobs the loop lacks are refused unless left at their default', () => {
  const shape = { ppoSteps: 1, goldGate: 1 };
  assert.deepEqual(loopConfig(shape, { ppoSteps: 5, goldGate: true, algorithm: 'ppo', arenaAlpha: 0.05 }), { ppoSteps: 5, goldGate: true });
  assert.throws(() => loopConfig(shape, { algorithm: 'rloo' }), /no knob algorithm/);
  assert.throws(() => loopConfig(shape, { madeUp: 1 }), /no knob madeUp/);
});

const fakeComparison = (wins: number[][]): Comparison => ({
  prompts: wins.map((w, i) => ({ prompt: `p${i}`, goldA: w, goldB: w.map(() => 0.5), wordsA: w.map(() => 5), wordsB: w.map(() => 5) })),
  partsA: { format: 0.8, overlap: 0.5, length: -0.1, empty: 0, clean: 0.5, words: 7 },
  partsB: { format: 0.6, overlap: 0.5, length: -0.2, empty: 0, clean: 0.5, words: 8 },
  versionA: 'policy-x', versionB: 'sft-y',
});

test('figures: the win rate over paired samples, its bootstrap interval, part deltas; pooled over seeds, with each seed\'s', () => {
  const a = fakeComparison([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0.5, 0.5, 1]]);
  const f = comparisonFigures(a, 1);
  assert.equal(f.gold_win_rate_vs_sft, Math.round(((0.5 + 1 + 0 + (1 + 0.5 + 0.5 + 1) / 4) / 4) * 1000) / 1000);
  assert.ok(f.gold_win_rate_ci95[0]! <= f.gold_win_rate_vs_sft! && f.gold_win_rate_vs_sft! <= f.gold_win_rate_ci95[1]!);
  assert.deepEqual([f.parts_delta.format, f.parts_delta.length, f.parts_delta.words], [0.2, 0.1, -1]);
  assert.equal(outcomes(a).length, 16);
  assert.ok(f.length_controlled_win_rate !== null && f.length_controlled_win_rate > 0 && f.length_controlled_win_rate < 1);
  const b = fakeComparison([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]);
  const seed = (s: number, c: Comparison): StoryResult => ({ ...comparisonFigures(c, s), seed: s, gold_in_decisions: false, kl_to_sft: s, minutes: 1, champion: 'policy-x', sft: 'sft-y', judgements: 10, eval_prompts: 4, samples_per_prompt: 4, exploitable: false, gold_gate: false, kl_coef: 0.05, rerank_n: 4, rounds: [], champion_moves: [], curve: [], comparison: c });
  const p = pooled([seed(1, a), seed(2, b)], 1);
  assert.equal(p.seeds, 2);
  assert.equal(p.gold_in_decisions, false);
  assert.equal(p.gold_win_rate_vs_sft, comparisonFigures([a, b], 1).gold_win_rate_vs_sft);
  assert.ok((p.gold_win_rate_vs_sft as number) > f.gold_win_rate_vs_sft!);
  assert.equal(p.kl_to_sft, 1.5);
  assert.equal(p.minutes, 2);
  const per = p.per_seed as Record<string, unknown>[];
  assert.deepEqual(per.map((x) => x.seed), [1, 2]);
  for (const k of ['gold_in_decisions', 'gold_win_rate_vs_sft', 'gold_win_rate_ci95', 'length_controlled_win_rate', 'parts_delta', 'kl_to_sft', 'minutes']) assert.ok(k in per[0]! && k in p, k);
  assert.ok(!('comparison' in per[0]!), 'the raw comparison is not printed');
  assert.equal(pooled([{ ...seed(1, a), gold_in_decisions: true }, seed(2, b)], 1).gold_in_decisions, true);
});

test('--seeds N: N stories on seeds s..s+N−1, a line per seed as each finishes, the pooled report last', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sim-seeds-'));
  try {
    await dialoguePrompts(dir, () => {}, { trainDialogues: 200, valDialogues: 80, maxDocsPerSource: 2 });
    const o = parseSimArgs(['--json', '--seeds', '3', '--seed', '7', '--data', dir, '--gold-gate']);
    assert.ok(o !== 'help');
    const seen: { seed: number; goldGate: boolean }[] = [];
    const printed: string[] = [];
    const fake = async (so: { seed: number; goldGate: boolean }): Promise<StoryResult> => {
      seen.push({ seed: so.seed, goldGate: so.goldGate });
      const c = fakeComparison([[1, 0], [so.seed % 2, 1]]);
      return { ...comparisonFigures(c, so.seed), seed: so.seed, gold_in_decisions: so.goldGate, kl_to_sft: 1, minutes: 0.5, champion: 'policy-x', sft: 'sft-y', judgements: 1, eval_prompts: 2, samples_per_prompt: 2, exploitable: false, gold_gate: so.goldGate, kl_coef: 0.05, rerank_n: 4, rounds: [], champion_moves: [], curve: [], comparison: c };
    };
    const r = await stories(o, () => {}, (l) => printed.push(l), fake);
    assert.deepEqual(seen, [7, 8, 9].map((seed) => ({ seed, goldGate: true })));
    assert.deepEqual(printed.map((l) => (JSON.parse(l) as { seed: number }).seed), [7, 8, 9]);
    assert.deepEqual([r.seeds, r.gold_in_decisions, r.gold_gate, r.minutes], [3, true, true, 1.5]);
    assert.deepEqual((r.per_seed as { seed: number }[]).map((x) => x.seed), [7, 8, 9]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--raw and --pool: seeds run apart (one process each) pool to exactly the pooled line of one --seeds run', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sim-pool-'));
  try {
    await dialoguePrompts(dir, () => {}, { trainDialogues: 200, valDialogues: 80, maxDocsPerSource: 2 });
    const fake = async (so: { seed: number }): Promise<StoryResult> => {
      const c = fakeComparison([[1, 0], [so.seed % 2, 1], [0.5, 0.5]]);
      return { ...comparisonFigures(c, so.seed), seed: so.seed, gold_in_decisions: false, kl_to_sft: so.seed, minutes: 0.5, champion: 'policy-x', sft: 'sft-y', judgements: 1, eval_prompts: 3, samples_per_prompt: 2, exploitable: false, gold_gate: false, kl_coef: 0.05, rerank_n: 4, rounds: [], champion_moves: [], curve: [], comparison: c };
    };
    const together = await stories(parseSimArgs(['--json', '--seeds', '3', '--data', dir]) as SimOptions, () => {}, () => {}, fake);
    const files: string[] = [];
    for (const seed of [3, 1, 2]) {
      const lines: string[] = [];
      const alone = await stories(parseSimArgs(['--json', '--raw', '--seed', String(seed), '--data', dir]) as SimOptions, () => {}, (l) => lines.push(l), fake);
      assert.equal(lines.length, 1, 'one seed\'s raw line');
      assert.ok((JSON.parse(lines[0]!) as { comparison?: unknown }).comparison, 'the raw line carries the comparison');
      files.push([...lines, JSON.stringify(alone)].join('\n'));
    }
    assert.deepEqual(poolRawLines(files), together);
    assert.throws(() => poolRawLines([files[0]!, files[0]!]), /seed 3 appears twice/);
    assert.throws(() => poolRawLines([JSON.stringify(together)]), /no --raw seed lines/);
    const o = parseSimArgs(['--pool', 'a.json,b.json']);
    assert.ok(o !== 'help' && o.poolFiles?.length === 2);
    assert.throws(() => parseSimArgs(['--pool']), /--pool/);
    assert.throws(() => parseSimArgs(['--pool', ',']), /--pool needs the files/);
    assert.throws(() => parseSimArgs(['stray.json']), /unexpected argument "stray.json"/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('missing dialogue files are built first, saying so; present ones are read as they are', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'sim-data-')), 'data');
  try {
    const said: string[] = [];
    const p = await dialoguePrompts(dir, (l) => said.push(l), { trainDialogues: 200, valDialogues: 80, maxDocsPerSource: 2 });
    assert.match(said[0]!, /dialogues\.\{train,val\}\.jsonl are missing: building them/);
    assert.match(said.at(-1)!, /^built .*data\/ in \d+ s$/);
    assert.ok(existsSync(join(dir, 'dialogues.train.jsonl')) && p.train.length > 0 && p.val.length > 0);
    const again: string[] = [];
    assert.deepEqual(await dialoguePrompts(dir, (l) => again.push(l)), p);
    assert.deepEqual(again, []);
  } finally {
    rmSync(join(dir, '..'), { recursive: true, force: true });
  }
});

test('champion moves: the start-up setting is not one; a move with the arena\'s figures is the arena\'s, one without is not', async () => {
  const store = await openTempStore({ prefix: 'sim_moves' });
  try {
    for (const id of ['sft-1', 'policy-2', 'policy-3']) await registerModelVersion(store.db, { id, kind: 'policy', checkpoint: `/tmp/${id}` });
    await promote(store.db, { alias: 'champion', versionId: 'sft-1', actor: 'server' });
    await promote(store.db, { alias: 'champion', versionId: 'policy-2', actor: 'online-loop', reason: 'arena', metrics: { arena: { n: 300, p: 0.6 } } });
    await promote(store.db, { alias: 'champion', versionId: 'policy-3', actor: 'admin', reason: 'by hand' });
    assert.deepEqual((await championMovesOf(store)).map((m) => [m.from, m.to, m.by_arena]), [['sft-1', 'policy-2', true], ['policy-2', 'policy-3', false]]);
  } finally {
    await store.close();
  }
});

test('KL to SFT of the final champion: 0 for SFT itself, positive for another model', async () => {
  const { initBackend } = await import('../model/backend.ts');
  await initBackend({ log: () => {} });
  const sampling = { maxTokens: 16, temperature: 1 };
  const [sft, base] = ['sft', 'base'].map((d) => fileURLToPath(new URL(`../checkpoints/${d}`, import.meta.url)));
  assert.ok(Math.abs(await klToSft(sft!, sft!, PROMPTS, 1, sampling)) < 1e-4);
  assert.ok((await klToSft(base!, sft!, PROMPTS, 1, sampling)) > 0.1);
});

describeServers();

function describeServers(): void {
  let a: TestServer, b: TestServer, c: TestServer;
  before(async () => {
    [a, b, c] = await Promise.all([
      startTestServer({}, { modelConfig: { blockSize: 128 } }),
      startTestServer({}, { modelConfig: { blockSize: 128 } }),
      startTestServer({}, { modelConfig: { blockSize: 128, nEmbd: 32 } }),
    ]);
  });
  after(async () => Promise.all([a.close(), b.close(), c.close()]));

  test('the same model on two servers, same seeds: identical replies, every prompt a win rate of one half', async () => {
    const r = await compareServers(a.wsUrl, b.wsUrl, PROMPTS, new GoldRubric(PROMPTS), { params: { temperature: 0.8, maxTokens: 12 }, samples: 2 });
    assert.equal(r.prompts.length, 3);
    for (const p of r.prompts) {
      assert.equal(p.goldA.length, 2);
      assert.deepEqual(p.goldA, p.goldB);
      assert.deepEqual(p.wordsA, p.wordsB);
    }
    assert.deepEqual(r.partsA, r.partsB);
    assert.equal(comparisonFigures(r, 1).gold_win_rate_vs_sft, 0.5);
    assert.ok(r.partsA.words > 0 && r.partsA.clean >= 0 && r.partsA.clean <= 0.5 && r.partsA.length <= 0, JSON.stringify(r.partsA));
    assert.equal(typeof r.versionA, 'string');
  });

  test('different models: swapping the sides swaps the win rate and the gold means (seeded replies)', async () => {
    const rubric = new (class extends GoldRubric {
      override breakdown(p: string, reply: string, clean: boolean) {
        return { ...super.breakdown(p, reply, clean), total: reply.length };
      }
    })(PROMPTS);
    const params = { temperature: 0.8, maxTokens: 12 };
    const ab = comparisonFigures(await compareServers(a.wsUrl, c.wsUrl, PROMPTS, rubric, { params, samples: 2 }), 1);
    const ba = comparisonFigures(await compareServers(c.wsUrl, a.wsUrl, PROMPTS, rubric, { params, samples: 2 }), 1);
    assert.equal(ab.gold_win_rate_vs_sft! + ba.gold_win_rate_vs_sft!, 1);
    assert.ok(Math.abs(ab.gold! - ba.gold_sft!) < 1e-9);
  });
}
