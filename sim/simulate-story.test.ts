/**
 * The whole story of `npm run simulate -- --json`, small: a server on the committed SFT model,
 * simulated users over /ws; round 1 trains (reward model, a few optimiser steps, a candidate
 * offered to the arena; the pre-filter is opened so that one always is); in round 2 the users'
 * compares are blind champion-vs-candidate pairs and the loop lets the arena decide first; the
 * judging round decides once more; then the final champion-vs-SFT comparison on held-out prompts.
 * Checks the report's fields and what took each decision, not the figures (those take the full
 * run; see the README).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildData, BuildDataConfig } from '../training/build-data.ts';
import { parseSimArgs, stories } from './simulate.ts';
import type { RoundReport } from './story.ts';

test('two training rounds and the judging round: users decide, gold only reports, the JSON holds every field', { timeout: 120_000 }, async (t) => {
  const data = mkdtempSync(join(tmpdir(), 'story-data-'));
  try {
    buildData(BuildDataConfig.parse({ out: data, trainDialogues: 300, valDialogues: 120, maxDocsPerSource: 2 }), { log: () => {} });
    const o = parseSimArgs(['--json', '--data', data, '--rounds', '2', '--users', '4', '--judgements-per-round', '40', '--ppo-steps', '5', '--eval-prompts', '12', '--samples-per-prompt', '2', '--min-reward-accuracy', '0', '--minutes', '10']);
    assert.ok(o !== 'help');
    const printed: string[] = [];
    const r = await stories({ ...o, loop: { minScoreGain: -1e9 } }, () => {}, (l) => printed.push(l));
    assert.deepEqual(printed, [], 'one seed: only the pooled line, which the caller prints');
    const { per_seed: _seeds, ...headline } = r;
    t.diagnostic(JSON.stringify(headline));
    for (const x of (r.per_seed as { rounds: RoundReport[] }[])[0]!.rounds) t.diagnostic(JSON.stringify({ ...x, metrics: undefined, reason: x.reason.slice(0, 300) }));

    assert.equal(r.seeds, 1);
    assert.equal(r.gold_in_decisions, false);
    const win = r.gold_win_rate_vs_sft as number;
    const [lo, hi] = r.gold_win_rate_ci95 as [number, number];
    assert.ok(lo <= win && win <= hi && lo >= 0 && hi <= 1, `win ${win} in [${lo}, ${hi}]`);
    assert.equal(typeof r.length_controlled_win_rate, 'number');
    assert.deepEqual(Object.keys(r.parts_delta as object).sort(), ['clean', 'empty', 'format', 'length', 'overlap', 'words']);
    assert.ok((r.kl_to_sft as number) >= 0);
    assert.ok((r.minutes as number) > 0);

    const [seed] = r.per_seed as Record<string, unknown>[];
    assert.equal(seed!.seed, 1);
    assert.equal(seed!.eval_prompts, 12);
    assert.equal(seed!.judgements, 120);
    assert.equal(seed!.gold_win_rate_vs_sft, win, 'one seed: pooled = per seed');
    const rounds = seed!.rounds as RoundReport[];
    assert.deepEqual(rounds.map((x) => [x.round, x.phase]), [[1, 'train'], [2, 'train'], [3, 'judge']]);
    const [train, second, judge] = rounds as [RoundReport, RoundReport, RoundReport];

    // Round 1: the users judged SFT (no candidate yet, no arena); the loop trained and offered a candidate.
    assert.equal(train.head_to_head, 0);
    assert.equal(train.status, 'offered', train.reason);
    assert.deepEqual(train.decisions.map((d) => `${d.by}:${d.action}`), ['proxy:offer']);
    assert.ok(train.rm_eval_accuracy === null || (train.rm_eval_accuracy >= 0 && train.rm_eval_accuracy <= 1));
    // The Bayes ceiling is computed over the reward model's own evaluation pairs (same split, same pairs).
    assert.equal(train.eval_pairs, train.rm_eval_pairs);
    if (train.eval_pairs) assert.ok(train.bayes_ceiling! >= 0.5 && train.bayes_ceiling! <= 1, `ceiling ${train.bayes_ceiling}`);

    // Round 2: every compare was a blind champion-vs-candidate pair; the loop let the arena decide first, on exactly those judgements.
    assert.ok(second.head_to_head > 0, 'the arena share was set once a candidate existed');
    assert.ok(second.arena, `the loop summarised the arena: ${second.reason}`);
    assert.equal(second.arena!.n, second.head_to_head);
    assert.match(second.arena!.candidate, /^policy-/);
    assert.equal(second.decisions[0]!.by, 'arena');
    assert.equal(second.decisions[0]!.action, second.arena!.decision);
    if (second.arena!.decision === 'continue') assert.deepEqual([second.status, second.decisions.length], ['arena', 1], 'undecided: no training');

    // The judging round: the arena decides on the candidate before the users now (the same one, its judgements accumulated, when round 2 left it undecided).
    assert.ok(judge.arena && judge.head_to_head > 0);
    const same = second.arena!.decision === 'continue';
    if (same) assert.equal(judge.arena!.candidate, second.arena!.candidate);
    assert.equal(judge.arena!.n, judge.head_to_head + (same ? second.head_to_head : 0));
    assert.ok(judge.arena!.interval[0]! <= judge.arena!.p! && judge.arena!.p! <= judge.arena!.interval[1]!);
    assert.deepEqual(judge.decisions.map((d) => `${d.by}:${d.action}`), [`arena:${judge.arena!.decision}`]);

    // No decision came from gold; the champion is whatever the users' arena made it.
    const all = rounds.flatMap((x) => x.decisions);
    assert.ok(all.every((d) => ['arena', 'proxy', 'guard'].includes(d.by)), JSON.stringify(all));
    assert.match(String(seed!.champion), judge.arena!.decision === 'promote' || second.arena!.decision === 'promote' ? /^policy-/ : /^sft-/);
    const moves = seed!.champion_moves as { to: string; by_arena: boolean }[];
    assert.ok(moves.every((m) => m.by_arena), `every move of the champion carried the users' arena figures: ${JSON.stringify(moves)}`);
    assert.equal(moves.length, [second, judge].filter((x) => x.arena!.decision === 'promote').length);
    const curve = seed!.curve as { round: number; step: number; kl: number; proxy: number; gold: number }[];
    assert.ok(curve.length >= 2 && curve[0]!.round === 1 && curve.every((p) => [p.kl, p.proxy, p.gold].every(Number.isFinite)), JSON.stringify(curve));
  } finally {
    rmSync(data, { recursive: true, force: true });
  }
});
