import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { stealMeter } from './cpu-steal.ts';

test('the steal meter gives a share of the CPU time since it started, where /proc/stat exists', { skip: !existsSync('/proc/stat') && 'no /proc/stat on this system' }, () => {
  const steal = stealMeter();
  // Burn a few clock ticks so that the span has CPU time to divide.
  const t0 = Date.now();
  let x = 0;
  while (Date.now() - t0 < 60) x += Math.sqrt(x + 1);
  assert.ok(x > 0);
  const share = steal();
  assert.equal(typeof share, 'number');
  assert.ok(share! >= 0 && share! <= 1, String(share));
  // A share has at most 3 decimals, as the bench prints it.
  assert.equal(share, +share!.toFixed(3));
});
