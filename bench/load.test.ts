import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('./main.ts', import.meta.url));

test('the load benchmark at a tiny size prints one JSON line with every field, replies served, judgements stored, the swap done and no error', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, '--json', '--only', 'load', '--clients', '4', '--seconds', '3', '--swaps', '1', '--shape', 'tiny'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  // One load line between the run's opening and closing `machine` lines.
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.bench !== 'machine');
  assert.equal(lines.length, 1, r.stdout);
  const line = lines[0]!;
  assert.equal(line.bench, 'load');
  assert.equal(line.clients, 4);
  assert.equal(line.swaps, 1);
  assert.ok((line.seconds as number) >= 3 && (line.seconds as number) < 30, `seconds ${line.seconds}`);
  for (const k of ['ttft_p50_ms', 'ttft_p99_ms', 'tokens_per_s', 'rss_mb_start', 'rss_mb_end']) assert.equal(typeof line[k], 'number', k);
  assert.ok((line.ttft_p50_ms as number) > 0 && (line.ttft_p99_ms as number) >= (line.ttft_p50_ms as number));
  assert.ok((line.tokens_per_s as number) > 0);
  assert.ok((line.replies as number) > 0 && (line.judgements as number) > 0);
  const errors = line.errors as Record<string, number>;
  const unexpected = Object.keys(errors).filter((code) => code !== 'overloaded' && code !== 'rate_limited');
  assert.deepEqual(unexpected, [], `errors: ${JSON.stringify(errors)}`);
});
