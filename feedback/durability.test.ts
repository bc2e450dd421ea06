import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import pg from 'pg';
import { requirePostgres, TEST_PG_URL } from './test-support.ts';

const fixture = fileURLToPath(new URL('./burst-writer-fixture.ts', import.meta.url));
const TABLE = { thumb: 'thumbs', comparison: 'comparisons', ranking: 'rankings' } as Record<string, string>;

/** Runs the burst fixture on `args`, SIGKILLs it once 3,000 judgements were acknowledged, and returns those acknowledged. */
async function burstAndKill(args: string[]): Promise<[string, string][]> {
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const acked: [string, string][] = [];
  let stderr = '';
  let buffer = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  await new Promise<void>((resolve, reject) => {
    child.on('exit', () => reject(new Error(`fixture exited early: ${stderr}`)));
    child.stdout.on('data', (d: Buffer) => {
      buffer += d.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop()!;
      for (const line of lines) {
        const [tag, kind, id] = line.split(' ');
        if (tag === 'ack') acked.push([kind!, id!]);
      }
      // Kill well into the burst, while writers are still waiting on their commits.
      if (acked.length >= 3000 && !child.killed) {
        child.kill('SIGKILL');
        resolve();
      }
    });
  });
  assert.equal(await exited, 'SIGKILL');
  for (const line of buffer.split('\n')) {
    const [tag, kind, id] = line.split(' ');
    if (tag === 'ack' && id && id.length === 26) acked.push([kind!, id]);
  }
  return acked;
}

test('every acknowledged judgement survives SIGKILL mid-burst, and the database stays intact', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fb-kill-'));
  const file = join(dir, 'feedback.sqlite');
  try {
    const acked = await burstAndKill([file]);

    const db = new Database(file);
    try {
      assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
      const missing: string[] = [];
      for (const kind of ['thumb', 'comparison', 'ranking']) {
        const ids = new Set((db.prepare(`select id from ${TABLE[kind]}`).all() as { id: string }[]).map((r) => r.id));
        for (const [k, id] of acked) if (k === kind && !ids.has(id)) missing.push(id);
      }
      assert.deepEqual(missing, [], `${missing.length} of ${acked.length} acknowledged judgements were lost`);
      const items = db.prepare('select count(*) as n from ranking_items').get() as { n: number };
      const rankings = db.prepare('select count(*) as n from rankings').get() as { n: number };
      assert.equal(items.n, rankings.n * 3, 'no ranking was half written');
    } finally {
      db.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every acknowledged judgement survives SIGKILL mid-burst on PostgreSQL, and no ranking is half written', async (t) => {
  await requirePostgres();
  const schema = `fb_kill_${randomBytes(6).toString('hex')}`;
  const client = new pg.Client({ connectionString: TEST_PG_URL });
  await client.connect();
  try {
    const acked = await burstAndKill([TEST_PG_URL, schema]);
    const q = async <R extends pg.QueryResultRow>(sql: string) => (await client.query<R>(sql)).rows;
    const missing: string[] = [];
    for (const kind of ['thumb', 'comparison', 'ranking']) {
      const ids = new Set((await q<{ id: string }>(`select id from "${schema}".${TABLE[kind]}`)).map((r) => r.id));
      for (const [k, id] of acked) if (k === kind && !ids.has(id)) missing.push(id);
    }
    assert.deepEqual(missing, [], `${missing.length} of ${acked.length} acknowledged judgements were lost`);
    const items = Number((await q<{ n: string }>(`select count(*) as n from "${schema}".ranking_items`))[0]!.n);
    const rankings = Number((await q<{ n: string }>(`select count(*) as n from "${schema}".rankings`))[0]!.n);
    assert.equal(items, rankings * 3, 'no ranking was half written');
  } finally {
    await client.query(`drop schema if exists "${schema}" cascade`);
    await client.end();
  }
});
