/**
 * Fused training ops for the wasm backend: the linear layer (and the tied LM head), LayerNorm, causal self-attention, GELU, the
 * token + position embedding and the log-probabilities of target tokens (the cross-entropy),
 * each one native kernel forward and one backward (registered as
 * tfjs kernels with tfjs gradients, so `tf.variableGrads` sees them as single ops), plus the
 * AdamW update and the global gradient norm as native passes. model/gpt.ts and model/adamw.ts
 * use them when `trainingOpsAvailable()`; otherwise they run the same math as plain tfjs ops
 * (the reference path, which the tests compare against).
 *
 * Also replaces the wasm backend's `Identity` (a copy) by one that shares the input's memory,
 * as its `Reshape` does, and has the engine save tensors for the backward pass without a clone
 * (`shareSavedTensors`).
 *
 * Deviations from the reference path: float32 rounding differs (fused multiply-adds, sums in
 * several lanes); attention probabilities are kept for the backward pass instead of the
 * intermediate tensors of the unfused ops.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { GradConfig, KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs-core';
import { matMul } from './mat-mul.ts';
import { loadNativeAddon, type NativeAddon } from './native-addon.ts';
import { heapOf, offsetOf, type WasmHeapBackend } from './wasm-heap.ts';

/** The addon functions these ops need (absent from addons built before them). */
type TrainingAddon = NativeAddon & Required<Pick<NativeAddon, 'layerNorm' | 'layerNormGrad' | 'attention' | 'attentionGrad' | 'gelu' | 'geluGrad' | 'embed' | 'embedGrad' | 'tokenLogProbs' | 'tokenLogProbsGrad' | 'sumSquares' | 'adamw'>>;

const OPS = ['NkLinear', 'NkLayerNorm', 'NkAttention', 'NkGelu', 'NkEmbed', 'NkTokenLogProbs', 'NkAdamW'] as const;

let addonInUse: TrainingAddon | undefined;
let originalIdentity: KernelConfig | undefined;

/** What of tfjs's engine (4.x) the ops below replace while they are registered. */
interface EngineInternals {
  backend: { incRef?(dataId: object): void };
  backendName: string;
  state: { nextTapeNodeId: number; activeTape: object[] };
  keep<T>(t: T): T;
  makeTensorFromTensorInfo(info: TensorInfo): tf.Tensor;
  saveTensorsForBackwardMode(tensors: tf.Tensor[]): tf.Tensor[];
  addTapeNode(kernelName: string, inputs: tf.NamedTensorMap, outputs: tf.Tensor[], gradientsFunc: unknown, saved: tf.Tensor[], attrs: NamedAttrMap): void;
}
let originalEngine: Pick<EngineInternals, 'saveTensorsForBackwardMode' | 'addTapeNode'> | undefined;
// Kernels whose later outputs only carry saved state to their gradient (no gradient flows into them).
const STATE_OUTPUTS = new Set(['NkLayerNorm', 'NkAttention', 'NkTokenLogProbs']);

function trainingAddon(addon: NativeAddon): TrainingAddon | undefined {
  const a = addon as Partial<TrainingAddon>;
  const ok = a.layerNorm && a.layerNormGrad && a.attention && a.attentionGrad && a.gelu && a.geluGrad && a.embed && a.embedGrad && a.tokenLogProbs && a.tokenLogProbsGrad && a.sumSquares && a.adamw;
  return ok ? (addon as TrainingAddon) : undefined;
}

function kernel(name: string, fn: (addon: TrainingAddon, backend: WasmHeapBackend, inputs: Record<string, TensorInfo>, attrs: NamedAttrMap) => TensorInfo | TensorInfo[]): KernelConfig {
  const kernelFunc: KernelFunc = (args) => fn(addonInUse!, args.backend as WasmHeapBackend, args.inputs as Record<string, TensorInfo>, args.attrs ?? {});
  return { kernelName: name, backendName: 'wasm', kernelFunc };
}

const p9 = new Float64Array(9);
const p14 = new Float64Array(14);
const p10 = new Float64Array(10);
const p18 = new Float64Array(18);
const p5 = new Float64Array(5);
const NO_EPILOGUE = { activation: 0, alpha: 0 } as const;

const KERNELS: readonly KernelConfig[] = [
  // y [N, out] = x [N, in] · w [in, out] (+ b), or x · wᵀ for w [out, in] with `transposeB`.
  kernel('NkLinear', (addon, be, { x, w, b }, attrs) => matMul(addon, p14, be, x!, w!, false, !!attrs.transposeB, { bias: b, activation: 0, alpha: 0 })),
  // NkLinear's three gradients in one kernel (one dispatch, not three): dx, dw and, with a
  // bias, db; the same native products and column sum the separate kernels run.
  kernel('NkLinearGrad', (addon, be, { dy, x, w }, attrs) => {
    const t = !!attrs.transposeB;
    const dx = matMul(addon, p14, be, dy!, w!, false, !t, NO_EPILOGUE);
    const dw = t ? matMul(addon, p14, be, dy!, x!, true, false, NO_EPILOGUE) : matMul(addon, p14, be, x!, dy!, true, false, NO_EPILOGUE);
    if (!attrs.hasBias) return [dx, dw];
    const [n, c] = dy!.shape as [number, number];
    const db = be.makeOutput([c], 'float32');
    p5.set([offsetOf(be, dy!), offsetOf(be, db), 1, n, c]);
    addon.sum(heapOf(be), p5);
    return [dx, dw, db];
  }),
  kernel('NkLayerNorm', (addon, be, { x, gamma, beta }, attrs) => {
    const [n, c] = x!.shape as [number, number];
    const y = be.makeOutput([n, c], 'float32');
    const mean = be.makeOutput([n], 'float32');
    const rstd = be.makeOutput([n], 'float32');
    p9.set([offsetOf(be, x!), offsetOf(be, gamma!), offsetOf(be, beta!), offsetOf(be, y), offsetOf(be, mean), offsetOf(be, rstd), n, c, attrs.eps as number]);
    addon.layerNorm(heapOf(be), p9);
    return [y, mean, rstd];
  }),
  kernel('NkLayerNormGrad', (addon, be, { dy, x, gamma, mean, rstd }) => {
    const [n, c] = x!.shape as [number, number];
    const dx = be.makeOutput([n, c], 'float32');
    const dg = be.makeOutput([c], 'float32');
    const db = be.makeOutput([c], 'float32');
    p10.set([offsetOf(be, dy!), offsetOf(be, x!), offsetOf(be, gamma!), offsetOf(be, mean!), offsetOf(be, rstd!), offsetOf(be, dx), offsetOf(be, dg), offsetOf(be, db), n, c]);
    addon.layerNormGrad(heapOf(be), p10);
    return [dx, dg, db];
  }),
  kernel('NkAttention', (addon, be, { qkv }, attrs) => {
    const [B, T, H] = [attrs.B as number, attrs.T as number, attrs.H as number];
    const C = qkv!.shape[1]! / 3;
    const y = be.makeOutput([B * T, C], 'float32');
    const att = be.makeOutput([B, H, T, T], 'float32');
    addon.attention(heapOf(be), new Float64Array([offsetOf(be, qkv!), offsetOf(be, y), offsetOf(be, att), B, T, H, C / H]));
    return [y, att];
  }),
  kernel('NkAttentionGrad', (addon, be, { dy, qkv, att }) => {
    const [B, H, T] = att!.shape as [number, number, number, number];
    const C = qkv!.shape[1]! / 3;
    const dqkv = be.makeOutput([B * T, 3 * C], 'float32');
    addon.attentionGrad(heapOf(be), new Float64Array([offsetOf(be, dy!), offsetOf(be, qkv!), offsetOf(be, att!), offsetOf(be, dqkv), B, T, H, C / H]));
    return dqkv;
  }),
  kernel('NkGelu', (addon, be, { x }) => {
    const y = be.makeOutput([...x!.shape], 'float32');
    addon.gelu(heapOf(be), new Float64Array([offsetOf(be, x!), offsetOf(be, y), tf.util.sizeFromShape(x!.shape)]));
    return y;
  }),
  kernel('NkGeluGrad', (addon, be, { x, dy }) => {
    const dx = be.makeOutput([...x!.shape], 'float32');
    addon.geluGrad(heapOf(be), new Float64Array([offsetOf(be, x!), offsetOf(be, dy!), offsetOf(be, dx), tf.util.sizeFromShape(x!.shape)]));
    return dx;
  }),
  kernel('NkEmbed', (addon, be, { wte, wpe, ids }, attrs) => {
    const [B, T] = [attrs.B as number, attrs.T as number];
    const [V, C] = wte!.shape as [number, number];
    const x = be.makeOutput([B * T, C], 'float32');
    p9.set([offsetOf(be, wte!), offsetOf(be, wpe!), offsetOf(be, ids!), offsetOf(be, x), B, T, C, V, wpe!.shape[0]!]);
    addon.embed(heapOf(be), p9);
    return x;
  }),
  kernel('NkEmbedGrad', (addon, be, { dx, ids }, attrs) => {
    const [B, T, V, P] = [attrs.B as number, attrs.T as number, attrs.V as number, attrs.P as number];
    const C = dx!.shape[1]!;
    const dwte = be.makeOutput([V, C], 'float32');
    const dwpe = be.makeOutput([P, C], 'float32');
    p9.set([offsetOf(be, dx!), offsetOf(be, ids!), offsetOf(be, dwte), offsetOf(be, dwpe), B, T, C, V, P]);
    addon.embedGrad(heapOf(be), p9);
    return [dwte, dwpe];
  }),
  kernel('NkTokenLogProbs', (addon, be, { logits, targets }) => {
    const [n, v] = logits!.shape as [number, number];
    const logp = be.makeOutput([n], 'float32');
    const lse = be.makeOutput([n], 'float32');
    addon.tokenLogProbs(heapOf(be), new Float64Array([offsetOf(be, logits!), offsetOf(be, targets!), offsetOf(be, logp), offsetOf(be, lse), n, v]));
    return [logp, lse];
  }),
  kernel('NkTokenLogProbsGrad', (addon, be, { dy, logits, targets, lse }) => {
    const [n, v] = logits!.shape as [number, number];
    const dlogits = be.makeOutput([n, v], 'float32');
    addon.tokenLogProbsGrad(heapOf(be), new Float64Array([offsetOf(be, dy!), offsetOf(be, logits!), offsetOf(be, targets!), offsetOf(be, lse!), offsetOf(be, dlogits), n, v]));
    return dlogits;
  }),
  kernel('NkAdamW', (addon, be, { p, g, m, v }, attrs) => {
    const shape = [...p!.shape];
    const p1 = be.makeOutput(shape, 'float32');
    const m1 = be.makeOutput(shape, 'float32');
    const v1 = be.makeOutput(shape, 'float32');
    const a = attrs as unknown as AdamWAttrs;
    p18.set([offsetOf(be, p!), offsetOf(be, g!), offsetOf(be, m!), offsetOf(be, v!), offsetOf(be, p1), offsetOf(be, m1), offsetOf(be, v1), tf.util.sizeFromShape(shape),
      a.lr, a.beta1, a.beta2, a.eps, 1 - a.beta1, 1 - a.beta2, a.decay, a.gradScale, a.bc1, a.bc2]);
    addon.adamw(heapOf(be), p18);
    return [p1, m1, v1];
  }),
];

const run = (name: string, inputs: tf.NamedTensorMap, attrs: NamedAttrMap = {}) => tf.engine().runKernel(name, inputs, attrs);

const GRADIENTS: readonly GradConfig[] = [
  {
    // y = x·w + b: dx = dy·wᵀ, dw = xᵀ·dy, db = Σ rows of dy; y = x·wᵀ: dx = dy·w, dw = dyᵀ·x.
    kernelName: 'NkLinear',
    inputsToSave: ['x', 'w'],
    // All three at once, when the tape reaches this node: a gradient no input asks for is
    // disposed with the backward pass's other intermediates.
    gradFunc: (dy, saved, attrs) => {
      const [x, w] = saved as tf.Tensor[];
      const a = attrs as { transposeB?: boolean; hasBias?: boolean };
      const [dx, dw, db] = run('NkLinearGrad', { dy: dy as tf.Tensor, x: x!, w: w! }, { transposeB: !!a.transposeB, hasBias: !!a.hasBias }) as tf.Tensor[];
      return { x: () => dx!, w: () => dw!, b: () => db! };
    },
  },
  {
    kernelName: 'NkLayerNorm',
    inputsToSave: ['x', 'gamma'],
    outputsToSave: [false, true, true],
    gradFunc: (dys, saved) => {
      const [x, gamma, mean, rstd] = saved as tf.Tensor[];
      const dy = (dys as tf.Tensor[])[0]!;
      const [dx, dg, db] = run('NkLayerNormGrad', { dy, x: x!, gamma: gamma!, mean: mean!, rstd: rstd! }) as tf.Tensor[];
      return { x: () => dx!, gamma: () => dg!, beta: () => db! };
    },
  },
  {
    kernelName: 'NkAttention',
    inputsToSave: ['qkv'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved) => {
      const [qkv, att] = saved as tf.Tensor[];
      const dy = (dys as tf.Tensor[])[0]!;
      return { qkv: () => run('NkAttentionGrad', { dy, qkv: qkv!, att: att! }) as tf.Tensor };
    },
  },
  {
    kernelName: 'NkGelu',
    inputsToSave: ['x'],
    gradFunc: (dy, saved) => ({ x: () => run('NkGeluGrad', { x: saved[0]!, dy: dy as tf.Tensor }) as tf.Tensor }),
  },
  {
    kernelName: 'NkEmbed',
    inputsToSave: ['wpe', 'ids'],
    gradFunc: (dy, saved, attrs) => {
      const [wpe, ids] = saved as tf.Tensor[];
      const { B, T, V } = attrs as { B: number; T: number; V: number };
      const [dwte, dwpe] = run('NkEmbedGrad', { dx: dy as tf.Tensor, ids: ids! }, { B, T, V, P: wpe!.shape[0]! }) as tf.Tensor[];
      return { wte: () => dwte!, wpe: () => dwpe!, ids: () => tf.zerosLike(ids!) };
    },
  },
  {
    kernelName: 'NkTokenLogProbs',
    inputsToSave: ['logits', 'targets'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved) => {
      const [logits, targets, lse] = saved as tf.Tensor[];
      const dy = (dys as tf.Tensor[])[0]!;
      return {
        logits: () => run('NkTokenLogProbsGrad', { dy, logits: logits!, targets: targets!, lse: lse! }) as tf.Tensor,
        targets: () => tf.zerosLike(targets!),
      };
    },
  },
];

/**
 * Registers the fused training ops on the wasm backend when the addon has them; returns their
 * names ([] when it does not, or TF_NATIVE_KERNELS=0).
 */
export function registerTrainingOps(): string[] {
  if (process.env.TF_NATIVE_KERNELS === '0') return [];
  if (addonInUse) return [...OPS];
  const { addon } = loadNativeAddon();
  const training = addon && trainingAddon(addon);
  if (!training) return [];
  addonInUse = training;
  for (const k of KERNELS) {
    if (tf.getKernel(k.kernelName, 'wasm')) tf.unregisterKernel(k.kernelName, 'wasm');
    tf.registerKernel(k);
  }
  for (const g of GRADIENTS) tf.registerGradient(g);
  shareSavedTensors();
  originalIdentity = tf.getKernel('Identity', 'wasm');
  if (originalIdentity) {
    const original = originalIdentity;
    tf.unregisterKernel('Identity', 'wasm');
    tf.registerKernel({
      ...original,
      kernelFunc: (args) => {
        const { x } = args.inputs as { x: TensorInfo };
        if (x.dtype === 'string') return original.kernelFunc(args);
        (args.backend as unknown as { incRef(id: object): void }).incRef(x.dataId);
        return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
      },
    });
  }
  return [...OPS];
}

/**
 * Two costs of tfjs's tape that a training step pays hundreds of times, removed on the wasm
 * backend (elsewhere the engine's own methods run):
 * - every tensor saved for the backward pass is a clone, one `Identity` kernel and one tape
 *   node each (176 of a small step's 508 kernels); here it is a new tensor on the same memory
 *   (the backend's reference count raised), as the `Identity` below would make, with no kernel
 *   run and no tape node (nothing reads a saved tensor forward, so backprop never visits it);
 * - an output that gets no gradient is handed to the gradient as zeros the engine allocates,
 *   fills and copies in (2 MB for each layer's attention probabilities); the fused ops' state
 *   outputs (`STATE_OUTPUTS`) get none, their gradients read only the first output's.
 */
function shareSavedTensors(): void {
  const engine = tf.engine() as unknown as EngineInternals;
  const original = { saveTensorsForBackwardMode: engine.saveTensorsForBackwardMode, addTapeNode: engine.addTapeNode };
  originalEngine = original;
  engine.saveTensorsForBackwardMode = function (this: EngineInternals, tensors) {
    const backend = this.backend;
    if (this.backendName !== 'wasm' || !backend.incRef) return original.saveTensorsForBackwardMode.call(this, tensors);
    return tensors.map((t) => {
      backend.incRef!(t.dataId);
      return this.keep(this.makeTensorFromTensorInfo({ dataId: t.dataId, shape: [...t.shape], dtype: t.dtype }));
    });
  };
  engine.addTapeNode = function (this: EngineInternals, kernelName, inputs, outputs, gradientsFunc, saved, attrs) {
    const config = STATE_OUTPUTS.has(kernelName) ? tf.getGradient(kernelName) : undefined;
    if (!config) return original.addTapeNode.call(this, kernelName, inputs, outputs, gradientsFunc, saved, attrs);
    const gradient = (dys: (tf.Tensor | null)[]) => config.gradFunc([dys[0] ?? tf.zerosLike(outputs[0]!), ...dys.slice(1)] as tf.Tensor[], saved, attrs);
    this.state.activeTape.push({ id: this.state.nextTapeNodeId++, kernelName, inputs, outputs, saved, gradient });
  };
}

/** Removes the fused training ops and puts the copying `Identity` back (for tests). */
export function unregisterTrainingOps(): void {
  if (!addonInUse) return;
  for (const k of KERNELS) tf.unregisterKernel(k.kernelName, 'wasm');
  if (originalEngine) Object.assign(tf.engine(), originalEngine);
  originalEngine = undefined;
  if (originalIdentity) {
    tf.unregisterKernel('Identity', 'wasm');
    tf.registerKernel(originalIdentity);
    originalIdentity = undefined;
  }
  addonInUse = undefined;
}

/** True when the fused ops can run now: registered, and tfjs is on the wasm backend. */
export function trainingOpsAvailable(): boolean {
  return addonInUse !== undefined && tf.getBackend() === 'wasm';
}

/** `x · w + b` for x `[N, in]`, w `[in, out]` (bias optional): `[N, out]`; with `transposeB`, `x · wᵀ` for w `[out, in]`. */
export function fusedLinear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D, transposeB = false): tf.Tensor2D {
  return run('NkLinear', b ? { x, w, b } : { x, w }, { transposeB, hasBias: !!b }) as tf.Tensor2D;
}

/** LayerNorm over the last axis of `x` `[N, C]`. */
export function fusedLayerNorm(x: tf.Tensor2D, gamma: tf.Tensor, beta: tf.Tensor, eps: number): tf.Tensor2D {
  return (run('NkLayerNorm', { x, gamma, beta }, { eps }) as tf.Tensor[])[0] as tf.Tensor2D;
}

/** Causal self-attention of `qkv` `[B*T, 3C]` (q | k | v): the merged heads `[B*T, C]`. */
export function fusedAttention(qkv: tf.Tensor2D, B: number, T: number, H: number): tf.Tensor2D {
  return (run('NkAttention', { qkv }, { B, T, H }) as tf.Tensor[])[0] as tf.Tensor2D;
}

/** Exact (erf) GELU. */
export function fusedGelu<R extends tf.Rank>(x: tf.Tensor<R>): tf.Tensor<R> {
  return run('NkGelu', { x }) as tf.Tensor<R>;
}

/** `wte[ids] + wpe[t]` for ids `[B*T]` (int32, row (b, t)): `[B*T, C]`. */
export function fusedEmbed(wte: tf.Tensor2D, wpe: tf.Tensor2D, ids: tf.Tensor1D, B: number, T: number): tf.Tensor2D {
  if (T > wpe.shape[0]) throw new Error(`sequence of ${T} tokens exceeds blockSize ${wpe.shape[0]}`);
  return run('NkEmbed', { wte, wpe, ids }, { B, T, V: wte.shape[0] }) as tf.Tensor2D;
}

/** Log-probabilities `[N]` of `targets` `[N]` under the softmax of `logits` `[N, V]`. */
export function fusedTokenLogProbs(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  const t = targets.dtype === 'int32' ? targets : tf.cast(targets, 'int32');
  return (run('NkTokenLogProbs', { logits, targets: t }) as tf.Tensor[])[0] as tf.Tensor1D;
}

/** Sum of the squares of every value of the tensors (float32 on the wasm heap), as a number. */
export function sumOfSquares(tensors: readonly tf.Tensor[]): number {
  const backend = tf.backend() as unknown as WasmHeapBackend;
  const params = new Float64Array(1 + 2 * tensors.length);
  params[0] = tensors.length;
  tensors.forEach((t, i) => {
    params[1 + 2 * i] = offsetOf(backend, t);
    params[2 + 2 * i] = t.size;
  });
  return addonInUse!.sumSquares(heapOf(backend), params);
}

/** One AdamW step's scalars (see model/adamw.ts). */
export interface AdamWAttrs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** p is multiplied by this before the update: 1 - lr * weightDecay, or 1. */
  decay: number;
  gradScale: number;
  bc1: number;
  bc2: number;
}

/** One parameter of {@link adamwInPlace}: the variables it updates, its gradient, and the factor p is multiplied by first. */
export interface AdamWEntry {
  p: tf.Variable;
  g: tf.Tensor;
  m: tf.Variable;
  v: tf.Variable;
  /** 1 - lr * weightDecay, or 1. */
  decay: number;
}

/** The backend's reference count of a tensor's data (1: no other tensor shares it). */
function refCount(t: tf.Tensor): number {
  return (tf.backend() as unknown as { refCount(dataId: object): number }).refCount(t.dataId);
}

/**
 * The AdamW update of every entry in one native pass, written into the variables' own memory
 * (the values {@link fusedAdamW} gives each). Returns false and changes nothing when it cannot
 * run here: an addon without it, or a variable whose data another tensor shares (a clone or a
 * reshape of it sees the same memory, and must not change with it).
 */
export function adamwInPlace(entries: readonly AdamWEntry[], attrs: Omit<AdamWAttrs, 'decay'>): boolean {
  const all = addonInUse?.adamwAll;
  if (!all || !trainingOpsAvailable()) return false;
  for (const e of entries) {
    if (e.p.dtype !== 'float32' || e.g.dtype !== 'float32' || refCount(e.p) !== 1 || refCount(e.m) !== 1 || refCount(e.v) !== 1) return false;
  }
  const backend = tf.backend() as unknown as WasmHeapBackend;
  // The step's scalars as `adamw` takes them (its decay, 1, unused: each tensor has its own).
  const params = new Float64Array(11 + 6 * entries.length);
  params.set([entries.length, attrs.lr, attrs.beta1, attrs.beta2, attrs.eps, 1 - attrs.beta1, 1 - attrs.beta2, 1, attrs.gradScale, attrs.bc1, attrs.bc2]);
  entries.forEach((e, i) => params.set([offsetOf(backend, e.p), offsetOf(backend, e.g), offsetOf(backend, e.m), offsetOf(backend, e.v), e.p.size, e.decay], 11 + 6 * i));
  all.call(addonInUse, heapOf(backend), params);
  return true;
}

/** The AdamW update of one parameter: new `[p, m, v]` (the inputs are left unchanged). */
export function fusedAdamW(p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor, attrs: AdamWAttrs): [tf.Tensor, tf.Tensor, tf.Tensor] {
  return run('NkAdamW', { p, g, m, v }, attrs as unknown as NamedAttrMap) as [tf.Tensor, tf.Tensor, tf.Tensor];
}
