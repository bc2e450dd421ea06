import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { groupPreferenceRows, rankingGroup, readPreferenceJsonl, loadStorePreferences, splitGroups, splitByContext, splitPreferences, splitPrompts, promptText, type PreferenceData } from './preferences.ts';
import { openTempStore, submitJudgements } from '../feedback/index.ts';
import { seedContext } from '../feedback/seed-context.ts';

const prompt = [{ role: 'user' as const, content: 'hi' }];
const turn = (content: string) => [{ role: 'assistant', content }];

test('a K-way ranking gives all C(K,2) pairs, better first, each weighted 1/C(K,2)', () => {
  const g = rankingGroup(prompt, ['a', 'b', 'c', 'd']);
  assert.equal(g.pairs.length, 6);
  assert.deepEqual(g.pairs, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]);
  assert.equal(g.weight, 1 / 6);
  assert.equal(g.replies.length, 4, 'each reply scored once');
});

test('rows of one exported group fold back into one judgement; ungrouped rows stay apart', () => {
  const rows = [
    { prompt, chosen: turn('a'), rejected: turn('b'), meta: { group: 'r1', source: 'ranking' } },
    { prompt, chosen: turn('a'), rejected: turn('c'), meta: { group: 'r1', source: 'ranking' } },
    { prompt, chosen: turn('b'), rejected: turn('c'), meta: { group: 'r1', source: 'ranking' } },
    { prompt, chosen: turn('x'), rejected: turn('y') },
    { prompt, chosen: turn('x'), rejected: turn('z') },
  ];
  const groups = groupPreferenceRows(rows);
  assert.equal(groups.length, 3);
  const r = groups.find((g) => g.source === 'ranking')!;
  assert.deepEqual(r.replies, ['a', 'b', 'c']);
  assert.equal(r.pairs.length, 3);
  assert.equal(r.weight, 1 / 3);
  assert.ok(groups.filter((g) => g.source === 'pair').every((g) => g.weight === 1 && g.pairs.length === 1));
});

test('JSONL mixes pairs, rankings and unpaired thumbs, and names a malformed line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'prefs-'));
  const path = join(dir, 'p.jsonl');
  writeFileSync(path, [
    JSON.stringify({ prompt, chosen: turn('good'), rejected: turn('bad') }),
    JSON.stringify({ prompt, ranking: ['1', '2', '3'] }),
    JSON.stringify({ prompt, completion: turn('meh'), label: false }),
  ].join('\n') + '\n');
  const d = readPreferenceJsonl(path);
  assert.equal(d.groups.length, 2);
  assert.equal(d.groups[1]!.weight, 1 / 3);
  assert.deepEqual(d.unpaired, [{ prompt, reply: 'meh', label: false, weight: 1 }]);
  writeFileSync(path, JSON.stringify({ prompt: [{ role: 'assistant', content: 'x' }], chosen: 'a', rejected: 'b' }) + '\n');
  assert.throws(() => readPreferenceJsonl(path), /row 1: prompt must end with a user turn/);
});

test('from the store: ranking weights survive, ties come only when asked for (as target-½ groups), "both bad" gives two half-weight negatives, thumbs pair up', async () => {
  const store = await openTempStore();
  try {
    const db = store.db;
    const r = await seedContext(db, { n: 3, prompt: 'rank us' });
    const t = await seedContext(db, { n: 2, prompt: 'tie us' });
    const b = await seedContext(db, { n: 2, prompt: 'both bad' });
    const th = await seedContext(db, { n: 2, prompt: 'thumbs' });
    const results = await submitJudgements(db, [
      { kind: 'ranking', raterId: 'u', candidates: [r.replies[2]!, r.replies[0]!, r.replies[1]!] },
      { kind: 'comparison', raterId: 'u', a: t.replies[0]!, b: t.replies[1]!, choice: 'tie' },
      { kind: 'comparison', raterId: 'u', a: b.replies[0]!, b: b.replies[1]!, choice: 'both_bad' },
      { kind: 'thumb', raterId: 'u', messageId: th.replies[0]!, value: 'down' },
      { kind: 'thumb', raterId: 'u', messageId: th.replies[1]!, value: 'up' },
    ]);
    assert.ok(results.every((x) => x.ok), JSON.stringify(results));
    const d = await loadStorePreferences(store);
    const ranking = d.groups.find((g) => g.source === 'ranking')!;
    assert.equal(ranking.pairs.length, 3);
    assert.equal(ranking.weight, 1 / 3);
    assert.equal(ranking.replies[0], 'reply 2 to rank us');
    const thumbs = d.groups.find((g) => g.source === 'thumbs')!;
    assert.deepEqual(thumbs.replies, ['reply 1 to thumbs', 'reply 0 to thumbs']);
    assert.equal(d.groups.length, 2, 'the tie contributes no group');
    const bothBad = d.unpaired.filter((u) => u.prompt.some((m) => m.content === 'both bad'));
    assert.deepEqual(bothBad.map((u) => [u.label, u.weight]), [[false, 0.5], [false, 0.5]]);
    assert.equal(d.unpaired.filter((u) => u.weight === 1).length, 2, 'both thumbs as unpaired signal');
    assert.ok([...d.groups, ...d.unpaired].every((x) => typeof x.createdAt === 'string' && !Number.isNaN(Date.parse(x.createdAt))), 'every row carries its judgement time');
    const withTies = await loadStorePreferences(store, { ties: true });
    const tie = withTies.groups.filter((g) => g.source === 'tie');
    assert.equal(tie.length, 1, 'asked for, the tie is one group');
    assert.deepEqual(tie[0]!.pairs, []);
    assert.deepEqual(tie[0]!.ties, [[0, 1]]);
    assert.deepEqual([...tie[0]!.replies].sort(), ['reply 0 to tie us', 'reply 1 to tie us']);
    assert.equal(tie[0]!.prompt[tie[0]!.prompt.length - 1]!.content, 'tie us');
    assert.equal(withTies.groups.length, 3);
  } finally {
    await store.close();
  }
});

test('the held-out split is by group and deterministic', () => {
  const items = Array.from({ length: 20 }, (_, i) => i);
  const a = splitGroups(items, 0.2, 7);
  assert.equal(a.val.length, 4);
  assert.deepEqual(splitGroups(items, 0.2, 7), a);
  assert.deepEqual([...a.train, ...a.val].sort((x, y) => x - y), items);
});

test('a context\'s split comes from a hash of its prompt text: stable, about 80/10/10, and seed-dependent', () => {
  const keys = Array.from({ length: 2000 }, (_, i) => `user: prompt number ${i}`);
  const a = keys.map((k) => splitByContext(k));
  assert.deepEqual(keys.map((k) => splitByContext(k)), a, 'pure');
  const share = (s: string) => a.filter((x) => x === s).length / keys.length;
  assert.ok(Math.abs(share('train') - 0.8) < 0.03 && Math.abs(share('val') - 0.1) < 0.02 && Math.abs(share('eval') - 0.1) < 0.02, `${share('train')} ${share('val')} ${share('eval')}`);
  const b = keys.map((k) => splitByContext(k, 1));
  assert.ok(b.some((x, i) => x !== a[i]), 'another seed, another split');
});

test('every kind of judgement about one context lands in the same split, and the split does not move as data grows', () => {
  const data: PreferenceData = { groups: [], unpaired: [] };
  for (let i = 0; i < 60; i++) {
    const p = [{ role: 'user' as const, content: `question ${i}` }];
    data.groups.push({ prompt: p, replies: ['x', 'y'], pairs: [[0, 1]], weight: 1, source: 'comparison' });
    data.groups.push({ prompt: p, replies: ['u', 'v'], pairs: [], ties: [[0, 1]], weight: 1, source: 'tie' });
    data.unpaired.push({ prompt: p, reply: 'x', label: true, weight: 1 });
  }
  const parts = splitPreferences(data);
  const where = new Map<string, Set<string>>();
  for (const [name, d] of Object.entries(parts)) {
    for (const x of [...d.groups, ...d.unpaired]) {
      const k = promptText(x.prompt);
      where.set(k, (where.get(k) ?? new Set()).add(name));
    }
  }
  assert.equal(where.size, 60);
  assert.ok([...where.values()].every((s) => s.size === 1), 'no context straddles two splits');
  assert.ok(parts.train.groups.length > 0 && parts.val.groups.length + parts.eval.groups.length > 0);
  const grown = splitPreferences({ groups: [...data.groups, { prompt: [{ role: 'user', content: 'new' }], replies: ['a', 'b'], pairs: [[0, 1]], weight: 1, source: 'comparison' }], unpaired: data.unpaired });
  assert.deepEqual(grown.eval.groups.filter((g) => g.prompt[0]!.content !== 'new'), parts.eval.groups, 'old contexts keep their split');
  const prompts = [...where.keys()].map((k) => [{ role: 'user' as const, content: k.slice('user: '.length) }]);
  const ps = splitPrompts(prompts);
  const evalSet = new Set(ps.eval.map((p) => p[0]!.content));
  assert.ok(ps.train.every((p) => !evalSet.has(p[0]!.content)), 'evaluation prompts are never PPO prompts');
  assert.deepEqual(ps.eval.map((p) => promptText(p)).sort(), parts.eval.groups.filter((g) => g.source === 'tie').map((g) => promptText(g.prompt)).sort(), 'prompts split exactly as their judgements');
});
