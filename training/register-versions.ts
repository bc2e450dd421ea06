/**
 * Checkpoints into the model registry. {@link registerCheckpointVersion} is the one way a
 * checkpoint becomes a model version (id `<directory name>-<sha256[:12]>`, the server's
 * convention, with its stage, kind, sha256, config and metrics); the loop and the pipeline both
 * use it. {@link registerPipelineVersions} registers the offline pipeline's base and SFT
 * checkpoints, points the `sft` alias (the KL reference) at the SFT version, and `champion` too
 * when nothing is served yet. Already registered versions are left as they are.
 */
import { resolve } from 'node:path';
import type { Kysely } from 'kysely';
import { readCheckpointMeta, versionId, type CheckpointMeta, type Stage } from '../model/checkpoint.ts';
import { getModelVersion, promote, registerModelVersion, resolveAlias, type Database, type FeedbackStore } from '../feedback/index.ts';
import { ALIAS } from '../feedback/aliases.ts';

/** What {@link registerCheckpointVersion} records beside the checkpoint's own metadata. */
export interface CheckpointVersionInput {
  dir: string;
  /** The checkpoint's metadata (read from `dir` when omitted). */
  meta?: CheckpointMeta;
  /** Default: the checkpoint's stage. */
  stage?: Stage;
  parentId?: string;
  runId?: string;
  /** Default: the checkpoint's metrics. */
  metrics?: Record<string, unknown>;
  notes?: string;
}

/**
 * Registers the checkpoint in `dir` as a model version unless that version exists, and returns
 * its id. Another process registering it at the same moment is not an error.
 * @example
 * const id = await registerCheckpointVersion(db, { dir: 'checkpoints/policy-x', parentId: champion, runId });
 */
export async function registerCheckpointVersion(db: Kysely<Database>, v: CheckpointVersionInput): Promise<string> {
  const meta = v.meta ?? readCheckpointMeta(v.dir);
  const id = versionId(v.dir, meta.sha256);
  if (await getModelVersion(db, id)) return id;
  await registerModelVersion(db, {
    id,
    kind: meta.kind,
    stage: v.stage ?? meta.stage,
    sha256: meta.sha256,
    parentId: v.parentId,
    runId: v.runId,
    checkpoint: resolve(v.dir),
    config: { ...meta.config },
    metrics: v.metrics ?? meta.metrics,
    notes: v.notes,
  }).catch((err: unknown) => {
    if ((err as { code?: string }).code !== 'duplicate_id') throw err;
  });
  return id;
}

export async function registerPipelineVersions(store: FeedbackStore, dirs: { base: string; sft: string }): Promise<{ base: string; sft: string }> {
  const ids: Record<string, string> = {};
  let parent: string | undefined;
  for (const [stage, dir] of [['base', dirs.base], ['sft', dirs.sft]] as const) {
    const meta = readCheckpointMeta(dir);
    ids[stage] = await registerCheckpointVersion(store.db, { dir, meta, stage, parentId: parent, notes: `published by the pipeline (step ${meta.step})` });
    parent = ids[stage];
  }
  if ((await resolveAlias(store.db, ALIAS.sft)) !== ids.sft) await promote(store.db, { alias: ALIAS.sft, versionId: ids.sft!, actor: 'pipeline', reason: 'new SFT reference from the pipeline' });
  if (!(await resolveAlias(store.db, ALIAS.champion))) await promote(store.db, { alias: ALIAS.champion, versionId: ids.sft!, actor: 'pipeline', reason: 'first policy to serve' });
  return { base: ids.base!, sft: ids.sft! };
}
