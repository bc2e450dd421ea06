/**
 * Training runs (pretrain, SFT, reward model, PPO, the online loop, evaluations) and their
 * metrics over time: one value per (run, metric name, step).
 */
import type { Kysely } from 'kysely';
import { z } from 'zod';
import { FeedbackError } from './errors.ts';
import { newId, nowIso } from './ids.ts';
import type { Database, RunKind, RunMetric, RunStatus, TrainingRun } from './schema.ts';
import { parseInput } from './validate.ts';

const startInput = z.strictObject({
  kind: z.enum(['pretrain', 'sft', 'reward', 'ppo', 'loop', 'eval']),
  config: z.record(z.string(), z.unknown()).default({}),
  baseVersionId: z.string().min(1).max(128).optional(),
});

const finishInput = z.strictObject({
  status: z.enum(['succeeded', 'failed', 'cancelled']),
  outputVersionId: z.string().min(1).max(128).optional(),
  error: z.string().max(10_000).optional(),
});

/** Input of {@link startRun}. */
export type StartRunInput = z.input<typeof startInput>;
/** Input of {@link finishRun}. */
export type FinishRunInput = z.input<typeof finishInput>;

/** Opens a run in status `running`. */
export async function startRun(db: Kysely<Database>, input: StartRunInput): Promise<TrainingRun> {
  const r = parseInput(startInput, input);
  const row: TrainingRun = {
    id: newId(),
    kind: r.kind,
    status: 'running',
    config_json: JSON.stringify(r.config),
    base_version_id: r.baseVersionId ?? null,
    output_version_id: null,
    error: null,
    started_at: nowIso(),
    finished_at: null,
  };
  await db.insertInto('training_runs').values(row).execute();
  return row;
}

/** Closes a run with its final status. Errors: `unknown_run`. */
export async function finishRun(db: Kysely<Database>, runId: string, input: FinishRunInput): Promise<void> {
  const f = parseInput(finishInput, input);
  const result = await db
    .updateTable('training_runs')
    .set({ status: f.status, output_version_id: f.outputVersionId ?? null, error: f.error ?? null, finished_at: nowIso() })
    .where('id', '=', runId)
    .executeTakeFirst();
  if (result.numUpdatedRows === 0n) throw new FeedbackError('unknown_run', `no run ${runId}`);
}

/**
 * Records metric values at a step; a value logged again for the same step replaces the old one.
 * Non-finite values are refused (`invalid_input`). Errors: `unknown_run`.
 * @example
 * await logMetrics(db, run.id, 120, { reward: 0.41, kl: 0.03 });
 */
export async function logMetrics(db: Kysely<Database>, runId: string, step: number, values: Record<string, number>): Promise<void> {
  if (!Number.isInteger(step) || step < 0) throw new FeedbackError('invalid_input', `step must be a non-negative integer, got ${step}`);
  const entries = Object.entries(values);
  for (const [name, value] of entries) {
    if (!Number.isFinite(value)) throw new FeedbackError('invalid_input', `metric ${name} is not a finite number`);
  }
  if (entries.length === 0) return;
  if (!(await getRun(db, runId))) throw new FeedbackError('unknown_run', `no run ${runId}`);
  const created_at = nowIso();
  await db
    .insertInto('run_metrics')
    .values(entries.map(([name, value]) => ({ run_id: runId, step, name, value, created_at })))
    .onConflict((oc) => oc.columns(['run_id', 'name', 'step']).doUpdateSet((eb) => ({ value: eb.ref('excluded.value') })))
    .execute();
}

/** One run, or undefined. */
export async function getRun(db: Kysely<Database>, runId: string): Promise<TrainingRun | undefined> {
  return db.selectFrom('training_runs').selectAll().where('id', '=', runId).executeTakeFirst();
}

/** Runs, newest first, optionally filtered. */
export async function listRuns(db: Kysely<Database>, filter: { kind?: RunKind; status?: RunStatus } = {}): Promise<TrainingRun[]> {
  let q = db.selectFrom('training_runs').selectAll();
  if (filter.kind) q = q.where('kind', '=', filter.kind);
  if (filter.status) q = q.where('status', '=', filter.status);
  return q.orderBy('id', 'desc').execute();
}

/** A run's metrics ordered by name then step, optionally only some names and from a step on. */
export async function getMetrics(
  db: Kysely<Database>,
  runId: string,
  filter: { names?: string[]; sinceStep?: number } = {},
): Promise<RunMetric[]> {
  let q = db.selectFrom('run_metrics').selectAll().where('run_id', '=', runId);
  if (filter.names && filter.names.length > 0) q = q.where('name', 'in', filter.names);
  if (filter.sinceStep !== undefined) q = q.where('step', '>=', filter.sinceStep);
  return q.orderBy('name').orderBy('step').execute();
}
