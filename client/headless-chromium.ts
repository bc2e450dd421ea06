/**
 * Debian's Chromium, headless, driven by playwright-core: where it is, the flags it runs with
 * here, and how the browser tests get it (they fail under CI when it is missing, and are skipped,
 * saying why, elsewhere).
 */
import { existsSync } from 'node:fs';

export const CHROMIUM = '/usr/bin/chromium';
export const CHROMIUM_ARGS: readonly string[] = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** playwright-core for a browser test, or `skip` (the reason) when Chromium or playwright-core is missing; throws under `CI`. */
export async function playwrightForTests(): Promise<{ pw: typeof import('playwright-core'); skip: false } | { pw: undefined; skip: string }> {
  let missing: string | undefined;
  let pw: typeof import('playwright-core') | undefined;
  if (!existsSync(CHROMIUM)) missing = `${CHROMIUM} is missing (apt-get install -y chromium)`;
  else {
    try {
      pw = await import('playwright-core');
    } catch (e) {
      missing = `playwright-core cannot be loaded (npm install -D playwright-core): ${(e as Error).message}`;
    }
  }
  if (missing === undefined && pw) return { pw, skip: false };
  if (process.env.CI) throw new Error(`browser test cannot run under CI: ${missing}`);
  return { pw: undefined, skip: `skipped: ${missing}` };
}
