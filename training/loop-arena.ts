/**
 * Step 0 of an iteration: the users' verdict on the candidate in the arena. Runs `decideArena`
 * (applied when `autoPromote`: the champion moves only here, on the users' head-to-head
 * judgements). While the candidate is undecided (or decided and waiting for the admin to apply
 * it) the iteration returns status 'arena' and trains nothing: the next reward model should learn
 * from the arena's head-to-head pairs, the freshest on-policy judgements there are (replies of
 * the very candidate the proxy preferred, against the champion), and a new candidate could not be
 * judged before this one is. A verdict once applied is logged and the iteration goes on.
 */
import { getRegistrySettings } from '../feedback/index.ts';
import { decideArena, type ArenaSummary } from '../feedback/arena.ts';
import { arenaStep, describeArena } from './loop-gates.ts';
import { finite } from './loop-eval.ts';
import type { IterationResult, LoopOptions, OnlineLoopConfig } from './loop-config.ts';
import type { FeedbackStore } from '../feedback/index.ts';

/** The arena's figures as run metrics. */
export function arenaMetrics(s: ArenaSummary): Record<string, number> {
  return finite({
    arenaN: s.n, arenaWins: s.wins, arenaLosses: s.losses, arenaTies: s.ties, arenaBothBad: s.bothBad, arenaP: s.p, arenaLow: s.interval[0], arenaHigh: s.interval[1],
    arenaLengthControlledP: s.lengthControlled.p, arenaLengthCoef: s.lengthControlled.lengthCoef,
  });
}

/** `wait` with the iteration's result while the arena holds an undecided candidate, else `go` with what was decided (if anything). */
export async function arenaGate(store: FeedbackStore, cfg: OnlineLoopConfig, o: LoopOptions): Promise<{ wait: IterationResult } | { go: string; arena?: ArenaSummary }> {
  const log = o.log ?? ((l: string) => console.error(l));
  const r = await decideArena(store.db, { apply: cfg.autoPromote, actor: 'online-loop', alpha: cfg.arenaAlpha, maxJudgements: cfg.arenaMaxJudgements });
  const step = arenaStep(r);
  if (!r) return { go: step.reason };
  log(`loop: arena: ${describeArena(r.summary)}; length-controlled P ${r.summary.lengthControlled.p.toFixed(3)}`);
  if (step.action === 'train') {
    log(`loop: ${step.reason}`);
    return { go: step.reason, arena: r.summary };
  }
  let reason = step.reason;
  const { arena_share } = await getRegistrySettings(store.db);
  if (!(arena_share > 0)) reason += '; the arena share is 0, so no head-to-head judgements arrive: set it with PUT /admin/arena {share}';
  return { wait: { status: 'arena', reason, arena: r.summary, metrics: arenaMetrics(r.summary) } };
}
