/**
 * Test setup of the native kernels' tests: the addon built (building it when missing, which
 * must succeed), every gradient registered, and the wasm backend ready.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-wasm';
import { registerAllGradients } from '../tfjs-gradients.ts';
import { DEFAULT_ADDON_PATH } from './native-addon.ts';

/** For a `before` hook: builds the addon if it is missing and readies the wasm backend. */
export async function wasmWithNativeAddon(): Promise<void> {
  if (!existsSync(DEFAULT_ADDON_PATH)) {
    const script = fileURLToPath(new URL('../../native/build.mjs', import.meta.url));
    const run = spawnSync(process.execPath, [script, '--strict'], { encoding: 'utf8' });
    assert.equal(run.status, 0, `the native addon is not built and building it failed:\n${run.stdout}${run.stderr}`);
  }
  registerAllGradients();
  assert.ok(await tf.setBackend('wasm'));
  await tf.ready();
}
