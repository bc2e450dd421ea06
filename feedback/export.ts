/**
 * Training exports in the formats TRL uses, conversational flavour: every `prompt`, `chosen`,
 * `rejected`, `completion` and `messages` field is a list of `{ role, content }` turns, so a chat
 * template is applied by the trainer, not baked in here.
 *
 * - Preference pairs `{ prompt, chosen, rejected }` (reward model, DPO), from the current
 *   judgements only:
 *   - comparisons choosing `a` or `b` (ties and "both bad" state no preference and are skipped);
 *   - rankings, as all C(K,2) pairs, better first (rankings marked not rankable are skipped);
 *   - thumbs: one rater's thumbs up vs the same rater's thumbs down on sibling replies.
 *   `prompt` is the thread from the root to the context message (inclusive); `chosen` and
 *   `rejected` are one assistant turn each.
 * - Unpaired `{ prompt, completion, label }` (KTO) from thumbs: `label` is true for up.
 * - SFT `{ messages }`: every thread from the root to an assistant reply that has no replies
 *   itself, leaving out threads with a thumbed-down assistant turn (unless asked not to).
 *
 * Filters: `since` (inclusive) and `until` (exclusive) on the judgement's time (the reply's time
 * for SFT); `modelVersion` keeps rows where a judged reply (either one, for a pair) was generated
 * by that version; `rater` keeps one rater's judgements (for SFT: the conversation's user).
 * With `includeMeta`, rows carry a `meta` object (source, ids, rater and the rater's API key id,
 * versions); rows from one ranking share `meta.group`.
 */
import type { Kysely } from 'kysely';
import { z } from 'zod';
import { loadThreads, type ChatTurn, type ThreadIndex } from './export-threads.ts';
import type { Database } from './schema.ts';
import { parseInput } from './validate.ts';

export type { ChatTurn } from './export-threads.ts';

/** Which judgements (or replies) an export covers. */
export interface ExportFilter {
  /** ISO time, inclusive. */
  since?: string;
  /** ISO time, exclusive. */
  until?: string;
  modelVersion?: string;
  rater?: string;
  /** Attach a `meta` object to every row (default false). */
  includeMeta?: boolean;
}

/** Provenance of an exported row. */
export interface RowMeta {
  source: 'comparison' | 'ranking' | 'thumbs' | 'conversation';
  /** The judgement (or, for SFT, the last message) the row comes from. */
  id: string;
  /** Rows made from one ranking or one thumbs group share it. */
  group: string;
  rater: string | null;
  /**
   * The API key id the judgement was made with (for SFT: the conversation's key; for a thumbs
   * pair: the later thumb's), so an export names who said what; null when anonymous or before keys.
   */
  keyId: string | null;
  created_at: string;
  message_ids: string[];
  model_versions: (string | null)[];
}

/** `{ prompt, chosen, rejected }`. */
export interface PreferenceRow {
  prompt: ChatTurn[];
  chosen: ChatTurn[];
  rejected: ChatTurn[];
  meta?: RowMeta;
}

/** `{ prompt, completion, label }`. */
export interface UnpairedRow {
  prompt: ChatTurn[];
  completion: ChatTurn[];
  label: boolean;
  meta?: RowMeta;
}

/** `{ messages }`. */
export interface SftRow {
  messages: ChatTurn[];
  meta?: RowMeta;
}

const iso = z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'not a date').transform((s) => new Date(s).toISOString());
const filterSchema = z.strictObject({
  since: iso.optional(),
  until: iso.optional(),
  modelVersion: z.string().min(1).optional(),
  rater: z.string().min(1).optional(),
  includeMeta: z.boolean().optional(),
});

const PAGE = 500;

interface JudgedPair {
  source: 'comparison' | 'ranking' | 'thumbs';
  id: string;
  group: string;
  rater: string;
  keyId: string | null;
  created_at: string;
  context: string;
  chosen: string;
  rejected: string;
}

function keepVersion(f: ExportFilter, idx: ThreadIndex, ids: string[]): boolean {
  return f.modelVersion === undefined || ids.some((id) => idx.version(id) === f.modelVersion);
}

function toPreferenceRow(f: ExportFilter, idx: ThreadIndex, p: JudgedPair): PreferenceRow | undefined {
  const prompt = idx.thread(p.context);
  const chosen = idx.turn(p.chosen);
  const rejected = idx.turn(p.rejected);
  if (!prompt || !chosen || !rejected || !keepVersion(f, idx, [p.chosen, p.rejected])) return undefined;
  const row: PreferenceRow = { prompt, chosen: [chosen], rejected: [rejected] };
  if (f.includeMeta) {
    row.meta = {
      source: p.source,
      id: p.id,
      group: p.group,
      rater: p.rater,
      keyId: p.keyId,
      created_at: p.created_at,
      message_ids: [p.context, p.chosen, p.rejected],
      model_versions: [idx.version(p.chosen), idx.version(p.rejected)],
    };
  }
  return row;
}

async function* emitPairs(db: Kysely<Database>, f: ExportFilter, pairs: JudgedPair[]): AsyncGenerator<PreferenceRow> {
  const idx = await loadThreads(db, pairs.flatMap((p) => [p.context, p.chosen, p.rejected]));
  for (const p of pairs) {
    const row = toPreferenceRow(f, idx, p);
    if (row) yield row;
  }
}

async function* comparisonPairs(db: Kysely<Database>, f: ExportFilter): AsyncGenerator<JudgedPair[]> {
  for (let after = ''; ; ) {
    let q = db.selectFrom('comparisons').selectAll().where('current', '=', 1).where('excluded_from_training', '=', 0).where('choice', 'in', ['a', 'b']).where('id', '>', after);
    if (f.since) q = q.where('created_at', '>=', f.since);
    if (f.until) q = q.where('created_at', '<', f.until);
    if (f.rater) q = q.where('rater_id', '=', f.rater);
    const rows = await q.orderBy('id').limit(PAGE).execute();
    if (rows.length === 0) return;
    after = rows[rows.length - 1]!.id;
    yield rows.map((c) => ({
      source: 'comparison',
      id: c.id,
      group: c.id,
      rater: c.rater_id,
      keyId: c.key_id,
      created_at: c.created_at,
      context: c.context_id,
      chosen: c.choice === 'a' ? c.a_id : c.b_id,
      rejected: c.choice === 'a' ? c.b_id : c.a_id,
    }));
  }
}

async function* rankingPairs(db: Kysely<Database>, f: ExportFilter): AsyncGenerator<JudgedPair[]> {
  for (let after = ''; ; ) {
    let q = db.selectFrom('rankings').selectAll().where('current', '=', 1).where('excluded_from_training', '=', 0).where('not_rankable', '=', 0).where('id', '>', after);
    if (f.since) q = q.where('created_at', '>=', f.since);
    if (f.until) q = q.where('created_at', '<', f.until);
    if (f.rater) q = q.where('rater_id', '=', f.rater);
    const rows = await q.orderBy('id').limit(PAGE).execute();
    if (rows.length === 0) return;
    after = rows[rows.length - 1]!.id;
    const items = await db
      .selectFrom('ranking_items')
      .selectAll()
      .where(
        'ranking_id',
        'in',
        rows.map((r) => r.id),
      )
      .orderBy('ranking_id')
      .orderBy('position')
      .execute();
    const order = new Map<string, string[]>();
    for (const it of items) order.set(it.ranking_id, [...(order.get(it.ranking_id) ?? []), it.message_id]);
    const pairs: JudgedPair[] = [];
    for (const r of rows) {
      const c = order.get(r.id) ?? [];
      for (let i = 0; i < c.length; i++) {
        for (let j = i + 1; j < c.length; j++) {
          pairs.push({ source: 'ranking', id: r.id, group: r.id, rater: r.rater_id, keyId: r.key_id, created_at: r.created_at, context: r.context_id, chosen: c[i]!, rejected: c[j]! });
        }
      }
    }
    yield pairs;
  }
}

async function* thumbPairs(db: Kysely<Database>, f: ExportFilter): AsyncGenerator<JudgedPair[]> {
  for (let after = ''; ; ) {
    let q = db
      .selectFrom('thumbs as t')
      .innerJoin('messages as m', 'm.id', 't.message_id')
      .select(['t.id', 't.rater_id', 't.key_id', 't.value', 't.message_id', 't.created_at', 'm.parent_id'])
      .where('t.current', '=', 1)
      .where('t.excluded_from_training', '=', 0)
      .where('m.parent_id', 'is not', null)
      .where('m.parent_id', '>', after);
    if (f.since) q = q.where('t.created_at', '>=', f.since);
    if (f.until) q = q.where('t.created_at', '<', f.until);
    if (f.rater) q = q.where('t.rater_id', '=', f.rater);
    // Whole contexts per page, so every sibling group is complete.
    const parents = await q.clearSelect().select('m.parent_id').distinct().orderBy('m.parent_id').limit(PAGE).execute();
    if (parents.length === 0) return;
    const ids = parents.map((p) => p.parent_id!);
    after = ids[ids.length - 1]!;
    const rows = await q.where('m.parent_id', 'in', ids).orderBy('t.id').execute();
    const groups = new Map<string, typeof rows>();
    for (const r of rows) {
      const key = JSON.stringify([r.parent_id, r.rater_id]);
      groups.set(key, [...(groups.get(key) ?? []), r]);
    }
    const pairs: JudgedPair[] = [];
    for (const [key, g] of groups) {
      for (const up of g.filter((r) => r.value === 'up')) {
        for (const down of g.filter((r) => r.value === 'down')) {
          pairs.push({
            source: 'thumbs',
            id: `${up.id}+${down.id}`,
            group: key,
            rater: up.rater_id,
            keyId: up.created_at > down.created_at ? up.key_id : down.key_id,
            created_at: up.created_at > down.created_at ? up.created_at : down.created_at,
            context: up.parent_id!,
            chosen: up.message_id,
            rejected: down.message_id,
          });
        }
      }
    }
    yield pairs;
  }
}

/**
 * Preference pairs from comparisons, then rankings, then sibling thumbs.
 * @example
 * for await (const row of exportPreferencePairs(db, { since: '2026-11-01' })) out.write(JSON.stringify(row) + '\n');
 */
export async function* exportPreferencePairs(db: Kysely<Database>, filter: ExportFilter = {}): AsyncGenerator<PreferenceRow> {
  const f = parseInput(filterSchema, filter);
  for (const source of [comparisonPairs, rankingPairs, thumbPairs]) {
    for await (const page of source(db, f)) yield* emitPairs(db, f, page);
  }
}

/** Unpaired rows from the current thumbs, `label: true` for up. */
export async function* exportUnpaired(db: Kysely<Database>, filter: ExportFilter = {}): AsyncGenerator<UnpairedRow> {
  const f = parseInput(filterSchema, filter);
  for (let after = ''; ; ) {
    let q = db
      .selectFrom('thumbs as t')
      .innerJoin('messages as m', 'm.id', 't.message_id')
      .select(['t.id', 't.rater_id', 't.key_id', 't.value', 't.message_id', 't.created_at', 'm.parent_id'])
      .where('t.current', '=', 1)
      .where('t.excluded_from_training', '=', 0)
      .where('t.id', '>', after);
    if (f.since) q = q.where('t.created_at', '>=', f.since);
    if (f.until) q = q.where('t.created_at', '<', f.until);
    if (f.rater) q = q.where('t.rater_id', '=', f.rater);
    const rows = await q.orderBy('t.id').limit(PAGE).execute();
    if (rows.length === 0) return;
    after = rows[rows.length - 1]!.id;
    const idx = await loadThreads(db, rows.flatMap((r) => [r.message_id, ...(r.parent_id ? [r.parent_id] : [])]));
    for (const r of rows) {
      const prompt = r.parent_id ? idx.thread(r.parent_id) : [];
      const completion = idx.turn(r.message_id);
      if (!prompt || !completion || !keepVersion(f, idx, [r.message_id])) continue;
      const row: UnpairedRow = { prompt, completion: [completion], label: r.value === 'up' };
      if (f.includeMeta) {
        row.meta = {
          source: 'thumbs',
          id: r.id,
          group: r.id,
          rater: r.rater_id,
          keyId: r.key_id,
          created_at: r.created_at,
          message_ids: [r.message_id],
          model_versions: [idx.version(r.message_id)],
        };
      }
      yield row;
    }
  }
}

/** Options of {@link exportSft}. */
export interface SftExportFilter extends ExportFilter {
  /** Keep threads with a thumbed-down assistant turn (default false: leave them out). */
  keepThumbsDown?: boolean;
}

/** SFT conversations: root-to-leaf threads ending with an assistant reply. */
export async function* exportSft(db: Kysely<Database>, filter: SftExportFilter = {}): AsyncGenerator<SftRow> {
  const { keepThumbsDown = false, ...rest } = filter;
  const f = parseInput(filterSchema, rest);
  for (let after = ''; ; ) {
    let q = db
      .selectFrom('messages as m')
      .innerJoin('conversations as c', 'c.id', 'm.conversation_id')
      .select(['m.id', 'm.created_at', 'c.user_id', 'c.key_id'])
      .where('m.role', '=', 'assistant')
      .where('m.id', '>', after)
      .where(({ not, exists, selectFrom }) => not(exists(selectFrom('messages as k').select('k.id').whereRef('k.parent_id', '=', 'm.id'))));
    if (f.since) q = q.where('m.created_at', '>=', f.since);
    if (f.until) q = q.where('m.created_at', '<', f.until);
    if (f.rater) q = q.where('c.user_id', '=', f.rater);
    const leaves = await q.orderBy('m.id').limit(PAGE).execute();
    if (leaves.length === 0) return;
    after = leaves[leaves.length - 1]!.id;
    const idx = await loadThreads(db, leaves.map((l) => l.id));
    const downs = keepThumbsDown ? new Set<string>() : await thumbedDown(db, leaves.map((l) => l.id));
    for (const leaf of leaves) {
      const messages = idx.thread(leaf.id);
      if (!messages || !keepVersion(f, idx, [leaf.id])) continue;
      if (idx.threadIds(leaf.id).some((id) => downs.has(id))) continue;
      const row: SftRow = { messages };
      if (f.includeMeta) {
        row.meta = {
          source: 'conversation',
          id: leaf.id,
          group: leaf.id,
          rater: leaf.user_id,
          keyId: leaf.key_id,
          created_at: leaf.created_at,
          message_ids: [leaf.id],
          model_versions: [idx.version(leaf.id)],
        };
      }
      yield row;
    }
  }
}

/** Assistant messages on the paths to `leafIds` that carry a current thumbs down. */
async function thumbedDown(db: Kysely<Database>, leafIds: string[]): Promise<Set<string>> {
  const rows = await db
    .selectFrom('thumbs as t')
    .innerJoin('messages as m', 'm.id', 't.message_id')
    .select('t.message_id')
    .where('t.current', '=', 1)
    .where('t.excluded_from_training', '=', 0)
    .where('t.value', '=', 'down')
    .where('m.conversation_id', 'in', db.selectFrom('messages').select('conversation_id').where('id', 'in', leafIds))
    .execute();
  return new Set(rows.map((r) => r.message_id));
}
