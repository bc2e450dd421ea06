/**
 * Feedback over HTTP, for clients of the OpenAI routes (an Open WebUI pipeline, a script):
 *
 *   POST /v1/feedback   {"type":"thumb","message_id":"…","value":"up"|"down", reason?, comment?}
 *                       {"type":"comparison","a":"…","b":"…","choice":"a"|"b"|"tie"|"both_bad", context_id?, comment?}
 *                       {"type":"ranking","candidates":["best",…,"worst"], context_id?, not_rankable?, comment?}
 *                       every body may carry `idempotency_key` (or the `Idempotency-Key` header)
 *   GET  /v1/feedback?message_id=…   the caller's own current judgements naming that message
 *
 * The same judgement as the WebSocket's `thumb` / `comparison` / `ranking` messages: the fields and
 * bounds of `feedback/judgement-input.ts` (written snake_case, as the OpenAI routes are), the same
 * stable codes, the same per-identity judgement meter, and {@link ChatService.judge}, which takes
 * the rater from the identity (`auth.ts`: the API key's user; in local mode the address) and
 * refuses messages outside the rater's own conversations as `unknown_message`, as if they did not
 * exist. Errors are thrown as `ChatError`s naming the field at fault (`param`); the app's
 * `onError` writes them in OpenAI's shape.
 */
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { JUDGEMENT_FIELDS, judgementIssue } from '../feedback/judgement-input.ts';
import { raterJudgementsOn } from '../feedback/judgement-queries.ts';
import { messagesOwnedBy } from '../feedback/judgements.ts';
import type { Auth, Meter } from './auth.ts';
import type { ChatService } from './chat-service.ts';
import { ChatError } from './errors.ts';
import { apiRoutes, type ApiEnv } from './openai-common.ts';
import { requireJson } from './openai-routes.ts';

export interface FeedbackRouteDeps {
  chat: () => ChatService | undefined;
  auth: Auth;
  meter: Meter;
}

const KINDS = ['thumb', 'comparison', 'ranking'] as const;
type Kind = (typeof KINDS)[number];

const toSnake = (s: string): string => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const toCamel = (s: string): string => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** The wire schemas: the WebSocket's judgement fields, snake_case. */
const wire = (kind: Kind): z.ZodType => z.strictObject({ type: z.literal(kind), ...Object.fromEntries(Object.entries(JUDGEMENT_FIELDS[kind]).map(([k, v]) => [toSnake(k), v as z.ZodType])) });
const BODY: Record<Kind, z.ZodType> = { thumb: wire('thumb'), comparison: wire('comparison'), ranking: wire('ranking') };

/** The fields that name messages, by kind (where an `unknown_message` points). */
const ID_FIELDS: Record<Kind, readonly string[]> = { thumb: ['message_id'], comparison: ['a', 'b'], ranking: ['candidates'] };

/** Reads and validates a judgement body; returns its kind and the judgement in the store's (camelCase) terms. */
async function readJudgement(c: Context): Promise<{ kind: Kind; fields: Record<string, unknown> }> {
  requireJson(c);
  let raw: unknown;
  try {
    raw = JSON.parse(await c.req.text());
  } catch {
    throw new ChatError('invalid_json', 'the request body is not valid JSON');
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ChatError('invalid_request', 'the body is a JSON object with a "type"').withParam('type');
  const body = raw as Record<string, unknown>;
  if (typeof body.type !== 'string') throw new ChatError('invalid_request', `missing "type" (one of ${KINDS.join(', ')})`).withParam('type');
  if (!(KINDS as readonly string[]).includes(body.type)) throw new ChatError('unknown_type', `unknown judgement type ${JSON.stringify(body.type.slice(0, 40))}; known: ${KINDS.join(', ')}`).withParam('type');
  const kind = body.type as Kind;
  const header = c.req.header('idempotency-key');
  if (header !== undefined) {
    if (body.idempotency_key !== undefined && body.idempotency_key !== header) {
      throw new ChatError('invalid_request', 'the Idempotency-Key header and idempotency_key in the body differ').withParam('idempotency_key');
    }
    body.idempotency_key = header;
  }
  const parsed = BODY[kind].safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const param = issue.code === 'unrecognized_keys' ? issue.keys[0]! : String(issue.path[0] ?? 'body');
    const j = judgementIssue({ ...issue, path: [toCamel(param), ...issue.path.slice(1)] } as z.core.$ZodIssue);
    if (j.code !== 'invalid_input') throw new ChatError(j.code, j.message).withParam(param);
    const what = issue.code === 'unrecognized_keys' ? `unknown field ${JSON.stringify(param)}` : `${issue.path.join('.')}: ${issue.message}`;
    throw new ChatError('invalid_request', `${kind}: ${what}`).withParam(param);
  }
  const { type: _t, ...rest } = parsed.data as Record<string, unknown>;
  return { kind, fields: Object.fromEntries(Object.entries(rest).map(([k, v]) => [toCamel(k), v])) };
}

/** The field of a judgement body that holds `id` (for `param`). */
function fieldOf(kind: Kind, fields: Record<string, unknown>, id: string): string {
  for (const f of ID_FIELDS[kind]) {
    const v = fields[toCamel(f)];
    if (v === id || (Array.isArray(v) && v.includes(id))) return f;
  }
  return ID_FIELDS[kind][0]!;
}

/** The field a refused judgement points at, from the store's code (and the id its message names). */
function paramOf(kind: Kind, fields: Record<string, unknown>, error: { code: string; message: string }): string | undefined {
  const first = ID_FIELDS[kind][0]!;
  switch (error.code) {
    case 'unknown_message':
    case 'not_assistant_message': {
      const id = /^(?:no )?message (\S+)/.exec(error.message)?.[1];
      return id !== undefined ? fieldOf(kind, fields, id) : first;
    }
    case 'context_mismatch':
    case 'conversation_mismatch':
      return fields.contextId !== undefined ? 'context_id' : first;
    case 'duplicate_candidate':
      return kind === 'comparison' ? 'b' : 'candidates';
    case 'invalid_reason':
      return 'reason';
    case 'idempotency_conflict':
      return 'idempotency_key';
    default:
      return undefined;
  }
}

/** A stored judgement as the GET route shows it. */
function row(kind: Kind, r: Record<string, unknown>): Record<string, unknown> {
  const common = { object: 'feedback', type: kind, id: r.id, comment: r.comment ?? null, created_at: r.created_at };
  if (kind === 'thumb') return { ...common, message_id: r.message_id, value: r.value, reason: r.reason ?? null };
  if (kind === 'comparison') return { ...common, context_id: r.context_id, a: r.a_id, b: r.b_id, choice: r.choice };
  return { ...common, context_id: r.context_id, candidates: r.candidates, not_rankable: r.not_rankable === 1 };
}

export function feedbackRoutes(deps: FeedbackRouteDeps): Hono<ApiEnv> {
  const { app, need } = apiRoutes(deps);

  app.post('/', async (c) => {
    const chat = need();
    const who = c.get('identity');
    const { kind, fields } = await readJudgement(c);
    deps.meter.judgement(who); // rate_limited past judgementsPerMinute, as on the WebSocket
    const r = await chat.judge(who, { kind, ...fields } as Parameters<ChatService['judge']>[1]);
    if (!r.ok) {
      const param = paramOf(kind, fields, r.error);
      const e = new ChatError(r.error.code, r.error.message);
      throw param ? e.withParam(param) : e;
    }
    return c.json({ object: 'feedback', id: r.id, type: r.kind, duplicate: r.duplicate, ...(r.revealed ? { revealed: r.revealed } : {}) }, r.duplicate ? 200 : 201);
  });

  app.get('/', async (c) => {
    const chat = need();
    const who = c.get('identity');
    const messageId = c.req.query('message_id');
    if (!messageId) throw new ChatError('invalid_request', 'give the message: GET /v1/feedback?message_id=…').withParam('message_id');
    if (messageId.length > 64) throw new ChatError('invalid_request', 'message_id is at most 64 characters').withParam('message_id');
    const { db } = chat.deps.store;
    if (!(await messagesOwnedBy(db, who.userId, [messageId])).has(messageId)) throw new ChatError('unknown_message', `no message ${messageId}`).withParam('message_id');
    const mine = await raterJudgementsOn(db, messageId, who.userId);
    const data = [...mine.thumbs.map((t) => row('thumb', t)), ...mine.comparisons.map((x) => row('comparison', x)), ...mine.rankings.map((x) => row('ranking', x))];
    return c.json({ object: 'list', message_id: messageId, data });
  });

  return app;
}
