/**
 * OpenAI-compatible routes: `GET /v1/models`, `POST /v1/chat/completions` and `POST
 * /v1/completions` (openai-completions.ts), streaming (SSE chunks, then `data: [DONE]`) and not.
 * The official `openai` client works against them unchanged.
 *
 * Choices made here:
 *  1. `model` selects what decodes the request: `champion`, `candidate`, `sft` or a registered
 *     policy version id (loaded on demand when neither champion nor candidate, see
 *     `ModelRegistry.select`); any other name (clients hard-code `gpt-4o`) gets the default arm:
 *     the champion, or the candidate for the canary's share of conversations. The response's
 *     `model` and `system_fingerprint` name the version that decoded it, fixed when the request
 *     was submitted (a swap meanwhile does not change it).
 *  2. Each chat request is stored as a new conversation of the caller (the API key's user, see
 *     `auth.ts`; `user` in the body is ignored), its messages as a chain and its `n` choices as
 *     sibling replies with their generation records.
 *  3. Once any API key exists every route needs `Authorization: Bearer <key>` (401
 *     `invalid_api_key` otherwise); limits are per identity, never per bearer value.
 *  4. Consecutive messages of the same role are joined with a blank line, `developer` counts as
 *     `system`, and content parts other than text are refused.
 *  5. Every body field is honoured, ignored by design (`user`) or refused with
 *     `unsupported_parameter` (openai-common.ts); errors name the field at fault in `param`, and a
 *     prompt that cannot fit is `context_length_exceeded`.
 *  6. `logprobs` are those of the distribution each token was drawn from (after logit_bias, the
 *     penalties, temperature, top-p: see model/sampling.ts); at temperature 0 a point mass on
 *     the greedy token (log-probability 0, one alternative).
 *  7. Non-standard extras, ignored by clients: each choice carries `message_id` (the stored reply,
 *     for feedback) on the final chunk / in the response.
 */
import { randomBytes } from 'node:crypto';
import { Hono } from 'hono';
import { z } from 'zod';
import type { ChatMessage } from '../model/chat-template.ts';
import type { TokenLogprob } from '../model/generate.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import type { Auth, Meter } from './auth.ts';
import type { ChatService, StoredReply } from './chat-service.ts';
import { ChatError } from './errors.ts';
import type { ServedModel } from './model-host.ts';
import type { ModelTarget } from './model-registry.ts';
import {
  ADJUSTMENT_FIELDS,
  apiRoutes,
  asContextError,
  CHAT_FIELDS,
  type ApiEnv,
  chatToken,
  errorEvent,
  jsonAround,
  logitBiasPairs,
  MAX_TOP_LOGPROBS,
  parseBody,
  RETURN_FIELDS,
  SAMPLING_FIELDS,
  sseQueue,
  TEXT_SLOT,
  type TextChunk,
  usage,
  withLengthParam,
} from './openai-common.ts';
import { completionRoute } from './openai-completions.ts';

export { MAX_STOPS, MAX_STOP_LENGTH, requireJson } from './openai-common.ts';

const ContentPart = z.looseObject({ type: z.string(), text: z.string().optional() });

const MessageSchema = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(ContentPart)]).nullable().optional(),
  name: z.string().optional(),
});

/** The request fields of `/v1/chat/completions` (every other field is refused, see openai-common.ts). */
export const ChatCompletionRequestSchema = z.object({
  model: z.string().min(1).max(256),
  messages: z.array(MessageSchema).min(1).max(1000),
  ...SAMPLING_FIELDS,
  max_tokens: z.number().int().positive().nullable().optional(),
  max_completion_tokens: z.number().int().positive().nullable().optional(),
  ...RETURN_FIELDS,
  logprobs: z.boolean().nullable().optional(),
  top_logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullable().optional(),
  ...ADJUSTMENT_FIELDS,
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
    for (const field of ['tool_calls', 'function_call'] as const) {
      const v = (m as Record<string, unknown>)[field];
      if (v != null && !(Array.isArray(v) && v.length === 0)) throw new ChatError('unsupported_parameter', `messages[${i}].${field}: this model cannot call tools`, 400, undefined, `messages[${i}].${field}`);
    }
    const role = m.role === 'developer' ? 'system' : m.role;
    let content: string;
    if (typeof m.content === 'string') content = m.content;
    else if (m.content == null) content = '';
    else {
      const bad = m.content.findIndex((p) => p.type !== 'text' || typeof p.text !== 'string');
      if (bad >= 0) throw new ChatError('invalid_request', `messages[${i}].content: only text parts are supported, got ${JSON.stringify(m.content[bad]!.type)}`, 400, undefined, `messages[${i}].content[${bad}]`);
      content = m.content.map((p) => p.text).join('');
    }
    const last = out[out.length - 1];
    if (last && last.role === role) last.content += `\n\n${content}`;
    else out.push({ role, content });
  });
  if (out.some((m, i) => m.role === 'system' && i > 0)) throw new ChatError('invalid_request', 'system (or developer) messages may only come first', 400, undefined, 'messages');
  if (out[out.length - 1]?.role !== 'user') throw new ChatError('invalid_request', 'the last message must be from the user', 400, undefined, 'messages');
  return out;
}

const IDENTITY = 'identity' as const;

function finishReason(r: StoredReply['result']['finishReason']): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

/** Chat log-probabilities of some tokens, in OpenAI's shape. */
function chatLogprobs(tok: Tokenizer, tokens: readonly TokenLogprob[]): { content: unknown[]; refusal: null } {
  return { content: tokens.map((t) => ({ ...chatToken(tok, t), top_logprobs: t.top.map((c) => chatToken(tok, c)) })), refusal: null };
}

/** The routes' Hono environment: the caller's identity, set by the auth middleware. */
export type OpenAIEnv = ApiEnv;

export function openAIRoutes(deps: OpenAIDeps): Hono<OpenAIEnv> {
  const { app, need } = apiRoutes(deps);

  const modelObject = (m: ServedModel) => ({ id: m.version, object: 'model', created: m.createdAt, owned_by: 'rlhf-chat' });

  // Every loaded version (the champion first: clients that take the first id get it), then the
  // aliases that point at a version, each with that version (an extra field).
  app.get('/models', async (c) => {
    const chat = need();
    const listing = (await chat.deps.registry?.listing?.()) ?? { aliases: [{ alias: 'champion', versionId: chat.model.version }], loaded: [chat.model] };
    const created = (id: string) => listing.loaded.find((m) => m.version === id)?.createdAt ?? 0;
    const data = [
      ...listing.loaded.map(modelObject),
      ...listing.aliases.map((a) => ({ id: a.alias, object: 'model', created: created(a.versionId), owned_by: 'rlhf-chat', version: a.versionId })),
    ];
    return c.json({ object: 'list', data });
  });

  app.get('/models/:id', async (c) => {
    const chat = need();
    const id = c.req.param('id');
    const listing = (await chat.deps.registry?.listing?.()) ?? { aliases: [{ alias: 'champion', versionId: chat.model.version }], loaded: [chat.model] };
    const alias = listing.aliases.find((a) => a.alias === id);
    const loaded = listing.loaded.find((m) => m.version === (alias?.versionId ?? id));
    if (alias) return c.json({ id, object: 'model', created: loaded?.createdAt ?? 0, owned_by: 'rlhf-chat', version: alias.versionId });
    if (loaded) return c.json(modelObject(loaded));
    throw new ChatError('model_not_found', `no model ${id} is loaded; GET /v1/models lists the aliases and loaded versions`, 404, undefined, 'model');
  });

  app.post('/completions', completionRoute({ need, meter: deps.meter, maxN: deps.maxN, identity: (c) => c.get(IDENTITY) }));

  app.post('/chat/completions', async (c) => {
    const req = await parseBody(c, ChatCompletionRequestSchema, CHAT_FIELDS, '/v1/chat/completions');
    const chat = need();
    const n = req.n ?? 1;
    if (n > deps.maxN) throw new ChatError('invalid_request', `n is at most ${deps.maxN}`, 400, undefined, 'n');
    if (req.top_logprobs != null && req.logprobs !== true) throw new ChatError('invalid_request', 'top_logprobs needs logprobs: true', 400, undefined, 'top_logprobs');
    const who = c.get(IDENTITY);
    // Metered per identity before tokenizing: the prompt's cost is paid only within the limit.
    const leave = deps.meter.enter(who); // rate_limited / overloaded, held until the replies are done
    let thread: Awaited<ReturnType<ChatService['startThread']>>;
    let opts: ReturnType<ChatService['options']>;
    let target: ModelTarget | undefined;
    let model: ServedModel | undefined;
    try {
      target = await chat.selectModel(req.model);
      const checkModel = (target && chat.pickModel(target)) ?? chat.model;
      const messages = toChatMessages(req.messages);
      const stop = req.stop == null ? undefined : typeof req.stop === 'string' ? [req.stop] : req.stop;
      const lengthField = req.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
      opts = withLengthParam(lengthField, () => chat.options({
        temperature: req.temperature ?? undefined,
        topP: req.top_p ?? undefined,
        maxTokens: req.max_completion_tokens ?? req.max_tokens ?? undefined,
        seed: req.seed ?? undefined,
        stop,
        presencePenalty: req.presence_penalty ?? undefined,
        frequencyPenalty: req.frequency_penalty ?? undefined,
        logitBias: logitBiasPairs(req.logit_bias, checkModel.gpt.config.vocabSize),
        logprobs: req.logprobs ? (req.top_logprobs ?? 0) : undefined,
      }));
      try {
        chat.prompt(messages, opts.maxTokens, checkModel); // refuse a prompt that cannot fit before storing anything
      } catch (err) {
        throw asContextError(err, 'messages');
      }
      chat.admit(n); // overloaded / store_unavailable before anything is stored
      thread = await chat.startThread(who, messages);
      // Picked after the last await, so the version cannot be evicted or swapped before the submit.
      model = target && chat.pickModel(target);
      while (target && !model) {
        target = await chat.selectModel(req.model);
        model = target && chat.pickModel(target);
      }
    } catch (err) {
      leave();
      throw err;
    }
    const { conversationId, context } = thread;
    const replyRun = (onDelta?: (i: number, text: string, logprobs: readonly TokenLogprob[]) => void) => {
      try {
        const run = chat.reply(undefined, conversationId, context, opts, n, 'openai', onDelta, model && Array.from({ length: n }, () => model!));
        run.done.then(leave, leave);
        return run;
      } catch (err) {
        leave();
        throw asContextError(err, 'messages');
      }
    };

    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const signal = c.req.raw.signal;
    const wantLogprobs = opts.logprobs !== undefined;

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
      const version = replies[0]!.result.version;
      return c.json({
        id,
        object: 'chat.completion',
        created,
        model: version,
        system_fingerprint: version,
        choices: replies.map((r) => ({
          index: r.candidate,
          message: { role: 'assistant', content: r.content, refusal: null },
          logprobs: wantLogprobs ? chatLogprobs(run.models[r.candidate]!.tok, r.result.logprobs ?? []) : null,
          finish_reason: finishReason(r.result.finishReason),
          message_id: r.messageId,
        })),
        usage: usage(replies[0]!.result.promptTokens, replies.reduce((a, r) => a + r.result.completionTokens, 0)),
      });
    }

    const includeUsage = req.stream_options?.include_usage === true;
    let cancel = () => {};
    const out = sseQueue(c, () => cancel(), { coalesceMs: chat.deps.config.deltaCoalesceMs, profile: chat.deps.scheduler.profile });
    // Deltas arrive from the decode loop synchronously; they are queued and written in order.
    const streamed: number[] = Array.from({ length: n }, () => 0);
    let version = '';
    const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
      JSON.stringify({ id, object: 'chat.completion.chunk', created, model: version, system_fingerprint: version, choices, ...extra });
    const textChunk = (i: number, content: string, lp: readonly TokenLogprob[]) => chunk([{ index: i, delta: { content }, logprobs: wantLogprobs ? chatLogprobs(run.models[i]!.tok, lp) : null, finish_reason: null }]);
    // Without log-probabilities a text delta is queued as text around its choice's chunk, so the
    // deltas that wait for one write join into one chunk.
    let around: TextChunk[] = [];
    const run = replyRun((i, text, lp) => {
      streamed[i]! += lp.length;
      if (wantLogprobs) out.push(textChunk(i, text, lp));
      else out.text(around[i]!, text);
    });
    cancel = () => run.cancel();
    version = run.models[0]!.version;
    if (!wantLogprobs) around = Array.from({ length: n }, (_, i) => jsonAround(textChunk(i, TEXT_SLOT, [])));
    // The role chunks go first: the scheduler decodes nothing before this synchronous run ends.
    for (let i = 0; i < n; i++) out.push(chunk([{ index: i, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
    run.done
      .then((replies) => {
        for (const r of replies) {
          const rest = (r.result.logprobs ?? []).slice(streamed[r.candidate]!);
          if (wantLogprobs && rest.length) out.push(chunk([{ index: r.candidate, delta: { content: '' }, logprobs: chatLogprobs(run.models[r.candidate]!.tok, rest), finish_reason: null }]));
          out.push(chunk([{ index: r.candidate, delta: {}, logprobs: null, finish_reason: finishReason(r.result.finishReason), message_id: r.messageId }]));
        }
        if (includeUsage) out.push(chunk([], { usage: usage(replies[0]!.result.promptTokens, replies.reduce((a, r) => a + r.result.completionTokens, 0)) }));
        out.push('[DONE]');
      })
      .catch((err: unknown) => out.push(errorEvent(err)))
      .finally(out.end);
    return out.response();
  });

  return app;
}
