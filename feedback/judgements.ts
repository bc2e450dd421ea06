/**
 * Storing judgements: thumbs, pairwise comparisons and rankings, in batches.
 *
 * A batch is validated as a whole (one lookup of every referenced message and idempotency key),
 * then written with a few multi-row statements; each item gets its own result, so one bad item
 * never blocks the others, and a refused item writes nothing.
 *
 * Changing one's mind: a judgement by the same rater on the same subject (the same message for
 * a thumb, the same pair of replies for a comparison, the same set of replies for a ranking)
 * supersedes the earlier one: the new row is `current`, the old ones stay as history.
 */
import { PostgresAdapter, sql, type Kysely } from 'kysely';
import { FeedbackError, type FeedbackErrorCode } from './errors.ts';
import { newId, nowIso } from './ids.ts';
import { parseJudgement, payloadHash, type JudgementInput } from './judgement-input.ts';
import type {
  Database,
  JudgementKind,
  NewComparison,
  NewRanking,
  NewThumb,
  RankingItemTable,
} from './schema.ts';
import { inTransaction } from './transaction.ts';

/** What happened to one submitted judgement. */
export type JudgementResult =
  | {
      ok: true;
      kind: JudgementKind;
      id: string;
      duplicate: boolean;
      /** A comparison of an arena pair: the model version that wrote `a` and the one that wrote `b`, told once the judgement is stored. */
      revealed?: { a: string; b: string };
    }
  | { ok: false; error: { code: FeedbackErrorCode; message: string } };

interface MessageFacts {
  role: string;
  parent_id: string | null;
  /** Whose conversation it is in. */
  user_id: string | null;
  /** The version that generated it, when the reply was decoded as one side of an arena pair. */
  arenaVersion: string | null;
}

interface Planned {
  index: number;
  kind: JudgementKind;
  id: string;
  hash: string;
  scopeKey: string | null;
  subjectKey: string;
  row: NewThumb | NewComparison | NewRanking;
  items: RankingItemTable[];
  revealed?: { a: string; b: string };
}

const CHUNK = 200;

function chunks<T>(xs: readonly T[], size = CHUNK): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += size) out.push(xs.slice(i, i + size));
  return out;
}

function fail(err: unknown): JudgementResult {
  if (err instanceof FeedbackError) return { ok: false, error: err.toJSON() };
  throw err;
}

function referencedIds(j: JudgementInput): string[] {
  if (j.kind === 'thumb') return [j.messageId];
  if (j.kind === 'comparison') return [j.a, j.b];
  return j.candidates;
}

async function lookupMessages(db: Kysely<Database>, ids: string[]): Promise<Map<string, MessageFacts>> {
  const found = new Map<string, MessageFacts>();
  for (const part of chunks([...new Set(ids)], 500)) {
    const rows = await db
      .selectFrom('messages as m')
      .innerJoin('conversations as c', 'c.id', 'm.conversation_id')
      .leftJoin('generations as g', 'g.message_id', 'm.id')
      .select(['m.id', 'm.role', 'm.parent_id', 'c.user_id', 'g.model_version_id', 'g.params_json'])
      .where('m.id', 'in', part)
      .execute();
    for (const r of rows) {
      const arena = r.params_json !== null && (JSON.parse(r.params_json) as { source?: unknown }).source === 'arena';
      found.set(r.id, { role: r.role, parent_id: r.parent_id, user_id: r.user_id, arenaVersion: arena ? r.model_version_id : null });
    }
  }
  return found;
}

/** The versions behind a compared pair when both replies were decoded as an arena pair. */
function arenaVersions(j: JudgementInput, messages: Map<string, MessageFacts>): { revealed?: { a: string; b: string } } {
  if (j.kind !== 'comparison') return {};
  const a = messages.get(j.a)?.arenaVersion;
  const b = messages.get(j.b)?.arenaVersion;
  return a && b ? { revealed: { a, b } } : {};
}

/**
 * Checks the replies exist (and, with `owner`, are in that user's conversations), are the
 * assistant's, and answer the same context; returns it.
 */
function sharedContext(ids: readonly string[], contextId: string | undefined, messages: Map<string, MessageFacts>, owner?: string): string {
  let context: string | null | undefined;
  for (const id of ids) {
    const m = messages.get(id);
    if (!m || (owner !== undefined && m.user_id !== owner)) throw new FeedbackError('unknown_message', `no message ${id}`);
    if (m.role !== 'assistant') throw new FeedbackError('not_assistant_message', `message ${id} is not an assistant reply`);
    if (m.parent_id === null) throw new FeedbackError('context_mismatch', `reply ${id} answers no context`);
    if (context !== undefined && m.parent_id !== context) {
      throw new FeedbackError('context_mismatch', 'the replies do not answer the same context');
    }
    context = m.parent_id;
  }
  if (contextId !== undefined && contextId !== context) {
    throw new FeedbackError('context_mismatch', `the replies do not answer context ${contextId}`);
  }
  return context!;
}

function plan(index: number, j: JudgementInput, messages: Map<string, MessageFacts>, createdAt: string): Planned {
  const id = newId();
  const owner = j.ownMessagesOnly ? j.raterId : undefined;
  const base = {
    id,
    rater_id: j.raterId,
    session_id: j.sessionId ?? null,
    comment: j.comment ?? null,
    current: 1,
    created_at: createdAt,
    key_id: j.keyId ?? null,
    excluded_from_training: 0,
  };
  const common = {
    index,
    kind: j.kind,
    id,
    hash: j.idempotencyKey === undefined ? '' : payloadHash(j),
    scopeKey: j.idempotencyKey === undefined ? null : JSON.stringify([j.raterId, j.idempotencyKey]),
  };
  if (j.kind === 'thumb') {
    sharedContext([j.messageId], undefined, messages, owner);
    const subjectKey = JSON.stringify([j.raterId, j.messageId]);
    const row: NewThumb = { ...base, subject_key: subjectKey, message_id: j.messageId, value: j.value, reason: j.reason ?? null };
    return { ...common, subjectKey, row, items: [] };
  }
  if (j.kind === 'comparison') {
    const context = sharedContext([j.a, j.b], j.contextId, messages, owner);
    const subjectKey = JSON.stringify([j.raterId, ...[j.a, j.b].sort()]);
    const row: NewComparison = { ...base, subject_key: subjectKey, context_id: context, a_id: j.a, b_id: j.b, choice: j.choice };
    return { ...common, ...arenaVersions(j, messages), subjectKey, row, items: [] };
  }
  const context = sharedContext(j.candidates, j.contextId, messages, owner);
  const subjectKey = JSON.stringify([j.raterId, ...[...j.candidates].sort()]);
  const row: NewRanking = {
    ...base,
    subject_key: subjectKey,
    context_id: context,
    k: j.candidates.length,
    not_rankable: j.notRankable ? 1 : 0,
  };
  const items = j.candidates.map((messageId, position) => ({ ranking_id: id, position, message_id: messageId }));
  return { ...common, subjectKey, row, items };
}

const TABLE = { thumb: 'thumbs', comparison: 'comparisons', ranking: 'rankings' } as const;

/**
 * On PostgreSQL, takes a transaction-scoped advisory lock on every subject (and idempotency key)
 * of the batch, in one sorted order, so two transactions judging the same subject at once (the
 * writer runs several batches in parallel; several servers may share the store) run one after
 * the other: the second then sees the first's row and supersedes it, instead of both inserting a
 * `current` row and the second failing on the unique index. One order for every transaction
 * means no deadlock. SQLite needs none: its writers are serialised.
 */
async function lockSubjects(db: Kysely<Database>, keys: string[]): Promise<void> {
  if (keys.length === 0 || !(db.getExecutor().adapter instanceof PostgresAdapter)) return;
  const sorted = [...new Set(keys)].sort();
  await sql`select count(pg_advisory_xact_lock(hashtextextended(k, 0))) from (select k from unnest(${sorted}::text[]) as k order by k) s`.execute(db);
}

async function write(db: Kysely<Database>, planned: Planned[], createdAt: string): Promise<void> {
  const lastBySubject = new Map<string, Planned>();
  for (const p of planned) lastBySubject.set(`${p.kind}\n${p.subjectKey}`, p);
  for (const p of planned) if (lastBySubject.get(`${p.kind}\n${p.subjectKey}`) !== p) p.row.current = 0;

  for (const kind of ['thumb', 'comparison', 'ranking'] as const) {
    const ofKind = planned.filter((p) => p.kind === kind);
    if (ofKind.length === 0) continue;
    const table = TABLE[kind];
    for (const part of chunks([...new Set(ofKind.map((p) => p.subjectKey))], 500)) {
      await db.updateTable(table).set({ current: 0 }).where('current', '=', 1).where('subject_key', 'in', part).execute();
    }
    for (const part of chunks(ofKind)) {
      // The row type is the table's, by construction of `plan`.
      await db.insertInto(table).values(part.map((p) => p.row as NewThumb & NewComparison & NewRanking)).execute();
    }
  }
  const items = planned.flatMap((p) => p.items);
  for (const part of chunks(items)) await db.insertInto('ranking_items').values(part).execute();
  const keyed = planned.filter((p) => p.scopeKey !== null);
  for (const part of chunks(keyed)) {
    await db
      .insertInto('idempotency_keys')
      .values(part.map((p) => ({ key: p.scopeKey!, kind: p.kind, judgement_id: p.id, payload_hash: p.hash, created_at: createdAt })))
      .execute();
  }
}

/**
 * Validates and stores a batch of judgements inside the caller's transaction.
 * Most callers want {@link submitJudgements} or the store's group-commit writer instead.
 */
export async function applyJudgements(db: Kysely<Database>, inputs: readonly unknown[]): Promise<JudgementResult[]> {
  const results: JudgementResult[] = new Array(inputs.length);
  const parsed: { index: number; j: JudgementInput }[] = [];
  inputs.forEach((input, index) => {
    try {
      parsed.push({ index, j: parseJudgement(input) });
    } catch (err) {
      results[index] = fail(err);
    }
  });

  const messages = await lookupMessages(db, parsed.flatMap((p) => referencedIds(p.j)));
  const createdAt = nowIso();
  const valid: Planned[] = [];
  for (const { index, j } of parsed) {
    try {
      valid.push(plan(index, j, messages, createdAt));
    } catch (err) {
      results[index] = fail(err);
    }
  }

  const scopeKeys = [...new Set(valid.flatMap((p) => (p.scopeKey === null ? [] : [p.scopeKey])))];
  await lockSubjects(db, [...valid.map((p) => `${p.kind}\n${p.subjectKey}`), ...scopeKeys.map((k) => `key\n${k}`)]);
  const seen = new Map<string, { kind: JudgementKind; id: string; hash: string }>();
  for (const part of chunks(scopeKeys, 500)) {
    const rows = await db.selectFrom('idempotency_keys').selectAll().where('key', 'in', part).execute();
    for (const r of rows) seen.set(r.key, { kind: r.kind, id: r.judgement_id, hash: r.payload_hash });
  }
  const toWrite: Planned[] = [];
  for (const p of valid) {
    const prior = p.scopeKey === null ? undefined : seen.get(p.scopeKey);
    if (prior === undefined) {
      if (p.scopeKey !== null) seen.set(p.scopeKey, { kind: p.kind, id: p.id, hash: p.hash });
      toWrite.push(p);
    } else if (prior.hash === p.hash && prior.kind === p.kind) {
      results[p.index] = { ok: true, kind: prior.kind, id: prior.id, duplicate: true, ...(p.revealed ? { revealed: p.revealed } : {}) };
    } else {
      results[p.index] = fail(
        new FeedbackError('idempotency_conflict', 'this idempotency key was already used for a different judgement'),
      );
    }
  }

  await write(db, toWrite, createdAt);
  for (const p of toWrite) results[p.index] = { ok: true, kind: p.kind, id: p.id, duplicate: false, ...(p.revealed ? { revealed: p.revealed } : {}) };
  return results;
}

/** Stores a batch of judgements in one transaction; one result per input, in order. */
export async function submitJudgements(db: Kysely<Database>, inputs: readonly unknown[]): Promise<JudgementResult[]> {
  return inTransaction(db, (trx) => applyJudgements(trx, inputs));
}

/** Stores one judgement; returns its id (the original one for a retry), throws {@link FeedbackError}. */
export async function submitJudgement(db: Kysely<Database>, input: JudgementInput): Promise<string> {
  const [result] = await submitJudgements(db, [input]);
  if (!result!.ok) throw new FeedbackError(result!.error.code, result!.error.message);
  return result!.id;
}

/**
 * Ownership: which of `messageIds` are messages of `userId`'s own conversations (the replies
 * that were shown to them, arena pairs included, since those are served in the user's own
 * conversation). The server refuses a judgement naming any other message as `unknown_message`,
 * as if it did not exist.
 */
export async function messagesOwnedBy(db: Kysely<Database>, userId: string, messageIds: readonly string[]): Promise<Set<string>> {
  const owned = new Set<string>();
  for (const part of chunks([...new Set(messageIds)], 500)) {
    const rows = await db
      .selectFrom('messages as m')
      .innerJoin('conversations as c', 'c.id', 'm.conversation_id')
      .select('m.id')
      .where('m.id', 'in', part)
      .where('c.user_id', '=', userId)
      .execute();
    for (const r of rows) owned.add(r.id);
  }
  return owned;
}
