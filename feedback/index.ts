/**
 * The feedback store's public surface, for the server and for training: open a store, then call
 * repository functions with `store.db` (or a transaction) first. Bad input from a person throws
 * (or, for batches, returns) a {@link FeedbackError} with a stable `code`; nothing is written.
 *
 * @example
 * import { openStore, createConversation, addMessage, addAssistantReply } from '../feedback/index.ts';
 * const store = await openStore();                       // data/feedback.sqlite, or DATABASE_URL
 * const conv = await createConversation(store.db, { userId, sessionId });
 * const q = await addMessage(store.db, { conversationId: conv.id, role: 'user', content, userId, sessionId });
 * const { message } = await addAssistantReply(store.db, { message: { conversationId: conv.id, parentId: q.id, content: reply }, generation });
 * const r = await store.writer.submit({ kind: 'thumb', messageId: message.id, raterId: userId, value: 'up' });
 */
export { openStore, dialectOf, DEFAULT_DATA_DIR, type FeedbackStore, type StoreOptions } from './open-store.ts';
export { openTempStore, type TempStoreOptions } from './temp-store.ts';
export { migrateToLatest, migrateToEmpty } from './migrate.ts';
export { FeedbackError, type FeedbackErrorCode } from './errors.ts';
export { newId, nowIso } from './ids.ts';
export { inTransaction, writeTransaction } from './transaction.ts';
export * from './schema.ts';
export * from './conversations.ts';
export * from './generations.ts';
export {
  CHOICES,
  MAX_CANDIDATES,
  MAX_COMMENT_CHARS,
  THUMB_REASONS,
  parseJudgement,
  type ComparisonInput,
  type JudgementInput,
  type RankingInput,
  type ThumbInput,
} from './judgement-input.ts';
export { submitJudgement, submitJudgements, type JudgementResult } from './judgements.ts';
export { JudgementWriter, type JudgementWriterOptions, type JudgementWriterStats } from './judgement-writer.ts';
export * from './judgement-queries.ts';
export * from './model-versions.ts';
export * from './runs.ts';
export * from './registry-settings.ts';
export * from './version-feedback.ts';
export * from './arena.ts';
export * from './export.ts';
