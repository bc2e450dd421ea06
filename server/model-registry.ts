/**
 * The server's side of the model registry: which version chats get, and the hot swap.
 *
 * The store's aliases are the truth (`champion`: what chats get; `candidate`: the canary;
 * `sft`: the KL reference). This class follows them: it re-reads the aliases and settings every
 * `pollMs` and, on PostgreSQL, at once on `NOTIFY registry_changed` (sent by a trigger on every
 * alias move), so every process sharing the store follows a promotion within a second. When
 * `champion` moves it loads the new checkpoint beside the old one (sha256 verified against the
 * registry row and the checkpoint's meta), warms it up with one prefill, and hands it to the
 * scheduler between two decode steps; replies in flight finish on their version. A version that
 * fails to load is logged and not retried until its alias moves again; the old one keeps serving.
 *
 * Canary: with a candidate set and `canary_share` > 0, a stable hash of the conversation id sends
 * that share of conversations to the candidate (the same conversation always to the same arm).
 *
 * Arena: with a candidate set and `arena_share` > 0, that share of `compare` requests (a uniform
 * draw per request) is answered by the champion and the candidate head to head (`arenaModels`).
 * The candidate is loaded when either share is above 0.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { CheckpointError } from '../model/checkpoint.ts';
import { disposeCache } from '../model/gpt.ts';
import { getModelVersion, promote, resolveAlias } from '../feedback/model-versions.ts';
import { registerCheckpointVersion } from '../training/register-versions.ts';
import type { FeedbackStore } from '../feedback/open-store.ts';
import { DEFAULT_SETTINGS, getRegistrySettings, type RegistrySettings } from '../feedback/registry-settings.ts';
import { ChatError } from './errors.ts';
import { loadServedModel, type ServedModel } from './model-host.ts';
import type { Scheduler } from './scheduler.ts';

export interface ModelRegistryOptions {
  store: FeedbackStore;
  scheduler: Scheduler;
  /** PostgreSQL URL to LISTEN on (only when the store is PostgreSQL). */
  listenUrl?: string;
  /** Alias poll interval (ms); also the fallback when notifications are lost. */
  pollMs: number;
  log: (line: string) => void;
  /** Called after `champion` was swapped in. */
  onSwap?: (model: ServedModel) => void;
}

/** What the registry is serving now. */
export interface RegistryState {
  champion: string;
  candidate?: string;
  canaryShare: number;
  arenaShare: number;
  loopPaused: boolean;
  /** Versions being decoded (two while a swap overlaps). */
  liveVersions: string[];
  /** The last version that failed to load, and why. */
  lastError?: { versionId: string; code: string; message: string };
  swaps: number;
}

/** Policy aliases: only policy versions may be pointed at by them. */
export const POLICY_ALIASES: readonly string[] = ['champion', 'candidate', 'sft'];

export class ModelRegistry {
  #candidate: ServedModel | undefined;
  #settings: RegistrySettings = { ...DEFAULT_SETTINGS };
  /** Loaded but not yet swapped in (an admin promotion prepares the model before moving the alias). */
  readonly #prepared = new Map<string, ServedModel>();
  readonly #failed = new Map<string, { code: string; message: string }>();
  #lastError: RegistryState['lastError'];
  #timer: NodeJS.Timeout | undefined;
  #listener: pg.Client | undefined;
  #refreshing: Promise<void> | undefined;
  #again = false;
  #closed = false;
  #swaps = 0;

  constructor(readonly opts: ModelRegistryOptions) {}

  get champion(): ServedModel {
    return this.opts.scheduler.model;
  }

  /**
   * Start-up: with an empty registry, registers the served checkpoint and points `champion` and
   * `sft` at it; otherwise swaps to the registered champion if it differs. Then follows the store.
   */
  async start(): Promise<void> {
    const { db } = this.opts.store;
    const served = this.champion;
    if (!(await getModelVersion(db, served.version))) await registerCheckpointVersion(db, { dir: served.dir, notes: 'served at start-up' }); // a race with another process is not an error
    for (const alias of ['champion', 'sft']) {
      if ((await resolveAlias(db, alias)) === undefined) {
        await promote(db, { alias, versionId: served.version, actor: 'server', reason: 'empty registry: the served checkpoint' }).catch(async (err: unknown) => {
          if ((await resolveAlias(db, alias)) === undefined) throw err; // else another process set it first
        });
      }
    }
    await this.refresh();
    this.#timer = setInterval(() => void this.refresh(), this.opts.pollMs);
    this.#timer.unref();
    if (this.opts.store.dialect === 'postgres' && this.opts.listenUrl) await this.#listen(this.opts.listenUrl);
  }

  /** The model for a reply in `conversationId`: the candidate for the canary share, else undefined (the champion). */
  modelFor(conversationId: string): ServedModel | undefined {
    const share = this.#settings.canary_share;
    if (!this.#candidate || share <= 0) return undefined;
    const h = createHash('sha256').update(conversationId).digest().readUInt32BE(0) / 2 ** 32;
    return h < share ? this.#candidate : undefined;
  }

  /**
   * The two models of an arena `compare`, when a candidate is loaded and `draw` (uniform in
   * [0, 1)) falls under `arena_share`; else undefined (an ordinary compare).
   */
  arenaModels(draw: number = Math.random()): { champion: ServedModel; candidate: ServedModel } | undefined {
    const candidate = this.#candidate;
    if (!candidate || candidate.version === this.champion.version || !(draw < this.#settings.arena_share)) return undefined;
    return { champion: this.champion, candidate };
  }

  state(): RegistryState {
    return {
      champion: this.champion.version,
      candidate: this.#candidate?.version,
      canaryShare: this.#settings.canary_share,
      arenaShare: this.#settings.arena_share,
      loopPaused: this.#settings.loop_paused,
      liveVersions: this.opts.scheduler.liveVersions,
      lastError: this.#lastError,
      swaps: this.#swaps,
    };
  }

  /**
   * Loads and verifies a version (kept until it is swapped in or `close`): the admin routes call
   * this before moving an alias, so a refused version never reaches the store.
   * Errors: `unknown_model_version`, `not_a_policy`, `checkpoint_corrupt`, `checkpoint_missing`, `version_mismatch`.
   */
  async prepare(versionId: string): Promise<ServedModel> {
    if (versionId === this.champion.version) return this.champion;
    if (this.#candidate?.version === versionId) return this.#candidate;
    const ready = this.#prepared.get(versionId);
    if (ready) return ready;
    const row = await getModelVersion(this.opts.store.db, versionId);
    if (!row) throw new ChatError('unknown_model_version', `no model version ${versionId}`);
    if (row.kind !== 'policy') throw new ChatError('not_a_policy', `${versionId} is a ${row.kind} model; only policy versions can serve chats`, 409);
    // Read the weights asynchronously first so the synchronous load below finds them in the page cache.
    await readFile(join(row.checkpoint, 'model.safetensors')).catch(() => undefined);
    let model: ServedModel;
    try {
      model = await loadServedModel(row.checkpoint);
    } catch (err) {
      if (err instanceof CheckpointError) throw new ChatError(err.code === 'kind_mismatch' ? 'not_a_policy' : err.code, err.message, err.code === 'checkpoint_missing' ? 404 : 409);
      throw err;
    }
    if (model.version !== versionId || (row.sha256 !== null && !model.version.endsWith(row.sha256.slice(0, 12)))) {
      model.gpt.dispose();
      throw new ChatError('version_mismatch', `the checkpoint at ${row.checkpoint} is ${model.version}, not ${versionId}`, 409);
    }
    // Warm-up: one prefill, so the first real step pays no first-call costs.
    const { cache } = model.gpt.prefill(model.tok.encode('hello'));
    disposeCache(cache);
    if (this.#prepared.has(versionId)) {
      model.gpt.dispose(); // a concurrent prepare won
      return this.#prepared.get(versionId)!;
    }
    this.#prepared.set(versionId, model);
    return model;
  }

  /** Re-reads the aliases and settings and swaps what changed (calls never overlap). */
  refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#again = true;
      return this.#refreshing;
    }
    this.#refreshing = (async () => {
      do {
        this.#again = false;
        await this.#sync().catch((err: unknown) => this.opts.log(`registry: refresh failed: ${(err as Error).message}`));
      } while (this.#again && !this.#closed);
    })().finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  async #sync(): Promise<void> {
    if (this.#closed) return;
    const { db } = this.opts.store;
    const [champion, candidate, settings] = await Promise.all([resolveAlias(db, 'champion'), resolveAlias(db, 'candidate'), getRegistrySettings(db)]);
    this.#settings = settings;
    if (champion && champion !== this.champion.version) {
      const model = await this.#load(champion);
      if (model && !this.#closed) {
        this.#prepared.delete(champion);
        if (this.#candidate === model) this.#candidate = undefined;
        this.opts.scheduler.setModel(model);
        this.#swaps++;
        this.opts.log(`registry: champion is now ${champion}`);
        this.opts.onSwap?.(model);
      }
    }
    const wanted = settings.canary_share > 0 || settings.arena_share > 0;
    const wantCandidate = candidate && candidate !== this.champion.version && wanted ? candidate : undefined;
    if (wantCandidate !== this.#candidate?.version) {
      const old = this.#candidate;
      this.#candidate = wantCandidate ? await this.#load(wantCandidate) : undefined;
      if (this.#candidate) this.#prepared.delete(this.#candidate.version);
      if (old && old !== this.champion) this.opts.scheduler.release(old);
    }
    for (const [id, m] of this.#prepared) {
      if (id !== champion && id !== candidate) {
        this.#prepared.delete(id);
        this.opts.scheduler.release(m);
      }
    }
  }

  async #load(versionId: string): Promise<ServedModel | undefined> {
    if (this.#failed.has(versionId)) return undefined;
    try {
      return await this.prepare(versionId);
    } catch (err) {
      const e = err instanceof ChatError ? err : new ChatError('internal_error', (err as Error).message);
      this.#failed.set(versionId, { code: e.code, message: e.message });
      this.#lastError = { versionId, code: e.code, message: e.message };
      this.opts.log(`registry: cannot serve ${versionId}: [${e.code}] ${e.message}; keeping ${this.champion.version}`);
      return undefined;
    }
  }

  /** Forget that a version failed (an admin action names it again). */
  forgetFailure(versionId: string): void {
    this.#failed.delete(versionId);
  }

  async #listen(url: string): Promise<void> {
    const schema = this.opts.store.location;
    const connect = async () => {
      if (this.#closed) return;
      const client = new pg.Client({ connectionString: url });
      client.on('notification', (n) => {
        if (n.channel === 'registry_changed' && n.payload === schema) void this.refresh();
      });
      client.on('error', (err) => {
        this.opts.log(`registry: LISTEN connection lost (${err.message}); polling every ${this.opts.pollMs} ms until it is back`);
        this.#listener = undefined;
        client.end().catch(() => {});
        setTimeout(() => void connect().catch(() => {}), 1000).unref();
      });
      await client.connect();
      await client.query('LISTEN registry_changed');
      this.#listener = client;
      void this.refresh(); // a move between the last poll and LISTEN
    };
    await connect().catch((err: unknown) => this.opts.log(`registry: cannot LISTEN (${(err as Error).message}); polling every ${this.opts.pollMs} ms`));
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#refreshing;
    await this.#listener?.end().catch(() => {});
    for (const m of this.#prepared.values()) m.gpt.dispose();
    this.#prepared.clear();
    if (this.#candidate && this.#candidate !== this.champion) this.opts.scheduler.release(this.#candidate);
    this.#candidate = undefined;
  }
}
