import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Migrator, sql, type Kysely } from 'kysely';
import {
  arenaOutcomes,
  csHalfWidth,
  decideArena,
  intervalHistory,
  lengthControlledWinRate,
  summariseArena,
  type ArenaOutcome,
} from './arena.ts';
import { addMessage, createConversation } from './conversations.ts';
import { addAssistantReply } from './generations.ts';
import { submitJudgement } from './judgements.ts';
import { migrateToLatest } from './migrate.ts';
import { migrationProvider } from './migrations/index.ts';
import { clearAlias, listPromotions, promote, registerModelVersion, resolveAlias } from './model-versions.ts';
import type { Choice, Database } from './schema.ts';
import { describeEachDialect } from './test-support.ts';

/** mulberry32: a small seeded RNG so every Monte Carlo figure here is reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const at = (i: number) => new Date(Date.UTC(2026, 11, 1) + i * 1000).toISOString();

/** n outcomes: a win with probability pWin, a tie with pTie, else a loss. */
function draw(n: number, pWin: number, pTie: number, random: () => number, lengthDiff = () => 0): ArenaOutcome[] {
  return Array.from({ length: n }, (_, i) => {
    const u = random();
    const outcome = u < pTie ? 'tie' : u < pTie + pWin ? 'win' : 'loss';
    return { outcome, lengthDiff: lengthDiff(), raterId: `r${i}`, createdAt: at(i) } as ArenaOutcome;
  });
}

/** The first n at which the always-valid interval excludes ½, or undefined. */
function firstDecision(outcomes: readonly ArenaOutcome[], alpha = 0.05): { n: number; side: 'promote' | 'reject' } | undefined {
  for (const h of intervalHistory(outcomes, { alpha })) {
    if (h.low > 0.5) return { n: h.n, side: 'promote' };
    if (h.high < 0.5) return { n: h.n, side: 'reject' };
  }
  return undefined;
}

/** The same look-every-time rule with a fixed-n 95% Wald interval (what the arena must NOT do). */
function naiveWaldEverDecides(outcomes: readonly ArenaOutcome[]): boolean {
  let sum = 0;
  for (let i = 0; i < outcomes.length; i++) {
    sum += outcomes[i]!.outcome === 'win' ? 1 : outcomes[i]!.outcome === 'loss' ? 0 : 0.5;
    const n = i + 1;
    if (n < 10) continue;
    const p = sum / n;
    const h = 1.96 * Math.sqrt(Math.max(p * (1 - p), 1e-12) / n);
    if (p - h > 0.5 || p + h < 0.5) return true;
  }
  return false;
}

test('with no true difference, looking after every judgement up to 1000 decides in at most alpha of the arenas', () => {
  const random = rng(11);
  let decided = 0;
  let naive = 0;
  const runs = 300;
  for (let r = 0; r < runs; r++) {
    const outcomes = draw(1000, 0.5, 0, random);
    if (firstDecision(outcomes)) decided++;
    if (naiveWaldEverDecides(outcomes)) naive++;
  }
  assert.ok(decided / runs <= 0.07, `always-valid interval decided in ${decided}/${runs} null arenas`);
  // The naive fixed-n Wald interval, looked at after every judgement, "decides" in about half of
  // these null arenas (measured: well above 0.2 with this seed): why the arena uses a confidence sequence.
  assert.ok(naive / runs > 0.2, `naive Wald decided in only ${naive}/${runs} null arenas`);
});

test('a clearly better candidate is promoted and a clearly worse one rejected within 600 judgements', () => {
  const random = rng(7);
  for (let r = 0; r < 20; r++) {
    const better = firstDecision(draw(600, 0.65, 0, random));
    assert.equal(better?.side, 'promote', `run ${r}: p = 0.65 gave ${JSON.stringify(better)}`);
    const worse = firstDecision(draw(600, 0.35, 0, random));
    assert.equal(worse?.side, 'reject', `run ${r}: p = 0.35 gave ${JSON.stringify(worse)}`);
  }
  const s = summariseArena(draw(600, 0.65, 0, rng(3)), { candidate: 'c', champion: 'k' });
  assert.equal(s.decision, 'promote');
  assert.ok(s.interval[0] > 0.5 && s.interval[0] < s.p && s.p < s.interval[1]);
  assert.equal(s.wins + s.losses + s.ties + s.bothBad, 600);
});

test('a tie-heavy arena stays undecided until maxJudgements, then rejects for no clear gain', () => {
  const outcomes = draw(1500, 0.1, 0.8, rng(5));
  assert.equal(firstDecision(outcomes), undefined);
  for (const n of [10, 100, 500, 1000, 1499]) assert.equal(summariseArena(outcomes.slice(0, n)).decision, 'continue', `at n = ${n}`);
  const s = summariseArena(outcomes, { maxJudgements: 1500 });
  assert.equal(s.decision, 'reject');
  assert.ok(s.interval[0] <= 0.5 && s.interval[1] >= 0.5);
  assert.ok(s.ties > 1100);
  assert.equal(summariseArena(outcomes, { maxJudgements: 2000 }).decision, 'continue');
});

test('the interval narrows like 1/sqrt(n) and summaries of nothing are the whole range', () => {
  assert.ok(csHalfWidth(2000, 0.05) < csHalfWidth(500, 0.05) && csHalfWidth(500, 0.05) < csHalfWidth(100, 0.05));
  assert.ok(csHalfWidth(500, 0.01) > csHalfWidth(500, 0.05));
  const empty = summariseArena([]);
  assert.deepEqual([empty.n, empty.p, empty.interval, empty.decision], [0, 0.5, [0, 1], 'continue']);
  assert.deepEqual(empty.lengthControlled, { p: 0.5, interval: [0, 1], lengthCoef: 0 });
  assert.throws(() => summariseArena([], { alpha: 0 }), RangeError);
  const h = intervalHistory(draw(50, 0.5, 0.2, rng(1)));
  assert.equal(h.length, 50);
  assert.deepEqual(h.map((x) => x.n), Array.from({ length: 50 }, (_, i) => i + 1));
  for (const x of h) assert.ok(x.low <= x.p && x.p <= x.high);
});

test('a candidate that wins only because it is longer has a length-controlled win rate near one half', () => {
  const random = rng(21);
  const outcomes: ArenaOutcome[] = Array.from({ length: 2000 }, (_, i) => {
    const d = Math.round(-10 + random() * 40); // mostly longer
    const u = random();
    const pWin = 1 / (1 + Math.exp(-0.12 * d));
    return { outcome: u < pWin ? 'win' : 'loss', lengthDiff: d, raterId: `r${i}`, createdAt: at(i) };
  });
  const s = summariseArena(outcomes);
  assert.ok(s.p > 0.68, `raw win rate ${s.p}`);
  assert.equal(s.decision, 'promote');
  const lc = s.lengthControlled;
  assert.ok(Math.abs(lc.p - 0.5) < 0.06, `length-controlled ${lc.p}`);
  assert.ok(lc.interval[0] < 0.5 && lc.interval[1] > 0.5, `interval ${lc.interval}`);
  assert.ok(Math.abs(lc.lengthCoef - 0.12) < 0.03, `coef ${lc.lengthCoef}`);
});

test('a candidate better at equal length keeps its edge under length control', () => {
  const random = rng(22);
  const outcomes: ArenaOutcome[] = Array.from({ length: 1500 }, (_, i) => {
    const d = Math.round(-15 + random() * 30);
    const u = random();
    // σ(1) ≈ 0.73 at every length; a third of the non-wins are ties.
    const outcome = u < 0.731 ? 'win' : u < 0.82 ? 'tie' : 'loss';
    return { outcome, lengthDiff: d, raterId: `r${i}`, createdAt: at(i) };
  });
  const lc = lengthControlledWinRate(outcomes);
  const p = summariseArena(outcomes).p;
  assert.ok(Math.abs(lc.p - p) < 0.03, `lc ${lc.p} vs raw ${p}`);
  assert.ok(lc.interval[0] > 0.7 && lc.interval[0] < lc.p && lc.p < lc.interval[1] && lc.interval[1] < 0.82);
  assert.ok(Math.abs(lc.lengthCoef) < 0.02);
});

test('the length fit is the maximum-likelihood one (score equations hold, ties as half a win)', () => {
  const random = rng(23);
  const outcomes: ArenaOutcome[] = Array.from({ length: 300 }, (_, i) => {
    const d = Math.round(random() * 20 - 8);
    const u = random();
    return { outcome: u < 0.4 ? 'win' : u < 0.6 ? 'tie' : u < 0.7 ? 'both_bad' : 'loss', lengthDiff: d, raterId: `r${i}`, createdAt: at(i) };
  });
  const lc = lengthControlledWinRate(outcomes);
  const b0 = Math.log(lc.p / (1 - lc.p));
  let g0 = 0;
  let g1 = 0;
  for (const o of outcomes) {
    const y = o.outcome === 'win' ? 1 : o.outcome === 'loss' ? 0 : 0.5;
    const m = 1 / (1 + Math.exp(-(b0 + lc.lengthCoef * o.lengthDiff)));
    g0 += y - m;
    g1 += (y - m) * o.lengthDiff;
  }
  assert.ok(Math.abs(g0) < 1e-4 && Math.abs(g1) < 1e-3, `score ${g0}, ${g1}`);
  const allTies = outcomes.map((o) => ({ ...o, outcome: 'tie' as const }));
  const t = lengthControlledWinRate(allTies);
  assert.ok(Math.abs(t.p - 0.5) < 1e-9 && Math.abs(t.lengthCoef) < 1e-9);
});

/** A context with one reply by each version (candidate first or second), and its comparison. */
async function judgePair(
  db: Kysely<Database>,
  o: { rater: string; first: string; second: string; choice: Choice; words?: [number, number] },
): Promise<{ contextId: string; a: string; b: string }> {
  const conversation = await createConversation(db, { userId: o.rater });
  const user = await addMessage(db, { conversationId: conversation.id, role: 'user', content: 'Say hello.', userId: o.rater });
  const ids: string[] = [];
  for (const [i, version] of [o.first, o.second].entries()) {
    const n = o.words?.[i] ?? 3;
    const { message } = await addAssistantReply(db, {
      message: { conversationId: conversation.id, parentId: user.id, content: Array.from({ length: n }, () => 'hi').join(' ') },
      generation: { modelVersionId: version, params: { source: 'arena' }, finishReason: 'stop', promptTokens: 3, completionTokens: n, latencyMs: 1 },
    });
    ids.push(message.id);
  }
  await submitJudgement(db, { kind: 'comparison', contextId: user.id, a: ids[0]!, b: ids[1]!, choice: o.choice, raterId: o.rater });
  return { contextId: user.id, a: ids[0]!, b: ids[1]! };
}

await describeEachDialect('arena on the store', (ctx) => {
  test('the arena migration keeps the promotion log and its append-only guard, and admits reject and clear', async () => {
    const store = await ctx.openFresh();
    try {
      const db = store.db;
      const schema = store.dialect === 'postgres' ? store.location : undefined;
      const migrator = new Migrator({ db, provider: migrationProvider(store.dialect), ...(schema ? { migrationTableSchema: schema } : {}) });
      const down = await migrator.migrateTo('2026-11-27-002-registry');
      assert.equal(down.error, undefined);
      await registerModelVersion(db, { id: 'm1', kind: 'policy', checkpoint: 'ck/m1' });
      await promote(db, { alias: 'candidate', versionId: 'm1', reason: 'before the migration' });
      await assert.rejects(clearAlias(db, 'candidate'), 'the old schema refuses a reject row');
      await migrateToLatest(db, store.dialect, schema);
      assert.deepEqual((await listPromotions(db)).map((l) => [l.alias, l.action, l.reason]), [['candidate', 'promote', 'before the migration']]);
      const entry = await clearAlias(db, 'candidate', { actor: 't', reason: 'worse' });
      assert.deepEqual([entry.action, entry.from_version_id, entry.to_version_id], ['reject', 'm1', 'm1']);
      assert.equal(await resolveAlias(db, 'candidate'), undefined);
      await assert.rejects(clearAlias(db, 'candidate'), (e: unknown) => (e as { code?: string }).code === 'unknown_alias');
      await assert.rejects(sql`update promotion_log set reason = 'rewritten'`.execute(db), /append-only/);
      await assert.rejects(sql`delete from promotion_log`.execute(db), /append-only/);
      assert.equal((await listPromotions(db)).length, 2);
    } finally {
      await store.close();
    }
  });

  test('reads head-to-head outcomes from the candidate side, either order, current rows only', async () => {
    const store = await ctx.openFresh();
    try {
      const db = store.db;
      const one = await judgePair(db, { rater: 'u1', first: 'cand', second: 'champ', choice: 'a', words: [5, 2] });
      await judgePair(db, { rater: 'u2', first: 'champ', second: 'cand', choice: 'a', words: [4, 10] });
      await judgePair(db, { rater: 'u3', first: 'champ', second: 'cand', choice: 'tie' });
      await judgePair(db, { rater: 'u4', first: 'cand', second: 'champ', choice: 'both_bad' });
      await judgePair(db, { rater: 'u5', first: 'champ', second: 'other', choice: 'a' }); // not this pair
      await judgePair(db, { rater: 'u6', first: 'cand', second: 'cand', choice: 'a' }); // not head to head
      // u1 changes their mind: only the current row counts.
      await submitJudgement(db, { kind: 'comparison', contextId: one.contextId, a: one.a, b: one.b, choice: 'b', raterId: 'u1' });
      const got = await arenaOutcomes(db, { candidate: 'cand', champion: 'champ' });
      assert.deepEqual(
        got.map((g) => [g.raterId, g.outcome, g.lengthDiff]),
        [
          ['u2', 'loss', 6],
          ['u3', 'tie', 0],
          ['u4', 'both_bad', 0],
          ['u1', 'loss', 3],
        ],
      );
      assert.deepEqual(await arenaOutcomes(db, { candidate: 'champ', champion: 'cand' }).then((xs) => xs.map((x) => x.outcome)), ['win', 'tie', 'both_bad', 'win']);
    } finally {
      await store.close();
    }
  });

  test('decideArena promotes a candidate users prefer, logging the figures and clearing the candidate alias', async () => {
    const store = await ctx.openFresh();
    try {
      const db = store.db;
      for (const id of ['champ', 'cand']) await registerModelVersion(db, { id, kind: 'policy', checkpoint: `ck/${id}`, metrics: { proxy: 1 } });
      assert.equal(await decideArena(db, { apply: true, actor: 't' }), undefined);
      await promote(db, { alias: 'champion', versionId: 'champ' });
      await promote(db, { alias: 'candidate', versionId: 'cand' });
      for (let i = 0; i < 10; i++) await judgePair(db, { rater: `u${i}`, first: i % 2 ? 'cand' : 'champ', second: i % 2 ? 'champ' : 'cand', choice: i % 2 ? 'a' : 'b' });
      const early = await decideArena(db, { apply: true, actor: 't' });
      assert.deepEqual([early!.summary.n, early!.summary.decision, early!.applied], [10, 'continue', null]);
      for (let i = 10; i < 40; i++) await judgePair(db, { rater: `u${i}`, first: 'cand', second: 'champ', choice: i % 10 === 0 ? 'tie' : 'a' });
      const dry = await decideArena(db, { apply: false, actor: 't' });
      assert.deepEqual([dry!.summary.decision, dry!.applied], ['promote', null]);
      assert.equal(await resolveAlias(db, 'candidate'), 'cand');
      const done = await decideArena(db, { apply: true, actor: 'online-loop' });
      assert.deepEqual([done!.summary.decision, done!.applied, done!.summary.candidate, done!.summary.champion], ['promote', 'promoted', 'cand', 'champ']);
      assert.equal(await resolveAlias(db, 'champion'), 'cand');
      assert.equal(await resolveAlias(db, 'candidate'), undefined);
      const log = (await listPromotions(db)).slice(-2);
      assert.deepEqual(log.map((l) => [l.alias, l.action, l.from_version_id, l.to_version_id, l.actor]), [
        ['champion', 'promote', 'champ', 'cand', 'online-loop'],
        ['candidate', 'clear', 'cand', 'cand', 'online-loop'],
      ]);
      for (const l of log) {
        const m = JSON.parse(l.metrics_json!);
        assert.equal(m.proxy, 1);
        assert.equal(m.arena.n, 40);
        assert.ok(m.arena.interval[0] > 0.5);
        assert.match(l.reason!, /n=40/);
      }
      assert.equal(await decideArena(db, { apply: true, actor: 't' }), undefined);
    } finally {
      await store.close();
    }
  });

  test('two decideArena calls at once apply the decision once', async () => {
    const store = await ctx.openFresh();
    try {
      const db = store.db;
      for (const id of ['champ', 'cand']) await registerModelVersion(db, { id, kind: 'policy', checkpoint: `ck/${id}` });
      await promote(db, { alias: 'champion', versionId: 'champ' });
      await promote(db, { alias: 'candidate', versionId: 'cand' });
      for (let i = 0; i < 35; i++) await judgePair(db, { rater: `u${i}`, first: 'cand', second: 'champ', choice: 'a' });
      const both = await Promise.all([decideArena(db, { apply: true, actor: 'p1' }), decideArena(db, { apply: true, actor: 'p2' })]);
      assert.deepEqual(both.map((r) => r?.applied ?? 'none').sort(), ['none', 'promoted']);
      assert.deepEqual((await listPromotions(db)).filter((l) => l.actor === 'p1' || l.actor === 'p2').map((l) => l.action), ['promote', 'clear']);
      assert.equal(await resolveAlias(db, 'champion'), 'cand');
    } finally {
      await store.close();
    }
  });

  test('decideArena rejects a candidate users refuse, and one with no clear gain at maxJudgements', async () => {
    const store = await ctx.openFresh();
    try {
      const db = store.db;
      for (const id of ['champ', 'bad', 'meh']) await registerModelVersion(db, { id, kind: 'policy', checkpoint: `ck/${id}` });
      await promote(db, { alias: 'champion', versionId: 'champ' });
      await promote(db, { alias: 'candidate', versionId: 'bad' });
      for (let i = 0; i < 40; i++) await judgePair(db, { rater: `u${i}`, first: 'champ', second: 'bad', choice: 'a' });
      const r = await decideArena(db, { apply: true, actor: 'online-loop' });
      assert.deepEqual([r!.summary.decision, r!.applied, r!.summary.losses], ['reject', 'rejected', 40]);
      assert.equal(await resolveAlias(db, 'candidate'), undefined);
      assert.equal(await resolveAlias(db, 'champion'), 'champ');
      const last = (await listPromotions(db)).at(-1)!;
      assert.deepEqual([last.alias, last.action, last.from_version_id], ['candidate', 'reject', 'bad']);
      assert.equal(JSON.parse(last.metrics_json!).arena.decision, 'reject');
      assert.match(last.reason!, /loses/);

      await promote(db, { alias: 'candidate', versionId: 'meh' });
      for (let i = 0; i < 6; i++) await judgePair(db, { rater: `m${i}`, first: 'meh', second: 'champ', choice: i % 2 ? 'a' : 'b' });
      assert.equal((await decideArena(db, { apply: true, actor: 't', maxJudgements: 7 }))!.applied, null);
      const tired = await decideArena(db, { apply: true, actor: 't', maxJudgements: 6 });
      assert.deepEqual([tired!.summary.decision, tired!.applied], ['reject', 'rejected']);
      assert.match((await listPromotions(db)).at(-1)!.reason!, /no clear gain after 6 judgements/);
    } finally {
      await store.close();
    }
  });
});
