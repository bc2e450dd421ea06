/**
 * What the OpenAI routes share: the JSON body and its validation (errors naming the field at
 * fault in `param`), the parameter policy (every field is honoured, ignored by design, or refused
 * with `unsupported_parameter`; none is silently dropped), the sampling fields both routes honour
 * (penalties, `logit_bias`), token texts for log-probabilities, and the SSE writer.
 *
 * The policy, per route (`CHAT_FIELDS`, `COMPLETION_FIELDS`):
 *  - honoured: validated and used;
 *  - ignored by design: `user` (the caller's identity comes from the API key, never the body);
 *  - refused unless it asks for nothing (`null`, an empty list, `"none"`, `{"type":"text"}`, …):
 *    the fields of `REFUSED`, which ask for what this model cannot do (tools, structured output,
 *    audio, …);
 *  - any other field: refused (`unsupported_parameter`, `param` = the field).
 */
import { Hono, type Context } from 'hono';
import type { Auth, Identity } from './auth.ts';
import type { ChatService } from './chat-service.ts';
import { streamSSE } from 'hono/streaming';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { ServerResponse } from 'node:http';
import { z } from 'zod';
import type { TokenChoice } from '../model/sampling.ts';
import { SPECIAL_TOKENS, type Tokenizer } from '../model/tokenizer.ts';
import type { ServeProfile } from './serve-profile.ts';
import { ChatError } from './errors.ts';

/** At most this many stop strings, each at most this many characters. */
export const MAX_STOPS = 4;
export const MAX_STOP_LENGTH = 64;
/** Most alternatives per token (`top_logprobs`, and `logprobs` of `/v1/completions`). */
export const MAX_TOP_LOGPROBS = 20;
/** Most `logit_bias` entries. */
export const MAX_LOGIT_BIAS = 1024;

export const stopField = z.union([z.string().min(1).max(MAX_STOP_LENGTH), z.array(z.string().min(1).max(MAX_STOP_LENGTH)).max(MAX_STOPS)]).nullable().optional();
export const penaltyField = z.number().min(-2).max(2).nullable().optional();
export const logitBiasField = z
  .record(z.string().regex(/^\d+$/, 'keys are token ids'), z.number().min(-100).max(100))
  .refine((r) => Object.keys(r).length <= MAX_LOGIT_BIAS, `at most ${MAX_LOGIT_BIAS} entries`)
  .nullable()
  .optional();

/**
 * The request fields the chat and completion routes take alike, in three groups so each schema
 * keeps its own field order: the sampling knobs, what and how to return, and the adjustments of
 * the logits (with `user`).
 */
export const SAMPLING_FIELDS = {
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
};
export const RETURN_FIELDS = {
  // Bounded like the WebSocket's `stop`: the decoder holds back text that could start a stop string.
  stop: stopField,
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  n: z.number().int().positive().nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullable().optional(),
};
export const ADJUSTMENT_FIELDS = {
  presence_penalty: penaltyField,
  frequency_penalty: penaltyField,
  logit_bias: logitBiasField,
  user: z.string().max(256).optional(),
};

/** A value asks for nothing: absent, null, false, an empty list or object. */
function asksNothing(v: unknown): boolean {
  return v == null || v === false || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0);
}

/**
 * Fields that ask for what this model cannot do, each with the values that ask for nothing (then
 * accepted; default: absent, null, false, an empty list or object). Anything else is
 * `400 unsupported_parameter` naming the field.
 */
export const REFUSED: Readonly<Record<string, { why: string; accepts?: (v: unknown) => boolean }>> = Object.freeze({
  tools: { why: 'this model cannot call tools' },
  tool_choice: { why: 'this model cannot call tools', accepts: (v) => v == null || v === 'none' },
  parallel_tool_calls: { why: 'this model cannot call tools' },
  functions: { why: 'this model cannot call functions' },
  function_call: { why: 'this model cannot call functions', accepts: (v) => v == null || v === 'none' },
  response_format: { why: 'only plain text output is supported', accepts: (v) => v == null || (typeof v === 'object' && (v as { type?: unknown }).type === 'text') },
  modalities: { why: 'only text output is supported', accepts: (v) => v == null || (Array.isArray(v) && v.every((m) => m === 'text')) },
  audio: { why: 'only text output is supported' },
  prediction: { why: 'predicted outputs are not supported' },
  web_search_options: { why: 'this model cannot search the web' },
  reasoning_effort: { why: 'this model does not reason in hidden tokens' },
  verbosity: { why: 'this model has no verbosity control' },
  service_tier: { why: 'there is one service tier', accepts: (v) => v == null || v === 'auto' || v === 'default' },
  store: { why: 'every chat completion is stored (for feedback); store: false cannot be honoured', accepts: (v) => v == null || v === true },
  metadata: { why: 'stored requests carry no metadata' },
  suffix: { why: 'insertion (text after the completion) is not supported' },
  best_of: { why: 'best-of per request is not supported (a version the online loop trained already answers with the best of RERANK_N samples by its reward model; ask for n choices and pick)', accepts: (v) => v == null || v === 1 },
});

/** Fields a route honours or ignores by design. */
export const CHAT_FIELDS: readonly string[] = [
  'model', 'messages', 'temperature', 'top_p', 'max_tokens', 'max_completion_tokens', 'stop', 'seed', 'n', 'stream', 'stream_options',
  'logprobs', 'top_logprobs', 'presence_penalty', 'frequency_penalty', 'logit_bias', 'user',
];
export const COMPLETION_FIELDS: readonly string[] = [
  'model', 'prompt', 'temperature', 'top_p', 'max_tokens', 'stop', 'seed', 'n', 'stream', 'stream_options', 'echo', 'logprobs',
  'presence_penalty', 'frequency_penalty', 'logit_bias', 'user',
];

/** Throws `unsupported_parameter` (param = the field) for the first field of `body` the route cannot honour. */
export function refuseUnsupported(body: Record<string, unknown>, known: readonly string[], route: string): void {
  for (const [field, value] of Object.entries(body)) {
    if (known.includes(field)) continue;
    const refused = REFUSED[field];
    if (refused && (refused.accepts ?? asksNothing)(value)) continue;
    const why = refused ? refused.why : `${route} does not support it`;
    throw new ChatError('unsupported_parameter', `${field} is not supported: ${why}`, 400, undefined, field);
  }
}

/** A zod issue's path as OpenAI names fields: `messages[0].content`. */
export function paramOf(path: readonly PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${String(p)}`)).join('');
}

/** JSON routes refuse other bodies (415): a cross-site form can post `text/plain`, never `application/json`. */
export function requireJson(c: Context): void {
  const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') throw new ChatError('unsupported_media_type', `send the body as application/json, not ${JSON.stringify(type || 'nothing')}`, 415);
}

/** The JSON body of a request, checked against the route's fields (`known`) and its schema. */
export async function parseBody<S extends z.ZodType>(c: Context, schema: S, known: readonly string[], route: string): Promise<z.infer<S>> {
  requireJson(c);
  let body: unknown;
  try {
    body = await c.req.json();
  } catch {
    throw new ChatError('invalid_json', 'the request body is not valid JSON');
  }
  if (typeof body === 'object' && body !== null && !Array.isArray(body)) refuseUnsupported(body as Record<string, unknown>, known, route);
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const param = paramOf(issue.path);
    throw new ChatError('invalid_request', `${param || 'body'}: ${issue.message}`, 400, undefined, param || undefined);
  }
  return parsed.data;
}

/** `logit_bias` as `[tokenId, bias]` pairs, every id checked against the vocabulary. */
export function logitBiasPairs(bias: Record<string, number> | null | undefined, vocabSize: number): [number, number][] {
  const pairs: [number, number][] = [];
  for (const [key, value] of Object.entries(bias ?? {})) {
    const id = Number(key);
    if (!Number.isSafeInteger(id) || id >= vocabSize) throw new ChatError('invalid_request', `logit_bias: ${key} is not a token id (the vocabulary has ids 0 to ${vocabSize - 1})`, 400, undefined, 'logit_bias');
    pairs.push([id, value]);
  }
  return pairs;
}

/** A token's text as the log-probability fields show it: the special's name for a special, else its bytes decoded (U+FFFD for a partial character). */
export function tokenText(tok: Tokenizer, id: number): string {
  if (tok.isSpecial(id)) return SPECIAL_TOKENS.find((name) => tok.specialId(name) === id) ?? '';
  return tok.decode([id]);
}

/** A token in OpenAI's chat log-probability shape. */
export function chatToken(tok: Tokenizer, t: TokenChoice): { token: string; logprob: number; bytes: number[] } {
  return { token: tokenText(tok, t.id), logprob: t.logprob, bytes: Array.from(tok.bytesOf(t.id)) };
}

/** Runs `make` (the sampling options of a request), naming `lengthField` in a `max_tokens_too_large` it throws. */
export function withLengthParam<T>(lengthField: string, make: () => T): T {
  try {
    return make();
  } catch (err) {
    throw err instanceof ChatError && err.code === 'max_tokens_too_large' ? err.withParam(lengthField) : err;
  }
}

/** `prompt_too_long` as OpenAI clients look for it (`context_length_exceeded`, naming `param`). */
export function asContextError(err: unknown, param: string): unknown {
  if (err instanceof ChatError && err.code === 'prompt_too_long') return new ChatError('context_length_exceeded', err.message, 400, undefined, param);
  return err;
}

/** An error in OpenAI's shape, for a stream that already started. */
export function errorEvent(err: unknown): string {
  const e = err instanceof ChatError ? err : new ChatError('internal_error', 'internal error');
  return JSON.stringify({ error: { message: e.message, type: 'server_error', code: e.code, param: e.param ?? null } });
}

/** How `sseQueue` writes. */
export interface SseQueueOptions {
  /** After the first two writes (the role chunks, the first text), a write waits until this long after the previous one, so deltas under load go out together (default 0). */
  coalesceMs?: number;
  /** Where socket writes are timed (the scheduler's profile). */
  profile?: ServeProfile;
}

/** A string standing where a chunk's text goes, to split the chunk around it (`jsonAround`); no delta is it. */
export const TEXT_SLOT = '\u0000text slot\u0000';

/** A chunk split around its text: the event of a text is `head + JSON.stringify(text) + tail`. */
export interface TextChunk {
  head: string;
  tail: string;
}

/**
 * `json`, made with the string `slot` as its last string value, split around it: `head +
 * JSON.stringify(text) + tail` is then the same JSON with `text` in its place.
 */
export function jsonAround(json: string, slot: string = TEXT_SLOT): TextChunk {
  const quoted = JSON.stringify(slot);
  const at = json.lastIndexOf(quoted);
  if (at < 0) throw new Error('jsonAround: the slot is not in the JSON');
  return { head: json.slice(0, at), tail: json.slice(at + quoted.length) };
}

/** What `sseQueue` returns. */
export interface SseQueue {
  /** Queues one event's data. */
  push: (data: string) => void;
  /**
   * Queues a text delta of `chunk`: deltas of the same chunk queued one after another, with no
   * other event between them, go out as one event of their joined text (so under load a stream
   * sends an event per write, not per token).
   */
  text: (chunk: TextChunk, text: string) => void;
  /** Closes the stream after the queued events. */
  end: () => void;
  response: () => Response;
}

/** The SSE response's headers (those of Hono's `streamSSE`). */
const SSE_HEADERS = { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' };

/**
 * An SSE response fed by a queue: lines pushed synchronously (from the decode loop) are written
 * in order, every line queued meanwhile in one write; `end()` closes the stream after the queued
 * lines; `onAbort` runs when the client goes.
 *
 * On Node's HTTP server (the product's) the lines go straight to the `ServerResponse`, from the
 * push that finds the last write `coalesceMs` old, else from one timer; a full socket buffer
 * holds the queue until it drains. Elsewhere (Hono's in-memory `app.request`) the same queue
 * feeds Hono's `streamSSE`.
 */
export function sseQueue(c: Context, onAbort: () => void, opts: SseQueueOptions = {}): SseQueue {
  const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
  return outgoing instanceof ServerResponse ? nodeSse(outgoing, onAbort, opts) : webSse(c, onAbort, opts);
}

/**
 * A text delta held in the queue. Deltas of one chunk queued one after another (under load,
 * within one coalescing wait) join into one event.
 */
interface HeldText {
  chunk: TextChunk;
  text: string;
}

/**
 * What both writers share: the lines queued since the last write, and the rule for when the next
 * write goes. After the first two writes (the role chunks, the first text), a write waits until
 * `coalesceMs` after the previous one, unless the stream has ended.
 */
class SseLines {
  readonly lines: (string | HeldText)[] = [];
  finished = false;
  #writes = 0;
  #lastWrite = -Infinity;
  constructor(
    readonly coalesceMs: number,
    readonly profile?: ServeProfile,
  ) {}

  /** Queues a text delta, joined to the line before it when that is a text delta of the same chunk. */
  text(chunk: TextChunk, text: string): void {
    const last = this.lines[this.lines.length - 1];
    if (last !== undefined && typeof last !== 'string' && last.chunk === chunk) last.text += text;
    else this.lines.push({ chunk, text });
  }

  /** Milliseconds until the next write may go (0: now). */
  wait(): number {
    const since = performance.now() - this.#lastWrite;
    return this.#writes >= 2 && !this.finished && since < this.coalesceMs ? this.coalesceMs - since : 0;
  }

  /** Hands every queued line to `write` as one batch, timed as a socket write; returns what `write` returned. */
  flush<T>(write: (batch: string) => T): T {
    let batch = '';
    for (const l of this.lines) batch += `data: ${typeof l === 'string' ? l : l.chunk.head + JSON.stringify(l.text) + l.chunk.tail}\n\n`;
    this.lines.length = 0;
    this.#writes++;
    this.#lastWrite = performance.now();
    const t = this.profile?.now() ?? 0;
    const out = write(batch);
    this.profile?.wrote(t);
    return out;
  }
}

function nodeSse(res: ServerResponse, onAbort: () => void, opts: SseQueueOptions): SseQueue {
  const q = new SseLines(opts.coalesceMs ?? 0, opts.profile);
  let started = false;
  let gone = false;
  let draining = false;
  let timer: NodeJS.Timeout | undefined;
  res.on('close', () => {
    gone = true;
    clearTimeout(timer);
    if (!res.writableFinished) onAbort();
  });
  const flush = () => {
    timer = undefined;
    if (gone || draining) return;
    if (q.lines.length && !q.flush((batch) => res.write(batch))) {
      draining = true;
      res.once('drain', () => {
        draining = false;
        schedule();
      });
      return;
    }
    if (q.finished) res.end();
  };
  const schedule = () => {
    if (!started || gone || draining || timer) return;
    const wait = q.wait();
    if (wait > 0) timer = setTimeout(flush, wait);
    else flush();
  };
  return {
    push: (line) => {
      q.lines.push(line);
      schedule();
    },
    text: (chunk, text) => {
      q.text(chunk, text);
      schedule();
    },
    end: () => {
      q.finished = true;
      clearTimeout(timer);
      timer = undefined;
      schedule();
    },
    response: () => {
      res.writeHead(200, SSE_HEADERS);
      started = true;
      schedule();
      return RESPONSE_ALREADY_SENT;
    },
  };
}

function webSse(c: Context, onAbort: () => void, opts: SseQueueOptions): SseQueue {
  const q = new SseLines(opts.coalesceMs ?? 0, opts.profile);
  let wake: (() => void) | undefined;
  const push = (line: string) => {
    q.lines.push(line);
    wake?.();
  };
  const text = (chunk: TextChunk, t: string) => {
    q.text(chunk, t);
    wake?.();
  };
  const end = () => {
    q.finished = true;
    wake?.();
  };
  const response = () =>
    streamSSE(c, async (stream) => {
      stream.onAbort(onAbort);
      c.req.raw.signal.addEventListener('abort', onAbort, { once: true });
      for (;;) {
        if (q.lines.length) {
          if (stream.aborted) return;
          const wait = q.wait();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          else await q.flush((batch) => stream.write(batch));
          continue;
        }
        if (q.finished) return;
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    });
  return { push, text, end, response };
}

/** OpenAI's `usage`. */
export function usage(promptTokens: number, completionTokens: number): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

/** Where the request came from (the TCP peer). */
export function peerAddress(c: Context): string {
  const incoming = (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming;
  return incoming?.socket?.remoteAddress ?? 'unknown';
}

/** The Hono environment of the HTTP API routes: the caller's identity, set by {@link apiRoutes}' middleware. */
export type ApiEnv = { Variables: { identity: Identity } };

/**
 * A Hono app for API routes (`/v1/...`), and `need()`, the chat service or `not_ready` (503)
 * while the model loads. Its middleware refuses while loading, then identifies the caller (a
 * Bearer key, or local mode) before any route runs: `c.get('identity')`.
 * @example
 * const { app, need } = apiRoutes(deps);
 * app.post('/', async (c) => need().judge(c.get('identity'), …));
 */
export function apiRoutes(deps: { chat: () => ChatService | undefined; auth: Auth }): { app: Hono<ApiEnv>; need: () => ChatService } {
  const app = new Hono<ApiEnv>();
  const need = (): ChatService => {
    const chat = deps.chat();
    if (!chat) throw new ChatError('not_ready', 'the model is still loading', 503, 1);
    return chat;
  };
  app.use('*', async (c, next) => {
    need();
    c.set('identity', await deps.auth.forApi({ authorization: c.req.header('authorization'), address: peerAddress(c) }));
    await next();
  });
  return { app, need };
}
