/**
 * AdamW (decoupled weight decay, Loshchilov & Hutter) with global gradient-norm clipping.
 *
 * Deviations: weight decay applies only to matrices (rank ≥ 2), as in nanoGPT; the learning
 * rate is passed to every step so schedules live with the caller. State (m, v, step) can be
 * exported and restored so a run resumes where it stopped.
 */
import * as tf from '@tensorflow/tfjs-core';

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm to this value (0 = off). */
  gradClip: number;
}

export const ADAMW_DEFAULTS: AdamWConfig = Object.freeze({ beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1.0 });

export class AdamW {
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  step = 0;

  constructor(
    private readonly params: ReadonlyMap<string, tf.Variable>,
    readonly config: AdamWConfig = ADAMW_DEFAULTS,
  ) {}

  /**
   * Applies one update from named gradients and disposes them. Returns the gradient norm
   * before clipping.
   */
  apply(grads: Record<string, tf.Tensor>, lr: number): number {
    const names = Object.keys(grads);
    const normT = tf.tidy(() => tf.sqrt(tf.addN(names.map((n) => tf.sum(tf.square(grads[n]!))))));
    const norm = normT.dataSync()[0]!;
    normT.dispose();
    const { beta1, beta2, eps, weightDecay, gradClip } = this.config;
    const scale = gradClip > 0 && norm > gradClip ? gradClip / (norm + 1e-6) : 1;
    this.step += 1;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    for (const name of names) {
      const p = this.params.get(name);
      if (!p) throw new Error(`AdamW: gradient for unknown parameter "${name}"`);
      const m = this.slot(this.m, name, p);
      const v = this.slot(this.v, name, p);
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
