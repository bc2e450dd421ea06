/**
 * Versions loaded on demand: an OpenAI request may name a registered version that is neither the
 * champion nor the candidate, and it is loaded here, into an LRU bounded by the bytes of the
 * loaded weights (`lru-cache` with a size per entry). The least recently used version is evicted
 * when a new one would go over the budget; an evicted version is handed to `release` (the
 * scheduler disposes it once no reply decoding or queued on it remains). Concurrent requests
 * for the same version share one load.
 */
import { LRUCache } from 'lru-cache';
import { ChatError } from './errors.ts';
import type { ServedModel } from './model-host.ts';

export interface ModelCacheOptions {
  /** Most bytes of weights held at once. */
  budgetBytes: number;
  /** Loads and verifies a version (throws a `ChatError` with a stable code when it cannot). */
  load: (versionId: string) => Promise<ServedModel>;
  /** Called with every version leaving the cache other than by `take`. */
  release: (model: ServedModel) => void;
}

/** Bytes of a model's weights (float32), its reranker's included. */
export function modelBytes(model: ServedModel): number {
  return model.gpt.numParams * 4 + (model.reranker?.bytes ?? 0);
}

export class ModelCache {
  readonly #lru: LRUCache<string, ServedModel>;
  readonly #loading = new Map<string, Promise<ServedModel>>();
  #taking = false;

  constructor(readonly opts: ModelCacheOptions) {
    this.#lru = new LRUCache<string, ServedModel>({
      maxSize: opts.budgetBytes,
      sizeCalculation: modelBytes,
      dispose: (model) => {
        if (!this.#taking) opts.release(model);
      },
    });
  }

  /** The loaded version (now the most recently used), or undefined. */
  get(versionId: string): ServedModel | undefined {
    return this.#lru.get(versionId);
  }

  /**
   * The version, loaded first when it is not. Errors: those of `load`, and `model_too_large`
   * when its weights alone are over the budget.
   */
  async load(versionId: string): Promise<ServedModel> {
    const hit = this.#lru.get(versionId);
    if (hit) return hit;
    let pending = this.#loading.get(versionId);
    if (!pending) {
      pending = (async () => {
        const model = await this.opts.load(versionId);
        if (modelBytes(model) > this.opts.budgetBytes) {
          this.opts.release(model);
          throw new ChatError('model_too_large', `${versionId} needs ${modelBytes(model)} bytes; the budget of versions loaded on demand is ${this.opts.budgetBytes} (MODEL_CACHE_BYTES)`, 409, undefined, 'model');
        }
        this.#lru.set(versionId, model);
        return model;
      })().finally(() => this.#loading.delete(versionId));
      this.#loading.set(versionId, pending);
    }
    return pending;
  }

  /** Removes a version without releasing it (it is being promoted and is the caller's now). */
  take(versionId: string): ServedModel | undefined {
    const model = this.#lru.peek(versionId);
    if (!model) return undefined;
    this.#taking = true;
    try {
      this.#lru.delete(versionId);
    } finally {
      this.#taking = false;
    }
    return model;
  }

  /** The loaded versions, most recently used first. */
  get models(): ServedModel[] {
    return [...this.#lru.values()];
  }

  /** Bytes of weights held. */
  get bytes(): number {
    return this.#lru.calculatedSize;
  }

  /** Releases every version. */
  clear(): void {
    this.#lru.clear();
  }
}
