import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defaultServerConfig } from './config.ts';
import { startLoopProcess } from './loop-host.ts';

test('the loop process gets the database URL through its environment, never its command line or the log', async () => {
  const secret = 'pw-9f3c1e';
  const lines: string[] = [];
  // Nothing listens on port 1: the loop fails to open its store and exits.
  const host = startLoopProcess(defaultServerConfig({ database: `postgres://loop:${secret}@127.0.0.1:1/none` }), { log: (l) => lines.push(l), stopTimeoutMs: 5000 });
  assert.ok(!host.child.spawnargs.join(' ').includes(secret), `argv: ${host.child.spawnargs.join(' ')}`);
  const code = await Promise.race([host.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 20_000))]);
  if (code === 'running') await host.stop();
  assert.ok(lines.length > 0, 'the loop process said something');
  assert.ok(!lines.some((l) => l.includes(secret)), lines.join('\n'));
  assert.ok(lines.some((l) => /ECONNREFUSED|connect/i.test(l)), `it tried the URL from its environment: ${lines.join('\n')}`);
});
