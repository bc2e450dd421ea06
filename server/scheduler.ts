/**
 * Continuous batching. Every reply being decoded is a slot holding a `DecodeSequence`; the loop
 *
 *   1. admits waiting requests into free slots (prefill, or extension of a cached context),
 *      within a prompt-token budget so running replies keep flowing;
 *   2. runs ONE batched `decodeStep` over every live slot and pushes each row of logits to its
 *      sequence, streaming the text deltas;
 *   3. retires finished slots and yields to the event loop (`setImmediate`) so sockets are served.
 *
 * Sequences join and leave between steps. The queue is bounded: when `maxBatch` slots are busy and
 * `maxQueue` requests wait, `submit` throws `overloaded`. Cancelling frees a slot at once (cancel
 * can only run between steps, since a step is synchronous).
 *
 * A cached context (a conversation's KV cache from its previous turn) is continued with one
 * prefill of the new prompt tokens only, when it was computed by the same model version and the
 * new prompt extends it; otherwise the whole prompt is prefilled.
 *
 * Hot swap: every slot holds the model it started on, and a step runs one `decodeStep` per model
 * among the live slots (two while an old and a new version overlap). `setModel` switches the
 * default model between steps: replies in flight finish on their version, the next ones start on
 * the new one. A replaced model is disposed once no slot or queued request uses it.
 */
import { DecodeSequence, type FinishReason, type GenerateOptions, type TokenLogprob } from '../model/generate.ts';
import { disposeCache, type KVCache } from '../model/gpt.ts';
import { ChatError } from './errors.ts';
import type { ServerMetrics } from './metrics.ts';
import type { ServedModel } from './model-host.ts';
import type { CachedContext } from './session-cache.ts';

/** What to generate. */
export interface GenerationRequest {
  promptIds: readonly number[];
  opts: GenerateOptions;
  /** A cached context whose ids may prefix `promptIds`; the scheduler takes ownership of it. */
  reuse?: CachedContext;
  /** Return the final KV cache in the result (the caller then owns it) instead of freeing it. */
  keepContext?: boolean;
  /** Called with each released piece of text, in order (with its tokens' log-probabilities when `opts.logprobs` is set). */
  onDelta?: (text: string, logprobs: readonly TokenLogprob[]) => void;
  /** Label for metrics (`ws`, `openai`, …). */
  source?: string;
  /** Decode with this model (a canary candidate); default: the scheduler's model when the request is admitted. */
  model?: ServedModel;
}

export interface GenerationResult {
  text: string;
  ids: number[];
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** From acceptance to the first sampled token (undefined if cancelled before it). */
  ttftMs?: number;
  latencyMs: number;
  version: string;
  /** Whether the prompt reused a cached context instead of a full prefill. */
  reusedContext: boolean;
  context?: CachedContext;
  /** Per sampled token, when `opts.logprobs` is set. */
  logprobs?: TokenLogprob[];
}

/** A submitted request. */
export interface Job {
  readonly id: number;
  readonly result: Promise<GenerationResult>;
  /** Stops the reply (or removes it from the queue); its result resolves with finish reason `cancelled`. */
  cancel(): void;
}

export interface SchedulerOptions {
  maxBatch: number;
  maxQueue: number;
  prefillTokensPerStep: number;
  retryAfterSeconds: number;
  /** `auto` (default) and `always` continue a cached context that fits; `never` prefills the whole prompt. */
  reuse?: 'auto' | 'always' | 'never';
  metrics?: ServerMetrics;
  /** Called after a replaced model was disposed (no sequence used it any more). */
  onDispose?: (model: ServedModel) => void;
}

interface Pending {
  id: number;
  req: GenerationRequest;
  accepted: number;
  resolve: (r: GenerationResult) => void;
  reject: (e: unknown) => void;
  state: 'waiting' | 'active' | 'done';
  slot?: Slot;
  model?: ServedModel;
}

interface Slot {
  job: Pending;
  /** The model that computed `cache` and decodes every step of this reply. */
  model: ServedModel;
  seq: DecodeSequence;
  cache: KVCache;
  ttftMs?: number;
  reused: boolean;
}

const tick = () => new Promise<void>((r) => setImmediate(r));

export class Scheduler {
  readonly #waiting: Pending[] = [];
  readonly #active: Slot[] = [];
  /** Replaced models waiting for their last sequence to finish. */
  readonly #retiring = new Set<ServedModel>();
  #running = false;
  #nextId = 1;
  #closed = false;
  // Cost estimates (ms), refined by measurement.
  #tpsWindow = { start: performance.now(), tokens: 0 };

  constructor(
    public model: ServedModel,
    readonly opts: SchedulerOptions,
  ) {}

  /**
   * Makes `next` the model of every request admitted from now on (call between steps: any
   * synchronous caller is). The previous model keeps decoding the replies that started on it
   * and is disposed after the last one.
   */
  setModel(next: ServedModel): void {
    const old = this.model;
    this.model = next;
    this.#retiring.delete(next);
    if (old !== next) this.release(old);
  }

  /** Disposes `model` (not the current one) as soon as no sequence or queued request uses it. */
  release(model: ServedModel): void {
    if (model === this.model) return;
    this.#retiring.add(model);
    this.#collect();
  }

  /** Whether a live sequence or a queued request uses `model`. */
  inUse(model: ServedModel): boolean {
    return this.#active.some((s) => s.model === model) || this.#waiting.some((j) => j.model === model);
  }

  /** Versions of the models decoding right now (more than one while a swap overlaps). */
  get liveVersions(): string[] {
    return [...new Set(this.#active.map((s) => s.model.version))];
  }

  #collect(): void {
    for (const m of this.#retiring) {
      if (m === this.model || this.inUse(m)) continue;
      this.#retiring.delete(m);
      m.gpt.dispose();
      this.opts.onDispose?.(m);
    }
  }

  /** Requests waiting for a slot. */
  get queueDepth(): number {
    return this.#waiting.length;
  }

  /** Replies being decoded. */
  get activeCount(): number {
    return this.#active.length;
  }

  /**
   * Queues a generation. Throws `overloaded` (429, with Retry-After) when the queue is full.
   *
   * @example
   *   const job = scheduler.submit({ promptIds, opts: { ...DEFAULT_GENERATE, maxTokens: 32 }, onDelta: (t) => send(t) });
   *   const { text, finishReason } = await job.result;
   */
  submit(req: GenerationRequest): Job {
    if (this.#closed) throw new ChatError('not_ready', 'the server is shutting down', 503);
    if (this.#active.length + this.#waiting.length >= this.opts.maxBatch + this.opts.maxQueue) {
      if (req.reuse) disposeCache(req.reuse.cache);
      throw new ChatError('overloaded', `the server is busy (${this.#waiting.length} requests waiting); retry later`, 429, this.opts.retryAfterSeconds);
    }
    let resolve!: (r: GenerationResult) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<GenerationResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const job: Pending = { id: this.#nextId++, req, accepted: performance.now(), resolve, reject, state: 'waiting', model: req.model };
    this.#waiting.push(job);
    this.#gauges();
    this.#kick();
    return { id: job.id, result, cancel: () => this.#cancel(job) };
  }

  /** Cancels everything and refuses new work. */
  close(): void {
    this.#closed = true;
    for (const j of [...this.#waiting]) this.#cancel(j);
    for (const s of [...this.#active]) this.#cancel(s.job);
  }

  #cancel(job: Pending): void {
    if (job.state === 'waiting') {
      this.#waiting.splice(this.#waiting.indexOf(job), 1);
      if (job.req.reuse) disposeCache(job.req.reuse.cache);
      job.state = 'done';
      job.resolve({ text: '', ids: [], finishReason: 'cancelled', promptTokens: job.req.promptIds.length, completionTokens: 0, latencyMs: performance.now() - job.accepted, version: (job.model ?? this.model).version, reusedContext: false });
      this.#gauges();
      this.#collect();
    } else if (job.state === 'active') {
      const slot = job.slot!;
      slot.seq.cancel();
      this.#retire(slot);
      this.#gauges();
      this.#collect();
    }
  }

  #kick(): void {
    if (this.#running) return;
    this.#running = true;
    setImmediate(() => {
      this.#loop()
        .catch((err) => console.error('scheduler loop failed:', err))
        .finally(() => {
          this.#running = false;
          if (this.#waiting.length || this.#active.length) this.#kick();
        });
    });
  }

  async #loop(): Promise<void> {
    while (this.#waiting.length || this.#active.length) {
      await this.#admit();
      this.#step();
      this.#gauges();
      this.#collect();
      await tick();
    }
  }

  async #admit(): Promise<void> {
    let budget = this.opts.prefillTokensPerStep;
    let admitted = 0;
    while (this.#waiting.length && this.#active.length < this.opts.maxBatch && (admitted === 0 || budget > 0)) {
      const job = this.#waiting.shift()!;
      try {
        budget -= this.#start(job);
      } catch (err) {
        job.state = 'done';
        job.reject(err);
      }
      admitted++;
      if (this.#waiting.length) await tick(); // a long prompt must not starve the sockets
    }
  }

  /** Moves a job into a slot; returns the prompt tokens prefilled. */
  #start(job: Pending): number {
    const model = (job.model ??= this.model);
    const { gpt, tok } = model;
    const { promptIds, opts, reuse } = job.req;
    const V = gpt.config.vocabSize;
    let extra: number[] | undefined;
    if (reuse) {
      const fits = reuse.version === model.version && reuse.ids.length < promptIds.length && reuse.ids.every((id, i) => promptIds[i] === id);
      if (fits && (this.opts.reuse ?? 'auto') !== 'never') extra = promptIds.slice(reuse.ids.length);
      else disposeCache(reuse.cache);
    }
    const { cache, logits } = extra ? gpt.prefill(extra, { cache: reuse!.cache }) : gpt.prefill(promptIds);
    const fed = extra?.length ?? promptIds.length;
    const slot: Slot = { job, model, seq: new DecodeSequence(tok, cache, opts, gpt.config.blockSize), cache, reused: extra !== undefined };
    this.#activate(slot);
    this.#sample(slot, logits, 0, V);
    return fed;
  }

  #activate(slot: Slot): void {
    slot.job.state = 'active';
    slot.job.slot = slot;
    this.#active.push(slot);
  }

  #sample(slot: Slot, logits: Float32Array, offset: number, V: number): void {
    if (slot.ttftMs === undefined) {
      slot.ttftMs = performance.now() - slot.job.accepted;
      this.opts.metrics?.ttft.observe({ source: slot.job.req.source ?? 'other' }, slot.ttftMs / 1000);
    }
    const delta = slot.seq.push(logits, offset, V);
    this.#tpsWindow.tokens++;
    this.opts.metrics?.tokens.inc();
    if (delta) this.#emit(slot, delta);
    if (slot.seq.done) this.#retire(slot);
  }

  #emit(slot: Slot, delta: string): void {
    try {
      slot.job.req.onDelta?.(delta, slot.seq.takeLogprobs());
    } catch (err) {
      console.error('onDelta callback failed:', err);
    }
  }

  #step(): void {
    const models = [...new Set(this.#active.filter((s) => !s.seq.done).map((s) => s.model))];
    let rows = 0;
    const t0 = performance.now();
    for (const model of models) {
      // Re-read per model: a callback of the previous group may have cancelled a slot.
      const live = this.#active.filter((s) => s.model === model && !s.seq.done && s.job.state === 'active');
      if (live.length) this.#stepModel(model, live);
      rows += live.length;
    }
    if (!rows) return;
    const ms = performance.now() - t0;
    this.opts.metrics?.stepSeconds.observe(ms / 1000);
    this.opts.metrics?.batchSize.set(rows);
  }

  /** One batched decode step of the live slots of one model. */
  #stepModel(model: ServedModel, live: Slot[]): void {
    const { gpt } = model;
    const V = gpt.config.vocabSize;
    const tokens = live.map((s) => s.seq.lastToken);
    let logits: Float32Array;
    try {
      logits = gpt.decodeStep(live.map((s) => s.cache), tokens);
    } catch (err) {
      for (const s of live) {
        this.#remove(s);
        s.seq.dispose();
        s.job.state = 'done';
        s.job.reject(err);
      }
      return;
    }
    live.forEach((s, row) => {
      if (s.job.state !== 'active') return; // cancelled from a callback during this loop
      this.#sample(s, logits, row * V, V);
    });
  }

  #remove(slot: Slot): void {
    const i = this.#active.indexOf(slot);
    if (i >= 0) this.#active.splice(i, 1);
  }

  #retire(slot: Slot): void {
    this.#remove(slot);
    const { job, seq } = slot;
    if (job.state !== 'active') return;
    job.state = 'done';
    const r: GenerationResult = {
      text: seq.text,
      ids: seq.ids,
      finishReason: seq.finishReason ?? 'cancelled',
      promptTokens: job.req.promptIds.length,
      completionTokens: seq.ids.length,
      ttftMs: slot.ttftMs,
      latencyMs: performance.now() - job.accepted,
      version: slot.model.version,
      reusedContext: slot.reused,
      ...(job.req.opts.logprobs !== undefined ? { logprobs: seq.logprobs } : {}),
    };
    if (job.req.keepContext && r.finishReason !== 'cancelled' && seq.ids.length > 0) {
      // The cache holds the prompt and every sampled token but the last (never fed back).
      r.context = { ids: [...job.req.promptIds, ...seq.ids.slice(0, -1)], cache: slot.cache, version: slot.model.version };
    } else seq.dispose();
    job.resolve(r);
  }

  #gauges(): void {
    const m = this.opts.metrics;
    if (!m) return;
    m.queueDepth.set(this.#waiting.length);
    m.activeSequences.set(this.#active.length);
    const now = performance.now();
    const w = this.#tpsWindow;
    if (now - w.start >= 1000) {
      m.tokensPerSecond.set((w.tokens * 1000) / (now - w.start));
      this.#tpsWindow = { start: now, tokens: 0 };
    }
  }
}
