/**
 * The model registry: versions (policies and reward models, with their checkpoint, config and
 * metrics), aliases such as `champion` and `candidate`, and the append-only promotion log that
 * records every move of an alias. The database refuses updates and deletes on the log.
 */
import type { Kysely } from 'kysely';
import { z } from 'zod';
import { FeedbackError } from './errors.ts';
import { newId, nowIso } from './ids.ts';
import type { Database, ModelKind, ModelVersion, PromotionLogEntry } from './schema.ts';
import { inTransaction } from './transaction.ts';
import { parseInput } from './validate.ts';

const name = z.string().min(1).max(128);

const versionInput = z.strictObject({
  id: name,
  kind: z.enum(['policy', 'reward']),
  parentId: name.optional(),
  checkpoint: z.string().min(1).max(4096),
  config: z.record(z.string(), z.unknown()).default({}),
  metrics: z.record(z.string(), z.unknown()).default({}),
  notes: z.string().max(10_000).optional(),
  stage: z.enum(['base', 'sft', 'reward', 'policy']).optional(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  runId: name.optional(),
});

const moveInput = z.strictObject({
  alias: name,
  versionId: name,
  actor: z.string().max(128).optional(),
  reason: z.string().max(2000).optional(),
  /** Figures at the moment of the move (e.g. the arena's), merged over the version's metrics in the log. */
  metrics: z.record(z.string(), z.unknown()).optional(),
});

const clearInput = z.strictObject({
  actor: z.string().max(128).optional(),
  reason: z.string().max(2000).optional(),
  metrics: z.record(z.string(), z.unknown()).optional(),
  /** 'reject' (the version was refused) or 'clear' (it moved on, e.g. the candidate was promoted). */
  action: z.enum(['reject', 'clear']).default('reject'),
});

const rollbackInput = z.strictObject({
  alias: name,
  /** An earlier version of the alias to go back to (default: the one before the current). */
  toVersionId: name.optional(),
  actor: z.string().max(128).optional(),
  reason: z.string().max(2000).optional(),
});

/** Input of {@link registerModelVersion}. */
export type ModelVersionInput = z.input<typeof versionInput>;
/** Input of {@link promote}. */
export type PromoteInput = z.input<typeof moveInput>;
/** Options of {@link clearAlias}. */
export type ClearAliasInput = z.input<typeof clearInput>;
/** Input of {@link rollback}. */
export type RollbackInput = z.input<typeof rollbackInput>;

/** Registers a model version. Errors: `duplicate_id`, `unknown_model_version` (parent). */
export async function registerModelVersion(db: Kysely<Database>, input: ModelVersionInput): Promise<ModelVersion> {
  const v = parseInput(versionInput, input);
  return inTransaction(db, async (trx) => {
    if (await getModelVersion(trx, v.id)) throw new FeedbackError('duplicate_id', `model version ${v.id} already exists`);
    if (v.parentId !== undefined && !(await getModelVersion(trx, v.parentId))) {
      throw new FeedbackError('unknown_model_version', `no model version ${v.parentId}`);
    }
    const row: ModelVersion = {
      id: v.id,
      kind: v.kind,
      parent_id: v.parentId ?? null,
      checkpoint: v.checkpoint,
      config_json: JSON.stringify(v.config),
      metrics_json: JSON.stringify(v.metrics),
      notes: v.notes ?? null,
      created_at: nowIso(),
      stage: v.stage ?? null,
      sha256: v.sha256 ?? null,
      run_id: v.runId ?? null,
    };
    await trx.insertInto('model_versions').values(row).execute();
    return row;
  });
}

/** One version, or undefined. */
export async function getModelVersion(db: Kysely<Database>, id: string): Promise<ModelVersion | undefined> {
  return db.selectFrom('model_versions').selectAll().where('id', '=', id).executeTakeFirst();
}

/** Versions, newest first, optionally of one kind. */
export async function listModelVersions(db: Kysely<Database>, filter: { kind?: ModelKind } = {}): Promise<ModelVersion[]> {
  let q = db.selectFrom('model_versions').selectAll();
  if (filter.kind) q = q.where('kind', '=', filter.kind);
  return q.orderBy('created_at', 'desc').orderBy('id', 'desc').execute();
}

/** Merges `metrics` into a version's metrics (evaluation results arrive after registration). */
export async function updateModelMetrics(db: Kysely<Database>, id: string, metrics: Record<string, unknown>): Promise<ModelVersion> {
  return inTransaction(db, async (trx) => {
    const v = await getModelVersion(trx, id);
    if (!v) throw new FeedbackError('unknown_model_version', `no model version ${id}`);
    const metrics_json = JSON.stringify({ ...(JSON.parse(v.metrics_json) as object), ...metrics });
    await trx.updateTable('model_versions').set({ metrics_json }).where('id', '=', id).execute();
    return { ...v, metrics_json };
  });
}

/** The version an alias points at, or undefined when the alias is unset. */
export async function resolveAlias(db: Kysely<Database>, alias: string): Promise<string | undefined> {
  const row = await db.selectFrom('model_aliases').select('version_id').where('alias', '=', alias).executeTakeFirst();
  return row?.version_id;
}

async function moveAlias(
  db: Kysely<Database>,
  alias: string,
  from: string | null,
  to: string,
  action: 'promote' | 'rollback',
  actor: string | undefined,
  reason: string | undefined,
  metrics?: Record<string, unknown>,
): Promise<PromotionLogEntry> {
  const now = nowIso();
  const target = await getModelVersion(db, to);
  if (from === null) await db.insertInto('model_aliases').values({ alias, version_id: to, updated_at: now }).execute();
  else await db.updateTable('model_aliases').set({ version_id: to, updated_at: now }).where('alias', '=', alias).execute();
  const entry: PromotionLogEntry = {
    id: newId(),
    alias,
    from_version_id: from,
    to_version_id: to,
    action,
    actor: actor ?? null,
    reason: reason ?? null,
    created_at: now,
    metrics_json: logMetrics(target?.metrics_json ?? null, metrics),
  };
  await db.insertInto('promotion_log').values(entry).execute();
  return entry;
}

function logMetrics(versionMetrics: string | null, extra: Record<string, unknown> | undefined): string | null {
  if (extra === undefined) return versionMetrics;
  return JSON.stringify({ ...(versionMetrics === null ? {} : (JSON.parse(versionMetrics) as object)), ...extra });
}

/**
 * Points `alias` at `versionId` and logs the move.
 * Errors: `unknown_model_version`.
 * @example
 * await promote(db, { alias: 'champion', versionId: 'ppo-3', actor: 'admin', reason: 'won eval' });
 */
export async function promote(db: Kysely<Database>, input: PromoteInput): Promise<PromotionLogEntry> {
  const p = parseInput(moveInput, input);
  return inTransaction(db, async (trx) => {
    if (!(await getModelVersion(trx, p.versionId))) throw new FeedbackError('unknown_model_version', `no model version ${p.versionId}`);
    const from = (await resolveAlias(trx, p.alias)) ?? null;
    return moveAlias(trx, p.alias, from, p.versionId, 'promote', p.actor, p.reason, p.metrics);
  });
}

/**
 * Unsets `alias` and logs it: action 'reject' (default; the version was refused) or 'clear'. In
 * the log row `from_version_id` and `to_version_id` are both the version the alias held; its
 * metrics are the version's merged with `metrics` (e.g. `{ arena: summary }`).
 * Errors: `unknown_alias`.
 * @example
 * await clearAlias(db, 'candidate', { actor: 'online-loop', reason: 'loses head to head', metrics: { arena } });
 */
export async function clearAlias(db: Kysely<Database>, alias: string, input: ClearAliasInput = {}): Promise<PromotionLogEntry> {
  const a = parseInput(name, alias);
  const c = parseInput(clearInput, input);
  return inTransaction(db, async (trx) => {
    const current = await resolveAlias(trx, a);
    if (current === undefined) throw new FeedbackError('unknown_alias', `alias ${a} is not set`);
    await trx.deleteFrom('model_aliases').where('alias', '=', a).execute();
    const target = await getModelVersion(trx, current);
    const entry: PromotionLogEntry = {
      id: newId(),
      alias: a,
      from_version_id: current,
      to_version_id: current,
      action: c.action,
      actor: c.actor ?? null,
      reason: c.reason ?? null,
      created_at: nowIso(),
      metrics_json: logMetrics(target?.metrics_json ?? null, c.metrics),
    };
    await trx.insertInto('promotion_log').values(entry).execute();
    return entry;
  });
}

/**
 * Where {@link rollback} would move `alias`: `toVersionId` if the alias held it before, else the
 * version it held before its current one was promoted. Errors: `unknown_alias`,
 * `nothing_to_roll_back`, `unknown_model_version` (a `toVersionId` the alias never held).
 */
export async function rollbackTarget(db: Kysely<Database>, alias: string, toVersionId?: string): Promise<{ current: string; previous: string }> {
  const current = await resolveAlias(db, alias);
  if (current === undefined) throw new FeedbackError('unknown_alias', `alias ${alias} is not set`);
  if (toVersionId !== undefined) {
    const held = await db.selectFrom('promotion_log').select('id').where('alias', '=', alias).where('to_version_id', '=', toVersionId).executeTakeFirst();
    if (!held || toVersionId === current) throw new FeedbackError('unknown_model_version', `alias ${alias} never held ${toVersionId} before its current version`);
    return { current, previous: toVersionId };
  }
  const promotion = await db
    .selectFrom('promotion_log')
    .select('from_version_id')
    .where('alias', '=', alias)
    .where('action', '=', 'promote')
    .where('to_version_id', '=', current)
    .orderBy('id', 'desc')
    .executeTakeFirst();
  const previous = promotion?.from_version_id;
  if (!previous) throw new FeedbackError('nothing_to_roll_back', `alias ${alias} has no earlier version`);
  return { current, previous };
}

/**
 * Moves `alias` back to an earlier version (`toVersionId`, or the version it held before its
 * current one was promoted; repeated rollbacks walk further back) and logs it as a rollback.
 * Errors: `unknown_alias`, `nothing_to_roll_back`, `unknown_model_version`.
 */
export async function rollback(db: Kysely<Database>, input: RollbackInput): Promise<PromotionLogEntry> {
  const r = parseInput(rollbackInput, input);
  return inTransaction(db, async (trx) => {
    const { current, previous } = await rollbackTarget(trx, r.alias, r.toVersionId);
    return moveAlias(trx, r.alias, current, previous, 'rollback', r.actor, r.reason);
  });
}

/** The promotion log, oldest first, optionally for one alias. */
export async function listPromotions(db: Kysely<Database>, filter: { alias?: string } = {}): Promise<PromotionLogEntry[]> {
  let q = db.selectFrom('promotion_log').selectAll();
  if (filter.alias) q = q.where('alias', '=', filter.alias);
  return q.orderBy('id').execute();
}
