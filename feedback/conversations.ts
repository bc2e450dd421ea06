/**
 * Conversations and their messages, kept as a tree: every message points at the message it
 * follows (`parent_id`); a regenerated or compared reply is a sibling with the same parent.
 * The context of a message is the path from the conversation's root down to its parent.
 */
import { sql, type Kysely } from 'kysely';
import { z } from 'zod';
import { FeedbackError } from './errors.ts';
import { newId, nowIso } from './ids.ts';
import type { Conversation, Database, Message } from './schema.ts';
import { parseInput } from './validate.ts';

const newConversationInput = z.strictObject({
  id: z.string().min(1).max(64).optional(),
  userId: z.string().min(1).max(128),
  /** The API key it is made with (its id, never the key). */
  keyId: z.string().min(1).max(64).optional(),
  sessionId: z.string().min(1).max(128).optional(),
  title: z.string().max(500).optional(),
});

const newMessageInput = z.strictObject({
  id: z.string().min(1).max(64).optional(),
  conversationId: z.string().min(1).max(64),
  parentId: z.string().min(1).max(64).nullable().optional(),
  role: z.enum(['system', 'user', 'assistant']),
  content: z.string().max(1_000_000),
  tokenCount: z.number().int().nonnegative().optional(),
  userId: z.string().min(1).max(128).optional(),
  sessionId: z.string().min(1).max(128).optional(),
});

/** Input of {@link createConversation}. */
export type NewConversationInput = z.input<typeof newConversationInput>;
/** Input of {@link addMessage}. */
export type NewMessageInput = z.input<typeof newMessageInput>;

/** Starts a conversation for a user (and session). */
export async function createConversation(db: Kysely<Database>, input: NewConversationInput): Promise<Conversation> {
  const c = parseInput(newConversationInput, input);
  if (c.id !== undefined && (await getConversation(db, c.id))) {
    throw new FeedbackError('duplicate_id', `conversation ${c.id} already exists`);
  }
  const row: Conversation = {
    id: c.id ?? newId(),
    user_id: c.userId,
    session_id: c.sessionId ?? null,
    title: c.title ?? null,
    created_at: nowIso(),
    key_id: c.keyId ?? null,
  };
  await db.insertInto('conversations').values(row).execute();
  return row;
}

/**
 * Adds a message under `parentId` (or at the root). The parent must be in the same conversation.
 * Errors: `unknown_conversation`, `unknown_message` (parent), `conversation_mismatch`.
 */
export async function addMessage(db: Kysely<Database>, input: NewMessageInput): Promise<Message> {
  const m = parseInput(newMessageInput, input);
  if (m.id !== undefined && (await getMessage(db, m.id))) throw new FeedbackError('duplicate_id', `message ${m.id} already exists`);
  // A parent in this conversation proves the conversation exists (a message's conversation is a
  // foreign key): one lookup. Otherwise the conversation is checked first, so the error names it.
  const parent = m.parentId ? await db.selectFrom('messages').select('conversation_id').where('id', '=', m.parentId).executeTakeFirst() : undefined;
  if (parent?.conversation_id !== m.conversationId) {
    const conversation = await db.selectFrom('conversations').select('id').where('id', '=', m.conversationId).executeTakeFirst();
    if (!conversation) throw new FeedbackError('unknown_conversation', `no conversation ${m.conversationId}`);
    if (m.parentId && !parent) throw new FeedbackError('unknown_message', `no message ${m.parentId}`);
    if (parent) throw new FeedbackError('conversation_mismatch', `message ${m.parentId} is in another conversation`);
  }
  const row = messageRow(m);
  await db.insertInto('messages').values(row).execute();
  return row;
}

/** The row of a validated message input, with a new id unless it has one. */
function messageRow(m: z.output<typeof newMessageInput>): Message {
  return {
    id: m.id ?? newId(),
    conversation_id: m.conversationId,
    parent_id: m.parentId ?? null,
    role: m.role,
    content: m.content,
    token_count: m.tokenCount ?? null,
    user_id: m.userId ?? null,
    session_id: m.sessionId ?? null,
    created_at: nowIso(),
  };
}

/** Rows per INSERT of {@link startThreadRows}: far under SQLite's and PostgreSQL's bound on a statement's parameters. */
const CHAIN_ROWS_PER_INSERT = 500;

/**
 * Starts a conversation whose messages are a chain (each the child of the one before; an OpenAI
 * request's `messages`), in as few statements as it takes: the conversation row and one INSERT
 * per 500 messages. Nothing is looked up: the conversation and every parent are rows this call
 * writes. Each input is validated as {@link createConversation} and {@link addMessage} validate
 * theirs. Run it in a transaction so that a failure leaves no half-stored thread.
 */
export async function startThreadRows(
  db: Kysely<Database>,
  conversation: NewConversationInput,
  turns: readonly { role: Message['role']; content: string }[],
): Promise<{ conversation: Conversation; messages: Message[] }> {
  const conv = await createConversation(db, conversation);
  const messages: Message[] = [];
  let parent: string | null = null;
  for (const t of turns) {
    const row = messageRow(parseInput(newMessageInput, { conversationId: conv.id, parentId: parent, role: t.role, content: t.content, userId: conv.user_id }));
    messages.push(row);
    parent = row.id;
  }
  for (let i = 0; i < messages.length; i += CHAIN_ROWS_PER_INSERT) await db.insertInto('messages').values(messages.slice(i, i + CHAIN_ROWS_PER_INSERT)).execute();
  return { conversation: conv, messages };
}

/** One message, or undefined. */
export async function getMessage(db: Kysely<Database>, id: string): Promise<Message | undefined> {
  return db.selectFrom('messages').selectAll().where('id', '=', id).executeTakeFirst();
}

/** One conversation, or undefined. */
export async function getConversation(db: Kysely<Database>, id: string): Promise<Conversation | undefined> {
  return db.selectFrom('conversations').selectAll().where('id', '=', id).executeTakeFirst();
}

/** Every message of a conversation (the whole tree), oldest first. */
export async function listMessages(db: Kysely<Database>, conversationId: string): Promise<Message[]> {
  return db.selectFrom('messages').selectAll().where('conversation_id', '=', conversationId).orderBy('id').execute();
}

/** The replies to `parentId` (siblings of one another), oldest first. */
export async function listChildren(db: Kysely<Database>, parentId: string): Promise<Message[]> {
  return db.selectFrom('messages').selectAll().where('parent_id', '=', parentId).orderBy('id').execute();
}

/**
 * The path from the root to `messageId`, inclusive, oldest first; empty when it does not exist.
 * The context a reply answers is `getThread(db, reply.parent_id)`.
 */
export async function getThread(db: Kysely<Database>, messageId: string): Promise<Message[]> {
  const rows = await db
    .withRecursive('thread(id, parent_id, depth)', (qb) =>
      qb
        .selectFrom('messages')
        .select(['id', 'parent_id', sql<number>`0`.as('depth')])
        .where('id', '=', messageId)
        .unionAll((qb2) =>
          qb2
            .selectFrom('messages as m')
            .innerJoin('thread as t', 't.parent_id', 'm.id')
            .select(['m.id', 'm.parent_id', sql<number>`t.depth + 1`.as('depth')]),
        ),
    )
    .selectFrom('thread')
    .innerJoin('messages', 'messages.id', 'thread.id')
    .selectAll('messages')
    .orderBy('thread.depth', 'desc')
    .execute();
  return rows;
}
