/**
 * Registers checkpoints made by the offline pipeline (base, SFT) as model versions in the feedback
 * store, so every checkpoint the project makes is in the registry with its stage, parent, sha256
 * and metrics. Points the `sft` alias (the KL reference) at the SFT version, and `champion` too
 * when nothing is served yet. Already registered versions are left as they are.
 */
import { resolve } from 'node:path';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { getModelVersion, promote, registerModelVersion, resolveAlias, type FeedbackStore } from '../feedback/index.ts';

export async function registerPipelineVersions(store: FeedbackStore, dirs: { base: string; sft: string }): Promise<{ base: string; sft: string }> {
  const ids: Record<string, string> = {};
  let parent: string | undefined;
  for (const [stage, dir] of [['base', dirs.base], ['sft', dirs.sft]] as const) {
    const meta = readCheckpointMeta(dir);
    const id = versionId(dir, meta.sha256);
    if (!(await getModelVersion(store.db, id))) {
      await registerModelVersion(store.db, {
        id,
        kind: meta.kind,
        stage,
        sha256: meta.sha256,
        parentId: parent,
        checkpoint: resolve(dir),
        config: { ...meta.config },
        metrics: meta.metrics,
        notes: `published by the pipeline (step ${meta.step})`,
      });
    }
    ids[stage] = id;
    parent = id;
  }
  if ((await resolveAlias(store.db, 'sft')) !== ids.sft) await promote(store.db, { alias: 'sft', versionId: ids.sft!, actor: 'pipeline', reason: 'new SFT reference from the pipeline' });
  if (!(await resolveAlias(store.db, 'champion'))) await promote(store.db, { alias: 'champion', versionId: ids.sft!, actor: 'pipeline', reason: 'first policy to serve' });
  return { base: ids.base!, sft: ids.sft! };
}
