/**
 * `POST /v1/completions`: OpenAI's (legacy) text completions, streaming and not, as evaluation
 * harnesses call them (lm-evaluation-harness's `local-completions` scores a text with `echo:
 * true`, `logprobs: 1` and `max_tokens` 0 or 1).
 *
 * Choices made here:
 *  1. The prompt is raw text (no chat template): a string, a list of strings, a list of token
 *     ids, or a list of such lists; each prompt gets `n` choices, indexed prompt by prompt.
 *  2. Completions are decoded by the same scheduler as chats but not stored: they are no
 *     conversation, carry no `message_id`, and the store's health does not gate them.
 *  3. `max_tokens` defaults to 16 (as OpenAI's) and may be 0: nothing is generated, which with
 *     `echo` scores the prompt alone. A completion stops at the context window (`length`); only a
 *     prompt that leaves no room (or, scored alone, is over the window) is `context_length_exceeded`.
 *  4. With `echo` and `logprobs`, the prompt's tokens are scored under the model's own
 *     distribution (temperature 1, no cut: nothing was sampled there), the first one `null`; the
 *     generated tokens' log-probabilities are those of the distribution each was drawn from (after
 *     logit_bias, penalties, temperature and top-p; at temperature 0 a point mass: log-probability
 *     0). `text_offset` counts characters from the start of the choice's text.
 */
import { randomBytes } from 'node:crypto';
import type { Context } from 'hono';
import { z } from 'zod';
import { promptLogprobs, type TokenLogprob } from '../model/generate.ts';
import type { TokenChoice } from '../model/sampling.ts';
import { StreamDecoder, type Tokenizer } from '../model/tokenizer.ts';
import type { Identity, Meter } from './auth.ts';
import type { ChatService } from './chat-service.ts';
import { ChatError } from './errors.ts';
import type { ServedModel } from './model-host.ts';
import type { ModelTarget } from './model-registry.ts';
import type { GenerationResult, Job } from './scheduler.ts';
import {
  ADJUSTMENT_FIELDS,
  COMPLETION_FIELDS,
  errorEvent,
  jsonAround,
  logitBiasPairs,
  MAX_TOP_LOGPROBS,
  parseBody,
  RETURN_FIELDS,
  SAMPLING_FIELDS,
  sseQueue,
  type SseQueue,
  TEXT_SLOT,
  type TextChunk,
  tokenText,
  usage,
  withLengthParam,
} from './openai-common.ts';

/** Most prompts in one request. */
export const MAX_PROMPTS = 32;
/** OpenAI's default `max_tokens` for completions. */
export const DEFAULT_COMPLETION_TOKENS = 16;

const TokenIds = z.array(z.number().int().min(0)).min(1);

/** The request fields of `/v1/completions` (every other field is refused, see openai-common.ts). */
export const CompletionRequestSchema = z.object({
  model: z.string().min(1).max(256),
  prompt: z.union([z.string(), z.array(z.string()).min(1).max(MAX_PROMPTS), TokenIds, z.array(TokenIds).min(1).max(MAX_PROMPTS)]),
  max_tokens: z.number().int().min(0).nullable().optional(),
  ...SAMPLING_FIELDS,
  ...RETURN_FIELDS,
  echo: z.boolean().nullable().optional(),
  logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullable().optional(),
  ...ADJUSTMENT_FIELDS,
});
export type CompletionRequest = z.infer<typeof CompletionRequestSchema>;

export interface CompletionDeps {
  need: () => ChatService;
  meter: Meter;
  maxN: number;
  identity: (c: Context) => Identity;
}

/** One prompt: its ids and the text echoed for it. */
interface PromptInput {
  ids: number[];
  text: string;
}

/** Whether the request holds one prompt (a string or one list of ids) rather than a list of them. */
function single(prompt: CompletionRequest['prompt']): boolean {
  return typeof prompt === 'string' || typeof prompt[0] === 'number';
}

/** The field naming prompt `i`: `prompt` for a single one, else `prompt[i]`. */
function promptParam(prompt: CompletionRequest['prompt'], i: number): string {
  return single(prompt) ? 'prompt' : `prompt[${i}]`;
}

/** The request's prompts, encoded (or their ids checked against the vocabulary). */
function prompts(prompt: CompletionRequest['prompt'], tok: Tokenizer): PromptInput[] {
  const list = (single(prompt) ? [prompt] : prompt) as (string | number[])[];
  return list.map((p, i) => {
    if (typeof p === 'string') {
      if (!p) throw new ChatError('invalid_request', 'a prompt is empty', 400, undefined, promptParam(prompt, i));
      return { ids: tok.encode(p), text: p };
    }
    const bad = p.find((id) => id >= tok.vocabSize);
    if (bad !== undefined) throw new ChatError('invalid_request', `token id ${bad} is outside the vocabulary (ids 0 to ${tok.vocabSize - 1})`, 400, undefined, promptParam(prompt, i));
    return { ids: p, text: tok.decode(p) };
  });
}

/** Characters of the decoded text before each token. */
function offsets(tok: Tokenizer, ids: readonly number[]): number[] {
  const dec = new StreamDecoder(tok);
  let at = 0;
  return ids.map((id) => {
    const start = at;
    at += dec.push(id).length;
    return start;
  });
}

/** OpenAI's legacy log-probability lists. */
interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

function topDict(tok: Tokenizer, top: readonly TokenChoice[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of top) {
    const key = tokenText(tok, t.id);
    if (!(key in out)) out[key] = t.logprob; // most likely first: a later token with the same text keeps the first's
  }
  return out;
}

function legacy(tok: Tokenizer, tokens: readonly TokenLogprob[], base: number): LegacyLogprobs {
  return {
    tokens: tokens.map((t) => tokenText(tok, t.id)),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => topDict(tok, t.top)),
    text_offset: tokens.map((t) => base + t.start),
  };
}

/** The echoed prompt's log-probabilities (scored by the model), or the tokens alone with `null`s when not scored. */
function echoLogprobs(tok: Tokenizer, p: PromptInput, scored: ReturnType<typeof promptLogprobs>): LegacyLogprobs {
  return {
    tokens: p.ids.map((id) => tokenText(tok, id)),
    token_logprobs: scored.map((s) => s?.logprob ?? null),
    top_logprobs: scored.map((s) => (s ? topDict(tok, s.top) : null)),
    text_offset: offsets(tok, p.ids),
  };
}

function concat(a: LegacyLogprobs, b: LegacyLogprobs): LegacyLogprobs {
  return { tokens: [...a.tokens, ...b.tokens], token_logprobs: [...a.token_logprobs, ...b.token_logprobs], top_logprobs: [...a.top_logprobs, ...b.top_logprobs], text_offset: [...a.text_offset, ...b.text_offset] };
}

function finishReason(r: GenerationResult['finishReason']): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

/** The `/v1/completions` handler. */
export function completionRoute(deps: CompletionDeps): (c: Context) => Promise<Response> {
  return async (c) => {
    const req = await parseBody(c, CompletionRequestSchema, COMPLETION_FIELDS, '/v1/completions');
    const chat = deps.need();
    const n = req.n ?? 1;
    if (n > deps.maxN) throw new ChatError('invalid_request', `n is at most ${deps.maxN}`, 400, undefined, 'n');
    const leave = deps.meter.enter(deps.identity(c)); // rate_limited / overloaded, held until the choices are done
    let model: ServedModel;
    let inputs: PromptInput[];
    let jobs: { prompt: number; job?: Job }[];
    let scored: ReturnType<typeof promptLogprobs>[];
    const echo = req.echo === true;
    const streamed: number[] = [];
    const topN = req.logprobs ?? undefined;
    try {
      let target: ModelTarget | undefined = await chat.selectModel(req.model);
      let picked = target && chat.pickModel(target);
      while (target && !picked) {
        target = await chat.selectModel(req.model); // evicted meanwhile: load it again
        picked = target && chat.pickModel(target);
      }
      // From here to the submits, no await: the model cannot be swapped out or evicted.
      model = picked ?? chat.deps.scheduler.model;
      const { tok, gpt } = model;
      const { blockSize } = gpt.config;
      inputs = prompts(req.prompt, tok);
      const stop = req.stop == null ? undefined : typeof req.stop === 'string' ? [req.stop] : req.stop;
      const opts = withLengthParam('max_tokens', () =>
        chat.options({
          temperature: req.temperature ?? undefined,
          topP: req.top_p ?? undefined,
          maxTokens: req.max_tokens ?? DEFAULT_COMPLETION_TOKENS,
          seed: req.seed ?? undefined,
          stop,
          presencePenalty: req.presence_penalty ?? undefined,
          frequencyPenalty: req.frequency_penalty ?? undefined,
          logitBias: logitBiasPairs(req.logit_bias, gpt.config.vocabSize),
          logprobs: topN,
        }),
      );
      const generate = opts.maxTokens > 0;
      const { maxPromptTokens } = chat.deps.config;
      inputs.forEach((p, i) => {
        const param = promptParam(req.prompt, i);
        if (p.ids.length > maxPromptTokens) throw new ChatError('context_length_exceeded', `the prompt has ${p.ids.length} tokens; the limit is ${maxPromptTokens}`, 400, undefined, param);
        if (generate ? p.ids.length >= blockSize : p.ids.length > blockSize) {
          throw new ChatError('context_length_exceeded', `the prompt has ${p.ids.length} tokens; the context window is ${blockSize}${generate ? ', with at least one kept for the completion' : ''}`, 400, undefined, param);
        }
      });
      if (generate) chat.admit(inputs.length * n, { stored: false });
      scored = inputs.map((p) => (echo && topN !== undefined ? promptLogprobs(gpt, p.ids, topN) : p.ids.map(() => null)));
      jobs = [];
      try {
        inputs.forEach((p, i) => {
          for (let j = 0; j < n; j++) {
            const seed = (opts.seed + i * n + j) % Number.MAX_SAFE_INTEGER;
            const job = generate ? chat.deps.scheduler.submit({ promptIds: p.ids, opts: { ...opts, seed }, source: 'openai', model, onDelta: (text, lp) => onDelta(i * n + j, text, lp) }) : undefined;
            jobs.push({ prompt: i, job });
          }
        });
      } catch (err) {
        jobs.forEach((j) => j.job?.cancel());
        throw err;
      }
      if (generate) chat.deps.metrics.requests.inc({ source: 'openai' }, jobs.length);
    } catch (err) {
      leave();
      throw err;
    }

    const { tok } = model;
    const version = model.version;
    const id = `cmpl-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const promptTokens = inputs.reduce((a, p) => a + p.ids.length, 0);
    const base = (i: number) => (echo ? inputs[jobs[i]!.prompt]!.text.length : 0);
    const results = Promise.all(
      jobs.map(async ({ prompt, job }): Promise<GenerationResult> => job?.result ?? { text: '', ids: [], finishReason: 'length', promptTokens: inputs[prompt]!.ids.length, completionTokens: 0, latencyMs: 0, version, reusedContext: false, logprobs: [] }),
    );
    results.then(leave, leave);
    const cancel = () => jobs.forEach((j) => j.job?.cancel());

    let out: SseQueue | undefined;
    const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => JSON.stringify({ id, object: 'text_completion', created, model: version, system_fingerprint: version, choices, ...extra });
    // Called from the decode loop, after this synchronous run: `out` is set by then when streaming.
    // The tokens streamed per choice are counted, so the rest goes with its final chunk.
    // Without log-probabilities a text delta is queued as text around its choice's chunk, so the
    // deltas that wait for one write join into one chunk.
    const around: TextChunk[] = [];
    function onDelta(index: number, text: string, lp: readonly TokenLogprob[]): void {
      streamed[index] = (streamed[index] ?? 0) + lp.length;
      if (!out) return;
      if (topN !== undefined) return out.push(chunk([{ index, text, logprobs: legacy(tok, lp, base(index)), finish_reason: null }]));
      out.text((around[index] ??= jsonAround(chunk([{ index, text: TEXT_SLOT, logprobs: null, finish_reason: null }]))), text);
    }

    if (!req.stream) {
      const signal = c.req.raw.signal;
      signal.addEventListener('abort', cancel, { once: true });
      let done: GenerationResult[];
      try {
        done = await results;
      } finally {
        signal.removeEventListener('abort', cancel);
      }
      return c.json({
        id,
        object: 'text_completion',
        created,
        model: version,
        system_fingerprint: version,
        choices: done.map((r, index) => {
          const p = inputs[jobs[index]!.prompt]!;
          const generated = legacy(tok, r.logprobs ?? [], base(index));
          return {
            index,
            text: (echo ? p.text : '') + r.text,
            logprobs: topN === undefined ? null : echo ? concat(echoLogprobs(tok, p, scored[jobs[index]!.prompt]!), generated) : generated,
            finish_reason: finishReason(r.finishReason),
          };
        }),
        usage: usage(promptTokens, done.reduce((a, r) => a + r.completionTokens, 0)),
      });
    }

    out = sseQueue(c, cancel, { coalesceMs: chat.deps.config.deltaCoalesceMs, profile: chat.deps.scheduler.profile });
    const stream = out;
    if (echo) {
      jobs.forEach(({ prompt }, index) => {
        const p = inputs[prompt]!;
        stream.push(chunk([{ index, text: p.text, logprobs: topN !== undefined ? echoLogprobs(tok, p, scored[prompt]!) : null, finish_reason: null }]));
      });
    }
    results
      .then((done) => {
        done.forEach((r, index) => {
          const rest = (r.logprobs ?? []).slice(streamed[index] ?? 0);
          stream.push(chunk([{ index, text: '', logprobs: topN !== undefined && rest.length ? legacy(tok, rest, base(index)) : null, finish_reason: finishReason(r.finishReason) }]));
        });
        if (req.stream_options?.include_usage === true) stream.push(chunk([], { usage: usage(promptTokens, done.reduce((a, r) => a + r.completionTokens, 0)) }));
        stream.push('[DONE]');
      })
      .catch((err: unknown) => stream.push(errorEvent(err)))
      .finally(stream.end);
    return stream.response();
  };
}
