/**
 * Native kernels for the wasm backend. Placeholder until the addon lands: registers nothing.
 */
export function registerNativeKernels(): string[] {
  return [];
}
