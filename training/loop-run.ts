/**
 * An iteration's run and what it carries over: the resumable run a killed process left
 * `running`, the run directory of its optimiser checkpoints, the β the last round ended with, and
 * the last verdict on a candidate (what the over-optimisation guard reads).
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { GPT } from '../model/gpt.ts';
import type { LoadedCheckpoint } from '../model/checkpoint.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { finishRun, getMetrics, listRuns, type FeedbackStore, type Database } from '../feedback/index.ts';
import type { Kysely } from 'kysely';
import { ALIAS } from '../feedback/aliases.ts';
import type { DataWindow } from '../feedback/judgement-window.ts';
import type { ArenaFigures, CandidateVerdict, PushKnobs } from './loop-gates.ts';
import type { LoopOptions, OnlineLoopConfig } from './loop-config.ts';

/** Everything the steps of one iteration share. */
export interface IterationContext {
  store: FeedbackStore;
  db: Kysely<Database>;
  cfg: OnlineLoopConfig;
  o: LoopOptions;
  log: (line: string) => void;
  runId: string;
  stamp: string;
  /** Where the optimiser's resumable step checkpoints go. */
  runDir: string;
  window: DataWindow;
  tok: Tokenizer;
  sftCk: LoadedCheckpoint;
  sftVersion: string;
  championVersion: string;
  championDir: string;
  /** How hard this iteration pushes (after the over-optimisation guard). */
  push: PushKnobs;
  /** Registers a model to be disposed when the iteration ends. */
  own<T extends GPT>(m: T): T;
}

/** The run directory of an iteration's resumable optimiser state (`step-NNNNNN` checkpoints and a `latest` pointer). */
export function ppoRunDir(checkpoints: string, stamp: string): string {
  return join(checkpoints, `run-${stamp}`);
}

/** The step checkpoint `latest` points at, if it is complete. */
export function latestPpoCheckpoint(runDir: string): string | undefined {
  const pointer = join(runDir, 'latest');
  if (!existsSync(pointer)) return undefined;
  const dir = join(runDir, readFileSync(pointer, 'utf8').trim());
  return existsSync(dir) ? dir : undefined;
}

/** Removes temporary directories a killed process left behind (`.tmp-*`) and step checkpoints other than `keep`. */
export function pruneRunDir(runDir: string, keep?: string): void {
  if (!existsSync(runDir)) return;
  for (const name of readdirSync(runDir)) {
    if (name.startsWith('.tmp-') || name.includes('.tmp-') || (name.startsWith('step-') && name !== keep)) rmSync(join(runDir, name), { recursive: true, force: true });
  }
}

/** Removes the temporary directories of `stamp`'s checkpoints a killed process left in `dir`. */
export function pruneTemp(dir: string, stamp: string): void {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) if (name.startsWith('.tmp-') && name.includes(stamp)) rmSync(join(dir, name), { recursive: true, force: true });
}

/** A run left `running`, with what it needs to continue. */
export interface ResumePoint {
  runId: string;
  stamp: string;
  window: DataWindow;
  baseVersionId: string;
  push?: PushKnobs;
}

/** The run a dead process left `running` (the newest; older ones are closed as abandoned). */
export async function findResumable(store: FeedbackStore, log: (l: string) => void): Promise<ResumePoint | undefined> {
  const running = await listRuns(store.db, { kind: 'loop', status: 'running' });
  let found: ResumePoint | undefined;
  for (const r of running) {
    const c = JSON.parse(r.config_json) as { stamp?: unknown; dataWindow?: DataWindow; push?: PushKnobs };
    if (!found && typeof c.stamp === 'string' && c.dataWindow && r.base_version_id) {
      found = { runId: r.id, stamp: c.stamp, window: c.dataWindow, baseVersionId: r.base_version_id, push: c.push };
      continue;
    }
    log(`loop: closing run ${r.id}, left running by a process that stopped`);
    await finishRun(store.db, r.id, { status: 'failed', error: 'abandoned: the process running it stopped' });
  }
  return found;
}

/** β the last successful round ended with (carried over), else the configured one. */
export async function carriedKlCoef(db: Kysely<Database>, configured: number): Promise<number> {
  const last = (await listRuns(db, { kind: 'loop', status: 'succeeded' }))[0];
  if (!last) return configured;
  const m = await getMetrics(db, last.id, { names: ['final_kl_coef'] });
  const v = m[m.length - 1]?.value;
  return v !== undefined && Number.isFinite(v) && v > 0 ? v : configured;
}

/**
 * The last verdict on a candidate in the promotion log: a rejection (the `candidate` alias
 * cleared with action 'reject', by the arena or the admin) or a promotion to champion. The loop's
 * own moves of the `candidate` alias (offering a candidate) and plain clears are not verdicts.
 * The arena's figures come from the log row's metrics (`{ arena: ArenaSummary }`).
 */
export async function lastCandidateVerdict(db: Kysely<Database>): Promise<CandidateVerdict | undefined> {
  const rows = await db
    .selectFrom('promotion_log')
    .selectAll()
    .where((eb) => eb.or([eb.and([eb('alias', '=', ALIAS.candidate), eb('action', '=', 'reject')]), eb.and([eb('alias', '=', ALIAS.champion), eb('action', '=', 'promote')])]))
    .orderBy('id', 'desc')
    .limit(1)
    .execute();
  const r = rows[0];
  if (!r) return undefined;
  const action = r.action === 'reject' ? 'reject' : 'promote';
  const arena = ((r.metrics_json ? JSON.parse(r.metrics_json) : {}) as { arena?: Partial<ArenaFigures> }).arena;
  return {
    action,
    at: r.created_at,
    versionId: action === 'reject' ? (r.from_version_id ?? r.to_version_id) : r.to_version_id,
    ...(arena && typeof arena.p === 'number' ? { p: arena.p } : {}),
    ...(arena && Array.isArray(arena.interval) && arena.interval.length === 2 ? { interval: [Number(arena.interval[0]), Number(arena.interval[1])] as [number, number] } : {}),
    ...(arena && typeof arena.n === 'number' ? { n: arena.n } : {}),
  };
}
