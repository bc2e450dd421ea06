/**
 * Training throughput of one GPT train step (forward, backward, AdamW) on random tokens, for
 * the shapes; the same shapes the PyTorch peer measures.
 */
import { initBackend } from '../model/backend.ts';
import { GPT } from '../model/gpt.ts';
import { AdamW } from '../model/adamw.ts';
import { trainStep, type Batch } from '../training/train-loop.ts';

export const SHAPES = {
  small: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 2048, batch: 8 },
  medium: { nLayer: 6, nHead: 8, nEmbd: 256, blockSize: 256, vocabSize: 4096, batch: 8 },
} as const;
export type ShapeName = keyof typeof SHAPES;

export async function benchTrain(shape: ShapeName, opts: { steps?: number } = {}): Promise<Record<string, unknown>> {
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
  const steps = opts.steps ?? (shape === 'small' ? 10 : 5);
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) trainStep(gpt, opt, batch, 1e-4, vars);
  const stepMs = (performance.now() - t0) / steps;
  const params = gpt.numParams;
  opt.dispose();
  gpt.dispose();
  return {
    bench: 'train',
    shape,
    tokens_per_s: Math.round((n * 1000) / stepMs),
    step_ms: +stepMs.toFixed(1),
    backend: info.name + (info.nativeKernels.length ? '+native' : ''),
    params,
  };
}
