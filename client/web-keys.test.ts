/**
 * The web page against a server in keys mode, in headless Chromium: it asks for a key, refuses a
 * wrong one, signs in with the right one (an HttpOnly session cookie, never stored by the page),
 * and chats as the key's user. Skipped like web.test.ts without playwright-core or Chromium,
 * except under CI.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHROMIUM, CHROMIUM_ARGS, playwrightForTests } from './headless-chromium.ts';
import type { BrowserContext } from 'playwright-core';
import { createApiKey } from '../feedback/api-keys.ts';
import { rmDir, startTestServer, type TestServer } from '../server/test-support.ts';


const { pw, skip } = await playwrightForTests();

let srv: TestServer;
let context: BrowserContext;
let userDataDir: string;
let key: string;

before(async () => {
  if (!pw) return;
  srv = await startTestServer({ defaultMaxTokens: 8 }, { modelConfig: { blockSize: 128 } });
  key = (await createApiKey(srv.chat()!.deps.store.db, { userId: 'alice' })).key;
  userDataDir = mkdtempSync(join(tmpdir(), 'chromium-profile-'));
  context = await pw.chromium.launchPersistentContext(userDataDir, { executablePath: CHROMIUM, args: [...CHROMIUM_ARGS], headless: true, timeout: 20_000 });
  context.setDefaultTimeout(15_000);
});

after(async () => {
  await context?.close();
  await srv?.close();
  if (userDataDir) rmDir(userDataDir);
});

test('in keys mode the page asks for a key, refuses a wrong one, and chats as the key\'s user', { skip, timeout: 50_000 }, async () => {
  const page = await context.newPage();
  await page.goto(`${srv.url}/`);
  await page.locator('#key-login').waitFor({ state: 'visible' });
  await page.fill('#api-key', 'rk_wrong');
  await page.click('#key-login button[type="submit"]');
  await page.waitForFunction(() => /not accepted/.test(document.getElementById('key-status')?.textContent ?? ''));
  await page.fill('#api-key', key);
  await page.click('#key-login button[type="submit"]');
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(await page.getAttribute('body', 'data-user'), 'alice');
  assert.equal(await page.isHidden('#key-login'), true);
  const cookies = await context.cookies(srv.url);
  const session = cookies.find((c) => c.name === 'rlhf_session');
  assert.ok(session?.httpOnly && session.sameSite === 'Strict', JSON.stringify(cookies));
  assert.equal(await page.evaluate(() => document.cookie.includes('rlhf_session')), false, 'the page cannot read its session');
  assert.equal(await page.evaluate((k) => JSON.stringify(localStorage).includes(k), key), false, 'the key is not kept by the page');
  await page.fill('#input', 'hello');
  await page.press('#input', 'Enter');
  const bubble = page.locator('.msg.assistant[data-id]').first();
  await bubble.waitFor();
  const replyId = (await bubble.getAttribute('data-id'))!;
  const db = srv.chat()!.deps.store.db;
  const conv = await db.selectFrom('messages as m').innerJoin('conversations as c', 'c.id', 'm.conversation_id').select(['c.user_id', 'c.key_id']).where('m.id', '=', replyId).executeTakeFirstOrThrow();
  assert.equal(conv.user_id, 'alice');
  assert.ok(conv.key_id);
  await page.close();
});
