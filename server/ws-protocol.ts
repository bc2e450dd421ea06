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
import { JUDGEMENT_FIELDS, judgementIssue } from '../feedback/judgement-input.ts';

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
 * Start a new conversation, or resume one by id (its active branch is rebuilt from the store;
 * only the socket's own user's conversations resume, others are `unknown_conversation`).
 * Answered by `conversation`. Who the user is comes from the upgrade request (API key, session
 * cookie, or local mode's anonymous cookie); `userId` is accepted for old clients and ignored.
 * @example { "type": "start", "system": "You are terse." }
 * @example { "type": "start", "conversationId": "01JDX3M8Q4T1V9R2K7Z5N6P0AB" }
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
 * `reply`s tagged `candidate: 0|1`, then `candidates`.
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

/**
 * Thumbs up or down on an assistant message (a reason only with down). Answered by `feedback_ack`.
 * The judgement messages take their fields and bounds from `feedback/judgement-input.ts` (the
 * store's one schema); a refused field gets the store's code (`comment_too_long`, …).
 * Only replies shown to this user (in their own conversations) can be judged; others are `unknown_message`.
 * @example { "type": "thumb", "messageId": "01J…", "value": "down", "reason": "not_factual" }
 */
export const ThumbSchema = z.strictObject({ type: z.literal('thumb'), requestId, ...JUDGEMENT_FIELDS.thumb });

/**
 * A pairwise pick between two sibling replies. Answered by `feedback_ack`.
 * @example { "type": "comparison", "a": "01J…", "b": "01J…", "choice": "a" }
 */
export const ComparisonSchema = z.strictObject({ type: z.literal('comparison'), requestId, ...JUDGEMENT_FIELDS.comparison });

/**
 * A ranking of 2–16 sibling replies, best first. Answered by `feedback_ack`.
 * @example { "type": "ranking", "candidates": ["01J…a", "01J…b", "01J…c"] }
 */
export const RankingSchema = z.strictObject({ type: z.literal('ranking'), requestId, ...JUDGEMENT_FIELDS.ranking });

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
export type Parsed = { ok: true; msg: ClientMessage } | { ok: false; code: string; message: string; requestId?: string };

const JUDGEMENT_TYPES: ReadonlySet<string> = new Set(['thumb', 'comparison', 'ranking']);

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
    if (JUDGEMENT_TYPES.has(obj.type) && issue.path[0] !== 'requestId') {
      const j = judgementIssue(issue);
      if (j.code !== 'invalid_input') return { ok: false, code: j.code, message: `${obj.type}: ${j.message}`, requestId: rid };
    }
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
  /** Sent once on connect; `user` is who the server takes this socket to be. */
  | { type: 'ready'; modelVersion: string; limits: Record<string, number>; heartbeatMs: number; user: { id: string; anonymous: boolean } }
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
    }
  /** After both `compare` replies: the context (the user message) and the two candidates. */
  | { type: 'candidates'; requestId: string; contextId: string; messageIds: string[] }
  /** A judgement was stored (or recognised as a duplicate retry). */
  | { type: 'feedback_ack'; requestId: string; kind: 'thumb' | 'comparison' | 'ranking'; id: string; duplicate: boolean }
  | { type: 'pong'; requestId?: string }
  /** Something was refused; `code` is stable. */
  | { type: 'error'; requestId?: string; code: string; message: string };
