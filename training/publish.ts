/**
 * Publishing a finished run's checkpoint under a stable name (e.g. `checkpoints/sft`): the copy
 * is written as a new atomic directory, then swapped in; the previous one is removed only after
 * the new one is complete, so a crash leaves either the old or the new checkpoint, never half.
 */
import { existsSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { loadCheckpoint, writeDirAtomic } from '../model/checkpoint.ts';

export function publishCheckpoint(srcDir: string, outDir: string): void {
  loadCheckpoint(srcDir); // verify before publishing
  const files: Record<string, Buffer> = {};
  for (const name of readdirSync(srcDir)) if (name !== 'optimizer.safetensors') files[name] = readFileSync(join(srcDir, name));
  const staged = join(dirname(outDir), `.new-${basename(outDir)}-${process.pid}`);
  rmSync(staged, { recursive: true, force: true });
  writeDirAtomic(staged, files);
  const old = join(dirname(outDir), `.old-${basename(outDir)}-${process.pid}`);
  if (existsSync(outDir)) renameSync(outDir, old);
  renameSync(staged, outDir);
  rmSync(old, { recursive: true, force: true });
}
