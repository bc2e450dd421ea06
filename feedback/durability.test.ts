import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';

const fixture = fileURLToPath(new URL('./burst-writer-fixture.ts', import.meta.url));
const TABLE = { thumb: 'thumbs', comparison: 'comparisons', ranking: 'rankings' } as Record<string, string>;

test('every acknowledged judgement survives SIGKILL mid-burst, and the database stays intact', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fb-kill-'));
  const file = join(dir, 'feedback.sqlite');
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, file], { stdio: ['ignore', 'pipe', 'pipe'] });
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
