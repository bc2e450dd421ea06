/**
 * Batched next-token sampling in the native addon (`native/src/sampler.cc`): one call samples
 * every row of a decode step's logits, weighing them as `sampleToken` (model/sampling.ts) defines
 * (single-precision weights made exact integers), so that with the same uniform draw it picks the
 * same token; its sums are exact, so it adds them in any order and finds the top-k and top-p
 * boundary by a radix select instead of a sort. It reads a JS
 * `Float32Array`, so it works whatever the tensor backend.
 *
 * Available when the addon is built with the sampler and `TF_NATIVE_KERNELS` is not `0` (a list
 * of kernel names turns it on only if it names `Sampler`).
 */
import { loadNativeAddon } from './native-addon.ts';

type SampleRows = (logits: Float32Array, V: number, params: Float64Array, banned: Uint8Array | null, ids: Int32Array) => void;

/** The addon's `sampleRows`, or undefined when it cannot run here. */
export function nativeSampleRows(): SampleRows | undefined {
  const setting = process.env.TF_NATIVE_KERNELS;
  if (setting === '0' || (setting && setting !== '1' && !setting.split(',').some((s) => s.trim() === 'Sampler'))) return undefined;
  const fn = (loadNativeAddon().addon as { sampleRows?: SampleRows } | undefined)?.sampleRows;
  return typeof fn === 'function' ? fn : undefined;
}
