/**
 * OpenAI-compatible routes: `GET /v1/models` and `POST /v1/chat/completions`, streaming (SSE
 * `chat.completion.chunk`s, then `data: [DONE]`) and not. The official `openai` client works
 * against them unchanged.
 *
 * Choices made here:
 *  1. `model` in a request may be any string (clients often hard-code one); responses name the
 *     version actually served, which is also the one id `/v1/models` lists.
 *  2. Each request is stored as a new conversation of the caller (the API key's user, see
 *     `auth.ts`; `user` in the body is ignored), its messages as a chain and its `n` choices as
 *     sibling replies with their generation records.
 *  5. Once any API key exists every route needs `Authorization: Bearer <key>` (401
 *     `invalid_api_key` otherwise); limits are per identity, never per bearer value.
 *  3. Consecutive messages of the same role are joined with a blank line, `developer` counts as
 *     `system`, and content parts other than text are refused.
 *  4. Non-standard extras, ignored by clients: each choice carries `message_id` (the stored reply,
 *     for feedback) on the final chunk / in the response.
 */
import { randomBytes } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { streamSSE } from 'hono/streaming';
import { z } from 'zod';
import type { ChatMessage } from '../model/chat-template.ts';
import type { Auth, Identity, Meter } from './auth.ts';
import type { ChatService, StoredReply } from './chat-service.ts';
import { ChatError } from './errors.ts';

/** At most this many stop strings, each at most this many characters. */
export const MAX_STOPS = 4;
export const MAX_STOP_LENGTH = 64;

const ContentPart = z.looseObject({ type: z.string(), text: z.string().optional() });

const MessageSchema = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(ContentPart)]).nullable().optional(),
  name: z.string().optional(),
});

/** The request fields the server honours (others are accepted and ignored). */
export const ChatCompletionRequestSchema = z.looseObject({
  model: z.string().min(1).max(256),
  messages: z.array(MessageSchema).min(1).max(1000),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  max_tokens: z.number().int().positive().nullable().optional(),
  max_completion_tokens: z.number().int().positive().nullable().optional(),
  // Bounded like the WebSocket's `stop`: the decoder holds back text that could start a stop string.
  stop: z.union([z.string().min(1).max(MAX_STOP_LENGTH), z.array(z.string().min(1).max(MAX_STOP_LENGTH)).max(MAX_STOPS)]).nullable().optional(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  n: z.number().int().positive().nullable().optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullable().optional(),
  user: z.string().max(256).optional(),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>;

export interface OpenAIDeps {
  chat: () => ChatService | undefined;
  auth: Auth;
  meter: Meter;
  maxN: number;
}

/** Normalises OpenAI messages to the chat template's turns. */
export function toChatMessages(messages: ChatCompletionRequest['messages']): ChatMessage[] {
  const out: ChatMessage[] = [];
  messages.forEach((m, i) => {
    const role = m.role === 'developer' ? 'system' : m.role;
    let content: string;
    if (typeof m.content === 'string') content = m.content;
    else if (m.content == null) content = '';
    else {
      const bad = m.content.find((p) => p.type !== 'text' || typeof p.text !== 'string');
      if (bad) throw new ChatError('invalid_request', `messages[${i}].content: only text parts are supported, got ${JSON.stringify(bad.type)}`);
      content = m.content.map((p) => p.text).join('');
    }
    const last = out[out.length - 1];
    if (last && last.role === role) last.content += `\n\n${content}`;
    else out.push({ role, content });
  });
  if (out.some((m, i) => m.role === 'system' && i > 0)) throw new ChatError('invalid_request', 'system (or developer) messages may only come first');
  if (out[out.length - 1]?.role !== 'user') throw new ChatError('invalid_request', 'the last message must be from the user');
  return out;
}

function peerAddress(c: Context): string {
  const incoming = (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming;
  return incoming?.socket?.remoteAddress ?? 'unknown';
}

const IDENTITY = 'identity' as const;
/** JSON routes refuse other bodies (415): a cross-site form can post `text/plain`, never `application/json`. */
export function requireJson(c: Context): void {
  const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') throw new ChatError('unsupported_media_type', `send the body as application/json, not ${JSON.stringify(type || 'nothing')}`, 415);
}

function finishReason(r: StoredReply['result']['finishReason']): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

/** The routes' Hono environment: the caller's identity, set by the auth middleware. */
export type OpenAIEnv = { Variables: { [IDENTITY]: Identity } };

export function openAIRoutes(deps: OpenAIDeps): Hono<OpenAIEnv> {
  const app = new Hono<OpenAIEnv>();
  const need = (): ChatService => {
    const chat = deps.chat();
    if (!chat) throw new ChatError('not_ready', 'the model is still loading', 503, 1);
    return chat;
  };

  app.use('*', async (c, next) => {
    need();
    c.set(IDENTITY, await deps.auth.forApi({ authorization: c.req.header('authorization'), address: peerAddress(c) }));
    await next();
  });

  app.get('/models', (c) => {
    const m = need().model;
    return c.json({ object: 'list', data: [{ id: m.version, object: 'model', created: m.createdAt, owned_by: 'rlhf-chat' }] });
  });

  app.get('/models/:id', (c) => {
    const m = need().model;
    if (c.req.param('id') !== m.version) throw new ChatError('model_not_found', `no model ${c.req.param('id')}; this server serves ${m.version}`);
    return c.json({ id: m.version, object: 'model', created: m.createdAt, owned_by: 'rlhf-chat' });
  });

  app.post('/chat/completions', async (c) => {
    requireJson(c);
    const chat = need();
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      throw new ChatError('invalid_json', 'the request body is not valid JSON');
    }
    const parsed = ChatCompletionRequestSchema.safeParse(body);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new ChatError('invalid_request', `${issue.path.join('.') || 'body'}: ${issue.message}`);
    }
    const req = parsed.data;
    const n = req.n ?? 1;
    if (n > deps.maxN) throw new ChatError('invalid_request', `n is at most ${deps.maxN}`);
    const who = c.get(IDENTITY);
    // Metered per identity before tokenizing: the prompt's cost is paid only within the limit.
    const leave = deps.meter.enter(who); // rate_limited / overloaded, held until the replies are done
    let thread: Awaited<ReturnType<ChatService['startThread']>>;
    let opts: ReturnType<ChatService['options']>;
    try {
      const messages = toChatMessages(req.messages);
      const stop = req.stop == null ? undefined : typeof req.stop === 'string' ? [req.stop] : req.stop;
      opts = chat.options({
        temperature: req.temperature ?? undefined,
        topP: req.top_p ?? undefined,
        maxTokens: req.max_completion_tokens ?? req.max_tokens ?? undefined,
        seed: req.seed ?? undefined,
        stop,
      });
      chat.prompt(messages, opts.maxTokens); // refuse a prompt that cannot fit before storing anything
      chat.admit(n); // overloaded / store_unavailable before anything is stored
      thread = await chat.startThread(who, messages);
    } catch (err) {
      leave();
      throw err;
    }
    const { conversationId, context } = thread;
    const conv = { id: conversationId };
    const replyRun = (onDelta?: (i: number, text: string) => void) => {
      try {
        const run = chat.reply(undefined, conv.id, context, opts, n, 'openai', onDelta);
        run.done.then(leave, leave);
        return run;
      } catch (err) {
        leave();
        throw err;
      }
    };

    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const model = chat.model.version;
    const signal = c.req.raw.signal;

    if (!req.stream) {
      const run = replyRun();
      const onAbort = () => run.cancel();
      signal.addEventListener('abort', onAbort, { once: true });
      let replies: StoredReply[];
      try {
        replies = await run.done;
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
      const prompt = replies[0]!.result.promptTokens;
      const completion = replies.reduce((a, r) => a + r.result.completionTokens, 0);
      return c.json({
        id,
        object: 'chat.completion',
        created,
        model,
        system_fingerprint: model,
        choices: replies.map((r) => ({
          index: r.candidate,
          message: { role: 'assistant', content: r.content, refusal: null },
          logprobs: null,
          finish_reason: finishReason(r.result.finishReason),
          message_id: r.messageId,
        })),
        usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
      });
    }

    const includeUsage = req.stream_options?.include_usage === true;
    const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
      JSON.stringify({ id, object: 'chat.completion.chunk', created, model, system_fingerprint: model, choices, ...extra });
    // Deltas arrive from the decode loop synchronously; they are queued and written in order,
    // whatever accumulated going out as one write. After the first text is written, a write
    // waits until `deltaCoalesceMs` after the previous one (as the WebSocket's frames do).
    const lines: string[] = [];
    let textQueued = false;
    let wake: (() => void) | undefined;
    const push = (line: string) => {
      lines.push(line);
      wake?.();
    };
    for (let i = 0; i < n; i++) push(chunk([{ index: i, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
    const run = replyRun((i, text) => {
      textQueued = true;
      push(chunk([{ index: i, delta: { content: text }, logprobs: null, finish_reason: null }]));
    });
    let finished = false;
    run.done
      .then((replies) => {
        for (const r of replies) push(chunk([{ index: r.candidate, delta: {}, logprobs: null, finish_reason: finishReason(r.result.finishReason), message_id: r.messageId }]));
        if (includeUsage) {
          const prompt = replies[0]!.result.promptTokens;
          const completion = replies.reduce((a, r) => a + r.result.completionTokens, 0);
          push(chunk([], { usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion } }));
        }
        push('[DONE]');
      })
      .catch((err: unknown) => {
        const e = err instanceof ChatError ? err : new ChatError('internal_error', 'internal error');
        push(JSON.stringify({ error: { message: e.message, type: 'server_error', code: e.code, param: null } }));
      })
      .finally(() => {
        finished = true;
        wake?.();
      });
    return streamSSE(c, async (stream) => {
      stream.onAbort(() => run.cancel());
      signal.addEventListener('abort', () => run.cancel(), { once: true });
      const prof = chat.deps.scheduler.profile;
      const coalesceMs = chat.deps.config.deltaCoalesceMs;
      let textWritten = false;
      let lastWrite = -Infinity;
      for (;;) {
        if (lines.length) {
          if (stream.aborted) return;
          const since = performance.now() - lastWrite;
          if (textWritten && !finished && since < coalesceMs) {
            await new Promise((r) => setTimeout(r, coalesceMs - since));
            continue;
          }
          textWritten ||= textQueued;
          lastWrite = performance.now();
          const batch = lines.map((l) => `data: ${l}\n\n`).join('');
          lines.length = 0;
          const t = prof.now();
          const written = stream.write(batch);
          prof.wrote(t);
          await written;
          continue;
        }
        if (finished) return;
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    });
  });

  return app;
}
