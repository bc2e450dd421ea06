/**
 * The PyTorch peer (`bench/peer/torch_gpt.py`): which python runs it, and its figures for a
 * model shape, so the benchmarks compare with PyTorch on one machine at one moment.
 *
 * The python is `--peer-python` / `PEER_PYTHON`, else the first `python3` on PATH whose
 * `torch.__version__` is 2.x. A python with PyTorch 1.x is never used: Debian's 1.13 runs its
 * BLAS at a fraction of this CPU's speed and would flatter every ratio. When no usable python
 * is found the peer is skipped with the reason, and the lines say so.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, realpathSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { stealMeter } from './cpu-steal.ts';

/** The repository's copy of the peer script. */
export const PEER_SCRIPT = join(import.meta.dirname, 'peer', 'torch_gpt.py');

/** A python that can run the peer, or the reason there is none. */
export type PeerPython = { python: string; torch: string } | { skipped: string };

/** The shape arguments of the peer script (nanoGPT names). */
export interface PeerShape {
  nLayer: number;
  nHead: number;
  nEmbd: number;
  blockSize: number;
  vocabSize: number;
  batch: number;
}

/** What one peer run measured (the script's JSON line). */
export interface PeerFigures {
  peer: string;
  threads: number;
  params: number;
  train_step_ms: number;
  train_tokens_per_s: number;
  gen_tokens_per_s: number;
  gen_batch: number;
  gen_batch_tokens_per_s: number;
  gemm_gflops: number;
  /** CPU steal over the peer's whole run (bench/cpu-steal.ts), when the machine reports it. */
  cpu_steal?: number;
}

/** `torch.__version__` of `python`, or why it has none. */
function torchVersion(python: string): { version: string } | { error: string } {
  const r = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', timeout: 60_000 });
  if (r.error) return { error: (r.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : r.error.message };
  if (r.status !== 0) return { error: /No module named/.test(r.stderr) ? 'no torch' : (r.stderr.trim().split('\n').pop() ?? `exit ${r.status}`) };
  return { version: r.stdout.trim() };
}

const isTorch2 = (version: string) => /^2\./.test(version);

/** The python3 executables on `path`, in order, each once. */
function pythonsOnPath(path: string): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const file = join(dir, 'python3');
    try {
      accessSync(file, constants.X_OK);
    } catch {
      continue;
    }
    const real = realpathSync(file);
    if (!seen.has(real)) (seen.add(real), out.push(file));
  }
  return out;
}

/**
 * The python that runs the peer: `explicit` when given (it must have PyTorch 2.x), else the
 * first `python3` on `path` that has it.
 */
export function findPeerPython(explicit: string | undefined, path = process.env.PATH ?? ''): PeerPython {
  if (explicit) {
    const v = torchVersion(explicit);
    if ('error' in v) return { skipped: `peer python ${explicit}: ${v.error}` };
    if (!isTorch2(v.version)) return { skipped: `peer python ${explicit} has PyTorch ${v.version}, not 2.x` };
    return { python: explicit, torch: v.version };
  }
  const tried: string[] = [];
  for (const python of pythonsOnPath(path)) {
    const v = torchVersion(python);
    if ('version' in v && isTorch2(v.version)) return { python, torch: v.version };
    tried.push(`${python}: ${'error' in v ? v.error : `PyTorch ${v.version}`}`);
  }
  return { skipped: `no python3 on PATH has PyTorch 2.x (${tried.length ? tried.join('; ') : 'no python3 found'}); set PEER_PYTHON or --peer-python` };
}

/**
 * Runs the peer script with the shape `s` and `extra` arguments: its last output line, parsed, and
 * the CPU steal over the run; or why it failed (the script's last error line).
 */
function spawnPeer(python: string, script: string, s: Omit<PeerShape, 'batch'>, extra: readonly string[]): { out: Record<string, unknown>; cpuSteal?: number } | { error: string } {
  const args = [script, '--layers', `${s.nLayer}`, '--heads', `${s.nHead}`, '--embd', `${s.nEmbd}`, '--block', `${s.blockSize}`, '--vocab', `${s.vocabSize}`, ...extra];
  const steal = stealMeter();
  const r = spawnSync(python, args, { encoding: 'utf8', timeout: 600_000 });
  const cpuSteal = steal();
  if (r.status !== 0) return { error: `peer failed: ${(r.error?.message ?? r.stderr.trim().split('\n').pop()) || `exit ${r.status}`}` };
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  return cpuSteal !== undefined ? { out, cpuSteal } : { out };
}

/** Runs the peer script on one shape; throws with the script's last error line when it fails. */
export function runPeer(python: string, script: string, s: PeerShape): PeerFigures {
  const r = spawnPeer(python, script, s, ['--batch', `${s.batch}`]);
  if ('error' in r) throw new Error(r.error);
  const line = r.out as unknown as PeerFigures;
  if (r.cpuSteal !== undefined) line.cpu_steal = r.cpuSteal;
  for (const k of ['train_tokens_per_s', 'gen_tokens_per_s', 'gen_batch_tokens_per_s', 'gemm_gflops', 'threads'] as const) {
    if (typeof line[k] !== 'number') throw new Error(`peer printed no ${k}: ${JSON.stringify(r.out)}`);
  }
  return line;
}

/** One run of the peer's decoding: tokens/s at batch 1 and at `batch`, and the CPU steal over the run. */
export type PeerDecode = PeerDecodeRun | { skipped: string };
export interface PeerDecodeRun {
  version: string;
  threads: number;
  batch: number;
  batch1TokensPerS: number;
  batchTokensPerS: number;
  cpuSteal?: number;
}
export type PeerDecoder = (batch: number) => PeerDecode;

/**
 * Runs the peer's greedy decoding of shape `s`, one process per call, at batch 1 and `batch`:
 * for a line compared with the same moment. A failed run is a `skipped` with the reason.
 */
export function peerDecoder(script: string, python: string, s: Omit<PeerShape, 'batch'>): PeerDecoder {
  return (batch) => {
    const r = spawnPeer(python, script, s, ['--batch', '8', '--steps', '1', '--gen-batch', `${batch}`]);
    if ('error' in r) return { skipped: r.error };
    const out = r.out as { peer: string; threads: number; gen_tokens_per_s: number; gen_batch_tokens_per_s: number };
    return { version: out.peer.replace(/^pytorch-/, ''), threads: out.threads, batch, batchTokensPerS: out.gen_batch_tokens_per_s, batch1TokensPerS: out.gen_tokens_per_s, ...(r.cpuSteal !== undefined ? { cpuSteal: r.cpuSteal } : {}) };
  };
}
