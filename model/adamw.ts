/**
 * AdamW (decoupled weight decay, Loshchilov & Hutter) with global gradient-norm clipping:
 *   g ← g · min(1, clip / ‖g‖);  m ← β1 m + (1-β1) g;  v ← β2 v + (1-β2) g²;
 *   p ← p (1 - lr λ) - lr (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε)
 *
 * Deviations: weight decay applies only to matrices (rank ≥ 2), as in nanoGPT; the learning
 * rate is passed to every step so schedules live with the caller. State (m, v, step) can be
 * exported and restored so a run resumes where it stopped. On the wasm backend with the native
 * addon, the norm is one native pass over all gradients and the update one native pass over all
 * parameters, in place (model/kernels/training-ops.ts; one pass per parameter, into new tensors,
 * where a parameter's data is shared); otherwise tfjs ops do the same arithmetic.
 */
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { adamwInPlace, fusedAdamW, sumOfSquares, trainingOpsAvailable } from './kernels/training-ops.ts';

export const AdamWConfigSchema = z
  .object({
    beta1: z.number().min(0).lt(1).default(0.9).describe('decay of the first-moment average'),
    beta2: z.number().min(0).lt(1).default(0.95).describe('decay of the second-moment average'),
    eps: z.number().positive().default(1e-8).describe('added to the root of the second moment'),
    weightDecay: z.number().min(0).default(0.1).describe('decoupled weight decay of matrices'),
    gradClip: z.number().min(0).default(1.0).describe('clip the global gradient norm to this (0 = off)'),
  })
  .strict();

export type AdamWConfig = Readonly<z.output<typeof AdamWConfigSchema>>;

export const ADAMW_DEFAULTS: AdamWConfig = Object.freeze(AdamWConfigSchema.parse({}));

export class AdamW {
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  step = 0;

  readonly config: AdamWConfig;

  /**
   * @param config any subset of the settings; the rest take their defaults (`ADAMW_DEFAULTS`).
   *   Unknown keys and out-of-range values throw.
   * @example
   *   const opt = new AdamW(gpt.params, { weightDecay: 0.01 });
   *   opt.apply(named, 3e-4);
   */
  constructor(
    private readonly params: ReadonlyMap<string, tf.Variable>,
    config: Partial<AdamWConfig> = {},
  ) {
    this.config = Object.freeze(AdamWConfigSchema.parse(config));
  }

  /**
   * Applies one update from named gradients and disposes them. Returns the gradient norm
   * before clipping. `path` forces the implementation (default: native when available).
   */
  apply(grads: Record<string, tf.Tensor>, lr: number, path: 'native' | 'tfjs' = trainingOpsAvailable() ? 'native' : 'tfjs'): number {
    const names = Object.keys(grads);
    for (const name of names) {
      if (!this.params.has(name)) throw new Error(`AdamW: gradient for unknown parameter "${name}"`);
    }
    const native = path === 'native' && names.every((n) => grads[n]!.dtype === 'float32');
    const norm = native ? Math.sqrt(sumOfSquares(names.map((n) => grads[n]!))) : this.normOf(grads, names);
    const { beta1, beta2, eps, weightDecay, gradClip } = this.config;
    const scale = gradClip > 0 && norm > gradClip ? gradClip / (norm + 1e-6) : 1;
    this.step += 1;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    const decayOf = (p: tf.Variable) => (p.rank >= 2 && weightDecay > 0 ? 1 - lr * weightDecay : 1);
    if (native) {
      const entries = names.map((name) => {
        const p = this.params.get(name)!;
        return { p, g: grads[name]!, m: this.slot(this.m, name, p), v: this.slot(this.v, name, p), decay: decayOf(p) };
      });
      if (adamwInPlace(entries, { lr, beta1, beta2, eps, gradScale: scale, bc1, bc2 })) {
        tf.dispose(Object.values(grads));
        return norm;
      }
    }
    for (const name of names) {
      const p = this.params.get(name)!;
      const m = this.slot(this.m, name, p);
      const v = this.slot(this.v, name, p);
      if (native) {
        const next = fusedAdamW(p, grads[name]!, m, v, { lr, beta1, beta2, eps, decay: decayOf(p), gradScale: scale, bc1, bc2 });
        p.assign(next[0]);
        m.assign(next[1]);
        v.assign(next[2]);
        tf.dispose(next);
        continue;
      }
      tf.tidy(() => {
        const g = scale === 1 ? grads[name]! : tf.mul(grads[name]!, scale);
        const m1 = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
        const v1 = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
        m.assign(m1);
        v.assign(v1);
        const update = tf.div(tf.div(m1, bc1), tf.add(tf.sqrt(tf.div(v1, bc2)), eps));
        const decayed = p.rank >= 2 && weightDecay > 0 ? tf.mul(p, 1 - lr * weightDecay) : p;
        p.assign(tf.sub(decayed, tf.mul(update, lr)));
      });
    }
    tf.dispose(Object.values(grads));
    return norm;
  }

  private normOf(grads: Record<string, tf.Tensor>, names: string[]): number {
    const normT = tf.tidy(() => tf.sqrt(tf.addN(names.map((n) => tf.sum(tf.square(grads[n]!))))));
    const norm = normT.dataSync()[0]!;
    normT.dispose();
    return norm;
  }

  private slot(map: Map<string, tf.Variable>, name: string, p: tf.Variable): tf.Variable {
    let s = map.get(name);
    if (!s) {
      const zeros = tf.zerosLike(p);
      s = tf.variable(zeros, false);
      zeros.dispose();
      map.set(name, s);
    }
    return s;
  }

  /** Moment estimates as named arrays (`m.<param>`, `v.<param>`) for checkpoints. */
  async exportState(): Promise<Map<string, { data: Float32Array; shape: number[] }>> {
    const out = new Map<string, { data: Float32Array; shape: number[] }>();
    for (const [prefix, map] of [['m.', this.m], ['v.', this.v]] as const) {
      for (const [name, t] of map) out.set(prefix + name, { data: (await t.data()) as Float32Array, shape: t.shape });
    }
    return out;
  }

  /** Restores moments saved by `exportState` and the step count. */
  importState(state: ReadonlyMap<string, Float32Array>, step: number): void {
    for (const [key, data] of state) {
      const [prefix, name] = [key.slice(0, 2), key.slice(2)];
      const p = this.params.get(name);
      if (!p || (prefix !== 'm.' && prefix !== 'v.')) continue;
      const map = prefix === 'm.' ? this.m : this.v;
      map.get(name)?.dispose();
      const t = tf.tensor(data, p.shape);
      map.set(name, tf.variable(t, false));
      t.dispose();
    }
    this.step = step;
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
    this.m.clear();
    this.v.clear();
  }
}
