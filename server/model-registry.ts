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
 * fails to load is logged and retried with backoff (1 s doubling to 5 min; a checkpoint may still
 * be arriving on shared storage), reported as `pendingLoad` in `state()` (so in `/healthz` and
 * `/admin/versions`); the old one keeps serving meanwhile. An admin action naming it retries at once.
 * The LISTEN connection is re-made with backoff (0.5 s doubling to 30 s) for as long as the
 * registry runs; polling covers the gaps.
 *
 * Canary: with a candidate set and `canary_share` > 0, a stable hash of the conversation id sends
 * that share of conversations to the candidate (the same conversation always to the same arm).
 *
 * Arena: with a candidate set and `arena_share` > 0, that share of `compare` requests (a uniform
 * draw per request) is answered by the champion and the candidate head to head (`arenaModels`).
 * The candidate is loaded when either share is above 0.
 *
 * Selection by name (the OpenAI routes' `model`): `champion`, `candidate`, `sft` or a registered
 * policy version id picks that version (`select`, then `pick` just before submitting); any other
 * name is the default arm (the champion, or the canary's choice). A version that is neither the
 * champion nor the candidate is loaded on demand into a `ModelCache` bounded by
 * `modelCacheBytes`; promoting a version loaded that way moves it out of the cache, unloaded.
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
import { ModelCache } from './model-cache.ts';
import { disposeServedModel, loadServedModel, type ServedModel } from './model-host.ts';
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
  /** First retry of a failed load after this long (default 1000 ms), doubling per attempt... */
  retryBaseMs?: number;
  /** ...up to this (default 300000 ms). */
  retryCapMs?: number;
  /** Bytes of weights of the versions loaded on demand (default 1 GiB). */
  modelCacheBytes?: number;
  /** Best-of-n for versions that name their reward ensemble (default 1: off). */
  rerankN?: number;
}

/** What a request's `model` selected: a name (`champion`, `candidate`, `sft` or a version id) and the version it meant. */
export interface ModelTarget {
  name: string;
  versionId: string;
}

/** Aliases and loaded versions, for `/v1/models`. */
export interface ModelListing {
  aliases: { alias: string; versionId: string }[];
  loaded: ServedModel[];
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
  /** The version `champion` points at while it cannot be loaded: tries so far and when the next one is due. */
  pendingLoad?: { versionId: string; code: string; message: string; attempts: number; nextRetryAt: string };
  swaps: number;
  /** Best-of-n of the served versions that have it: the samples per reply and the reward version that picks (see `model-host.ts`). */
  rerank?: { champion?: { n: number; reward: string }; candidate?: { n: number; reward: string } };
}

/** Policy aliases: only policy versions may be pointed at by them. */
export const POLICY_ALIASES: readonly string[] = ['champion', 'candidate', 'sft'];

const rerankOf = (alias: 'champion' | 'candidate', m: ServedModel | undefined) => (m?.reranker ? { [alias]: { n: m.reranker.n, reward: m.reranker.version } } : {});

export class ModelRegistry {
  #candidate: ServedModel | undefined;
  #settings: RegistrySettings = { ...DEFAULT_SETTINGS };
  /** Loaded but not yet swapped in (an admin promotion prepares the model before moving the alias). */
  readonly #prepared = new Map<string, ServedModel>();
  readonly #failed = new Map<string, { code: string; message: string; attempts: number; retryAt: number }>();
  #wantedChampion: string | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #listenAttempts = 0;
  #lastError: RegistryState['lastError'];
  #timer: NodeJS.Timeout | undefined;
  #listener: pg.Client | undefined;
  #refreshing: Promise<void> | undefined;
  #again = false;
  #closed = false;
  #swaps = 0;
  readonly #onDemand: ModelCache;

  constructor(readonly opts: ModelRegistryOptions) {
    this.#onDemand = new ModelCache({ budgetBytes: opts.modelCacheBytes ?? 2 ** 30, load: (id) => this.#loadVerified(id), release: (m) => opts.scheduler.release(m) });
  }

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
      ...(this.#pendingLoad() ? { pendingLoad: this.#pendingLoad() } : {}),
      swaps: this.#swaps,
      ...(this.champion.reranker || this.#candidate?.reranker ? { rerank: { ...rerankOf('champion', this.champion), ...rerankOf('candidate', this.#candidate) } } : {}),
    };
  }

  #pendingLoad(): RegistryState['pendingLoad'] {
    const id = this.#wantedChampion;
    const f = id !== undefined && id !== this.champion.version ? this.#failed.get(id) : undefined;
    return f && { versionId: id!, code: f.code, message: f.message, attempts: f.attempts, nextRetryAt: new Date(f.retryAt).toISOString() };
  }

  /**
   * Loads and verifies a version (kept until it is swapped in or `close`): the admin routes call
   * this before moving an alias, so a refused version never reaches the store.
   * Errors: `unknown_model_version`, `not_a_policy`, `checkpoint_corrupt`, `checkpoint_missing`, `version_mismatch`.
   */
  async prepare(versionId: string): Promise<ServedModel> {
    if (versionId === this.champion.version) return this.champion;
    if (this.#candidate?.version === versionId) return this.#candidate;
    const ready = this.#prepared.get(versionId) ?? this.#onDemand.take(versionId);
    if (ready) {
      this.#prepared.set(versionId, ready);
      return ready;
    }
    const model = await this.#loadVerified(versionId);
    if (this.#prepared.has(versionId)) {
      disposeServedModel(model); // a concurrent prepare won
      return this.#prepared.get(versionId)!;
    }
    this.#prepared.set(versionId, model);
    return model;
  }

  /** Loads a registered policy version, checks it is the one registered, and warms it up. */
  async #loadVerified(versionId: string): Promise<ServedModel> {
    const row = await getModelVersion(this.opts.store.db, versionId);
    if (!row) throw new ChatError('unknown_model_version', `no model version ${versionId}`);
    if (row.kind !== 'policy') throw new ChatError('not_a_policy', `${versionId} is a ${row.kind} model; only policy versions can serve chats`, 409);
    // Read the weights asynchronously first so the synchronous load below finds them in the page cache.
    await readFile(join(row.checkpoint, 'model.safetensors')).catch(() => undefined);
    let model: ServedModel;
    try {
      model = await loadServedModel(row.checkpoint, { rerankN: this.opts.rerankN });
    } catch (err) {
      if (err instanceof CheckpointError) throw new ChatError(err.code === 'kind_mismatch' ? 'not_a_policy' : err.code, err.message, err.code === 'checkpoint_missing' ? 404 : 409);
      throw err;
    }
    if (model.version !== versionId || (row.sha256 !== null && !model.version.endsWith(row.sha256.slice(0, 12)))) {
      disposeServedModel(model);
      throw new ChatError('version_mismatch', `the checkpoint at ${row.checkpoint} is ${model.version}, not ${versionId}`, 409);
    }
    // Warm-up: one prefill, so the first real step pays no first-call costs.
    const { cache } = model.gpt.prefill(model.tok.encode('hello'));
    disposeCache(cache);
    return model;
  }

  /**
   * What a request's `model` names: `champion`; `candidate` or `sft` (the version the alias points
   * at, `model_not_found` when it points at none); a registered version id. The version is loaded
   * (on demand when it is neither champion nor candidate) before this resolves. Any other name is
   * undefined: the default arm. Errors name `param: 'model'`: `model_not_found`, `not_a_policy`,
   * `model_too_large`, and the checkpoint's codes.
   */
  async select(name: string): Promise<ModelTarget | undefined> {
    if (name === 'champion') return { name, versionId: this.champion.version };
    try {
      let versionId: string;
      if (name === 'candidate' || name === 'sft') {
        const id = await resolveAlias(this.opts.store.db, name);
        if (id === undefined) throw new ChatError('model_not_found', `the alias ${name} points at no version`, 404);
        versionId = id;
      } else if (this.loaded(name) || (await getModelVersion(this.opts.store.db, name))) versionId = name;
      else return undefined;
      if (!this.loaded(versionId)) await this.#onDemand.load(versionId);
      return { name, versionId };
    } catch (err) {
      throw err instanceof ChatError ? err.withParam('model') : err;
    }
  }

  /**
   * The model to decode `target` with, right now (call it in the same synchronous run as the
   * submit, so no swap or eviction comes between): the current champion for `champion`, else the
   * loaded version; undefined when that version was evicted since `select`.
   */
  pick(target: ModelTarget): ServedModel | undefined {
    return target.name === 'champion' ? this.champion : this.loaded(target.versionId);
  }

  /** A loaded version (champion, candidate or loaded on demand), or undefined. */
  loaded(versionId: string): ServedModel | undefined {
    if (versionId === this.champion.version) return this.champion;
    if (versionId === this.#candidate?.version) return this.#candidate;
    return this.#prepared.get(versionId) ?? this.#onDemand.get(versionId);
  }

  /** The policy aliases that point at a version, and every loaded version (champion first). */
  async listing(): Promise<ModelListing> {
    const aliases: ModelListing['aliases'] = [];
    for (const alias of POLICY_ALIASES) {
      const versionId = alias === 'champion' ? this.champion.version : await resolveAlias(this.opts.store.db, alias);
      if (versionId !== undefined) aliases.push({ alias, versionId });
    }
    const loaded = [this.champion, ...(this.#candidate && this.#candidate !== this.champion ? [this.#candidate] : []), ...this.#prepared.values(), ...this.#onDemand.models];
    return { aliases, loaded: [...new Map(loaded.map((m) => [m.version, m])).values()] };
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
    this.#wantedChampion = champion;
    if (champion && champion !== this.champion.version) {
      const model = await this.#load(champion);
      if (model && !this.#closed) {
        this.#prepared.delete(champion);
        if (this.#candidate === model) this.#candidate = undefined;
        this.opts.scheduler.setModel(model);
        this.#swaps++;
        this.opts.log(`registry: champion is now ${champion}${model.reranker ? ` (best of ${model.reranker.n} by ${model.reranker.version})` : ''}`);
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
    const failed = this.#failed.get(versionId);
    if (failed && Date.now() < failed.retryAt) return undefined;
    try {
      const model = await this.prepare(versionId);
      if (failed) this.opts.log(`registry: ${versionId} loaded after ${failed.attempts} failed attempts`);
      this.#failed.delete(versionId);
      return model;
    } catch (err) {
      const e = err instanceof ChatError ? err : new ChatError('internal_error', (err as Error).message);
      const attempts = (failed?.attempts ?? 0) + 1;
      const delay = Math.min(this.retryCapMs, this.retryBaseMs * 2 ** (attempts - 1));
      this.#failed.set(versionId, { code: e.code, message: e.message, attempts, retryAt: Date.now() + delay });
      this.#lastError = { versionId, code: e.code, message: e.message };
      this.opts.log(`registry: cannot serve ${versionId}: [${e.code}] ${e.message}; keeping ${this.champion.version}; retry ${attempts} in ${delay} ms`);
      clearTimeout(this.#retryTimer);
      this.#retryTimer = setTimeout(() => void this.refresh(), delay);
      this.#retryTimer.unref();
      return undefined;
    }
  }

  /** Backoff of a failed load: `retryBaseMs` doubling per attempt up to `retryCapMs`. */
  get retryBaseMs(): number {
    return this.opts.retryBaseMs ?? 1000;
  }
  get retryCapMs(): number {
    return this.opts.retryCapMs ?? 300_000;
  }

  /** Forget that a version failed (an admin action names it again). */
  forgetFailure(versionId: string): void {
    this.#failed.delete(versionId);
  }

  async #listen(url: string): Promise<void> {
    const schema = this.opts.store.location;
    let retry: NodeJS.Timeout | undefined;
    const again = (why: string) => {
      if (this.#closed || retry) return;
      const delay = Math.min(30_000, 500 * 2 ** this.#listenAttempts++);
      this.opts.log(`registry: ${why}; polling every ${this.opts.pollMs} ms, LISTEN again in ${delay} ms`);
      retry = setTimeout(() => {
        retry = undefined;
        void connect();
      }, delay);
      retry.unref();
    };
    const connect = async () => {
      if (this.#closed) return;
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000, keepAlive: true });
      let lost = false;
      const drop = (why: string) => {
        if (lost) return;
        lost = true;
        if (this.#listener === client) this.#listener = undefined;
        client.end().catch(() => {});
        again(why);
      };
      client.on('notification', (n) => {
        if (n.channel === 'registry_changed' && n.payload === schema) void this.refresh();
      });
      client.on('error', (err) => drop(`LISTEN connection lost (${err.message})`));
      client.on('end', () => drop('LISTEN connection ended'));
      try {
        await client.connect();
        await client.query('LISTEN registry_changed');
      } catch (err) {
        drop(`cannot LISTEN (${(err as Error).message})`);
        return;
      }
      if (this.#closed) {
        await client.end().catch(() => {});
        return;
      }
      this.#listener = client;
      this.#listenAttempts = 0;
      void this.refresh(); // a move between the last poll and LISTEN
    };
    await connect();
  }

  /** Whether the LISTEN connection is up (PostgreSQL only). */
  get listening(): boolean {
    return this.#listener !== undefined;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    clearTimeout(this.#retryTimer);
    await this.#refreshing;
    await this.#listener?.end().catch(() => {});
    for (const m of this.#prepared.values()) disposeServedModel(m);
    this.#prepared.clear();
    this.#onDemand.clear();
    if (this.#candidate && this.#candidate !== this.champion) this.opts.scheduler.release(this.#candidate);
    this.#candidate = undefined;
  }
}
