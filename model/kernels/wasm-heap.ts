/**
 * The few internals of @tensorflow/tfjs-backend-wasm (4.x) that native kernels rely on, typed
 * structurally: every tensor lives at `dataIdMap.get(dataId).memoryOffset` (bytes) in the wasm
 * heap, `makeOutput` allocates an output there, and the heap is `wasm.HEAPU8.buffer`.
 *
 * The heap can grow (and its ArrayBuffer be replaced) on any allocation, so take `heapOf` only
 * after the last `makeOutput` of a kernel.
 */
import type { DataId, DataType, TensorInfo } from '@tensorflow/tfjs-core';

export interface WasmTensorData {
  memoryOffset: number;
  shape: number[];
  dtype: DataType;
}

export interface WasmHeapBackend {
  dataIdMap: { get(dataId: DataId): WasmTensorData | undefined };
  makeOutput(shape: number[], dtype: DataType): TensorInfo;
  wasm: { HEAPU8: Uint8Array };
}

/** Byte offset of a tensor's data in the heap. */
export function offsetOf(backend: WasmHeapBackend, t: TensorInfo): number {
  const data = backend.dataIdMap.get(t.dataId);
  if (!data) throw new Error('native kernels: tensor is not on the wasm backend');
  return data.memoryOffset;
}

/** The heap's current ArrayBuffer. */
export function heapOf(backend: WasmHeapBackend): ArrayBuffer {
  return backend.wasm.HEAPU8.buffer as ArrayBuffer;
}
