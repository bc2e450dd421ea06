/**
 * The WebSocket chat protocol at `/ws`: JSON text frames, each an object with a `type`.
 * Client messages are validated here (zod); server messages are typed here. The README (section "Serving")
 * shows every message with an example.
 *
 * Requests that produce replies or acknowledgements take an optional `requestId` (1–64 chars,
 * chosen by the client); every server message about that request echoes it. When omitted the
 * server assigns one and returns it in the first message about the request.
 */
import { z } from 'zod';
import { CHOICES, THUMB_REASONS } from '../feedback/judgement-input.ts';

const id = z.string().min(1).max(64);
const requestId = id.optional();

/** Sampling parameters of a reply (all optional; defaults: temperature 0.8, topP 0.95, topK 0, maxTokens from config, random seed). */
export const SamplingSchema = z.strictObject({
  temperature: z.number().min(0).max(2).optional(),
  topP: z.number().gt(0).max(1).optional(),
  topK: z.number().int().min(0).max(100_000).optional(),
  maxTokens: z.number().int().positive().optional(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  stop: z.array(z.string().min(1).max(64)).max(4).optional(),
});
export type Sampling = z.infer<typeof SamplingSchema>;

/**
 * Start a new conversation, or resume one by id (its active branch is rebuilt from the store).
 * Answered by `conversation`.
 * @example { "type": "start", "userId": "u1", "system": "You are terse." }
 * @example { "type": "start", "userId": "u1", "conversationId": "01JDX3M8Q4T1V9R2K7Z5N6P0AB" }
 */
export const StartSchema = z.strictObject({
  type: z.literal('start'),
  requestId,
  conversationId: id.optional(),
  userId: z.string().min(1).max(128).optional(),
  system: z.string().max(8000).optional(),
  title: z.string().max(500).optional(),
});

/**
 * Send a user message and stream the assistant's reply (`reply_start`, `delta`…, `reply`).
 * `parentId` (default: the end of the active branch) makes the message follow another turn (edit/branch).
 * @example { "type": "user_message", "requestId": "r1", "conversationId": "01J…", "content": "What does lucid mean?", "params": { "temperature": 0.7, "maxTokens": 64 } }
 */
export const UserMessageSchema = z.strictObject({
  type: z.literal('user_message'),
  requestId,
  conversationId: id,
  content: z.string().min(1),
  parentId: id.optional(),
  params: SamplingSchema.optional(),
});

/**
 * Generate another reply to the same user message: a sibling of `messageId` (an assistant message).
 * The new reply becomes the active branch.
 * @example { "type": "regenerate", "requestId": "r2", "conversationId": "01J…", "messageId": "01J…" }
 */
export const RegenerateSchema = z.strictObject({
  type: z.literal('regenerate'),
  requestId,
  conversationId: id,
  messageId: id,
  params: SamplingSchema.optional(),
});

/**
 * Two candidate replies side by side (decoded together, different seeds), for a comparison:
 * to a new user message (`content`) or to an existing one (`parentId`). Streams `delta`s and
 * `reply`s tagged `candidate: 0|1`, then `candidates`. In the arena (a candidate is set and the
 * admin's arena share selects the request) one reply is the champion's and one the candidate's,
 * in random order, with `arena: true` and `modelVersion: "hidden"`; the `feedback_ack` of the
 * comparison reveals them.
 * @example { "type": "compare", "requestId": "r3", "conversationId": "01J…", "content": "Use it in a sentence." }
 */
export const CompareSchema = z
  .strictObject({
    type: z.literal('compare'),
    requestId,
    conversationId: id,
    content: z.string().min(1).optional(),
    parentId: id.optional(),
    params: SamplingSchema.optional(),
  })
  .refine((m) => (m.content === undefined) !== (m.parentId === undefined), { message: 'give exactly one of content or parentId' });

/**
 * Stop a reply in flight (or waiting). Its `reply` then arrives with `finishReason: "cancelled"`.
 * @example { "type": "cancel", "requestId": "r1" }
 */
export const CancelSchema = z.strictObject({ type: z.literal('cancel'), requestId: id });

const judgementCommon = {
  requestId,
  comment: z.string().optional(),
  idempotencyKey: z.string().min(1).max(128).optional(),
};

/**
 * Thumbs up or down on an assistant message (a reason only with down). Answered by `feedback_ack`.
 * @example { "type": "thumb", "messageId": "01J…", "value": "down", "reason": "not_factual" }
 */
export const ThumbSchema = z.strictObject({
  type: z.literal('thumb'),
  messageId: id,
  value: z.enum(['up', 'down']),
  reason: z.enum(THUMB_REASONS).optional(),
  ...judgementCommon,
});

/**
 * A pairwise pick between two sibling replies. Answered by `feedback_ack`.
 * @example { "type": "comparison", "a": "01J…", "b": "01J…", "choice": "a" }
 */
export const ComparisonSchema = z.strictObject({
  type: z.literal('comparison'),
  a: id,
  b: id,
  choice: z.enum(CHOICES),
  contextId: id.optional(),
  ...judgementCommon,
});

/**
 * A ranking of 2–16 sibling replies, best first. Answered by `feedback_ack`.
 * @example { "type": "ranking", "candidates": ["01J…a", "01J…b", "01J…c"] }
 */
export const RankingSchema = z.strictObject({
  type: z.literal('ranking'),
  candidates: z.array(id).min(1).max(64),
  notRankable: z.boolean().optional(),
  contextId: id.optional(),
  ...judgementCommon,
});

/**
 * Application-level ping (the server also pings at the WebSocket level). Answered by `pong`.
 * @example { "type": "ping", "requestId": "p1" }
 */
export const PingSchema = z.strictObject({ type: z.literal('ping'), requestId });

export const CLIENT_SCHEMAS = {
  start: StartSchema,
  user_message: UserMessageSchema,
  regenerate: RegenerateSchema,
  compare: CompareSchema,
  cancel: CancelSchema,
  thumb: ThumbSchema,
  comparison: ComparisonSchema,
  ranking: RankingSchema,
  ping: PingSchema,
} as const;

export type ClientMessageType = keyof typeof CLIENT_SCHEMAS;
export type ClientMessage = { [K in ClientMessageType]: z.infer<(typeof CLIENT_SCHEMAS)[K]> }[ClientMessageType];

/** Result of parsing one frame: a message, or an error code for the client. */
export type Parsed = { ok: true; msg: ClientMessage } | { ok: false; code: 'invalid_json' | 'unknown_type' | 'invalid_request'; message: string; requestId?: string };

/** Parses and validates one text frame. */
export function parseClientMessage(text: string): Parsed {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, code: 'invalid_json', message: 'the frame is not valid JSON' };
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return { ok: false, code: 'invalid_request', message: 'a message is a JSON object with a "type"' };
  const obj = raw as Record<string, unknown>;
  const rid = typeof obj.requestId === 'string' && obj.requestId.length <= 64 ? obj.requestId : undefined;
  if (typeof obj.type !== 'string') return { ok: false, code: 'invalid_request', message: 'missing "type" (a string)', requestId: rid };
  if (!Object.hasOwn(CLIENT_SCHEMAS, obj.type)) {
    return { ok: false, code: 'unknown_type', message: `unknown message type ${JSON.stringify(obj.type.slice(0, 40))}; known: ${Object.keys(CLIENT_SCHEMAS).join(', ')}`, requestId: rid };
  }
  const r = CLIENT_SCHEMAS[obj.type as ClientMessageType].safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    return { ok: false, code: 'invalid_request', message: `${obj.type}: ${issue.path.join('.') || 'message'}: ${issue.message}`, requestId: rid };
  }
  return { ok: true, msg: r.data as ClientMessage };
}

// ------------------------------------------------------------------ server → client

/** Token usage of one reply. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
}

/** A stored message on the active branch. */
export interface WireTurn {
  id: string;
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export type ServerMessage =
  /** Sent once on connect. */
  | { type: 'ready'; modelVersion: string; limits: Record<string, number>; heartbeatMs: number }
  /** Answer to `start`: the conversation and its active branch (root first). */
  | { type: 'conversation'; requestId?: string; conversationId: string; resumed: boolean; messages: WireTurn[]; modelVersion: string }
  /** A reply has been accepted (queued or decoding). */
  | { type: 'reply_start'; requestId: string; conversationId: string; parentId: string; userMessageId?: string; candidate?: number }
  /** A piece of the reply's text, in order. */
  | { type: 'delta'; requestId: string; text: string; candidate?: number }
  /** The reply, complete and stored. */
  | {
      type: 'reply';
      requestId: string;
      conversationId: string;
      messageId: string;
      parentId: string;
      content: string;
      modelVersion: string;
      finishReason: 'stop' | 'length' | 'cancelled';
      usage: Usage;
      /** Present when old turns were dropped to fit the context window (the system prompt is kept). */
      contextTruncated?: { droppedMessages: number };
      candidate?: number;
      /** An arena reply (champion against candidate, blind): `modelVersion` is then `"hidden"` until the comparison's `feedback_ack`. */
      arena?: true;
    }
  /** After both `compare` replies: the context (the user message) and the two candidates. */
  | { type: 'candidates'; requestId: string; contextId: string; messageIds: string[]; arena?: true }
  /**
   * A judgement was stored (or recognised as a duplicate retry). For a comparison of an arena
   * pair, `revealed` names the version behind each reply.
   */
  | { type: 'feedback_ack'; requestId: string; kind: 'thumb' | 'comparison' | 'ranking'; id: string; duplicate: boolean; revealed?: { a: string; b: string } }
  | { type: 'pong'; requestId?: string }
  /** Something was refused; `code` is stable. */
  | { type: 'error'; requestId?: string; code: string; message: string };
