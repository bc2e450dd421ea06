/**
 * Checkpoints: a directory holding `model.safetensors` (weights, readable by other tools),
 * `meta.json` (config, kind, stage, parent, step, metrics, the run's config, the weights'
 * sha256), `tokenizer.json`, and optionally `optimizer.safetensors` (to resume training).
 *
 * Writes are atomic: every file goes into a temporary sibling directory, each is fsynced, the
 * directory is renamed into place and its parent fsynced. A checkpoint directory therefore
 * exists whole or not at all; an existing one is never overwritten. Loading verifies the
 * sha256 and refuses a config, kind or tokenizer that does not match what the caller expects.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { TokenizerJSON } from './tokenizer.ts';
import type { GPTConfig, ModelKind } from './gpt.ts';

export type Stage = 'base' | 'sft' | 'reward' | 'policy';

/** Everything about a checkpoint except its tensors (`meta.json`). */
export interface CheckpointMeta {
  format: 'rlhf-chat-checkpoint/1';
  stage: Stage;
  kind: ModelKind;
  config: GPTConfig;
  /** sha256 of the tokenizer's canonical JSON (`Tokenizer.fingerprint()`). */
  tokenizerFingerprint: string;
  /** The checkpoint this one was trained from, if any (its directory name or version id). */
  parent: string | null;
  step: number;
  /** Figures measured at save time (losses, accuracies, ...). */
  metrics: Record<string, number>;
  /** The resolved config of the run that wrote it. */
  runConfig: Record<string, unknown>;
  createdAt: string;
  /** sha256 (hex) of model.safetensors. */
  sha256: string;
}

export type NamedTensors = ReadonlyMap<string, { data: Float32Array; shape: readonly number[] }>;

export class CheckpointError extends Error {
  constructor(
    /** Stable code: checkpoint_missing, checkpoint_corrupt, config_mismatch, kind_mismatch, tokenizer_mismatch, checkpoint_exists. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'CheckpointError';
  }
}

/**
 * The version id of a checkpoint: `<directory name>-<first 12 hex of the weights' sha256>`,
 * e.g. `sft-3f2a9c0d11be`. Replies, generations and the registry all use it.
 */
export function versionId(dir: string, sha256: string): string {
  return `${basename(resolve(dir))}-${sha256.slice(0, 12)}`;
}

// ------------------------------------------------------------------ safetensors

/** Serializes float32 tensors to the safetensors format (string metadata optional). */
export function encodeSafetensors(tensors: NamedTensors, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1);
    if (size !== t.data.length) throw new Error(`tensor "${name}": shape ${t.shape} does not hold ${t.data.length} values`);
    header[name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors.values()) {
    Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(out, at);
    at += t.data.byteLength;
  }
  return out;
}

/** Parses a safetensors buffer (float32 tensors only), checking every offset. */
export function decodeSafetensors(buf: Buffer): { tensors: Map<string, { data: Float32Array; shape: number[] }>; metadata: Record<string, string> } {
  const corrupt = (why: string) => new CheckpointError('checkpoint_corrupt', `safetensors: ${why}`);
  if (buf.length < 8) throw corrupt('file shorter than its 8-byte header length');
  const n = Number(buf.readBigUInt64LE(0));
  if (n > buf.length - 8) throw corrupt(`header length ${n} runs past the end of the file (${buf.length} bytes)`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  } catch {
    throw corrupt('header is not valid JSON');
  }
  const body = buf.subarray(8 + n);
  const tensors = new Map<string, { data: Float32Array; shape: number[] }>();
  let metadata: Record<string, string> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = info as unknown as Record<string, string>;
      continue;
    }
    if (info.dtype !== 'F32') throw corrupt(`tensor "${name}" has dtype ${info.dtype}; only F32 is supported`);
    const [start, end] = info.data_offsets;
    const size = info.shape.reduce((a, b) => a * b, 1);
    if (!(start >= 0 && end <= body.length && end - start === size * 4)) throw corrupt(`tensor "${name}" has bad offsets`);
    const copy = new Float32Array(size);
    Buffer.from(copy.buffer).set(body.subarray(start, end));
    tensors.set(name, { data: copy, shape: info.shape });
  }
  return { tensors, metadata };
}

// ------------------------------------------------------------------ atomic directories

function writeFileDurable(path: string, data: Buffer | string): void {
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncDir(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes `files` into a new directory `dir` atomically; refuses to replace an existing one. */
export function writeDirAtomic(dir: string, files: Record<string, Buffer | string>): void {
  const parent = dirname(dir);
  mkdirSync(parent, { recursive: true });
  if (existsSync(dir)) throw new CheckpointError('checkpoint_exists', `${dir} already exists; checkpoints are never overwritten`);
  const tmp = join(parent, `.tmp-${basename(dir)}-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(tmp);
  try {
    for (const [name, data] of Object.entries(files)) writeFileDurable(join(tmp, name), data);
    fsyncDir(tmp);
    renameSync(tmp, dir);
    fsyncDir(parent);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** Replaces a small file atomically (temp file, fsync, rename): used for `latest` pointers. */
export function writeFileAtomic(path: string, data: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  writeFileDurable(tmp, data);
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

// ------------------------------------------------------------------ checkpoints

export interface SaveCheckpointInput {
  weights: NamedTensors;
  meta: Omit<CheckpointMeta, 'format' | 'sha256' | 'createdAt'>;
  tokenizer: TokenizerJSON;
  /** Optimizer state for resuming (AdamW moments), saved beside the weights. */
  optimizer?: NamedTensors;
}

/** Saves a checkpoint directory atomically and returns its metadata. */
export function saveCheckpoint(dir: string, input: SaveCheckpointInput): CheckpointMeta {
  const weights = encodeSafetensors(input.weights, { format: 'pt' });
  const meta: CheckpointMeta = {
    format: 'rlhf-chat-checkpoint/1',
    ...input.meta,
    createdAt: new Date().toISOString(),
    sha256: createHash('sha256').update(weights).digest('hex'),
  };
  const files: Record<string, Buffer | string> = {
    'model.safetensors': weights,
    'tokenizer.json': JSON.stringify(input.tokenizer),
    'meta.json': JSON.stringify(meta, null, 2) + '\n',
  };
  if (input.optimizer) files['optimizer.safetensors'] = encodeSafetensors(input.optimizer);
  writeDirAtomic(dir, files);
  return meta;
}

export interface LoadedCheckpoint {
  dir: string;
  meta: CheckpointMeta;
  weights: Map<string, Float32Array>;
  tokenizer: TokenizerJSON;
  optimizer?: Map<string, Float32Array>;
}

/** What the caller requires of a checkpoint; a mismatch is refused with a clear error. */
export interface CheckpointExpectation {
  config?: GPTConfig;
  kind?: ModelKind;
  tokenizerFingerprint?: string;
  withOptimizer?: boolean;
}

function readJson<T>(path: string, what: string): T {
  if (!existsSync(path)) throw new CheckpointError('checkpoint_corrupt', `${what} is missing: ${path}`);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    throw new CheckpointError('checkpoint_corrupt', `${what} is not valid JSON: ${path}`);
  }
}

const CONFIG_KEYS = ['nLayer', 'nHead', 'nEmbd', 'blockSize', 'vocabSize'] as const;

/** Reads only `meta.json` (cheap: for listings). */
export function readCheckpointMeta(dir: string): CheckpointMeta {
  if (!existsSync(dir)) throw new CheckpointError('checkpoint_missing', `no checkpoint at ${dir}`);
  const meta = readJson<CheckpointMeta>(join(dir, 'meta.json'), 'meta.json');
  if (meta.format !== 'rlhf-chat-checkpoint/1') {
    throw new CheckpointError('checkpoint_corrupt', `${dir}/meta.json has unknown format ${JSON.stringify(meta.format)}`);
  }
  return meta;
}

/**
 * Loads and verifies a checkpoint directory.
 *
 * @example
 *   const ck = loadCheckpoint('checkpoints/sft', { kind: 'policy' });
 *   const gpt = GPT.fromWeights(ck.meta.config, ck.meta.kind, ck.weights);
 */
export function loadCheckpoint(dir: string, expect: CheckpointExpectation = {}): LoadedCheckpoint {
  const meta = readCheckpointMeta(dir);
  const weightsPath = join(dir, 'model.safetensors');
  if (!existsSync(weightsPath)) throw new CheckpointError('checkpoint_corrupt', `model.safetensors is missing in ${dir}`);
  const buf = readFileSync(weightsPath);
  const sha = createHash('sha256').update(buf).digest('hex');
  if (sha !== meta.sha256) {
    throw new CheckpointError(
      'checkpoint_corrupt',
      `${weightsPath} does not match its recorded sha256 (file ${sha.slice(0, 12)}…, meta ${String(meta.sha256).slice(0, 12)}…): the file is corrupt or truncated; restore it or retrain`,
    );
  }
  if (expect.config) {
    const diff = CONFIG_KEYS.filter((k) => expect.config![k] !== meta.config[k]);
    if (diff.length) {
      throw new CheckpointError(
        'config_mismatch',
        `checkpoint ${dir} has ${diff.map((k) => `${k}=${meta.config[k]}`).join(', ')} but ${diff.map((k) => `${k}=${expect.config![k]}`).join(', ')} was expected`,
      );
    }
  }
  if (expect.kind && expect.kind !== meta.kind) {
    throw new CheckpointError('kind_mismatch', `checkpoint ${dir} is a ${meta.kind} model, not a ${expect.kind} model`);
  }
  const tokenizer = readJson<TokenizerJSON>(join(dir, 'tokenizer.json'), 'tokenizer.json');
  const tokSha = createHash('sha256').update(JSON.stringify(tokenizer)).digest('hex');
  if (tokSha !== meta.tokenizerFingerprint) {
    throw new CheckpointError('checkpoint_corrupt', `${dir}/tokenizer.json does not match the tokenizer fingerprint in meta.json`);
  }
  if (expect.tokenizerFingerprint && expect.tokenizerFingerprint !== meta.tokenizerFingerprint) {
    throw new CheckpointError('tokenizer_mismatch', `checkpoint ${dir} was trained with another tokenizer (${meta.tokenizerFingerprint.slice(0, 12)}…, expected ${expect.tokenizerFingerprint.slice(0, 12)}…)`);
  }
  const weights = new Map<string, Float32Array>();
  for (const [name, t] of decodeSafetensors(buf).tensors) weights.set(name, t.data);
  const out: LoadedCheckpoint = { dir, meta, weights, tokenizer };
  const optPath = join(dir, 'optimizer.safetensors');
  if (expect.withOptimizer && existsSync(optPath)) {
    out.optimizer = new Map([...decodeSafetensors(readFileSync(optPath)).tensors].map(([k, v]) => [k, v.data]));
  }
  return out;
}
