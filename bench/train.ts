/**
 * Training throughput of one GPT train step (forward, backward, AdamW) on random tokens, for
 * the shapes; the same shapes the PyTorch peer measures. Each line carries a profile of
 * the step (bench/step-profile.ts) and, given the GEMM roof of the run, the model FLOP
 * utilisation: `mfu` = model FLOP/s over that roof, with the model's FLOPs per token counted as
 * the peer script counts them, 6·N + 6·nLayer·blockSize·nEmbd (N: the language model's
 * parameters, the value head left out).
 */
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { AdamW } from '../model/adamw.ts';
import { trainStep, type Batch } from '../training/train-loop.ts';
import { profileStep } from './step-profile.ts';
import { stealMeter } from './cpu-steal.ts';

export const SHAPES = {
  small: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 2048, batch: 8 },
  medium: { nLayer: 6, nHead: 8, nEmbd: 256, blockSize: 256, vocabSize: 4096, batch: 8 },
  /** For tests: every benchmark at a size that runs in seconds. */
  tiny: { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 300, batch: 2 },
} as const;
export type ShapeName = keyof typeof SHAPES;

/** Training FLOPs per token (forward and backward) of a GPT with `params` LM parameters, as the peer counts them. */
export function trainFlopsPerToken(shape: ShapeName, params: number): number {
  const s = SHAPES[shape];
  return 6 * params + 6 * s.nLayer * s.blockSize * s.nEmbd;
}

export async function benchTrain(shape: ShapeName, opts: { steps?: number; gemmGflops?: number } = {}): Promise<Record<string, unknown>> {
  const info = await initBackend({ log: () => {} });
  const s = SHAPES[shape];
  const gpt = GPT.create({ nLayer: s.nLayer, nHead: s.nHead, nEmbd: s.nEmbd, blockSize: s.blockSize, vocabSize: s.vocabSize }, 'policy');
  const opt = new AdamW(gpt.params);
  const vars = gpt.trainableVariables().filter((v) => !v.name.startsWith('value.'));
  const n = s.batch * s.blockSize;
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) % s.vocabSize;
  const batch: Batch = { B: s.batch, T: s.blockSize, inputs: Int32Array.from({ length: n }, rand), targets: Int32Array.from({ length: n }, rand), weights: new Float32Array(n).fill(1) };
  for (let i = 0; i < 2; i++) trainStep(gpt, opt, batch, 1e-4, vars);
  const steps = opts.steps ?? (shape === 'medium' ? 5 : 10);
  const times: number[] = [];
  const steal = stealMeter();
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    trainStep(gpt, opt, batch, 1e-4, vars);
    times.push(performance.now() - t0);
  }
  const stepMs = times.reduce((a, b) => a + b, 0) / steps;
  const cpuSteal = steal();
  // Shares against the fastest step: the one least disturbed by other processes, as the kernel times are.
  const profile = await profileStep(() => trainStep(gpt, opt, batch, 1e-4, vars), opt, Math.min(...times));
  let params = 0;
  for (const [name, p] of gpt.params) if (!name.startsWith('value.')) params += p.size;
  opt.dispose();
  gpt.dispose();
  const tokensPerS = (n * 1000) / stepMs;
  const gflops = (tokensPerS * trainFlopsPerToken(shape, params)) / 1e9;
  return {
    bench: 'train',
    shape,
    batch: s.batch,
    tokens_per_s: Math.round(tokensPerS),
    step_ms: +stepMs.toFixed(1),
    gflops: +gflops.toFixed(2),
    ...(opts.gemmGflops ? { mfu: +(gflops / opts.gemmGflops).toFixed(3), gemm_roof_gflops: opts.gemmGflops } : {}),
    share: profile.share,
    profile_ms: profile.ms,
    top_kernels_ms: profile.top,
    backend: info.name + (info.nativeKernels.length ? '+native' : ''),
    params,
    ...(cpuSteal !== undefined ? { cpu_steal: cpuSteal } : {}),
  };
}
