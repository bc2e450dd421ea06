/**
 * Reading judgements back: the current ones (what counts) or the whole history of a subject.
 */
import type { Kysely } from 'kysely';
import type { Comparison, Database, JudgementKind, Ranking, Thumb } from './schema.ts';

/** A ranking with its candidates in order of preference (best first). */
export type RankingWithCandidates = Ranking & { candidates: string[] };

/** Options shared by the list functions. */
export interface JudgementListOptions {
  /** Include superseded judgements too (default: only the current ones). */
  history?: boolean;
  raterId?: string;
}

/** The thumbs on a message, oldest first. */
export async function listThumbs(db: Kysely<Database>, messageId: string, opts: JudgementListOptions = {}): Promise<Thumb[]> {
  let q = db.selectFrom('thumbs').selectAll().where('message_id', '=', messageId);
  if (!opts.history) q = q.where('current', '=', 1);
  if (opts.raterId) q = q.where('rater_id', '=', opts.raterId);
  return q.orderBy('id').execute();
}

/** The comparisons of replies to a context message, oldest first. */
export async function listComparisons(db: Kysely<Database>, contextId: string, opts: JudgementListOptions = {}): Promise<Comparison[]> {
  let q = db.selectFrom('comparisons').selectAll().where('context_id', '=', contextId);
  if (!opts.history) q = q.where('current', '=', 1);
  if (opts.raterId) q = q.where('rater_id', '=', opts.raterId);
  return q.orderBy('id').execute();
}

/** The rankings of replies to a context message, oldest first, with their candidates. */
export async function listRankings(
  db: Kysely<Database>,
  contextId: string,
  opts: JudgementListOptions = {},
): Promise<RankingWithCandidates[]> {
  let q = db.selectFrom('rankings').selectAll().where('context_id', '=', contextId);
  if (!opts.history) q = q.where('current', '=', 1);
  if (opts.raterId) q = q.where('rater_id', '=', opts.raterId);
  return withCandidates(db, await q.orderBy('id').execute());
}

/** Attaches each ranking's ordered candidates. */
export async function withCandidates(db: Kysely<Database>, rankings: Ranking[]): Promise<RankingWithCandidates[]> {
  if (rankings.length === 0) return [];
  const items = await db
    .selectFrom('ranking_items')
    .selectAll()
    .where(
      'ranking_id',
      'in',
      rankings.map((r) => r.id),
    )
    .orderBy('ranking_id')
    .orderBy('position')
    .execute();
  const byRanking = new Map<string, string[]>();
  for (const it of items) {
    const list = byRanking.get(it.ranking_id) ?? [];
    list.push(it.message_id);
    byRanking.set(it.ranking_id, list);
  }
  return rankings.map((r) => ({ ...r, candidates: byRanking.get(r.id) ?? [] }));
}

/** Any one judgement by id, or undefined. */
export async function getJudgement(
  db: Kysely<Database>,
  kind: JudgementKind,
  id: string,
): Promise<Thumb | Comparison | RankingWithCandidates | undefined> {
  if (kind === 'thumb') return db.selectFrom('thumbs').selectAll().where('id', '=', id).executeTakeFirst();
  if (kind === 'comparison') return db.selectFrom('comparisons').selectAll().where('id', '=', id).executeTakeFirst();
  const r = await db.selectFrom('rankings').selectAll().where('id', '=', id).executeTakeFirst();
  return r ? (await withCandidates(db, [r]))[0] : undefined;
}

/**
 * Every version of the judgement `id` belongs to (same rater, same subject), oldest first;
 * the last one is the current one.
 */
export async function getJudgementHistory(
  db: Kysely<Database>,
  kind: JudgementKind,
  id: string,
): Promise<(Thumb | Comparison | RankingWithCandidates)[]> {
  const one = await getJudgement(db, kind, id);
  if (!one) return [];
  if (kind === 'thumb') {
    return db.selectFrom('thumbs').selectAll().where('subject_key', '=', one.subject_key).orderBy('id').execute();
  }
  if (kind === 'comparison') {
    return db.selectFrom('comparisons').selectAll().where('subject_key', '=', one.subject_key).orderBy('id').execute();
  }
  const rows = await db.selectFrom('rankings').selectAll().where('subject_key', '=', one.subject_key).orderBy('id').execute();
  return withCandidates(db, rows);
}

/** One rater's current judgements that name a message: thumbs on it, comparisons and rankings it is a candidate of (oldest first in each kind). */
export async function raterJudgementsOn(
  db: Kysely<Database>,
  messageId: string,
  raterId: string,
): Promise<{ thumbs: Thumb[]; comparisons: Comparison[]; rankings: RankingWithCandidates[] }> {
  const thumbs = await listThumbs(db, messageId, { raterId });
  const comparisons = await db
    .selectFrom('comparisons')
    .selectAll()
    .where('rater_id', '=', raterId)
    .where('current', '=', 1)
    .where((eb) => eb.or([eb('a_id', '=', messageId), eb('b_id', '=', messageId)]))
    .orderBy('id')
    .execute();
  const rankings = await db
    .selectFrom('rankings')
    .selectAll()
    .where('rater_id', '=', raterId)
    .where('current', '=', 1)
    .where('id', 'in', db.selectFrom('ranking_items').select('ranking_id').where('message_id', '=', messageId))
    .orderBy('id')
    .execute();
  return { thumbs, comparisons, rankings: await withCandidates(db, rankings) };
}
