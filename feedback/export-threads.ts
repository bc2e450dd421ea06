/**
 * Loading the threads exports need, a page at a time: the path from the root to each message,
 * as `{ role, content }` turns, and the model version behind each assistant message.
 */
import type { Kysely } from 'kysely';
import type { Database, Role } from './schema.ts';

/** One turn in TRL's conversational format. */
export interface ChatTurn {
  role: Role;
  content: string;
}

/** Threads and generation versions for a set of messages. */
export interface ThreadIndex {
  /** The path root → `id` (inclusive), or undefined for an unknown id. */
  thread(id: string): ChatTurn[] | undefined;
  /** The ids on the path root → `id` (inclusive). */
  threadIds(id: string): string[];
  /** The single turn of message `id`. */
  turn(id: string): ChatTurn | undefined;
  /** The model version that generated `id`, or null. */
  version(id: string): string | null;
}

const CHUNK = 500;

/** Loads every conversation that holds one of `ids`, and the generations of `ids`. */
export async function loadThreads(db: Kysely<Database>, ids: readonly string[]): Promise<ThreadIndex> {
  const unique = [...new Set(ids)];
  const conversationIds = new Set<string>();
  const versions = new Map<string, string>();
  for (let i = 0; i < unique.length; i += CHUNK) {
    const part = unique.slice(i, i + CHUNK);
    const rows = await db.selectFrom('messages').select('conversation_id').distinct().where('id', 'in', part).execute();
    for (const r of rows) conversationIds.add(r.conversation_id);
    const gens = await db.selectFrom('generations').select(['message_id', 'model_version_id']).where('message_id', 'in', part).execute();
    for (const g of gens) versions.set(g.message_id, g.model_version_id);
  }
  const messages = new Map<string, { parent_id: string | null; role: Role; content: string }>();
  const convs = [...conversationIds];
  for (let i = 0; i < convs.length; i += CHUNK) {
    const rows = await db
      .selectFrom('messages')
      .select(['id', 'parent_id', 'role', 'content'])
      .where('conversation_id', 'in', convs.slice(i, i + CHUNK))
      .execute();
    for (const r of rows) messages.set(r.id, r);
  }
  const cache = new Map<string, ChatTurn[]>();
  const thread = (id: string): ChatTurn[] | undefined => {
    const hit = cache.get(id);
    if (hit) return hit;
    const path: ChatTurn[] = [];
    for (let cur = messages.get(id); cur; cur = cur.parent_id === null ? undefined : messages.get(cur.parent_id)) {
      path.push({ role: cur.role, content: cur.content });
    }
    if (path.length === 0) return undefined;
    path.reverse();
    cache.set(id, path);
    return path;
  };
  const threadIds = (id: string): string[] => {
    const ids: string[] = [];
    for (let cur: string | null = id; cur !== null && messages.has(cur); cur = messages.get(cur)!.parent_id) ids.push(cur);
    return ids.reverse();
  };
  return {
    thread,
    threadIds,
    turn: (id) => {
      const m = messages.get(id);
      return m ? { role: m.role, content: m.content } : undefined;
    },
    version: (id) => versions.get(id) ?? null,
  };
}
