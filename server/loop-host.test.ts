import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runLoopProbe, type LoopProbeContext } from '../bench/loop.ts';
import { ARENA_DEFAULT_ALPHA, csHalfWidth } from '../feedback/arena.ts';
import { getGeneration } from '../feedback/generations.ts';
import { resolveAlias } from '../feedback/model-versions.ts';
import { TestClient } from './test-support.ts';

/** Judgements the loop needs before an iteration trains: the 40 seeded ones pass, the arena's picks alone do not. */
const MIN_NEW_JUDGEMENTS = 30;

/** The fewest head-to-head judgements, all won by the candidate, for the always-valid interval to exclude ½ (summariseArena's rule). */
function picksToPromote(alpha = ARENA_DEFAULT_ALPHA): number {
  let n = 1;
  while (1 - csHalfWidth(n, alpha) <= 0.5) n++;
  return n;
}

/** The users' gate end to end: blind compares over the WebSocket, picks for the candidate, the loop's verdict, the server's swap. */
async function arenaPromotes(p: LoopProbeContext, candidate: string, champion: string): Promise<{ picks: number; promotedLine: string; swapped: Record<string, unknown> }> {
  const admin = async (path: string, init: { method?: string; body?: unknown } = {}) => {
    const r = await fetch(`${p.url}/admin${path}`, {
      method: init.method ?? 'GET',
      headers: { authorization: `Bearer ${p.adminToken}`, 'content-type': 'application/json' },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    });
    const json = (await r.json()) as Record<string, any>;
    assert.equal(r.status, 200, `${path}: ${JSON.stringify(json)}`);
    return json;
  };
  const put = await admin('/arena', { method: 'PUT', body: { share: 1 } });
  assert.equal(put.serving.candidate, candidate, 'the arena pits the offered candidate against the champion');
  assert.equal(put.serving.champion, champion);

  const picks = picksToPromote();
  assert.ok(picks < MIN_NEW_JUDGEMENTS, `${picks} arena picks would make the loop train again after the promotion`);
  const fromLine = p.log.length;
  const c = await TestClient.connect(p.wsUrl);
  try {
    for (let i = 0; i < picks; i++) {
      const conv = (await c.request({ type: 'start', requestId: `s${i}` }, (m) => m.type === 'conversation' || m.type === 'error')).conversationId as string;
      assert.ok(conv, 'a conversation for the compare');
      const rid = `k${i}`;
      const end = await c.request(
        { type: 'compare', requestId: rid, conversationId: conv, content: 'say a fruit', params: { maxTokens: 4 } },
        (m) => (m.type === 'candidates' || m.type === 'error') && m.requestId === rid,
        20_000,
      );
      assert.equal(end.type, 'candidates', JSON.stringify(end));
      assert.equal(end.arena, true, 'with arena share 1 every compare is head to head');
      const [a, b] = end.messageIds as [string, string];
      // The users prefer the candidate: the store knows which blind reply is whose.
      const versions = await Promise.all([a, b].map(async (id) => (await getGeneration(p.store.db, id))!.model_version_id));
      assert.deepEqual([...versions].sort(), [candidate, champion].sort(), 'one reply of each version');
      const choice = versions[0] === candidate ? 'a' : 'b';
      const ack = await c.request({ type: 'comparison', requestId: `j${i}`, a, b, choice }, (m) => m.requestId === `j${i}`);
      assert.equal(ack.type, 'feedback_ack', JSON.stringify(ack));
      assert.equal((ack.revealed as Record<string, string>)[choice], candidate, 'the pick revealed the candidate');
    }
  } finally {
    c.close();
  }
  const view = await admin('/arena');
  assert.deepEqual([view.summary.n, view.summary.wins, view.summary.candidate], [picks, picks, candidate]);

  // The loop's next iteration (pollSeconds 1) applies the users' verdict, and trains nothing more.
  const promotedLine = await p.waitForLog(new RegExp(`^loop: users promoted candidate ${candidate}:`), 15_000, fromLine);
  await p.waitForLog(/^loop: skipped: users promoted candidate .* new judgements since the last iteration; waiting for/, 15_000, fromLine);
  let swapped: Record<string, unknown> = {};
  const until = Date.now() + 5_000;
  while (Date.now() < until) {
    swapped = (await admin('/versions')).serving;
    if (swapped.champion === candidate && swapped.candidate === undefined) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const log = (await admin('/promotions')).promotions as { alias: string; action: string; actor: string; to_version_id: string | null; reason: string }[];
  const champ = log.filter((r) => r.alias === 'champion').at(-1)!;
  assert.deepEqual([champ.action, champ.actor, champ.to_version_id], ['promote', 'online-loop', candidate], 'the champion moved by the loop on the arena verdict');
  assert.match(champ.reason, /^arena: candidate beats champion/);
  return { picks, promotedLine, swapped };
}

test('the online loop runs PPO in its own process beside the server: chats keep being answered, the event loop stays responsive, the offered candidate reaches the server, and the users\' arena promotes it', { timeout: 90_000 }, async () => {
  let gate: Awaited<ReturnType<typeof arenaPromotes>> | undefined;
  let championBefore = '';
  const r = await runLoopProbe({
    ppoSteps: 40,
    timeoutMs: 45_000,
    // Every step runs (the toy ensemble's disagreement guard would stop PPO early: not what is measured here);
    // the loop polls every second, and applies the users' arena verdict itself.
    loop: { pollSeconds: 1, minNewJudgements: MIN_NEW_JUDGEMENTS, autoPromote: true, disagreementTolerance: 1e9 },
    afterIteration: async (p) => {
      if (!/^loop: offered:/.test(p.log.find((l) => /^loop: (offered|rejected|skipped):/.test(l)) ?? '')) return;
      championBefore = ((await (await fetch(`${p.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
      const offered = await resolveAlias(p.store.db, 'candidate');
      if (offered) gate = await arenaPromotes(p, offered, championBefore);
    },
  });
  const tail = r.log.slice(-12).join('\n');
  // The proxy pre-filter only offers the candidate; the champion does not move on the proxy.
  assert.match(r.outcome, /^loop: offered: candidate offered to the users' arena/, tail);
  assert.equal(r.ppo_steps, 40, tail);
  assert.ok(r.chats >= 10, `chats answered during the iteration: ${r.chats}`);
  assert.equal(r.chat_failures, 0);
  assert.ok(Number.isFinite(r.p99_ms) && r.p99_ms < 100, `event-loop delay p99 ${r.p99_ms} ms (max ${r.max_ms} ms) during PPO`);
  assert.match(r.offered, /^policy-/, tail);
  assert.equal(r.candidate_served, r.offered, 'the server loaded the candidate the loop offered');
  assert.match(championBefore, /^sft-/, 'offering a candidate leaves the champion where it was');
  assert.ok(gate, tail);
  assert.equal(gate.swapped.champion, r.offered, `the server swapped to the champion the users chose: ${JSON.stringify(gate.swapped)}`);
  assert.equal(gate.swapped.candidate, undefined, 'the candidate alias was cleared with the promotion');
  assert.equal(r.served_after, r.offered, 'the server answers with the new champion');
  assert.ok(r.log.includes('loop: stopped'), 'the loop process stopped cleanly with the server');
});
