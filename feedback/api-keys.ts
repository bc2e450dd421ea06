/**
 * API keys: each names a user; the admin creates, lists and revokes them.
 *
 * - A key is `rk_` + 32 random bytes (base64url), shown once by {@link createApiKey} and never
 *   stored: the store keeps its sha256. A slow, salted password hash is for guessable secrets; a
 *   256-bit random key cannot be guessed or looked up in a dictionary, so one fast unsalted hash
 *   is enough and lets {@link findApiKey} find a key with one indexed lookup.
 * - Revoking a key (`revoked_at`) stops it at once; revoking with `excludeFromTraining` also
 *   marks every judgement made with it `excluded_from_training = 1` (a poisoning response), which
 *   every training and export query filters out.
 * - The key id (`key_…`), never the key, is what conversations and judgements record.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { z } from 'zod';
import { FeedbackError } from './errors.ts';
import { newId, nowIso } from './ids.ts';
import type { ApiKey, Database } from './schema.ts';
import { inTransaction } from './transaction.ts';
import { parseInput } from './validate.ts';

export const API_KEY_PREFIX = 'rk_';

/** A key's record as listed (no hash). */
export interface ApiKeyInfo {
  id: string;
  userId: string;
  name: string | null;
  /** The first characters of the key, to tell keys apart. */
  prefix: string;
  createdAt: string;
  revokedAt: string | null;
  revokedBy: string | null;
  revokeReason: string | null;
  excludedFromTraining: boolean;
}

const createInput = z.strictObject({
  userId: z.string().min(1).max(128).regex(/^[\w.@:-]+$/, 'letters, digits and . _ @ : - only').optional(),
  name: z.string().max(200).optional(),
});

/** sha256 (hex) of a key: what the store keeps. */
export function hashApiKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

function info(r: ApiKey): ApiKeyInfo {
  return {
    id: r.id,
    userId: r.user_id,
    name: r.name,
    prefix: r.prefix,
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
    revokedBy: r.revoked_by,
    revokeReason: r.revoke_reason,
    excludedFromTraining: r.excluded_from_training === 1,
  };
}

/**
 * Makes a key for `userId` (default: a user named after the key's id). The plain key is in the
 * result and nowhere else.
 * @example const { key, info } = await createApiKey(db, { userId: 'alice', name: 'laptop' });
 */
export async function createApiKey(db: Kysely<Database>, input: z.input<typeof createInput> = {}): Promise<{ key: string; info: ApiKeyInfo }> {
  const o = parseInput(createInput, input);
  const id = `key_${newId()}`;
  const key = API_KEY_PREFIX + randomBytes(32).toString('base64url');
  const row: ApiKey = {
    id,
    user_id: o.userId ?? `user_${id.slice(4)}`,
    name: o.name ?? null,
    key_hash: hashApiKey(key),
    prefix: key.slice(0, API_KEY_PREFIX.length + 6),
    created_at: nowIso(),
    revoked_at: null,
    revoked_by: null,
    revoke_reason: null,
    excluded_from_training: 0,
  };
  await db.insertInto('api_keys').values(row).execute();
  return { key, info: info(row) };
}

/** Every key, newest first. */
export async function listApiKeys(db: Kysely<Database>): Promise<ApiKeyInfo[]> {
  return (await db.selectFrom('api_keys').selectAll().orderBy('id', 'desc').execute()).map(info);
}

/** The live (not revoked) key `key`, or undefined. */
export async function findApiKey(db: Kysely<Database>, key: string): Promise<ApiKeyInfo | undefined> {
  if (!key.startsWith(API_KEY_PREFIX) || key.length > 128) return undefined;
  const r = await db.selectFrom('api_keys').selectAll().where('key_hash', '=', hashApiKey(key)).where('revoked_at', 'is', null).executeTakeFirst();
  return r ? info(r) : undefined;
}

/** The key with id `id` (revoked or not), or undefined. */
export async function getApiKey(db: Kysely<Database>, id: string): Promise<ApiKeyInfo | undefined> {
  const r = await db.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirst();
  return r ? info(r) : undefined;
}

/** Whether any key was ever made (then every door requires one, even after the last is revoked). */
export async function anyApiKeys(db: Kysely<Database>): Promise<boolean> {
  return (await db.selectFrom('api_keys').select('id').limit(1).executeTakeFirst()) !== undefined;
}

/**
 * Revokes a key (idempotent: a revoked key stays revoked with its first reason). With
 * `excludeFromTraining`, every judgement made with the key is excluded from training; returns
 * how many judgement rows that marked. Throws `unknown_api_key`.
 */
export async function revokeApiKey(
  db: Kysely<Database>,
  id: string,
  o: { actor: string; reason?: string; excludeFromTraining?: boolean },
): Promise<{ info: ApiKeyInfo; excludedJudgements: number }> {
  const before = await getApiKey(db, id);
  if (!before) throw new FeedbackError('unknown_api_key', `no API key ${id}`);
  return inTransaction(db, async (trx) => {
    if (!before.revokedAt) {
      await trx.updateTable('api_keys').set({ revoked_at: nowIso(), revoked_by: o.actor, revoke_reason: o.reason ?? null }).where('id', '=', id).execute();
    }
    let excludedJudgements = 0;
    if (o.excludeFromTraining) {
      await trx.updateTable('api_keys').set({ excluded_from_training: 1 }).where('id', '=', id).execute();
      for (const table of ['thumbs', 'comparisons', 'rankings'] as const) {
        const r = await trx.updateTable(table).set({ excluded_from_training: 1 }).where('key_id', '=', id).where('excluded_from_training', '=', 0).executeTakeFirst();
        excludedJudgements += Number(r.numUpdatedRows);
      }
    }
    const after = await trx.selectFrom('api_keys').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
    return { info: info(after), excludedJudgements };
  });
}
