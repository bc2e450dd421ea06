/**
 * Continuous batching. Every reply being decoded is a slot holding a `DecodeSequence`; the loop
 *
 *   1. admits waiting requests into free slots (prefill, or extension of a cached context),
 *      within a prompt-token budget so running replies keep flowing, all of them prefilled in
 *      one pass (`prefillBatch`) without yielding in between;
 *   2. runs ONE batched `decodeStep` over every live slot, samples every row in one pass
 *      (`sampleBatch`: native when the addon has the sampler, the same tokens as the JS sampler),
 *      then appends each token to its sequence and streams the text deltas;
 *   3. retires finished slots and yields to the event loop (`setImmediate`) so sockets are served.
 *
 * With `decodeSliceMs`, step 2 repeats for up to that long (a decode slice: until a reply ends,
 * and never in a turn that admitted requests) before the text is streamed and the loop yields.
 *
 * When the model decodes asynchronously (`GPT.decodesAsync`, the native decoder) and
 * `asyncStep` is on, steps 2 and 3 are pipelined instead: the step and the native rows' sampling
 * run on a worker thread (`decodeStepAsync`) while the event loop streams the previous step's
 * deltas, retires its finished slots and serves sockets; when the step lands its tokens are
 * appended (which says who is done), and the next step starts right after the admissions. So
 * the KV caches and the slots change only between steps, and each sequence gets the same tokens
 * as on the synchronous path (its draws and logits do not depend on when they run).
 *
 * With `profile.enabled`, each stage's time is added up (server/serve-profile.ts).
 *
 * Sequences join and leave between steps. The queue is bounded: when `maxBatch` slots are busy and
 * `maxQueue` requests wait, `submit` throws `overloaded`. Cancelling frees a slot at once; a slot
 * cancelled while its step runs is left out of that step's results, and its cache is freed when
 * the step ends.
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
import { DecodeSequence, finishSamples, planSamples, sampleBatch, type FinishReason, type GenerateOptions, type TokenLogprob } from '../model/generate.ts';
import { disposeCache, type KVCache } from '../model/gpt.ts';
import { ChatError } from './errors.ts';
import type { ServerMetrics } from './metrics.ts';
import { disposeServedModel, type ServedModel } from './model-host.ts';
import type { CachedContext } from './session-cache.ts';
import { ServeProfile } from './serve-profile.ts';

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
  /** Run the decode step off the event loop when the model can (`GPT.decodesAsync`); default false. */
  asyncStep?: boolean;
  /** With `asyncStep`, fewest live slots of a model for which its step runs off the event loop (default `ASYNC_MIN_ROWS`). */
  asyncMinRows?: number;
  /**
   * Steps on the event loop run back to back for up to this many milliseconds before their text
   * is streamed and the event loop serves sockets (default 0: one step per turn).
   */
  decodeSliceMs?: number;
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

/** A job leaving the queue: the tokens its prefill feeds, after `cache` when continuing a cached context. */
interface Admission {
  job: Pending;
  model: ServedModel;
  ids: readonly number[];
  cache?: KVCache;
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

/** A step running off the event loop: its slots, and the logits and sampled ids it lands with. */
interface RunningStep {
  model: ServedModel;
  live: Slot[];
  ids: Int32Array;
  started: number;
  done: Promise<Float32Array>;
}

/** Text appended to a slot by a landed step, waiting to be streamed. */
interface Landed {
  slots: Slot[];
  deltas: string[];
}

const tick = () => new Promise<void>((r) => setImmediate(r));

/**
 * Fewest live slots for which a step runs off the event loop (with `asyncStep`): below it the
 * two thread hand-offs of a step cost more than the overlap gives (measured at one row).
 */
export const ASYNC_MIN_ROWS = 8;

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
  #ids = new Int32Array(0);
  /** Steps running on a worker thread (one per model), between their launch and landing. */
  #inFlight: RunningStep[] = [];
  /** Time per serving stage, when `profile.enabled` (benchmarks). */
  readonly profile = new ServeProfile();

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

  /** Whether a live sequence, a running step or a queued request uses `model`. */
  inUse(model: ServedModel): boolean {
    return this.#active.some((s) => s.model === model) || this.#inFlight.some((r) => r.model === model) || this.#waiting.some((j) => j.model === model);
  }

  /** Versions of the models decoding right now (more than one while a swap overlaps). */
  get liveVersions(): string[] {
    return [...new Set(this.#active.map((s) => s.model.version))];
  }

  #collect(): void {
    for (const m of this.#retiring) {
      if (m === this.model || this.inUse(m)) continue;
      this.#retiring.delete(m);
      disposeServedModel(m);
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
    let landed: Landed[] = [];
    while (this.#waiting.length || this.#active.length || landed.length) {
      const admitted = this.#admit();
      const running = this.#step(landed, admitted > 0);
      this.#gauges();
      this.#collect();
      landed = running.length ? await this.#land(running) : [];
      if (!running.length) await tick();
    }
    this.#collect();
  }

  /**
   * Moves waiting requests into free slots, within the prompt-token budget (at least one), and
   * prefills them together: one pass per model, then their first tokens sampled in one batch.
   * Returns how many it admitted.
   */
  #admit(): number {
    let budget = this.opts.prefillTokensPerStep;
    const byModel = new Map<ServedModel, Admission[]>();
    let admitted = 0;
    while (this.#waiting.length && this.#active.length + admitted < this.opts.maxBatch && (admitted === 0 || budget > 0)) {
      const job = this.#waiting.shift()!;
      let a: Admission;
      try {
        a = this.#plan(job);
      } catch (err) {
        job.state = 'done';
        job.reject(err);
        continue;
      }
      budget -= a.ids.length;
      admitted++;
      const group = byModel.get(a.model);
      if (group) group.push(a);
      else byModel.set(a.model, [a]);
    }
    for (const [model, group] of byModel) this.#start(model, group);
    return admitted;
  }

  /**
   * What a job's prefill feeds: the whole prompt, or the tokens after a cached context that fits.
   * Throws for a prompt that cannot be prefilled, so that one bad prompt never fails a batch.
   */
  #plan(job: Pending): Admission {
    const model = (job.model ??= this.model);
    const { promptIds, reuse } = job.req;
    const { blockSize } = model.gpt.config;
    if (reuse) {
      const fits = !reuse.cache.disposed && reuse.version === model.version && reuse.ids.length < promptIds.length && reuse.ids.every((id, i) => promptIds[i] === id);
      if (fits && (this.opts.reuse ?? 'auto') !== 'never' && promptIds.length <= blockSize) return { job, model, ids: promptIds.slice(reuse.ids.length), cache: reuse.cache };
      disposeCache(reuse.cache);
    }
    if (promptIds.length === 0) throw new Error('prefill needs at least one token');
    if (promptIds.length > blockSize) throw new Error(`prompt of ${promptIds.length} tokens exceeds blockSize ${blockSize}`);
    return { job, model, ids: promptIds };
  }

  /** Prefills admitted jobs of one model in one pass and moves them into slots (a failed pass fails them all). */
  #start(model: ServedModel, group: Admission[]): void {
    const { gpt, tok } = model;
    const V = gpt.config.vocabSize;
    const prof = this.profile;
    let t = prof.now();
    let prefilled: { caches: KVCache[]; logits: Float32Array };
    try {
      prefilled = gpt.prefillBatch(group);
    } catch (err) {
      for (const { job, cache } of group) {
        if (cache) disposeCache(cache);
        job.state = 'done';
        job.reject(err);
      }
      return;
    }
    prof.add('admit', t);
    prof.prefilled(group);
    const slots = group.map((a, i): Slot => {
      const cache = prefilled.caches[i]!;
      return { job: a.job, model, seq: new DecodeSequence(tok, cache, a.job.req.opts, gpt.config.blockSize), cache, reused: a.cache !== undefined };
    });
    for (const slot of slots) this.#activate(slot);
    if (this.#ids.length < slots.length) this.#ids = new Int32Array(Math.max(slots.length, this.opts.maxBatch));
    t = prof.now();
    try {
      sampleBatch(
        slots.map((s) => s.seq),
        prefilled.logits,
        V,
        this.#ids,
      );
    } catch (err) {
      this.#fail(slots, err);
      return;
    }
    prof.add('sample', t);
    this.#accept(slots, this.#ids, prefilled.logits, V);
  }

  /** Ends slots whose step failed: their jobs reject with `err`. */
  #fail(slots: readonly Slot[], err: unknown): void {
    for (const s of slots) {
      this.#remove(s);
      s.seq.dispose();
      s.job.state = 'done';
      s.job.reject(err);
    }
  }

  #activate(slot: Slot): void {
    slot.job.state = 'active';
    slot.job.slot = slot;
    this.#active.push(slot);
  }

  /**
   * Appends each slot's sampled token (text, stop rules: `detokenize`), then streams the deltas
   * and retires the finished slots (`emit`). Slots no longer active are skipped. A slot whose id
   * is -1 (logit adjustments or log-probabilities: not for the batched sampler) samples its row of
   * `logits` itself, counted under `detokenize`.
   */
  #accept(slots: readonly Slot[], ids: ArrayLike<number>, logits: Float32Array, V: number): void {
    this.#stream(slots, this.#append(slots, ids, logits, V));
  }

  /** The detokenizing half of `#accept`: appends the tokens and returns each slot's new text. */
  #append(slots: readonly Slot[], ids: ArrayLike<number>, logits: Float32Array, V: number): string[] {
    const prof = this.profile;
    const t = prof.now();
    const deltas: string[] = new Array(slots.length);
    let accepted = 0;
    for (let r = 0; r < slots.length; r++) {
      const slot = slots[r]!;
      if (slot.job.state !== 'active') continue;
      if (slot.ttftMs === undefined) {
        slot.ttftMs = performance.now() - slot.job.accepted;
        this.opts.metrics?.ttft.observe({ source: slot.job.req.source ?? 'other' }, slot.ttftMs / 1000);
      }
      const id = ids[r]!;
      deltas[r] = id >= 0 ? slot.seq.accept(id) : slot.seq.push(logits, r * V, V);
      accepted++;
    }
    prof.add('detokenize', t);
    prof.counts.tokens += accepted;
    this.#tpsWindow.tokens += accepted;
    this.opts.metrics?.tokens.inc(accepted);
    return deltas;
  }

  /** The streaming half of `#accept`: hands each slot its delta and retires the finished ones. */
  #stream(slots: readonly Slot[], deltas: readonly (string | undefined)[]): void {
    this.profile.emit(() => {
      for (let r = 0; r < slots.length; r++) {
        const slot = slots[r]!;
        if (slot.job.state !== 'active') continue; // cancelled from a callback during this loop
        const delta = deltas[r];
        if (delta) this.#emit(slot, delta);
        if (slot.seq.done) this.#retire(slot);
      }
    });
  }

  #emit(slot: Slot, delta: string): void {
    try {
      slot.job.req.onDelta?.(delta, slot.seq.takeLogprobs());
    } catch (err) {
      console.error('onDelta callback failed:', err);
    }
  }

  /**
   * One step of every live slot, one `decodeStep` per model. A model that decodes asynchronously,
   * with `asyncStep` on and at least `asyncMinRows` live slots, gets its step started and
   * returned, to be landed by `#land`. Then the text of the steps landed last is streamed, and
   * the other models step here to the end (after that text, so each reply's text stays in order).
   *
   * With `decodeSliceMs` and no step off the event loop, the models here step again and again
   * until that much time has passed or a reply ends (its slot is then free for a waiting or a
   * follow-up request), except in a turn that admitted requests (their first tokens, streamed
   * already, are written to the sockets on the next turn): each step's tokens are appended at
   * once (stop rules, the context window and log-probabilities apply token by token, as with one
   * step a turn), and each reply's text of the whole slice is streamed once at its end. Sockets,
   * admissions, cancellations and model swaps wait for the slice to end.
   */
  #step(landed: readonly Landed[], admitted = false): RunningStep[] {
    const models = [...new Set(this.#active.filter((s) => !s.seq.done).map((s) => s.model))];
    const liveOf = (model: ServedModel) => this.#active.filter((s) => s.model === model && !s.seq.done && s.job.state === 'active');
    const running: RunningStep[] = [];
    const here: ServedModel[] = [];
    for (const model of models) {
      const live = liveOf(model);
      if (this.opts.asyncStep && live.length >= (this.opts.asyncMinRows ?? ASYNC_MIN_ROWS) && model.gpt.decodesAsync()) running.push(this.#launch(model, live));
      else here.push(model);
    }
    this.#inFlight = running;
    for (const l of landed) this.#stream(l.slots, l.deltas);
    let rows = running.reduce((n, r) => n + r.live.length, 0);
    // After admissions, one step: their first tokens' writes go out on the next turn.
    const slice = running.length || admitted ? 0 : (this.opts.decodeSliceMs ?? 0);
    const start = performance.now();
    const held = new Map<Slot, string>();
    for (let first = true; ; first = false) {
      const t0 = performance.now();
      let stepped = 0;
      for (const model of here) {
        // Re-read per model: a delta callback may have cancelled a slot.
        const live = liveOf(model);
        if (live.length) this.#stepModel(model, live, slice > 0 ? held : undefined);
        stepped += live.length;
      }
      if (first) rows += stepped;
      if (!stepped) break;
      if (!running.length) this.opts.metrics?.stepSeconds.observe((performance.now() - t0) / 1000);
      // A reply that ended frees its slot for the next request: end the slice to stream it.
      if (performance.now() - start >= slice || this.#active.some((s) => s.seq.done)) break;
    }
    if (held.size) this.#stream([...held.keys()], [...held.values()]);
    if (!rows) return running;
    this.opts.metrics?.batchSize.set(rows);
    return running;
  }

  /** Starts the step of one model's live slots on a worker thread, with the native rows' sampling. */
  #launch(model: ServedModel, live: Slot[]): RunningStep {
    const t = this.profile.now();
    const seqs = live.map((s) => s.seq);
    const plan = planSamples(seqs, model.gpt.config.vocabSize);
    const ids = new Int32Array(live.length);
    const caches = live.map((s) => s.cache);
    this.profile.stepped(caches);
    const done = model.gpt.decodeStepAsync(caches, seqs.map((s) => s.lastToken), plan);
    return {
      model,
      live,
      ids,
      started: performance.now(),
      done: done.then((logits) => {
        this.profile.addOffThreadStep(t);
        finishSamples(seqs, logits, model.gpt.config.vocabSize, ids, plan);
        return logits;
      }),
    };
  }

  /**
   * Waits for the running steps, then appends their tokens (so the next step knows who is done);
   * their text is streamed by the caller once the next step runs. A failed step fails its slots.
   */
  async #land(running: readonly RunningStep[]): Promise<Landed[]> {
    const settled = await Promise.allSettled(running.map((r) => r.done));
    this.#inFlight = [];
    this.opts.metrics?.stepSeconds.observe((performance.now() - running[0]!.started) / 1000);
    const landed: Landed[] = [];
    settled.forEach((outcome, i) => {
      const { model, live, ids } = running[i]!;
      if (outcome.status === 'rejected') {
        this.#fail(live.filter((s) => s.job.state === 'active'), outcome.reason);
        return;
      }
      landed.push({ slots: live, deltas: this.#append(live, ids, outcome.value, model.gpt.config.vocabSize) });
    });
    return landed;
  }

  /**
   * One batched decode step of the live slots of one model, every row sampled in one pass. With
   * `held`, the tokens are appended and each slot's new text is added to its entry there, to be
   * streamed by the caller; else it is streamed now.
   */
  #stepModel(model: ServedModel, live: Slot[], held?: Map<Slot, string>): void {
    const { gpt } = model;
    const V = gpt.config.vocabSize;
    const prof = this.profile;
    if (this.#ids.length < live.length) this.#ids = new Int32Array(Math.max(live.length, this.opts.maxBatch));
    const ids = this.#ids;
    let logits: Float32Array;
    try {
      const seqs = live.map((s) => s.seq);
      const native = live.every((s) => s.cache.kind === 'native');
      let t = prof.now();
      // On the native decoder the native rows are sampled inside the step (`step` then holds
      // their sampling), the rest by `finishSamples`, as `sampleBatch` would.
      const plan = native ? planSamples(seqs, V) : undefined;
      prof.add('sample', t);
      const caches = live.map((s) => s.cache);
      prof.stepped(caches);
      t = prof.now();
      logits = gpt.decodeStep(
        caches,
        live.map((s) => s.seq.lastToken),
        plan,
      );
      prof.add('step', t);
      t = prof.now();
      if (native) finishSamples(seqs, logits, V, ids, plan);
      else sampleBatch(seqs, logits, V, ids);
      prof.add('sample', t);
    } catch (err) {
      this.#fail(live, err);
      return;
    }
    if (!held) return this.#accept(live, ids, logits, V);
    const deltas = this.#append(live, ids, logits, V);
    for (let r = 0; r < live.length; r++) held.set(live[r]!, (held.get(live[r]!) ?? '') + (deltas[r] ?? ''));
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
