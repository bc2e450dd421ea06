/**
 * Preference data for the reward model and DPO: store exports or JSONL rows turned into
 * *judgement groups*. One group is one human judgement about replies to one context:
 *
 *   - a pairwise pick (a or b)            → 2 replies, 1 pair, weight 1;
 *   - a K-way ranking (best first)        → K replies, all C(K,2) pairs, each weight 1/C(K,2)
 *                                           (InstructGPT: a ranking counts as one judgement, and
 *                                           its K replies are scored once, not once per pair);
 *   - one rater's thumbs on sibling replies → every (up, down) pair, each weight 1/(#up·#down);
 *   - a thumb on its own                  → unpaired signal `{ prompt, reply, label }` (KTO-style),
 *                                           used by the reward model as a logistic loss on its score.
 *
 * Ties and "both bad" state no order between the two replies, so they contribute no pair
 * (the store's TRL export skips them). "Both bad" is not thrown away: each of the two replies
 * becomes an unpaired negative with weight 1/2 (one judgement) when read from the store with
 * {@link loadStorePreferences}. A tie, when asked for (`ties: true`, the reward model's loader),
 * becomes a group with no pair and one `ties` entry: the reward model's loss gives it the
 * Bradley–Terry target ½ (see reward-model.ts). Consumers that only know pairs (DPO) leave
 * `ties` off and never see such groups.
 *
 * Every group and unpaired example read from the store carries `createdAt` (the judgement's
 * time; a group made of several rows takes the newest), for recency weighting.
 *
 * Splits are by context: {@link splitByContext} hashes the prompt's text (sha256), so every
 * judgement about one context (picks, rankings, sibling thumbs, ties, lone thumbs) lands in the
 * same split, and a context's split never moves between rounds or as data grows.
 *
 * Rows sharing `meta.group` (the store's export with `includeMeta`) are regrouped, so ranking
 * and thumbs pairs exported to JSONL keep their weights. JSONL may also carry a ranking directly:
 * `{ prompt, ranking: [reply, …] }` (best first; each reply a string or `[{ role, content }]`).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { ChatMessage } from '../model/chat-template.ts';
import { createRng } from '../model/random.ts';
import type { FeedbackStore } from '../feedback/index.ts';
import { exportPreferencePairs, exportUnpaired, getThread, getMessage } from '../feedback/index.ts';
import { unorderedComparisons } from '../feedback/judgement-window.ts';

/** Replies to one context and the preferences a judgement states between them. */
export interface PreferenceGroup {
  /** The conversation up to and including the last user turn. */
  prompt: ChatMessage[];
  /** Assistant reply texts, each scored once. */
  replies: string[];
  /** `[winner, loser]` indices into `replies`. */
  pairs: [number, number][];
  /** Weight of each pair and each tie (they sum to 1 per group). */
  weight: number;
  /** Where it came from (comparison, ranking, thumbs, tie, jsonl). */
  source: string;
  /** Index pairs judged equally good (a comparison answered "tie"); the loss's target is ½. */
  ties?: [number, number][];
  /** ISO time of the judgement (the newest row of the group), when known. */
  createdAt?: string;
}

/** A single reply with a good/bad label (a thumb, or half of a "both bad"). */
export interface UnpairedExample {
  prompt: ChatMessage[];
  reply: string;
  label: boolean;
  weight: number;
  /** ISO time of the judgement, when known. */
  createdAt?: string;
}

export interface PreferenceData {
  groups: PreferenceGroup[];
  unpaired: UnpairedExample[];
}

type Turns = { role: string; content: string }[];

/** The text of a TRL completion field (`[{ role: 'assistant', content }]` or a string). */
function replyText(field: unknown, what: string): string {
  if (typeof field === 'string') return field;
  if (Array.isArray(field) && field.length >= 1) {
    const last = field[field.length - 1] as { role?: unknown; content?: unknown };
    if (last && last.role === 'assistant' && typeof last.content === 'string') {
      if (field.length > 1) throw new Error(`${what}: a completion must be one assistant turn, got ${field.length} turns`);
      return last.content;
    }
  }
  throw new Error(`${what}: expected a string or [{ role: 'assistant', content }]`);
}

function promptOf(field: unknown, what: string): ChatMessage[] {
  if (typeof field === 'string') return [{ role: 'user', content: field }];
  if (!Array.isArray(field) || field.length === 0) throw new Error(`${what}: prompt must be a non-empty list of turns`);
  const turns = (field as Turns).map((t, i) => {
    if (!t || typeof t.content !== 'string' || !['system', 'user', 'assistant'].includes(t.role)) {
      throw new Error(`${what}: prompt turn ${i} is not { role, content }`);
    }
    return { role: t.role as ChatMessage['role'], content: t.content };
  });
  if (turns[turns.length - 1]!.role !== 'user') throw new Error(`${what}: prompt must end with a user turn`);
  return turns;
}

/** One group from an ordered list of replies (best first): all C(K,2) pairs, weight 1/C(K,2). */
export function rankingGroup(prompt: ChatMessage[], rankedBestFirst: string[], source = 'ranking'): PreferenceGroup {
  const K = rankedBestFirst.length;
  if (K < 2) throw new Error(`a ranking needs at least 2 replies, got ${K}`);
  const pairs: [number, number][] = [];
  for (let i = 0; i < K; i++) for (let j = i + 1; j < K; j++) pairs.push([i, j]);
  return { prompt, replies: rankedBestFirst, pairs, weight: 1 / pairs.length, source };
}

/**
 * Folds preference rows into groups: rows with the same `meta.group` become one group whose
 * replies are deduplicated and whose pairs share the weight 1/#pairs.
 */
export function groupPreferenceRows(rows: Iterable<{ prompt: unknown; chosen?: unknown; rejected?: unknown; ranking?: unknown; meta?: { group?: string; source?: string; created_at?: string } }>): PreferenceGroup[] {
  const byKey = new Map<string, PreferenceGroup>();
  const out: PreferenceGroup[] = [];
  let n = 0;
  for (const row of rows) {
    const what = `preference row ${++n}`;
    const prompt = promptOf(row.prompt, what);
    if (row.ranking !== undefined) {
      if (!Array.isArray(row.ranking)) throw new Error(`${what}: ranking must be a list of replies`);
      out.push(rankingGroup(prompt, row.ranking.map((r, i) => replyText(r, `${what} ranking[${i}]`)), 'ranking'));
      continue;
    }
    const chosen = replyText(row.chosen, `${what} chosen`);
    const rejected = replyText(row.rejected, `${what} rejected`);
    const key = row.meta?.group !== undefined ? `g:${row.meta.group}` : `row:${n}`;
    let g = byKey.get(key);
    if (!g) {
      g = { prompt, replies: [], pairs: [], weight: 0, source: row.meta?.source ?? 'pair' };
      byKey.set(key, g);
      out.push(g);
    }
    const idx = (text: string) => {
      const at = g!.replies.indexOf(text);
      if (at >= 0) return at;
      g!.replies.push(text);
      return g!.replies.length - 1;
    };
    const w = idx(chosen);
    const l = idx(rejected);
    if (w !== l) g.pairs.push([w, l]);
    const at = row.meta?.created_at;
    if (typeof at === 'string' && (g.createdAt === undefined || at > g.createdAt)) g.createdAt = at;
  }
  for (const g of byKey.values()) g.weight = 1 / Math.max(1, g.pairs.length);
  return out.filter((g) => g.pairs.length > 0);
}

/** Unpaired rows (`{ prompt, completion, label }`) as examples of weight 1. */
export function unpairedFromRows(rows: Iterable<{ prompt: unknown; completion: unknown; label: unknown; meta?: { created_at?: string } }>): UnpairedExample[] {
  const out: UnpairedExample[] = [];
  let n = 0;
  for (const row of rows) {
    const what = `unpaired row ${++n}`;
    if (typeof row.label !== 'boolean') throw new Error(`${what}: label must be true or false`);
    const ex: UnpairedExample = { prompt: promptOf(row.prompt, what), reply: replyText(row.completion, `${what} completion`), label: row.label, weight: 1 };
    if (typeof row.meta?.created_at === 'string') ex.createdAt = row.meta.created_at;
    out.push(ex);
  }
  return out;
}

/**
 * Reads a JSONL file of mixed rows: preference rows (`chosen`/`rejected`, or `ranking`) become
 * groups, unpaired rows (`completion` + `label`) unpaired examples.
 */
export function readPreferenceJsonl(path: string): PreferenceData {
  if (!existsSync(path)) throw new Error(`no preference file at ${path}; export one with \`node --import tsx feedback/export-cli.ts --kind preference --meta --out ${path}\``);
  const pref: Record<string, unknown>[] = [];
  const unp: Record<string, unknown>[] = [];
  readFileSync(path, 'utf8').split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let row: Record<string, unknown>;
    try {
      row = JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new Error(`${path}:${i + 1}: not valid JSON`);
    }
    if ('label' in row) unp.push(row);
    else pref.push(row);
  });
  return {
    groups: groupPreferenceRows(pref as Parameters<typeof groupPreferenceRows>[0]),
    unpaired: unpairedFromRows(unp as Parameters<typeof unpairedFromRows>[0]),
  };
}

/**
 * Everything the store knows as preference data: comparisons, rankings and sibling thumbs as
 * groups; every thumb as an unpaired example; each "both bad" as two unpaired negatives of
 * weight 1/2; with `ties: true`, each tie as a group with one tie and no pair. `since` limits to
 * judgements from that time on. Every row carries its judgement's `createdAt`.
 */
export async function loadStorePreferences(store: FeedbackStore, opts: { since?: string; useUnpaired?: boolean; ties?: boolean } = {}): Promise<PreferenceData> {
  const filter = { includeMeta: true, ...(opts.since ? { since: opts.since } : {}) };
  const rows = [];
  for await (const r of exportPreferencePairs(store.db, filter)) rows.push(r);
  const groups = groupPreferenceRows(rows);
  const unpaired: UnpairedExample[] = [];
  const useUnpaired = opts.useUnpaired ?? true;
  if (useUnpaired) {
    const urows = [];
    for await (const r of exportUnpaired(store.db, filter)) urows.push(r);
    unpaired.push(...unpairedFromRows(urows));
  }
  const choices = [...(useUnpaired ? ['both_bad' as const] : []), ...(opts.ties ? ['tie' as const] : [])];
  if (choices.length) {
    for (const c of await unorderedComparisons(store.db, { choices, ...(opts.since ? { since: opts.since } : {}) })) {
      const thread = await getThread(store.db, c.contextId);
      if (thread.length === 0 || thread[thread.length - 1]!.role !== 'user') continue;
      const prompt = thread.map((m) => ({ role: m.role, content: m.content }));
      const replies = [];
      for (const id of [c.aId, c.bId]) {
        const m = await getMessage(store.db, id);
        if (m) replies.push(m.content);
      }
      if (c.choice === 'both_bad') {
        for (const reply of replies) unpaired.push({ prompt, reply, label: false, weight: 0.5, createdAt: c.createdAt });
      } else if (replies.length === 2 && replies[0] !== replies[1]) {
        groups.push({ prompt, replies, pairs: [], ties: [[0, 1]], weight: 1, source: 'tie', createdAt: c.createdAt });
      }
    }
  }
  return { groups, unpaired };
}

/** Which held-out split a context belongs to. */
export type ContextSplit = 'train' | 'val' | 'eval';

/**
 * The split of a context, from the sha256 of its prompt text (and `seed`): 80% 'train', 10%
 * 'val' (early stopping), 10% 'eval' (the fixed set whose accuracy is compared across rounds).
 * Pure and stable: the same text always gets the same split, whatever else is in the data.
 *
 * @example
 *   splitByContext(promptText([{ role: 'user', content: 'name a fruit' }]))  // 'train' | 'val' | 'eval'
 */
export function splitByContext(promptText: string, seed = 0): ContextSplit {
  const h = createHash('sha256').update(`${seed}\u0000${promptText}`).digest();
  const u = h.readUInt32BE(0) / 4294967296; // [0, 1)
  return u < 0.8 ? 'train' : u < 0.9 ? 'val' : 'eval';
}

/** The text a context is split by: each turn as `role: content`, one per line. */
export function promptText(prompt: readonly ChatMessage[]): string {
  return prompt.map((m) => `${m.role}: ${m.content}`).join('\n');
}

/** Preference data cut by context into train / val / eval (groups, ties and thumbs together). */
export function splitPreferences(data: PreferenceData, seed = 0): Record<ContextSplit, PreferenceData> {
  const out: Record<ContextSplit, PreferenceData> = { train: { groups: [], unpaired: [] }, val: { groups: [], unpaired: [] }, eval: { groups: [], unpaired: [] } };
  for (const g of data.groups) out[splitByContext(promptText(g.prompt), seed)].groups.push(g);
  for (const u of data.unpaired) out[splitByContext(promptText(u.prompt), seed)].unpaired.push(u);
  return out;
}

/**
 * Prompts cut by the same hash: PPO trains on 'train', evaluation uses 'eval' (and 'val' is free
 * for normalisation samples), so no round's evaluation prompt is ever a PPO prompt.
 */
export function splitPrompts<T extends readonly ChatMessage[]>(prompts: readonly T[], seed = 0): Record<ContextSplit, T[]> {
  const out: Record<ContextSplit, T[]> = { train: [], val: [], eval: [] };
  for (const p of prompts) out[splitByContext(promptText(p), seed)].push(p);
  return out;
}

/**
 * A deterministic random split of items (a ranking never straddles train and held-out). It moves
 * as data grows and does not keep a context's thumbs with its pairs: prefer {@link splitPreferences}.
 */
export function splitGroups<T>(items: readonly T[], valFraction: number, seed: number): { train: T[]; val: T[] } {
  const shuffled = createRng(seed).shuffle(items);
  const nVal = items.length < 2 ? 0 : Math.max(1, Math.round(items.length * valFraction));
  return { val: shuffled.slice(0, nVal), train: shuffled.slice(nVal) };
}

/** Number of pairs and total judgement weight (for logs). */
export function describePreferences(d: PreferenceData): string {
  const pairs = d.groups.reduce((a, g) => a + g.pairs.length, 0);
  const by = new Map<string, number>();
  for (const g of d.groups) by.set(g.source, (by.get(g.source) ?? 0) + 1);
  const ties = d.groups.reduce((a, g) => a + (g.ties?.length ?? 0), 0);
  return `${d.groups.length} judgements (${[...by].map(([k, v]) => `${v} ${k}`).join(', ') || 'none'}) giving ${pairs} pairs${ties ? ` and ${ties} ties` : ''}; ${d.unpaired.length} unpaired`;
}
