/**
 * A champion whose checkpoint cannot be loaded yet (it is still being copied to shared storage)
 * is retried with backoff, reported in /healthz and /admin/versions meanwhile, and served once
 * it loads, with no admin action.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { promote, registerModelVersion } from '../feedback/model-versions.ts';
import { makeTinyCheckpoint, startTestServer, type TestServer } from './test-support.ts';

const TOKEN = 'registry-retry-admin-token';
let srv: TestServer;
before(async () => {
  srv = await startTestServer({ adminToken: TOKEN, registryPollMs: 50 });
});
after(() => srv.close());

const health = async () => (await (await fetch(`${srv.url}/healthz`)).json()) as Record<string, any>;

test('a champion that fails to load is retried with backoff and reported until it loads', async () => {
  const made = await makeTinyCheckpoint({}, 42);
  const meta = readCheckpointMeta(made);
  const dir = join(mkdtempSync(join(tmpdir(), 'srv-late-')), 'late');
  const id = versionId(dir, meta.sha256);
  const { db } = srv.chat()!.deps.store;
  await registerModelVersion(db, { id, kind: 'policy', checkpoint: dir, stage: meta.stage, sha256: meta.sha256 });
  await promote(db, { alias: 'champion', versionId: id, actor: 'test' }); // the checkpoint is not there yet

  let h = await health();
  for (let i = 0; i < 100 && !h.registry?.pendingLoad; i++) {
    await new Promise((r) => setTimeout(r, 20));
    h = await health();
  }
  assert.equal(h.registry.pendingLoad.versionId, id, JSON.stringify(h));
  assert.equal(h.registry.pendingLoad.code, 'checkpoint_missing');
  assert.ok(h.registry.pendingLoad.attempts >= 1);
  assert.equal(h.modelVersion, srv.model.version, 'the old champion keeps serving');
  const admin = (await (await fetch(`${srv.url}/admin/versions`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as Record<string, any>;
  assert.equal(admin.serving.pendingLoad.versionId, id);

  cpSync(made, dir, { recursive: true }); // the checkpoint arrives
  for (let i = 0; i < 200 && h.modelVersion !== id; i++) {
    await new Promise((r) => setTimeout(r, 25));
    h = await health();
  }
  assert.equal(h.modelVersion, id, 'served after a retry');
  assert.equal(h.registry.pendingLoad, undefined);
  rmSync(dir, { recursive: true, force: true });
});
