/**
 * Live state of conversations: the active branch's turns and, between turns, the KV cache of
 * the last reply's context, so the next turn can extend it instead of prefilling everything.
 * Bounded by bytes (KV caches dominate), not by count: an `lru-cache` whose `sizeCalculation`
 * counts `cacheBytes` plus the text; evicting a conversation frees its KV cache. Evicted state is
 * rebuilt from the store on the next turn.
 *
 * Ownership: a KV cache lives either here (between turns) or in exactly one decoding sequence
 * (`takeKv` moves it out), so eviction never frees a cache that is being decoded.
 */
import { LRUCache } from 'lru-cache';
import { cacheBytes, disposeCache, type KVCache } from '../model/gpt.ts';
import type { Role } from '../model/chat-template.ts';

/** One stored message on the active branch. */
export interface Turn {
  id: string;
  role: Role;
  content: string;
}

/** A conversation's KV cache and the token ids it holds. */
export interface CachedContext {
  ids: number[];
  cache: KVCache;
  /** Model version that computed it (a cache is useless to another model). */
  version: string;
}

export interface ConversationState {
  readonly id: string;
  readonly userId: string;
  /** The active branch, root first: the default parent of the next user message is its last turn. */
  path: Turn[];
  kv?: CachedContext;
}

const BASE_BYTES = 512;

function sizeOf(s: ConversationState): number {
  let n = BASE_BYTES;
  for (const t of s.path) n += 64 + t.content.length * 2;
  if (s.kv) n += cacheBytes(s.kv.cache) + s.kv.ids.length * 8;
  return n;
}

// Entries are boxed: lru-cache re-measures an entry only when a different object is set, so a
// state whose size changed is stored again in a fresh box.
interface Box {
  state: ConversationState;
}

export class SessionCache {
  readonly #lru: LRUCache<string, Box>;
  #putting: ConversationState | undefined;

  constructor(readonly maxBytes: number) {
    this.#lru = new LRUCache<string, Box>({
      maxSize: maxBytes,
      sizeCalculation: (b) => Math.max(1, sizeOf(b.state)),
      dispose: (b) => {
        if (b.state === this.#putting) return; // the same state re-boxed: keep its cache
        if (b.state.kv) {
          disposeCache(b.state.kv.cache);
          b.state.kv = undefined;
        }
      },
    });
  }

  get(id: string): ConversationState | undefined {
    return this.#lru.get(id)?.state;
  }

  /** Stores (or re-measures after a change) a conversation's state. */
  put(state: ConversationState): void {
    if (state.kv && sizeOf(state) > this.maxBytes) {
      disposeCache(state.kv.cache);
      state.kv = undefined;
    }
    this.#putting = state;
    try {
      this.#lru.set(state.id, { state });
    } finally {
      this.#putting = undefined;
    }
  }

  /** Moves the KV cache out of the state (the caller now owns it and must dispose it). */
  takeKv(state: ConversationState): CachedContext | undefined {
    const kv = state.kv;
    state.kv = undefined;
    if (kv && this.#lru.peek(state.id)?.state === state) this.put(state);
    return kv;
  }

  /** Gives a KV cache to the state (disposing any previous one) and re-measures it. */
  giveKv(state: ConversationState, kv: CachedContext): void {
    if (state.kv && state.kv.cache !== kv.cache) disposeCache(state.kv.cache);
    state.kv = kv;
    this.put(state);
  }

  get size(): number {
    return this.#lru.size;
  }

  get bytes(): number {
    return this.#lru.calculatedSize;
  }

  clear(): void {
    this.#lru.clear();
  }
}
