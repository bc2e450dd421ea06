import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { staticRoutes, STATIC_FILES } from './static-routes.ts';

test('the page and its modules are served with their content types', async () => {
  const app = staticRoutes();
  const index = await app.request('/');
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type')!, /^text\/html/);
  assert.match(await index.text(), /<script type="module" src="\/app.js">/);
  for (const [path, type] of [['/app.js', /^text\/javascript/], ['/chat.js', /^text\/javascript/], ['/admin.js', /^text\/javascript/], ['/ws-client.js', /^text\/javascript/], ['/dom.js', /^text\/javascript/], ['/style.css', /^text\/css/]] as const) {
    const r = await app.request(path);
    assert.equal(r.status, 200, path);
    assert.match(r.headers.get('content-type')!, type, path);
  }
});

test('only whitelisted files: traversal and other paths are not served; a missing optional file is 404', async () => {
  const root = mkdtempSync(join(tmpdir(), 'static-'));
  mkdirSync(join(root, 'client/web'), { recursive: true });
  writeFileSync(join(root, 'client/web/index.html'), '<p>hi</p>');
  writeFileSync(join(root, 'secret.txt'), 'secret');
  const app = staticRoutes(root);
  assert.equal(await (await app.request('/')).text(), '<p>hi</p>');
  for (const p of ['/../secret.txt', '/%2e%2e/secret.txt', '/secret.txt', '/client/web/index.html', '/package.json', '/app.js/../../secret.txt']) {
    const r = await app.request(p);
    assert.notEqual(r.status, 200, p);
    assert.doesNotMatch(await r.text(), /secret/, p);
  }
  assert.equal((await app.request('/vendor/chart.umd.js')).status, 404);
  assert.ok(Object.values(STATIC_FILES).every((f) => !f.includes('..')));
});
