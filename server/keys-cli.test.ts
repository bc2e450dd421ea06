import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { findApiKey } from '../feedback/api-keys.ts';
import { openStore } from '../feedback/open-store.ts';
import { KeysConfig, runKeys } from './keys-cli.ts';

test('keys create prints the key once, list shows it without the key, revoke stops it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keys-cli-'));
  const url = `sqlite:${join(dir, 'k.sqlite')}`;
  try {
    const out: string[] = [];
    const err: string[] = [];
    const cfg = (o: Record<string, unknown>) => KeysConfig.parse({ database: url, ...o });
    await runKeys('create', cfg({ user: 'alice', name: 'laptop' }), (l) => out.push(l), (l) => err.push(l));
    const key = out[0]!;
    assert.match(key, /^rk_/);
    assert.ok(!err.join().includes(key), 'the key goes to stdout only');
    out.length = 0;
    await runKeys('list', cfg({}), (l) => out.push(l), () => {});
    assert.equal(out.length, 1);
    assert.match(out[0]!, /alice\tlaptop\trk_.{6}…\tactive/);
    assert.ok(!out[0]!.includes(key));
    const id = out[0]!.split('\t')[0]!;
    await runKeys('revoke', cfg({ id, reason: 'lost', excludeFromTraining: true }), () => {}, (l) => err.push(l));
    assert.match(err[err.length - 1]!, /0 judgements excluded/);
    const store = await openStore({ url });
    assert.equal(await findApiKey(store.db, key), undefined);
    await store.close();
    await assert.rejects(runKeys('frob', cfg({}), () => {}, () => {}), /unknown command/);
    await assert.rejects(runKeys('revoke', cfg({}), () => {}, () => {}), /--id/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('npm run keys -- --help lists the commands and the options as --kebab-case flags', async () => {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'server/keys-cli.ts', '--help'], { cwd: root });
  assert.match(stdout, /create --user alice/);
  assert.match(stdout, /--exclude-from-training/);
});
