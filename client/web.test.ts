/**
 * The web page in real headless Chromium (`/usr/bin/chromium`, driven by playwright-core): chat with
 * a streamed reply, a thumbs-down with a reason, a comparison and a ranking, all found in the store;
 * and the admin view promoting a version and showing it in the promotion log.
 * Without playwright-core or Chromium the tests are skipped, except under CI, where they fail.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHROMIUM, CHROMIUM_ARGS, playwrightForTests } from './headless-chromium.ts';
import type { BrowserContext, Page } from 'playwright-core';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { registerModelVersion } from '../feedback/model-versions.ts';
import { logMetrics, startRun } from '../feedback/runs.ts';
import { makeTinyCheckpoint, rmDir, startTestServer, type TestServer } from '../server/test-support.ts';

const TOKEN = 'web-test-admin-token';

const { pw, skip } = await playwrightForTests();

let srv: TestServer;
let context: BrowserContext;
let userDataDir: string;
let other: string;

before(async () => {
  if (!pw) return;
  srv = await startTestServer({ adminToken: TOKEN, registryPollMs: 50, defaultMaxTokens: 24 }, { modelConfig: { blockSize: 128 } });
  const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'ppo-web');
  cpSync(await makeTinyCheckpoint({ blockSize: 128 }, 99), dir, { recursive: true });
  const meta = readCheckpointMeta(dir);
  other = versionId(dir, meta.sha256);
  const run = await startRun(srv.chat()!.deps.store.db, { kind: 'ppo', config: { lr: 1e-4 } });
  for (let step = 0; step < 5; step++) await logMetrics(srv.chat()!.deps.store.db, run.id, step, { reward: step / 10, kl: step / 100 });
  await registerModelVersion(srv.chat()!.deps.store.db, { id: other, kind: 'policy', checkpoint: dir, stage: meta.stage, sha256: meta.sha256, metrics: { reward: 0.5 } });
  userDataDir = mkdtempSync(join(tmpdir(), 'chromium-profile-'));
  context = await pw.chromium.launchPersistentContext(userDataDir, { executablePath: CHROMIUM, args: [...CHROMIUM_ARGS], headless: true, timeout: 20_000 });
  context.setDefaultTimeout(15_000);
});

after(async () => {
  await context?.close();
  await srv?.close();
  if (userDataDir) rmDir(userDataDir);
});

async function openPage(hash = ''): Promise<Page> {
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${srv.url}/${hash}`);
  await page.waitForSelector('body[data-ready="true"]').catch((e: Error) => {
    throw new Error(`page did not start: ${e.message}; page errors: ${errors.join('; ')}`);
  });
  return page;
}

test('chat: a streamed reply, a thumbs-down with a reason, a comparison and a ranking end up in the store', { skip, timeout: 50_000 }, async () => {
  const page = await openPage();
  const db = srv.chat()!.deps.store.db;
  await page.fill('#input', 'what does lucid mean?');
  await page.press('#input', 'Enter');
  const bubble = page.locator('.msg.assistant[data-id]').first();
  await bubble.waitFor();
  const replyId = (await bubble.getAttribute('data-id'))!;
  const stored = await db.selectFrom('messages').select(['content', 'role', 'parent_id']).where('id', '=', replyId).executeTakeFirstOrThrow();
  assert.equal(stored.role, 'assistant');
  assert.equal(await bubble.locator('.text').textContent(), stored.content);
  const deltas = Number(await bubble.getAttribute('data-deltas'));
  assert.ok(stored.content === '' || deltas >= 1, `reply "${stored.content}" arrived in ${deltas} deltas`);
  // The conversation is listed for later.
  await page.locator('#conversations li').first().waitFor();

  await bubble.locator('[data-testid="thumb-down"]').click();
  await bubble.locator('[data-testid="down-reason"]').selectOption('not_factual');
  await bubble.locator('[data-testid="down-comment"]').fill('wrong sense of the word');
  await bubble.locator('[data-testid="down-submit"]').click();
  await page.waitForFunction(() => /saved/.test(document.querySelector('.msg.assistant [data-testid="feedback-status"]')?.textContent ?? ''));
  const thumbs = await db.selectFrom('thumbs').selectAll().where('message_id', '=', replyId).execute();
  assert.equal(thumbs.length, 1);
  assert.equal(thumbs[0]!.value, 'down');
  assert.equal(thumbs[0]!.reason, 'not_factual');
  assert.equal(thumbs[0]!.comment, 'wrong sense of the word');

  await bubble.locator('[data-testid="compare"]').click();
  await page.locator('#compare-panel button[data-choice="b"]:enabled').waitFor();
  const a = (await page.getAttribute('#compare-panel', 'data-a'))!;
  const b = (await page.getAttribute('#compare-panel', 'data-b'))!;
  await page.click('#compare-panel button[data-choice="b"]');
  await page.waitForFunction(() => /comparison saved: b/.test(document.getElementById('status')?.textContent ?? ''));
  const cmp = await db.selectFrom('comparisons').selectAll().where('a_id', '=', a).where('b_id', '=', b).execute();
  assert.equal(cmp.length, 1);
  assert.equal(cmp[0]!.choice, 'b');
  assert.equal(cmp[0]!.context_id, stored.parent_id);

  // Three replies to the same message now: rank them, moving the last one to the top.
  const rank = page.locator('.msg.assistant [data-testid="rank"]').first();
  await rank.click();
  const items = page.locator('#rank-list li');
  assert.equal(await items.count(), 3);
  const order = await items.evaluateAll((lis) => lis.map((li) => li.getAttribute('data-id')));
  await items.nth(2).locator('[data-testid="rank-up"]').click();
  await page.locator('#rank-list li').nth(1).locator('[data-testid="rank-up"]').click();
  await page.click('#rank-submit');
  await page.waitForFunction(() => /ranking saved/.test(document.getElementById('status')?.textContent ?? ''));
  const ranking = await db.selectFrom('rankings').selectAll().where('context_id', '=', stored.parent_id!).executeTakeFirstOrThrow();
  const ranked = await db.selectFrom('ranking_items').select(['message_id']).where('ranking_id', '=', ranking.id).orderBy('position').execute();
  assert.deepEqual(ranked.map((r) => r.message_id), [order[2], order[0], order[1]]);
  await page.close();
});

test('admin: log in with the token, promote a version, see the promotion log update', { skip, timeout: 50_000 }, async () => {
  const page = await openPage('#admin');
  await page.fill('#admin-token', 'wrong');
  await page.click('#admin-login button[type="submit"]');
  await page.waitForFunction(() => /wrong token/.test(document.getElementById('admin-status')?.textContent ?? ''));
  assert.equal(await page.isHidden('#admin-body'), true);

  // The right token right after a wrong one: the page's login spent one try of the server's
  // wrong-token allowance (5 per address), not one per request of the view (which locked it out).
  await page.fill('#admin-token', TOKEN);
  await page.click('#admin-login button[type="submit"]');
  const promote = page.locator(`tr[data-version="${other}"] [data-testid="promote"]`);
  await promote.waitFor();
  const before = await page.locator('[data-testid="promotion"]').count();
  await promote.click();
  await page.waitForFunction(() => /: done/.test(document.getElementById('admin-status')?.textContent ?? ''), undefined, { timeout: 30_000 });
  const rows = page.locator('[data-testid="promotion"]');
  assert.equal(await rows.count(), before + 1);
  assert.match((await rows.first().textContent())!, new RegExp(`promote.*${other}`));
  assert.match((await page.textContent('[data-testid="serving"]'))!, new RegExp(`champion ${other}`));
  const res = await fetch(`${srv.url}/admin/versions`, { headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal((await res.json()).aliases.champion, other);
  // The thumbs-up rate per version is drawn (a chart with Chart.js installed, else a table).
  assert.match((await page.getAttribute('#feedback-chart', 'data-kind'))!, /^(chart|table)$/);
  // Run metrics over steps: two curves from the run logged in before().
  await page.fill('#run-names', 'reward, kl');
  await page.click('#run-show');
  await page.waitForSelector('#run-chart[data-kind]');
  if ((await page.getAttribute('#run-chart', 'data-kind')) === 'table') assert.equal(await page.locator('#run-chart tbody tr').count(), 10);
  else assert.equal(await page.evaluate(() => (window as unknown as { Chart: { getChart(c: Element): { data: { datasets: unknown[] } } } }).Chart.getChart(document.querySelector('#run-chart canvas')!).data.datasets.length), 2);

  /** Clicks a control and waits for its action to be reported done. */
  const act = async (selector: string): Promise<void> => {
    await page.evaluate(() => (document.getElementById('admin-status')!.textContent = ''));
    await page.click(selector);
    await page.waitForFunction(() => {
      const text = document.getElementById('admin-status')?.textContent ?? '';
      return text !== '' && !text.endsWith('…');
    });
    assert.match((await page.textContent('#admin-status'))!, /: done$/);
  };
  await page.fill('#canary-share', '0.25');
  await act('#canary-set');
  assert.match((await page.textContent('[data-testid="serving"]'))!, /canary 0\.25/);
  await act('#loop-pause');
  assert.match((await page.textContent('[data-testid="serving"]'))!, /loop paused/);
  await act('#loop-resume');
  assert.match((await page.textContent('[data-testid="serving"]'))!, /loop running/);
  await act('#rollback');
  assert.match((await rows.first().textContent())!, /rollback/);
  assert.equal(await rows.count(), before + 2);
  // The token is kept for the tab only.
  assert.equal(await page.evaluate(() => sessionStorage.getItem('rlhf-chat.adminToken')), TOKEN);
  await page.close();
});

test('arena: the admin sets the arena share, a compare shows "hidden" versions, the pick reveals them, and the admin view charts the interval', { skip, timeout: 60_000 }, async () => {
  const champion = (await (await fetch(`${srv.url}/admin/versions`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()).aliases.champion as string;
  const promoted = await fetch(`${srv.url}/admin/promote`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ versionId: other === champion ? srv.model.version : other, alias: 'candidate' }),
  });
  assert.equal(promoted.status, 200, await promoted.clone().text());
  const candidate = (await promoted.json()).promotion.to_version_id as string;

  const admin = await openPage('#admin');
  await admin.fill('#admin-token', TOKEN);
  await admin.click('#admin-login button[type="submit"]');
  await admin.locator('#arena-share').waitFor();
  await admin.fill('#arena-share', '1');
  await admin.evaluate(() => (document.getElementById('admin-status')!.textContent = ''));
  await admin.click('#arena-set');
  await admin.waitForFunction(() => /arena share 1: done/.test(document.getElementById('admin-status')?.textContent ?? ''));
  assert.match((await admin.textContent('[data-testid="serving"]'))!, /arena 1/);
  assert.match((await admin.textContent('[data-testid="arena-summary"]'))!, /^0 judgements/);

  const page = await openPage();
  await page.fill('#input', 'what does lucid mean?');
  await page.press('#input', 'Enter');
  const bubble = page.locator('.msg.assistant[data-id]').first();
  await bubble.waitFor();
  await bubble.locator('[data-testid="compare"]').click();
  await page.locator('#compare-panel button[data-choice="a"]:enabled').waitFor();
  assert.equal(await page.textContent('[data-testid="version-a"]'), 'hidden');
  assert.equal(await page.textContent('[data-testid="version-b"]'), 'hidden');
  const a = (await page.getAttribute('#compare-panel', 'data-a'))!;
  const b = (await page.getAttribute('#compare-panel', 'data-b'))!;
  await page.click('#compare-panel button[data-choice="a"]');
  await page.waitForFunction(() => /comparison saved: a · A was/.test(document.getElementById('status')?.textContent ?? ''));
  const db = srv.chat()!.deps.store.db;
  const truth = await db.selectFrom('generations').select(['message_id', 'model_version_id']).where('message_id', 'in', [a, b]).execute();
  const versionOf = (id: string) => truth.find((g) => g.message_id === id)!.model_version_id;
  assert.deepEqual([await page.textContent('[data-testid="version-a"]'), await page.textContent('[data-testid="version-b"]')], [versionOf(a), versionOf(b)]);
  assert.deepEqual([versionOf(a), versionOf(b)].sort(), [champion, candidate].sort());
  await page.close();

  await admin.evaluate(() => (document.getElementById('admin-status')!.textContent = ''));
  await admin.fill('#arena-share', '0');
  await admin.click('#arena-set');
  await admin.waitForFunction(() => /arena share 0: done/.test(document.getElementById('admin-status')?.textContent ?? ''));
  assert.match((await admin.textContent('[data-testid="arena-summary"]'))!, /^1 judgements .*decision: continue .*at equal length/);
  assert.equal(await admin.locator('#arena-thumbs tbody tr').count(), 2);
  if ((await admin.getAttribute('#arena-chart', 'data-kind')) === 'table') assert.equal(await admin.locator('#arena-chart tbody tr').count(), 5);
  else assert.equal(await admin.evaluate(() => (window as unknown as { Chart: { getChart(c: Element): { data: { datasets: unknown[] } } } }).Chart.getChart(document.querySelector('#arena-chart canvas')!).data.datasets.length), 4);
  await admin.close();
});
