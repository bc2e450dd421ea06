/**
 * Feedback per model version, for promotion decisions: thumbs up/down counts of the replies each
 * version generated, and pairwise outcomes between replies of two different versions (from
 * current comparisons and rankings). Only current judgements count (superseded ones do not), and
 * none excluded from training (a disabled key's).
 */
import type { Kysely } from 'kysely';
import type { Database } from './schema.ts';

export interface VersionThumbs {
  versionId: string;
  up: number;
  down: number;
}

/** One pairwise outcome between two versions: `winner` beat `loser` `count` times (ties count half to each side). */
export interface VersionPair {
  winner: string;
  loser: string;
  count: number;
}

/** Thumbs per version. */
export async function thumbsByVersion(db: Kysely<Database>): Promise<VersionThumbs[]> {
  const rows = await db
    .selectFrom('thumbs')
    .innerJoin('generations', 'generations.message_id', 'thumbs.message_id')
    .select(['generations.model_version_id as v', 'thumbs.value as value'])
    .select((eb) => eb.fn.countAll<string | number>().as('n'))
    .where('thumbs.current', '=', 1)
    .where('thumbs.excluded_from_training', '=', 0)
    .groupBy(['generations.model_version_id', 'thumbs.value'])
    .execute();
  const by = new Map<string, VersionThumbs>();
  for (const r of rows) {
    const t = by.get(r.v) ?? { versionId: r.v, up: 0, down: 0 };
    t[r.value === 'up' ? 'up' : 'down'] += Number(r.n);
    by.set(r.v, t);
  }
  return [...by.values()];
}

/** Pairwise outcomes between different versions (comparisons: a/b/tie; rankings: every pair). */
export async function pairsByVersion(db: Kysely<Database>): Promise<VersionPair[]> {
  const cmp = await db
    .selectFrom('comparisons')
    .innerJoin('generations as ga', 'ga.message_id', 'comparisons.a_id')
    .innerJoin('generations as gb', 'gb.message_id', 'comparisons.b_id')
    .select(['ga.model_version_id as va', 'gb.model_version_id as vb', 'comparisons.choice as choice'])
    .where('comparisons.current', '=', 1)
    .where('comparisons.excluded_from_training', '=', 0)
    .execute();
  const counts = new Map<string, number>();
  const add = (w: string, l: string, n: number) => {
    if (w === l) return;
    const k = JSON.stringify([w, l]);
    counts.set(k, (counts.get(k) ?? 0) + n);
  };
  for (const c of cmp) {
    if (c.choice === 'a') add(c.va, c.vb, 1);
    else if (c.choice === 'b') add(c.vb, c.va, 1);
    else if (c.choice === 'tie') (add(c.va, c.vb, 0.5), add(c.vb, c.va, 0.5));
  }
  const items = await db
    .selectFrom('ranking_items')
    .innerJoin('rankings', 'rankings.id', 'ranking_items.ranking_id')
    .innerJoin('generations', 'generations.message_id', 'ranking_items.message_id')
    .select(['ranking_items.ranking_id as r', 'ranking_items.position as p', 'generations.model_version_id as v'])
    .where('rankings.current', '=', 1)
    .where('rankings.excluded_from_training', '=', 0)
    .where('rankings.not_rankable', '=', 0)
    .orderBy('ranking_items.ranking_id')
    .orderBy('ranking_items.position')
    .execute();
  const byRanking = new Map<string, string[]>();
  for (const it of items) byRanking.set(it.r, [...(byRanking.get(it.r) ?? []), it.v]);
  for (const vs of byRanking.values()) for (let i = 0; i < vs.length; i++) for (let j = i + 1; j < vs.length; j++) add(vs[i]!, vs[j]!, 1);
  return [...counts].map(([k, count]) => {
    const [winner, loser] = JSON.parse(k) as [string, string];
    return { winner, loser, count };
  });
}
