/**
 * Where serving time goes, stage by stage, when switched on (`enabled`; off it costs one branch
 * per stage). The scheduler times its stages; the doors (WebSocket, OpenAI SSE) time their socket
 * writes. Stages are disjoint: a write made inside a delta callback is counted under `write`
 * and taken out of `emit`.
 *
 * - `admit`: prefill of newly admitted prompts (the model's prompt pass);
 * - `step`: the model's batched decode step (off the event loop: from its start to its landing,
 *   overlapping the other stages, and its native rows' sampling with it);
 * - `sample`: picking each sequence's next token from its logits;
 * - `detokenize`: token to text, stop strings, finish rules;
 * - `emit`: delta callbacks (per-token frame building, queueing, JSON);
 * - `write`: WebSocket frames and SSE chunks handed to the socket.
 *
 * What a run's wall time holds beyond these is the event loop's own work: reading client frames,
 * request handling and the store, timers, garbage collection.
 */
export const STAGES = ['admit', 'step', 'sample', 'detokenize', 'emit', 'write'] as const;
export type Stage = (typeof STAGES)[number];

export class ServeProfile {
  enabled = false;
  readonly ms: Record<Stage, number> = { admit: 0, step: 0, sample: 0, detokenize: 0, emit: 0, write: 0 };
  /**
   * Decode steps, those of them run off the event loop (their `step` time, launch to landing,
   * overlaps the other stages), sequences decoded in them (rows), the tokens those rows attended
   * to (their caches' lengths: `context / rows` is the mean context a step decodes at), tokens
   * sampled, socket writes (WebSocket frames, SSE writes), prompts prefilled and the tokens their
   * prefills fed.
   */
  readonly counts = { steps: 0, offThreadSteps: 0, rows: 0, context: 0, tokens: 0, frames: 0, prompts: 0, promptTokens: 0 };
  #inEmit = false;
  #writeInEmit = 0;

  /** A start time for `add` (0 when off). */
  now(): number {
    return this.enabled ? performance.now() : 0;
  }

  add(stage: Stage, since: number): void {
    if (this.enabled) this.ms[stage] += performance.now() - since;
  }

  /** Times delta callbacks as `emit`, without the writes they make. */
  emit(fn: () => void): void {
    if (!this.enabled) return fn();
    const t0 = performance.now();
    this.#inEmit = true;
    this.#writeInEmit = 0;
    try {
      fn();
    } finally {
      this.#inEmit = false;
      this.ms.emit += performance.now() - t0 - this.#writeInEmit;
    }
  }

  /** Records one socket write that started at `since`. */
  wrote(since: number, frames = 1): void {
    if (!this.enabled) return;
    const ms = performance.now() - since;
    this.ms.write += ms;
    this.counts.frames += frames;
    if (this.#inEmit) this.#writeInEmit += ms;
  }

  /** Of `ms.step`, the time of steps run off the event loop (launch to landing), which overlaps the other stages. */
  offThreadStepMs = 0;

  /** Counts a decode step of `caches`. */
  stepped(caches: readonly { readonly length: number }[]): void {
    if (!this.enabled) return;
    this.counts.steps++;
    this.counts.rows += caches.length;
    for (const c of caches) this.counts.context += c.length;
  }

  /** Counts the prompts of one prefill pass. */
  prefilled(prompts: readonly { readonly ids: readonly number[] }[]): void {
    if (!this.enabled) return;
    this.counts.prompts += prompts.length;
    for (const p of prompts) this.counts.promptTokens += p.ids.length;
  }

  /** Records a step that ran off the event loop from `since` to now (under `step` too). */
  addOffThreadStep(since: number): void {
    if (!this.enabled) return;
    const ms = performance.now() - since;
    this.ms.step += ms;
    this.offThreadStepMs += ms;
    this.counts.offThreadSteps++;
  }

  reset(): void {
    this.offThreadStepMs = 0;
    for (const s of STAGES) this.ms[s] = 0;
    for (const k of Object.keys(this.counts) as (keyof ServeProfile['counts'])[]) this.counts[k] = 0;
  }
}
