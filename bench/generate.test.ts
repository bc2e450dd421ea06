import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('./generate.ts', import.meta.url));

test('the serving benchmark at a tiny size prints every line, with a profile whose stages and the rest add up to the wall time', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', script, '--json', '--shape', 'tiny', '--seconds', '1', '--skip-idle', '--ws-streams', '2', '--openai-streams', '2'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(lines.map((l) => `${l.bench}${l.door ? `:${l.door}` : ''}`), ['generate:ws', 'generate:openai', 'ttft_idle', 'openai_request', 'decode_step']);
  const request = lines.find((l) => l.bench === 'openai_request')!;
  assert.ok(request.requests === 40 && (request.cpu_us_per_request as number) > 0 && (request.requests_per_s as number) > 0, JSON.stringify(request));
  for (const l of lines.slice(0, 2)) {
    assert.equal(l.concurrency, 2);
    assert.ok((l.tokens as number) > 0 && (l.tokens_per_s as number) > 0 && (l.step_tokens_per_s as number) > 0);
    assert.ok((l.ttft_p99_ms as number) >= (l.ttft_p50_ms as number));
    // Both processes did work: the server's CPU and the load generator's, each per delivered token.
    assert.ok((l.cpu_us_per_token as number) > 0 && (l.client_cpu_us_per_token as number) > 0, JSON.stringify(l));
    const p = l.profile as Record<string, number>;
    // The wall time is the event loop's idle time, its stages and the rest (every step on the loop by default; the clients run in a process of their own).
    assert.equal(p.steps_off_thread, 0);
    const shares = ['admit', 'step', 'sample', 'detokenize', 'emit', 'write', 'idle', 'other'].map((k) => p[k]!);
    const sum = shares.reduce((a, b) => a + b, 0);
    assert.ok(shares.every((x) => x >= 0) && Math.abs(sum - 1) < 0.02, `shares ${JSON.stringify(p)} add up to ${sum}`);
    assert.ok(p.step! > 0 && p.sample! > 0 && p.write! > 0, 'the stages were timed');
    assert.ok(p.frames_per_token! > 0 && p.mean_batch! >= 1);
    // The prompts were counted as the server prefilled them, and their prefill bounds the share.
    assert.ok((l.mean_prompt_tokens as number) > 1 && (l.prefill_ms as number) > 0, JSON.stringify(l));
    assert.ok((l.share_bound as number) > 0 && (l.share_bound as number) < 1, JSON.stringify(l));
  }
  const step = lines.find((l) => l.bench === 'decode_step')!;
  assert.ok((step.step_ms_n16_back_to_back as number) > 0 && (step.step_ms_n16_after_1ms as number) > 0, JSON.stringify(step));
});
