import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { addMessage } from './conversations.ts';
import { exportPreferencePairs, exportSft, exportUnpaired, type ExportFilter } from './export.ts';
import { submitJudgements } from './judgements.ts';
import { openStore } from './open-store.ts';
import { describeEachDialect, seedContext, type SeededContext } from './test-support.ts';
import type { Database } from './schema.ts';
import type { Kysely } from 'kysely';

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

const text = (turns: { content: string }[]) => turns.map((t) => t.content);

/** Replies r0 (v1), r1 (v2), r2 (v1) to one question, judged in every way. */
async function judged(db: Kysely<Database>): Promise<SeededContext> {
  const s = await seedContext(db, { n: 3, modelVersionId: ['v1', 'v2'] });
  const [r0, r1, r2] = s.replies as [string, string, string];
  const results = await submitJudgements(db, [
    { kind: 'comparison', a: r1, b: r0, choice: 'b', raterId: 'ann' },
    { kind: 'comparison', a: r1, b: r2, choice: 'tie', raterId: 'ann' },
    { kind: 'comparison', a: r0, b: r2, choice: 'both_bad', raterId: 'bob' },
    { kind: 'ranking', candidates: [r2, r0, r1], raterId: 'bob' },
    { kind: 'ranking', candidates: [r0, r1], notRankable: true, raterId: 'cat' },
    { kind: 'thumb', messageId: r0, raterId: 'dan', value: 'up' },
    { kind: 'thumb', messageId: r1, raterId: 'dan', value: 'down', reason: 'unhelpful' },
    { kind: 'thumb', messageId: r2, raterId: 'eve', value: 'down' },
  ]);
  assert.ok(results.every((r) => r.ok));
  return s;
}

await describeEachDialect('exports', (ctx) => {
  test('preference pairs come from comparisons, all pairs of rankings and sibling thumbs', async () => {
    const store = await ctx.openFresh();
    try {
      const s = await judged(store.db);
      const [r0, r1, r2] = s.replies as [string, string, string];
      const rows = await collect(exportPreferencePairs(store.db, { includeMeta: true }));
      const pairs = rows.map((r) => [r.meta!.source, r.meta!.message_ids[1], r.meta!.message_ids[2]]);
      assert.deepEqual(pairs, [
        ['comparison', r0, r1],
        ['ranking', r2, r0],
        ['ranking', r2, r1],
        ['ranking', r0, r1],
        ['thumbs', r0, r1],
      ]);
      const first = rows[0]!;
      assert.deepEqual(first.prompt, [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'What does serendipity mean?' },
      ]);
      assert.deepEqual(first.chosen, [{ role: 'assistant', content: 'reply 0 to What does serendipity mean?' }]);
      assert.deepEqual(first.rejected, [{ role: 'assistant', content: 'reply 1 to What does serendipity mean?' }]);
      assert.equal(rows[1]!.meta!.group, rows[2]!.meta!.group, 'pairs of one ranking share a group');
      assert.equal('meta' in (await collect(exportPreferencePairs(store.db)))[0]!, false);
    } finally {
      await store.close();
    }
  });

  test("meta names the rater's API key id where there is one (null when anonymous)", async () => {
    const store = await ctx.openFresh();
    try {
      const s = await seedContext(store.db, { n: 3 });
      const [r0, r1, r2] = s.replies as [string, string, string];
      const results = await submitJudgements(store.db, [
        { kind: 'comparison', a: r1, b: r0, choice: 'b', raterId: 'ann', keyId: 'key-ann' },
        { kind: 'ranking', candidates: [r2, r0], raterId: 'bob', keyId: 'key-bob' },
        { kind: 'thumb', messageId: r0, raterId: 'dan', value: 'up', keyId: 'key-dan' },
        { kind: 'thumb', messageId: r1, raterId: 'dan', value: 'down', keyId: 'key-dan' },
        { kind: 'thumb', messageId: r2, raterId: 'eve', value: 'down' },
      ]);
      assert.ok(results.every((r) => r.ok));
      const pairs = await collect(exportPreferencePairs(store.db, { includeMeta: true }));
      assert.deepEqual(pairs.map((r) => [r.meta!.source, r.meta!.rater, r.meta!.keyId]), [
        ['comparison', 'ann', 'key-ann'],
        ['ranking', 'bob', 'key-bob'],
        ['thumbs', 'dan', 'key-dan'],
      ]);
      const unpaired = await collect(exportUnpaired(store.db, { includeMeta: true }));
      assert.deepEqual(unpaired.map((r) => [r.meta!.rater, r.meta!.keyId]), [
        ['dan', 'key-dan'],
        ['dan', 'key-dan'],
        ['eve', null],
      ]);
      await store.db.updateTable('conversations').set({ key_id: 'key-user' }).where('id', '=', s.conversationId).execute();
      const sft = await collect(exportSft(store.db, { includeMeta: true, keepThumbsDown: true }));
      assert.deepEqual(sft.map((r) => r.meta!.keyId), ['key-user', 'key-user', 'key-user']);
    } finally {
      await store.close();
    }
  });

  test('filters by rater, model version and time, and only the latest judgement counts', async () => {
    const store = await ctx.openFresh();
    try {
      const s = await judged(store.db);
      const [r0, r1] = s.replies as [string, string, string];
      const count = async (f: ExportFilter) => (await collect(exportPreferencePairs(store.db, f))).length;
      assert.equal(await count({ rater: 'bob' }), 3);
      assert.equal(await count({ rater: 'nobody' }), 0);
      assert.equal(await count({ modelVersion: 'v2' }), 4, 'every pair with r1 in it');
      assert.equal(await count({ modelVersion: 'v3' }), 0);
      assert.equal(await count({ since: '2999-01-01' }), 0);
      assert.equal(await count({ until: '2000-01-01' }), 0);
      assert.equal(await count({ since: '2000-01-01', until: '2999-01-01' }), 5);
      await submitJudgements(store.db, [{ kind: 'comparison', a: r0, b: r1, choice: 'a', raterId: 'ann' }]);
      const ann = await collect(exportPreferencePairs(store.db, { rater: 'ann', includeMeta: true }));
      assert.deepEqual(ann.map((r) => r.meta!.message_ids.slice(1)), [[r0, r1]]);
      await submitJudgements(store.db, [{ kind: 'comparison', a: r0, b: r1, choice: 'tie', raterId: 'ann' }]);
      assert.equal(await count({ rater: 'ann' }), 0, 'changed to a tie: no preference any more');
      await assert.rejects(collect(exportPreferencePairs(store.db, { since: 'yesterday-ish' })), /since/);
    } finally {
      await store.close();
    }
  });

  test('unpaired rows are the thumbs, labelled true for up', async () => {
    const store = await ctx.openFresh();
    try {
      const s = await judged(store.db);
      const rows = await collect(exportUnpaired(store.db, { includeMeta: true }));
      assert.deepEqual(
        rows.map((r) => [r.meta!.message_ids[0], r.label]),
        [
          [s.replies[0], true],
          [s.replies[1], false],
          [s.replies[2], false],
        ],
      );
      assert.equal(rows[0]!.prompt.length, 2);
      assert.deepEqual(text(rows[0]!.completion), ['reply 0 to What does serendipity mean?']);
      assert.equal((await collect(exportUnpaired(store.db, { modelVersion: 'v1' }))).length, 2);
    } finally {
      await store.close();
    }
  });

  test('SFT conversations are root-to-leaf threads, without thumbed-down replies', async () => {
    const store = await ctx.openFresh();
    try {
      const s = await judged(store.db);
      const follow = await addMessage(store.db, { conversationId: s.conversationId, parentId: s.replies[0], role: 'user', content: 'Use it in a sentence.' });
      await addMessage(store.db, { conversationId: s.conversationId, parentId: follow.id, role: 'assistant', content: 'What serendipity!' });
      const rows = await collect(exportSft(store.db));
      assert.deepEqual(rows.map((r) => text(r.messages)), [
        ['Be brief.', 'What does serendipity mean?', 'reply 0 to What does serendipity mean?', 'Use it in a sentence.', 'What serendipity!'],
      ]);
      assert.equal((await collect(exportSft(store.db, { keepThumbsDown: true }))).length, 3);
      assert.equal((await collect(exportSft(store.db, { rater: 'someone-else' }))).length, 0);
    } finally {
      await store.close();
    }
  });
});

test('the export CLI writes one JSON row per line', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fb-export-'));
  const url = `sqlite:${join(dir, 'f.sqlite')}`;
  try {
    const store = await openStore({ url });
    await judged(store.db);
    await store.close();
    const cli = fileURLToPath(new URL('./export-cli.ts', import.meta.url));
    const out = join(dir, 'pairs.jsonl');
    await promisify(execFile)(process.execPath, ['--import', 'tsx', cli, '--kind', 'preference', '--out', out, '--database', url, '--rater', 'bob']);
    const lines = readFileSync(out, 'utf8').trimEnd().split('\n');
    assert.equal(lines.length, 3);
    for (const line of lines) assert.deepEqual(Object.keys(JSON.parse(line)), ['prompt', 'chosen', 'rejected']);
    await assert.rejects(promisify(execFile)(process.execPath, ['--import', 'tsx', cli, '--kind', 'nonsense', '--out', out, '--database', url]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
