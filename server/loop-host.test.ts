import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runLoopProbe } from '../bench/loop.ts';

test('the online loop runs PPO in its own process beside the server: chats keep being answered, the event loop stays responsive, the promotion reaches the server', async () => {
  const r = await runLoopProbe({ ppoSteps: 40, timeoutMs: 50_000 });
  const tail = r.log.slice(-12).join('\n');
  assert.match(r.outcome, /^loop: promoted:/, tail);
  assert.equal(r.ppo_steps, 40, tail);
  assert.ok(r.chats >= 10, `chats answered during the iteration: ${r.chats}`);
  assert.equal(r.chat_failures, 0);
  assert.ok(Number.isFinite(r.p99_ms) && r.p99_ms < 100, `event-loop delay p99 ${r.p99_ms} ms (max ${r.max_ms} ms) during PPO`);
  assert.match(r.served_after, /^policy-/, 'the server follows the promotion made by the loop process');
  assert.ok(r.log.includes('loop: stopped'), 'the loop process stopped cleanly with the server');
});
