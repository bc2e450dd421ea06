/**
 * Conversations as the server sees them, shared by the WebSocket and the OpenAI doors: rebuild
 * a conversation's active branch from the store (or the session cache), render the prompt with
 * the one chat template (dropping the oldest turns, never the system prompt, when it outgrows the
 * context window), submit replies to the scheduler, and store every reply with its generation
 * record (model version, sampling parameters, seed, usage, timings).
 *
 * Ownership is checked here, for both doors: a conversation is loaded only for its own user
 * ({@link ChatService.load}), a judgement names only messages of the rater's own conversations
 * ({@link ChatService.judge}); anything else is `unknown_conversation` / `unknown_message`, as if
 * it did not exist. Who the user is comes from `auth.ts`, never from a message field.
 */
import { randomInt } from 'node:crypto';
import { renderChat, type ChatMessage } from '../model/chat-template.ts';
import { DEFAULT_GENERATE, type GenerateOptions, type TokenLogprob } from '../model/generate.ts';
import { disposeCache } from '../model/gpt.ts';
import { addMessage, createConversation, getConversation, getThread, listMessages, startThreadRows } from '../feedback/conversations.ts';
import { addAssistantReply } from '../feedback/generations.ts';
import { inTransaction } from '../feedback/transaction.ts';
import { storableText } from '../feedback/text-plugin.ts';
import type { ClientJudgement } from '../feedback/judgement-input.ts';
import type { JudgementResult } from '../feedback/judgements.ts';
import type { FeedbackStore } from '../feedback/open-store.ts';
import type { Identity } from './auth.ts';
import type { ServerConfig } from './config.ts';
import { ChatError } from './errors.ts';
import type { ServerMetrics } from './metrics.ts';
import type { ServedModel } from './model-host.ts';
import type { ModelRegistry, ModelTarget } from './model-registry.ts';
import type { GenerationResult, Job, Scheduler } from './scheduler.ts';
import type { ConversationState, SessionCache, Turn } from './session-cache.ts';
import type { Sampling } from './ws-protocol.ts';

export interface ChatDeps {
  store: FeedbackStore;
  scheduler: Scheduler;
  sessions: SessionCache;
  config: ServerConfig;
  metrics: ServerMetrics;
  /**
   * Picks the canary arm per conversation and the arena pair per compare, and the model a request
   * names (`select`/`pick`); absent: always the scheduler's model.
   */
  registry?: Pick<ModelRegistry, 'modelFor'> & Partial<Pick<ModelRegistry, 'arenaModels' | 'select' | 'pick' | 'listing'>>;
}

/** Per-request sampling beyond the WebSocket's `params` (the OpenAI routes' penalties, bias and log-probabilities). */
export type ExtraSampling = Partial<Pick<GenerateOptions, 'presencePenalty' | 'frequencyPenalty' | 'logitBias' | 'logprobs'>>;

/** The seed of sample `j` (≥ 1) of a reranked reply whose first sample has `seed`: distinct per j, and far from the next reply's `seed + 1`. */
export function poolSeed(seed: number, j: number): number {
  return (seed + j * 0x9e3779b1) % 2 ** 31;
}

/** A prompt ready to decode. */
export interface Prompt {
  ids: number[];
  /** Messages dropped from the front (after the system prompt) to fit the context window. */
  droppedMessages: number;
}

/** A reply once decoded and stored. */
export interface StoredReply {
  messageId: string;
  parentId: string;
  content: string;
  result: GenerationResult;
  droppedMessages: number;
  candidate: number;
  opts: GenerateOptions;
}

/** Replies in flight: cancel them, or await them. */
export interface ReplyRun {
  readonly jobs: readonly Job[];
  /** The model decoding each reply, fixed when it was submitted. */
  readonly models: readonly ServedModel[];
  readonly done: Promise<StoredReply[]>;
  cancel(): void;
}

export class ChatService {
  readonly #inFlight = new Set<string>();

  constructor(readonly deps: ChatDeps) {}

  get model() {
    return this.deps.scheduler.model;
  }

  /** Starts a conversation for `who` (optionally with a system prompt stored as its first message). */
  async start(who: Identity, opts: { system?: string; title?: string } = {}): Promise<ConversationState> {
    const { db } = this.deps.store;
    const userId = who.userId;
    const conv = await createConversation(db, { userId, title: opts.title, ...(who.keyId ? { keyId: who.keyId } : {}) });
    const path: Turn[] = [];
    if (opts.system) {
      const m = await addMessage(db, { conversationId: conv.id, role: 'system', content: opts.system, userId });
      path.push({ id: m.id, role: 'system', content: m.content });
    }
    const state: ConversationState = { id: conv.id, userId, path };
    this.deps.sessions.put(state);
    this.#gauges();
    return state;
  }

  /**
   * A conversation's live state: from the session cache, else rebuilt from the store (the active
   * branch is the path to its most recent message). Another user's conversation is "unknown".
   */
  async load(conversationId: string, userId: string): Promise<ConversationState> {
    const cached = this.deps.sessions.get(conversationId);
    if (cached) {
      if (cached.userId !== userId) throw new ChatError('unknown_conversation', `no conversation ${conversationId}`);
      return cached;
    }
    const { db } = this.deps.store;
    const conv = await getConversation(db, conversationId);
    if (!conv || conv.user_id !== userId) throw new ChatError('unknown_conversation', `no conversation ${conversationId}`);
    const msgs = await listMessages(db, conversationId);
    const leaf = msgs[msgs.length - 1];
    const thread = leaf ? await getThread(db, leaf.id) : [];
    const state: ConversationState = { id: conv.id, userId, path: thread.map((m) => ({ id: m.id, role: m.role, content: m.content })) };
    const again = this.deps.sessions.get(conversationId); // another request may have rebuilt it meanwhile
    if (again) return again;
    this.deps.sessions.put(state);
    this.#gauges();
    return state;
  }

  /**
   * Stores a whole thread (an OpenAI request's messages) as a new conversation of `who`, its
   * messages as a chain; returns the conversation id and the turns with their ids.
   */
  async startThread(who: Identity, messages: readonly ChatMessage[]): Promise<{ conversationId: string; context: Turn[] }> {
    const userId = who.userId;
    // The request's rows in one transaction: a failure leaves no half-stored conversation.
    return inTransaction(this.deps.store.db, async (trx) => {
      const { conversation, messages: rows } = await startThreadRows(trx, { userId, ...(who.keyId ? { keyId: who.keyId } : {}) }, messages);
      return { conversationId: conversation.id, context: rows.map((r) => ({ id: r.id, role: r.role, content: r.content })) };
    });
  }

  /**
   * Stores a judgement by `who` (rater and key id from the identity, never from the input).
   * A judgement naming a message outside `who`'s own conversations is refused as
   * `unknown_message`, like a message that does not exist.
   */
  async judge(who: Identity, input: ClientJudgement): Promise<JudgementResult> {
    // One batched transaction checks ownership, stores the judgement and finds an arena pair's versions.
    return this.deps.store.writer.submit({ ...input, raterId: who.userId, ownMessagesOnly: true, ...(who.keyId ? { keyId: who.keyId } : {}) });
  }

  /** The path from the root to `messageId` (a message of this conversation), from the cache when it is on the active branch. */
  async threadTo(state: ConversationState, messageId: string): Promise<Turn[]> {
    const i = state.path.findIndex((t) => t.id === messageId);
    if (i >= 0) return state.path.slice(0, i + 1);
    const thread = await getThread(this.deps.store.db, messageId);
    if (!thread.length || thread[0]!.conversation_id !== state.id) throw new ChatError('unknown_message', `no message ${messageId} in conversation ${state.id}`);
    return thread.map((m) => ({ id: m.id, role: m.role, content: m.content }));
  }

  /** Stores a user message after `parent` (default: the end of the active branch) and returns the context it closes. */
  async addUserMessage(state: ConversationState, content: string, parentId?: string): Promise<Turn[]> {
    let base = parentId ? await this.threadTo(state, parentId) : state.path;
    // A user message follows a system or assistant turn; after a user turn without a reply, it replaces it.
    if (base.length && base[base.length - 1]!.role === 'user') base = base.slice(0, -1);
    const parent = base[base.length - 1];
    const m = await addMessage(this.deps.store.db, { conversationId: state.id, parentId: parent?.id ?? null, role: 'user', content, userId: state.userId });
    return [...base, { id: m.id, role: 'user', content }];
  }

  /**
   * Admission, before anything of a request is stored or decoded: throws `store_unavailable`
   * (503, Retry-After) while the store is degraded, since a reply that cannot be stored must not
   * be generated, and `overloaded` (429) when the scheduler has no room for `n` more replies.
   */
  admit(n: number, opts: { stored?: boolean } = {}): void {
    const { store, scheduler } = this.deps;
    const health = store.health?.state();
    if (opts.stored !== false && health && health.state !== 'ok') {
      throw new ChatError('store_unavailable', `the feedback store is unreachable (${health.lastError ?? 'no answer'}); retry later`, 503, health.retryAfterSeconds);
    }
    const { maxBatch, maxQueue, retryAfterSeconds } = scheduler.opts;
    if (scheduler.activeCount + scheduler.queueDepth + n > maxBatch + maxQueue) {
      throw new ChatError('overloaded', `the server is busy (${scheduler.queueDepth} requests waiting); retry later`, 429, retryAfterSeconds);
    }
  }

  /**
   * The model a request's `model` names, loaded (see `ModelRegistry.select`); undefined for any
   * other name, and always without a registry: the default arm.
   */
  async selectModel(name: string): Promise<ModelTarget | undefined> {
    return this.deps.registry?.select?.(name);
  }

  /** The loaded model of `target` now (undefined when it was evicted since `selectModel`); call it right before `reply`. */
  pickModel(target: ModelTarget): ServedModel | undefined {
    return this.deps.registry?.pick?.(target);
  }

  /** Sampling options from a request, checked against the limits. */
  options(p: Sampling & ExtraSampling = {}): GenerateOptions {
    const { config } = this.deps;
    const maxTokens = p.maxTokens ?? config.defaultMaxTokens;
    if (p.stop && (p.stop.length > 4 || p.stop.some((s) => s.length > 64))) throw new ChatError('invalid_request', 'stop: at most 4 strings of at most 64 characters');
    if (maxTokens > config.maxTokens) throw new ChatError('max_tokens_too_large', `maxTokens ${maxTokens} is over the limit of ${config.maxTokens}`);
    return {
      temperature: p.temperature ?? DEFAULT_GENERATE.temperature,
      topK: p.topK ?? DEFAULT_GENERATE.topK,
      topP: p.topP ?? DEFAULT_GENERATE.topP,
      maxTokens,
      seed: p.seed ?? randomInt(0, 2 ** 31),
      stop: p.stop ?? [],
      ...(p.presencePenalty ? { presencePenalty: p.presencePenalty } : {}),
      ...(p.frequencyPenalty ? { frequencyPenalty: p.frequencyPenalty } : {}),
      ...(p.logitBias?.length ? { logitBias: p.logitBias } : {}),
      ...(p.logprobs !== undefined ? { logprobs: p.logprobs } : {}),
    };
  }

  /**
   * Renders `messages` (ending with a user turn) for generation. Drops the oldest messages after
   * the system prompt, whole user/assistant exchanges at a time, until `minReplyTokens` (or
   * `maxTokens`, if smaller) fit after the prompt. Throws `prompt_too_long` when even the last
   * user message (with the system prompt) does not fit, or the prompt is over `maxPromptTokens`.
   */
  prompt(messages: readonly ChatMessage[], maxTokens: number, model: ServedModel = this.model): Prompt {
    const { tok, gpt } = model;
    const { blockSize } = gpt.config;
    const reserve = Math.min(maxTokens, this.deps.config.minReplyTokens);
    const system = messages[0]?.role === 'system' ? [messages[0]] : [];
    let rest = messages.slice(system.length);
    let dropped = 0;
    const render = (m: readonly ChatMessage[]): number[] => renderChat(tok, m, { addGenerationPrompt: true }).ids;
    try {
      renderChat(tok, messages); // validates roles and order with the template's own rules
    } catch (err) {
      throw new ChatError('invalid_request', (err as Error).message);
    }
    let ids = render([...system, ...rest]);
    if (ids.length > this.deps.config.maxPromptTokens) throw new ChatError('prompt_too_long', `the prompt has ${ids.length} tokens; the limit is ${this.deps.config.maxPromptTokens}`);
    while (ids.length + reserve > blockSize) {
      if (rest.length <= 1) {
        throw new ChatError('prompt_too_long', `the last message (with the system prompt) takes ${ids.length} tokens; the context window is ${blockSize} with ${reserve} kept for the reply`);
      }
      const cut = rest.length >= 3 ? 2 : 1;
      rest = rest.slice(cut);
      dropped += cut;
      ids = render([...system, ...rest]);
    }
    return { ids, droppedMessages: dropped };
  }

  /**
   * Reserves a conversation for one request at a time (replies, regenerations, comparisons);
   * throws `busy` while another holds it. Call the returned function when done.
   */
  claim(conversationId: string): () => void {
    if (this.#inFlight.has(conversationId)) throw new ChatError('busy', `a reply is already being generated in conversation ${conversationId}; wait for it or cancel it`);
    this.#inFlight.add(conversationId);
    let released = false;
    return () => {
      if (!released) this.#inFlight.delete(conversationId);
      released = true;
    };
  }

  /**
   * Generates `n` sibling replies to the user message ending `context`, decoded together, and
   * stores each. The first becomes the conversation's active branch (and keeps its KV cache).
   * `models` (one per reply) overrides the canary arm: the arena's champion and candidate.
   */
  reply(
    state: ConversationState | undefined,
    conversationId: string,
    context: readonly Turn[],
    opts: GenerateOptions,
    n: number,
    source: string,
    onDelta?: (candidate: number, text: string, logprobs: readonly TokenLogprob[]) => void,
    models?: readonly ServedModel[],
  ): ReplyRun {
    if (models && models.length !== n) throw new Error(`reply: ${models.length} models for ${n} replies`);
    const userTurn = context[context.length - 1];
    if (!userTurn || userTurn.role !== 'user') throw new ChatError('invalid_request', 'a reply needs a user message to answer');
    // The model is fixed when the reply is submitted (the canary arm, else the champion now), so
    // the version is known before the first token and a swap meanwhile does not change it.
    const model = this.deps.registry?.modelFor(conversationId) ?? this.deps.scheduler.model;
    const arms = models ?? Array.from({ length: n }, () => model);
    const messages = context.map((t) => ({ role: t.role, content: t.content }));
    const byModel = new Map<ServedModel, Prompt>();
    for (const m of arms) if (!byModel.has(m)) byModel.set(m, this.prompt(messages, opts.maxTokens, m));
    const prompts = arms.map((m) => byModel.get(m)!);
    const { scheduler, metrics } = this.deps;
    const perCandidate = Array.from({ length: n }, (_, i) => ({ ...opts, seed: (opts.seed + i) % Number.MAX_SAFE_INTEGER }));
    // A reranked arm decodes `reranker.n` samples of the reply together and keeps the best; its
    // text is sent whole once picked, and the conversation's cached context is left as it was.
    const pools = arms.map((m) => (m.reranker && m.reranker.n > 1 ? m.reranker.n : 1));
    const holds = arms.map((m, i) => (pools[i]! > 1 ? m.reranker!.hold() : undefined));
    const groups: Job[][] = [];
    const submitted = performance.now();
    try {
      for (let i = 0; i < n; i++) {
        const plain = pools[i] === 1;
        const group: Job[] = [];
        for (let j = 0; j < pools[i]!; j++) {
          const reuse = plain && i === 0 && state ? this.deps.sessions.takeKv(state) : undefined;
          group.push(
            scheduler.submit({
              promptIds: prompts[i]!.ids,
              opts: j === 0 ? perCandidate[i]! : { ...perCandidate[i]!, seed: poolSeed(perCandidate[i]!.seed, j) },
              reuse,
              keepContext: plain && i === 0 && state !== undefined,
              source,
              model: arms[i],
              onDelta: plain && onDelta ? (t, lp) => onDelta(i, storableText(t), lp) : undefined,
            }),
          );
        }
        groups.push(group);
      }
    } catch (err) {
      groups.flat().forEach((j) => j.cancel());
      holds.forEach((release) => release?.());
      throw err;
    }
    const jobs = groups.flat();
    metrics.requests.inc({ source }, n);
    const pick = async (i: number): Promise<{ result: GenerationResult; rerank?: Record<string, unknown> }> => {
      const rs = await Promise.all(groups[i]!.map((j) => j.result));
      if (rs.length === 1) return { result: { ...rs[0]!, text: storableText(rs[0]!.text) } };
      const reranker = arms[i]!.reranker!;
      let chosen = 0;
      let scores: number[] | undefined;
      let error: string | undefined;
      if (!rs.some((r) => r.finishReason === 'cancelled')) {
        try {
          scores = await reranker.score(rs.map((r) => ({ prompt: messages, reply: r.text, replyIds: r.ids })));
          chosen = scores.indexOf(Math.max(...scores));
        } catch (err) {
          error = (err as Error).message; // the first sample is kept: a failed score never fails the reply
        }
      }
      const elapsed = performance.now() - submitted;
      const r = { ...rs[chosen]!, text: storableText(rs[chosen]!.text), ttftMs: rs[chosen]!.ttftMs === undefined ? undefined : elapsed, latencyMs: elapsed };
      if (r.text && r.finishReason !== 'cancelled') onDelta?.(i, r.text, r.logprobs ?? []);
      const rerank = { n: rs.length, reward: reranker.version, chosen, sampledTokens: rs.reduce((a, x) => a + x.completionTokens, 0), ...(scores ? { scores: scores.map((x) => Math.round(x * 1e4) / 1e4) } : {}), ...(error ? { error } : {}) };
      return { result: r, rerank };
    };
    const done = (async () => {
      try {
        const picked = await Promise.all(groups.map((_, i) => pick(i)));
        const results = picked.map((p) => p.result);
        const stored: StoredReply[] = [];
        // Stored last to first: a resumed conversation's active branch is the path to its most
        // recent message, and candidate 0 is the one that continues (as on the live socket).
        for (let i = n - 1; i >= 0; i--) {
          const r = results[i]!;
          const o = perCandidate[i]!;
          const prompt = prompts[i]!;
          const { message } = await addAssistantReply(this.deps.store.db, {
            message: { conversationId, parentId: userTurn.id, content: r.text, tokenCount: r.completionTokens },
            generation: {
              modelVersionId: r.version,
              params: {
                temperature: o.temperature,
                topP: o.topP,
                topK: o.topK,
                maxTokens: o.maxTokens,
                stop: o.stop,
                ...(o.presencePenalty ? { presencePenalty: o.presencePenalty } : {}),
                ...(o.frequencyPenalty ? { frequencyPenalty: o.frequencyPenalty } : {}),
                ...(o.logitBias?.length ? { logitBias: o.logitBias } : {}),
                source,
                candidates: n,
                droppedMessages: prompt.droppedMessages,
                ...(picked[i]!.rerank ? { rerank: picked[i]!.rerank } : {}),
              },
              seed: o.seed,
              finishReason: r.finishReason,
              promptTokens: r.promptTokens,
              completionTokens: r.completionTokens,
              latencyMs: r.latencyMs,
              ttftMs: r.ttftMs,
            },
          });
          stored.unshift({ messageId: message.id, parentId: userTurn.id, content: r.text, result: r, droppedMessages: prompt.droppedMessages, candidate: i, opts: o });
        }
        if (state) {
          state.path = [...context, { id: stored[0]!.messageId, role: 'assistant', content: stored[0]!.content }];
          const ctx = results[0]!.context;
          if (ctx) this.deps.sessions.giveKv(state, ctx);
          else this.deps.sessions.put(state);
        }
        return stored;
      } catch (err) {
        for (const r of await Promise.allSettled(jobs.map((j) => j.result))) {
          if (r.status === 'fulfilled' && r.value.context) disposeCache(r.value.context.cache);
        }
        throw err;
      } finally {
        holds.forEach((release) => release?.());
        this.#gauges();
      }
    })();
    return { jobs, models: arms, done, cancel: () => jobs.forEach((j) => j.cancel()) };
  }

  /**
   * The arena's answer to a compare: when the registry selects this request (a candidate is
   * loaded and a uniform draw falls under `arena_share`), one reply of the champion and one of
   * the candidate, in random order (`random() < ½`: champion first), submitted together and
   * stored with `params.source = 'arena'` and their true versions. Undefined when the request is
   * not an arena one (the caller then answers an ordinary compare).
   */
  compareArena(
    state: ConversationState | undefined,
    conversationId: string,
    context: readonly Turn[],
    opts: GenerateOptions,
    onDelta?: (candidate: number, text: string) => void,
    random: () => number = Math.random,
  ): ReplyRun | undefined {
    const pair = this.deps.registry?.arenaModels?.(random());
    if (!pair) return undefined;
    const models = random() < 0.5 ? [pair.champion, pair.candidate] : [pair.candidate, pair.champion];
    return this.reply(state, conversationId, context, opts, 2, 'arena', onDelta, models);
  }

  /** The versions behind replies `a` and `b` when both are arena replies (revealed after the judgement), else undefined. */

  #gauges(): void {
    this.deps.metrics.activeConversations.set(this.deps.sessions.size);
    this.deps.metrics.sessionBytes.set(this.deps.sessions.bytes);
  }
}
