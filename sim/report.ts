/**
 * The figures of the final comparison (champion vs SFT on held-out prompts), per seed and pooled
 * over seeds, as the last JSON line of `npm run simulate -- --json` carries them:
 *
 *   gold_win_rate_vs_sft     mean over prompts of the prompt's win (its samples, ties ½)
 *   gold_win_rate_ci95       paired bootstrap over prompts (`stats.ts`); pooled: over every
 *                            (seed, prompt) unit
 *   length_controlled_win_rate  the arena's length-controlled win rate (a logistic model with the
 *                            word-count difference as covariate, evaluated at equal length) of the
 *                            same champion-vs-SFT outcomes
 *   length_controlled_ci95   its bootstrap 95% interval over (seed, prompt) units, the samples
 *                            of a prompt kept together (`clusterBootstrap`, 1000 resamples)
 *   parts_delta              champion − SFT, mean of each rubric part (and of the length in words)
 */
import { lengthControlledWinRate, type ArenaOutcome } from '../feedback/arena.ts';
import { PART_NAMES, type Comparison, type RubricParts } from './compare.ts';
import { clusterBootstrap, mean, pairedBootstrap, promptWin, round3 } from './stats.ts';

export interface ComparisonFigures {
  gold_win_rate_vs_sft: number | null;
  gold_win_rate_ci95: [number | null, number | null];
  length_controlled_win_rate: number | null;
  length_controlled_ci95: [number | null, number | null];
  parts_delta: Record<keyof RubricParts, number | null>;
  gold: number | null;
  gold_sft: number | null;
}

/** The champion's outcomes against SFT, one per paired sample, in the arena's terms. */
export function outcomes(cmp: Comparison): ArenaOutcome[] {
  return promptOutcomes(cmp).flat();
}

/** The same outcomes grouped by prompt. */
function promptOutcomes(cmp: Comparison): ArenaOutcome[][] {
  return cmp.prompts.map((p) =>
    p.goldA.map((a, k) => {
      const b = p.goldB[k]!;
      return { outcome: a > b ? 'win' : a < b ? 'loss' : 'tie', lengthDiff: p.wordsA[k]! - p.wordsB[k]!, raterId: 'gold', createdAt: '' };
    }),
  );
}

/** The figures of comparisons pooled together (one comparison = one seed's). */
export function comparisonFigures(cmps: Comparison | readonly Comparison[], seed: number): ComparisonFigures {
  const all = Array.isArray(cmps) ? (cmps as readonly Comparison[]) : [cmps as Comparison];
  const wins = all.flatMap((c) => c.prompts.map((p) => promptWin(p.goldA, p.goldB)));
  const boot = pairedBootstrap(wins, { seed, resamples: 2000 });
  const delta = Object.fromEntries([...PART_NAMES, 'words' as const].map((k) => [k, round3(mean(all.map((c) => c.partsA[k] - c.partsB[k])))])) as Record<keyof RubricParts, number | null>;
  const golds = (side: 'goldA' | 'goldB'): number => mean(all.flatMap((c) => c.prompts.flatMap((p) => p[side])));
  return {
    gold_win_rate_vs_sft: round3(boot.mean),
    gold_win_rate_ci95: [round3(boot.interval[0]), round3(boot.interval[1])],
    length_controlled_win_rate: round3(lengthControlledWinRate(all.flatMap(outcomes)).p),
    length_controlled_ci95: clusterBootstrap(all.flatMap(promptOutcomes), (xs) => lengthControlledWinRate(xs).p, { seed }).map(round3) as [number | null, number | null],
    parts_delta: delta,
    gold: round3(golds('goldA')),
    gold_sft: round3(golds('goldB')),
  };
}
