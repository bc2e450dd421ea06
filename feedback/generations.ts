/**
 * Generations: how each assistant message was produced (model version, sampling parameters and
 * seed, finish reason, token counts, latency and time to first token).
 * `model_version_id` is the registry id (see `model-versions.ts`) but is not a foreign key, so a
 * server can serve and record a model before it is registered.
 */
import type { Kysely } from 'kysely';
import { z } from 'zod';
import { addMessage, type NewMessageInput } from './conversations.ts';
import { FeedbackError } from './errors.ts';
import { nowIso } from './ids.ts';
import type { Database, Generation, Message } from './schema.ts';
import { inTransaction } from './transaction.ts';
import { parseInput } from './validate.ts';

const generationInput = z.strictObject({
  messageId: z.string().min(1).max(64),
  modelVersionId: z.string().min(1).max(128),
  params: z.record(z.string(), z.unknown()).default({}),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  finishReason: z.enum(['stop', 'length', 'cancelled']),
  promptTokens: z.number().int().nonnegative(),
  completionTokens: z.number().int().nonnegative(),
  latencyMs: z.number().nonnegative(),
  ttftMs: z.number().nonnegative().optional(),
});

/** Input of {@link recordGeneration}; `params` is any JSON object of sampling parameters. */
export type GenerationInput = z.input<typeof generationInput>;

/** Records how an assistant message was generated. Errors: `unknown_message`, `not_assistant_message`. */
export async function recordGeneration(db: Kysely<Database>, input: GenerationInput): Promise<Generation> {
  const g = parseInput(generationInput, input);
  const message = await db.selectFrom('messages').select('role').where('id', '=', g.messageId).executeTakeFirst();
  if (!message) throw new FeedbackError('unknown_message', `no message ${g.messageId}`);
  if (message.role !== 'assistant') throw new FeedbackError('not_assistant_message', `message ${g.messageId} is not an assistant reply`);
  return insertGeneration(db, g);
}

/** Stores a parsed generation record of a message known to be an assistant reply. */
async function insertGeneration(db: Kysely<Database>, g: z.output<typeof generationInput>): Promise<Generation> {
  const row: Generation = {
    message_id: g.messageId,
    model_version_id: g.modelVersionId,
    params_json: JSON.stringify(g.params),
    seed: g.seed ?? null,
    finish_reason: g.finishReason,
    prompt_tokens: g.promptTokens,
    completion_tokens: g.completionTokens,
    latency_ms: g.latencyMs,
    ttft_ms: g.ttftMs ?? null,
    created_at: nowIso(),
  };
  await db.insertInto('generations').values(row).execute();
  return row;
}

/**
 * Adds an assistant reply and its generation record atomically (the usual call at the end of a
 * streamed reply).
 * @example
 * const { message } = await addAssistantReply(db, {
 *   message: { conversationId, parentId: userMsg.id, content: text, tokenCount: 42 },
 *   generation: { modelVersionId: 'sft-1', params: { temperature: 0.8 }, seed: 7, finishReason: 'stop',
 *                 promptTokens: 30, completionTokens: 42, latencyMs: 180, ttftMs: 12 },
 * });
 */
export async function addAssistantReply(
  db: Kysely<Database>,
  input: { message: Omit<NewMessageInput, 'role'>; generation: Omit<GenerationInput, 'messageId'> },
): Promise<{ message: Message; generation: Generation }> {
  return inTransaction(db, async (trx) => {
    const message = await addMessage(trx, { ...input.message, role: 'assistant' });
    // The message was just added as an assistant reply: no need to look it up again.
    const generation = await insertGeneration(trx, parseInput(generationInput, { ...input.generation, messageId: message.id }));
    return { message, generation };
  });
}

/** The generation record of a message, or undefined. */
export async function getGeneration(db: Kysely<Database>, messageId: string): Promise<Generation | undefined> {
  return db.selectFrom('generations').selectAll().where('message_id', '=', messageId).executeTakeFirst();
}
