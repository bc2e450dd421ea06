/**
 * The one error type the store throws (or returns, in batch results) for bad input.
 * `code` is stable and safe to send to clients; `message` is for people.
 */

/** Every code the store can produce. */
export type FeedbackErrorCode =
  | 'invalid_input'
  | 'unknown_conversation'
  | 'unknown_message'
  | 'unknown_model_version'
  | 'unknown_alias'
  | 'unknown_run'
  | 'not_assistant_message'
  | 'conversation_mismatch'
  | 'context_mismatch'
  | 'duplicate_candidate'
  | 'too_few_candidates'
  | 'too_many_candidates'
  | 'invalid_choice'
  | 'invalid_thumb'
  | 'invalid_reason'
  | 'comment_too_long'
  | 'idempotency_conflict'
  | 'duplicate_id'
  | 'nothing_to_roll_back'
  | 'unknown_api_key';

/** A person's input was refused; nothing was written. */
export class FeedbackError extends Error {
  override readonly name = 'FeedbackError';
  constructor(
    readonly code: FeedbackErrorCode,
    message: string,
  ) {
    super(message);
  }

  /** A plain object for the wire: `{ code, message }`. */
  toJSON(): { code: FeedbackErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}
