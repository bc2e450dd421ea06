/**
 * Decoding speed of the model alone (no server): `GPT.decodeStep` for 1 and 16 sequences of a
 * 20-token prompt with random weights, on each decode path available (the fused native decoder,
 * plain tfjs), for the small and medium shapes. One line per (shape, batch, path):
 * `{bench:'decode', shape, batch, tokens_per_s, step_ms, path}`; the best of 3 timed runs.
 *
 * Runnable alone: `node --import tsx bench/decode.ts [--json]`.
 */
import { initBackend } from '../model/backend.ts';
import { GPT, disposeCache, type DecodePath, type GPTConfig } from '../model/gpt.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';

type Line = Record<string, unknown>;

const SHAPES: Readonly<Record<'small' | 'medium' | 'tiny', GPTConfig>> = {
  small: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 2048 },
  medium: { nLayer: 6, nHead: 8, nEmbd: 256, blockSize: 256, vocabSize: 4096 },
  tiny: { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 32, vocabSize: 300 },
};
const PROMPT = 20;
const RUNS = 3;

function stepMs(gpt: GPT, batch: number, path: DecodePath, steps: number): number {
  const caches = Array.from({ length: batch }, (_, i) =>
    gpt.prefill(Array.from({ length: PROMPT }, (_, j) => 10 + ((i + j) % 100)), { path }).cache);
  const tokens = caches.map((_, i) => 7 + i);
  gpt.decodeStep(caches, tokens);
  let best = Infinity;
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    for (let s = 0; s < steps; s++) gpt.decodeStep(caches, tokens);
    best = Math.min(best, (performance.now() - t0) / steps);
  }
  caches.forEach(disposeCache);
  return best;
}

/** Decode lines for every shape (small and medium, or `shapes`), batch and available path. */
export async function benchDecode(opts: { shapes?: readonly (keyof typeof SHAPES)[] } = {}): Promise<Line[]> {
  await initBackend({ log: () => {} });
  const out: Line[] = [];
  for (const shape of opts.shapes ?? (['small', 'medium'] as const)) {
    const cfg = SHAPES[shape];
    const gpt = GPT.create(cfg, 'policy', 3);
    const paths: DecodePath[] = gpt.decodePath() === 'native' ? ['native', 'tfjs'] : ['tfjs'];
    const steps = Math.floor((cfg.blockSize - PROMPT - 1) / RUNS);
    for (const path of paths) {
      for (const batch of [1, 16]) {
        const ms = stepMs(gpt, batch, path, Math.min(steps, path === 'tfjs' ? 10 : 40));
        out.push({ bench: 'decode', shape, batch, tokens_per_s: Math.round((batch * 1000) / ms), step_ms: +ms.toFixed(3), path });
      }
    }
    gpt.dispose();
  }
  return out;
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx bench/decode.ts [--json]', schema: z.object(jsonOption), envPrefix: 'BENCH' }, async ({ json }) => printFigures(await benchDecode(), json));
}
