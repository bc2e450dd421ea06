/**
 * The web page: a fixed whitelist of files from `client/web/` (plain HTML, ES modules, CSS, served
 * as they are) plus the chart library's UMD build from `node_modules`. Only the listed paths are
 * served, so no request can reach another file. A missing optional file (the chart library before
 * it is installed) answers 404, and the page falls back to tables.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Hono } from 'hono';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
};

/** URL path → file path relative to the repository root. */
export const STATIC_FILES: Readonly<Record<string, string>> = {
  '/': 'client/web/index.html',
  '/index.html': 'client/web/index.html',
  '/app.js': 'client/web/app.js',
  '/chat.js': 'client/web/chat.js',
  '/admin.js': 'client/web/admin.js',
  '/ws-client.js': 'client/web/ws-client.js',
  '/dom.js': 'client/web/dom.js',
  '/style.css': 'client/web/style.css',
  '/vendor/chart.umd.js': 'node_modules/chart.js/dist/chart.umd.js',
};

export function staticRoutes(root = ROOT): Hono {
  const app = new Hono();
  for (const [urlPath, file] of Object.entries(STATIC_FILES)) {
    const type = TYPES[file.slice(file.lastIndexOf('.') + 1)] ?? 'application/octet-stream';
    app.get(urlPath, async (c) => {
      let body: Buffer;
      try {
        body = await readFile(`${root}/${file}`);
      } catch {
        return c.json({ error: { message: `${urlPath} is not available`, type: 'not_found_error', code: 'not_found', param: null } }, 404);
      }
      return c.body(new Uint8Array(body), 200, {
        'Content-Type': type,
        'Cache-Control': 'no-cache',
        'X-Content-Type-Options': 'nosniff',
      });
    });
  }
  return app;
}
