/**
 * The one error type of the server. `code` is stable (clients branch on it), `status` is the
 * HTTP status it maps to, `message` is for people. HTTP routes throw it and the app's single
 * `onError` turns it into a response; the WebSocket handler sends it as `{type:'error', …}`.
 */
import { CheckpointError } from '../model/checkpoint.ts';
import { FeedbackError } from '../feedback/errors.ts';
import { isStoreUnavailable, StoreBusyError } from '../feedback/store-health.ts';

/** Every code the server itself produces (the feedback store's codes pass through unchanged). */
export type ServerErrorCode =
  | 'invalid_json'
  | 'invalid_request'
  | 'unknown_type'
  | 'binary_not_supported'
  | 'message_too_large'
  | 'prompt_too_long'
  | 'context_length_exceeded'
  | 'unsupported_parameter'
  | 'model_too_large'
  | 'max_tokens_too_large'
  | 'rate_limited'
  | 'overloaded'
  | 'not_ready'
  | 'not_found'
  | 'unknown_conversation'
  | 'unknown_request'
  | 'duplicate_request'
  | 'busy'
  | 'model_not_found'
  | 'cancelled'
  | 'unauthorized'
  | 'invalid_api_key'
  | 'forbidden'
  | 'origin_not_allowed'
  | 'too_many_connections'
  | 'admin_disabled'
  | 'not_a_policy'
  | 'version_mismatch'
  | 'unsupported_media_type'
  | 'store_unavailable'
  | 'internal_error';

const STATUS: Record<string, number> = {
  invalid_json: 400,
  invalid_request: 400,
  unknown_type: 400,
  binary_not_supported: 400,
  message_too_large: 413,
  prompt_too_long: 400,
  context_length_exceeded: 400,
  unsupported_parameter: 400,
  model_too_large: 409,
  max_tokens_too_large: 400,
  rate_limited: 429,
  overloaded: 429,
  not_ready: 503,
  not_found: 404,
  unknown_conversation: 404,
  unknown_message: 404,
  unknown_request: 404,
  duplicate_request: 409,
  busy: 409,
  model_not_found: 404,
  cancelled: 499,
  unauthorized: 401,
  invalid_api_key: 401,
  forbidden: 403,
  origin_not_allowed: 403,
  too_many_connections: 429,
  unknown_api_key: 404,
  admin_disabled: 404,
  not_a_policy: 409,
  version_mismatch: 409,
  unknown_model_version: 404,
  unknown_alias: 404,
  unknown_run: 404,
  nothing_to_roll_back: 409,
  unsupported_media_type: 415,
  store_unavailable: 503,
  internal_error: 500,
};

export class ChatError extends Error {
  override readonly name = 'ChatError';
  constructor(
    readonly code: ServerErrorCode | string,
    message: string,
    readonly status: number = STATUS[code] ?? 400,
    /** Seconds before a retry makes sense (sent as `Retry-After`). */
    readonly retryAfter?: number,
    /** The request field at fault, when one is (OpenAI's `param`, e.g. `messages[0].content`). */
    readonly param?: string,
  ) {
    super(message);
  }

  /** The same error, naming the request field at fault. */
  withParam(param: string): ChatError {
    return new ChatError(this.code, this.message, this.status, this.retryAfter, param);
  }

  toJSON(): { code: string; message: string } {
    return { code: this.code, message: this.message };
  }
}

/** Any thrown value as a ChatError: store and checkpoint errors keep their codes; the rest is internal. */
export function toChatError(err: unknown): ChatError {
  if (err instanceof ChatError) return err;
  if (err instanceof FeedbackError) return new ChatError(err.code, err.message);
  if (err instanceof CheckpointError) return new ChatError(err.code, err.message, 503);
  if (err instanceof StoreBusyError) return new ChatError('overloaded', err.message, 429, 1);
  if (isStoreUnavailable(err)) return new ChatError('store_unavailable', 'the feedback store is unreachable; retry later', 503, 2);
  return new ChatError('internal_error', 'internal error');
}

/** OpenAI's error `type` for a status. */
export function openAIErrorType(status: number): string {
  if (status === 429) return 'rate_limit_error';
  if (status === 404) return 'not_found_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}
