/**
 * Training data as batches: the pretraining corpus as one token stream (documents separated by
 * `<|endoftext|>`) cut into random windows, and dialogues rendered through the chat template
 * into rows whose loss weights are 1 on assistant tokens only.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Tokenizer } from '../model/tokenizer.ts';
import { renderChat, type ChatMessage } from '../model/chat-template.ts';
import { createRng } from '../model/random.ts';
import type { Batch } from './train-loop.ts';

export interface Dialogue {
  messages: ChatMessage[];
  kind?: string;
  meta?: Record<string, unknown>;
}

export function readJsonl<T>(path: string): T[] {
  if (!existsSync(path)) throw new Error(`${path} not found: run \`npm run build-data\` (or \`npm run pipeline\`) first`);
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l, i) => {
      try {
        return JSON.parse(l) as T;
      } catch {
        throw new Error(`${path}:${i + 1} is not valid JSON`);
      }
    });
}

/**
 * The corpus split as one token stream, encoded once per tokenizer and cached beside the data
 * (`cache/<split>.<fingerprint>.tokens`).
 */
export function corpusTokens(dataDir: string, split: 'train' | 'val', tok: Tokenizer): Int32Array {
  const src = join(dataDir, `corpus.${split}.jsonl`);
  const key = createHash('sha256').update(tok.fingerprint()).update(readFileSync(src)).digest('hex').slice(0, 16);
  const cache = join(dataDir, 'cache', `corpus.${split}.${key}.tokens`);
  if (existsSync(cache)) {
    const buf = readFileSync(cache);
    return new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  }
  const eot = tok.specialId('<|endoftext|>');
  const parts: number[][] = [];
  let n = 0;
  for (const doc of readJsonl<{ text: string }>(src)) {
    const ids = tok.encode(doc.text);
    ids.push(eot);
    parts.push(ids);
    n += ids.length;
  }
  const out = new Int32Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  mkdirSync(dirname(cache), { recursive: true });
  writeFileSync(cache + '.tmp', Buffer.from(out.buffer));
  renameSync(cache + '.tmp', cache);
  return out;
}

/** Random windows of `T + 1` tokens from a stream, deterministic in (seed, step). */
export function streamBatchAt(tokens: Int32Array, B: number, T: number, seed: number): (step: number) => Batch {
  if (tokens.length < T + 2) throw new Error(`token stream of ${tokens.length} tokens is shorter than one window of ${T + 1}`);
  return (step) => {
    const rng = createRng(seed * 1_000_003 + step);
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      const start = Math.floor(rng() * (tokens.length - T - 1));
      inputs.set(tokens.subarray(start, start + T), b * T);
      targets.set(tokens.subarray(start + 1, start + T + 1), b * T);
    }
    return { B, T, inputs, targets, weights: new Float32Array(B * T).fill(1) };
  };
}

/** Consecutive, non-overlapping windows from the start of a stream (held-out evaluation). */
export function streamEvalBatches(tokens: Int32Array, B: number, T: number, maxBatches: number): Batch[] {
  const out: Batch[] = [];
  let at = 0;
  while (out.length < maxBatches && at + B * (T + 1) <= tokens.length) {
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    for (let b = 0; b < B; b++, at += T + 1) {
      inputs.set(tokens.subarray(at, at + T), b * T);
      targets.set(tokens.subarray(at + 1, at + T + 1), b * T);
    }
    out.push({ B, T, inputs, targets, weights: new Float32Array(B * T).fill(1) });
  }
  return out;
}

/** A dialogue rendered for SFT: ids and the assistant-only mask, at most `blockSize + 1` long. */
export interface Row {
  ids: number[];
  mask: number[];
}

/** Renders dialogues; those longer than the context are cut at the last turn that fits. */
export function renderRows(tok: Tokenizer, dialogues: readonly Dialogue[], blockSize: number): Row[] {
  const rows: Row[] = [];
  for (const d of dialogues) {
    const r = renderChat(tok, d.messages);
    if (r.ids.length <= blockSize + 1) {
      rows.push(r);
      continue;
    }
    const cut = r.ids.slice(0, blockSize + 1);
    const mask = r.mask.slice(0, blockSize + 1);
    if (mask.some((m) => m)) rows.push({ ids: cut, mask });
  }
  return rows;
}

/** Packs rows into a batch padded to the longest row; padding has weight 0. */
export function rowsToBatch(rows: readonly Row[], padId: number): Batch {
  const B = rows.length;
  const T = Math.max(...rows.map((r) => r.ids.length)) - 1;
  const inputs = new Int32Array(B * T).fill(padId);
  const targets = new Int32Array(B * T).fill(padId);
  const weights = new Float32Array(B * T);
  rows.forEach((r, b) => {
    for (let t = 0; t + 1 < r.ids.length; t++) {
      inputs[b * T + t] = r.ids[t]!;
      targets[b * T + t] = r.ids[t + 1]!;
      weights[b * T + t] = r.mask[t + 1]!;
    }
  });
  return { B, T, inputs, targets, weights };
}

/** Random batches of rows, deterministic in (seed, step). */
export function rowBatchAt(rows: readonly Row[], B: number, padId: number, seed: number): (step: number) => Batch {
  return (step) => {
    const rng = createRng(seed * 1_000_003 + step);
    const pick: Row[] = [];
    for (let b = 0; b < B; b++) pick.push(rows[Math.floor(rng() * rows.length)]!);
    return rowsToBatch(pick, padId);
  };
}

/** Fixed evaluation batches over the first rows. */
export function rowEvalBatches(rows: readonly Row[], B: number, padId: number, maxBatches: number): Batch[] {
  const out: Batch[] = [];
  for (let i = 0; i < rows.length && out.length < maxBatches; i += B) out.push(rowsToBatch(rows.slice(i, i + B), padId));
  return out;
}
