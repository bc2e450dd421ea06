import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { openStore } from '../feedback/open-store.ts';
import { registerModelVersion } from '../feedback/model-versions.ts';
import { postgresProblem, TEST_PG_URL } from '../feedback/test-support.ts';
import { makeTinyCheckpoint } from './test-support.ts';

const TOKEN = 'pg-registry-admin-token';
const problem = await postgresProblem();
const schema = `srv_reg_${randomBytes(5).toString('hex')}`;
const children: ChildProcess[] = [];

function startChild(modelDir: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts', '--port', '0', '--host', '127.0.0.1'], {
    env: { ...process.env, DATABASE_URL: TEST_PG_URL, DATABASE_SCHEMA: schema, MODEL_DIR: modelDir, ADMIN_TOKEN: TOKEN, REGISTRY_POLL_MS: '5000' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let err = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 30_000);
    child.stderr!.on('data', (d: Buffer) => {
      err += String(d);
      const m = /serving \S+ .* on port (\d+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve({ url: `http://127.0.0.1:${m[1]}`, child });
      }
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${err}`)));
  });
}

async function champion(url: string): Promise<string> {
  return ((await (await fetch(`${url}/healthz`)).json()) as { modelVersion: string }).modelVersion;
}

// PostgreSQL is part of every machine the suite runs on: its absence fails, never skips.
if (problem !== null) {
  test('two servers on one PostgreSQL share the registry', () => assert.fail(`PostgreSQL must be reachable at ${TEST_PG_URL}: ${problem}`));
} else {
  after(async () => {
    for (const c of children) c.kill('SIGTERM');
    const client = new pg.Client({ connectionString: TEST_PG_URL });
    await client.connect().catch(() => {});
    await client.query(`drop schema if exists "${schema}" cascade`).catch(() => {});
    await client.end().catch(() => {});
  });

  test('two servers on one PostgreSQL: a promotion through one reaches the other within a second (LISTEN/NOTIFY, polling slowed to 5 s)', async () => {
    const sft = await makeTinyCheckpoint({}, 1);
    const a = await startChild(sft);
    const b = await startChild(sft);
    const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'ppo-7');
    cpSync(await makeTinyCheckpoint({}, 2), dir, { recursive: true });
    const meta = readCheckpointMeta(dir);
    const id = versionId(dir, meta.sha256);
    const store = await openStore({ url: TEST_PG_URL, schema });
    try {
      await registerModelVersion(store.db, { id, kind: 'policy', checkpoint: dir, sha256: meta.sha256, stage: 'policy' });
    } finally {
      await store.close();
    }
    assert.notEqual(await champion(b.url), id);
    const t0 = performance.now();
    const r = await fetch(`${a.url}/admin/promote`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ versionId: id }) });
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal(await champion(a.url), id);
    let seen = '';
    while (performance.now() - t0 < 1000 && (seen = await champion(b.url)) !== id) await new Promise((res) => setTimeout(res, 20));
    assert.equal(seen, id, 'the other server serves the promoted version within a second');
  });
}
