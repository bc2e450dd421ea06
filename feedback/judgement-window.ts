/**
 * The judgements a training round sees: how many arrived since a time, the window (counts and
 * time/id bounds) a round trained on, and the comparisons that state no order ("both bad": two
 * negatives; ties: a target of ½). Rows only; training/ turns them into examples.
 */
import type { Kysely } from 'kysely';
import type { Database } from './schema.ts';

/** The tables holding judgements, one per kind. */
export const JUDGEMENT_TABLES = ['thumbs', 'comparisons', 'rankings'] as const;

/** The judgements a round trains on: every judgement up to `until`, `newJudgements` of them since `since`. */
export interface DataWindow {
  since: string | null;
  until: string;
  newJudgements: number;
  judgements: number;
  firstAt: string | null;
  lastAt: string | null;
  firstId: string | null;
  lastId: string | null;
  byKind: Record<string, number>;
}

/** Judgements of every kind (superseded ones too: each is a person's act) recorded after `since` (all when undefined). */
export async function countJudgementsSince(db: Kysely<Database>, since: string | null | undefined): Promise<number> {
  let n = 0;
  for (const table of JUDGEMENT_TABLES) {
    let q = db.selectFrom(table).select((eb) => eb.fn.countAll<number | string>().as('n'));
    if (since) q = q.where('created_at', '>', since);
    n += Number((await q.executeTakeFirstOrThrow()).n);
  }
  return n;
}

/** Counts and bounds (time and id) of the judgements recorded up to `until`. */
export async function judgementWindow(db: Kysely<Database>, since: string | null, until: string, newJudgements: number): Promise<DataWindow> {
  const w: DataWindow = { since, until, newJudgements, judgements: 0, firstAt: null, lastAt: null, firstId: null, lastId: null, byKind: {} };
  const lo = (a: string | null, b: string) => (a === null || b < a ? b : a);
  const hi = (a: string | null, b: string) => (a === null || b > a ? b : a);
  for (const table of JUDGEMENT_TABLES) {
    const r = await db
      .selectFrom(table)
      .select((eb) => [eb.fn.countAll<number | string>().as('n'), eb.fn.min('created_at').as('firstAt'), eb.fn.max('created_at').as('lastAt'), eb.fn.min('id').as('firstId'), eb.fn.max('id').as('lastId')])
      .where('created_at', '<=', until)
      .executeTakeFirstOrThrow();
    const n = Number(r.n);
    w.byKind[table] = n;
    w.judgements += n;
    if (!n) continue;
    w.firstAt = lo(w.firstAt, String(r.firstAt));
    w.lastAt = hi(w.lastAt, String(r.lastAt));
    w.firstId = lo(w.firstId, String(r.firstId));
    w.lastId = hi(w.lastId, String(r.lastId));
  }
  return w;
}

/** A current comparison that states no order: "both bad" or a tie. */
export interface UnorderedComparison {
  contextId: string;
  aId: string;
  bId: string;
  choice: 'both_bad' | 'tie';
  createdAt: string;
}

/** The current "both bad" (and, when asked, tie) comparisons, oldest first, optionally from `since` on. */
export async function unorderedComparisons(db: Kysely<Database>, o: { choices: readonly ('both_bad' | 'tie')[]; since?: string }): Promise<UnorderedComparison[]> {
  if (!o.choices.length) return [];
  let q = db.selectFrom('comparisons').select(['context_id', 'a_id', 'b_id', 'choice', 'created_at']).where('current', '=', 1).where('choice', 'in', [...o.choices]);
  if (o.since) q = q.where('created_at', '>=', o.since);
  const rows = await q.orderBy('id').execute();
  return rows.map((r) => ({ contextId: r.context_id, aId: r.a_id, bId: r.b_id, choice: r.choice as 'both_bad' | 'tie', createdAt: r.created_at }));
}
