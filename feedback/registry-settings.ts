/**
 * Registry settings shared by every process on the store: the canary share (of new
 * conversations served by `candidate`), the arena share (of `compare` requests answered by
 * champion and candidate, blind) and whether the online loop is paused. One JSON value per
 * key in `registry_settings`; on PostgreSQL a change sends `NOTIFY registry_changed`.
 */
import type { Kysely } from 'kysely';
import { nowIso } from './ids.ts';
import type { Database } from './schema.ts';

/** Known settings and their types. */
export interface RegistrySettings {
  /** Share in [0, 1] of new conversations decoded by the `candidate` alias. */
  canary_share: number;
  /** When true the online loop must not start a new iteration. */
  loop_paused: boolean;
  /** Share in [0, 1] of `compare` requests answered head to head, champion against candidate (the arena). */
  arena_share: number;
}

export const DEFAULT_SETTINGS: Readonly<RegistrySettings> = Object.freeze({ canary_share: 0, loop_paused: false, arena_share: 0 });

/** Every setting (defaults for those never set). */
export async function getRegistrySettings(db: Kysely<Database>): Promise<RegistrySettings> {
  const rows = await db.selectFrom('registry_settings').selectAll().execute();
  const out: RegistrySettings = { ...DEFAULT_SETTINGS };
  for (const r of rows) if (r.key in out) (out as unknown as Record<string, unknown>)[r.key] = JSON.parse(r.value_json);
  return out;
}

/** Sets one setting (upsert). */
export async function setRegistrySetting<K extends keyof RegistrySettings>(db: Kysely<Database>, key: K, value: RegistrySettings[K]): Promise<void> {
  const row = { key, value_json: JSON.stringify(value), updated_at: nowIso() };
  await db
    .insertInto('registry_settings')
    .values(row)
    .onConflict((oc) => oc.column('key').doUpdateSet({ value_json: row.value_json, updated_at: row.updated_at }))
    .execute();
}

/**
 * Whether the online loop is paused: the one check the loop makes before each iteration.
 * @example
 * if (await isLoopPaused(db)) return { status: 'skipped', reason: 'paused by the admin' };
 */
export async function isLoopPaused(db: Kysely<Database>): Promise<boolean> {
  return (await getRegistrySettings(db)).loop_paused;
}
