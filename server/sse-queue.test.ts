import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { request } from 'node:http';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { sseQueue } from './openai-common.ts';

/** A Node server whose one route streams `lines` through `sseQueue`, all pushed at once, then ends. */
async function sseServer(lines: readonly string[], onAbort: () => void, coalesceMs = 0): Promise<{ url: string; close: () => Promise<void> }> {
  const app = new Hono();
  app.get('/', (c) => {
    const out = sseQueue(c, onAbort, { coalesceMs });
    out.push(lines[0]!);
    const res = out.response();
    setImmediate(() => {
      for (const l of lines.slice(1)) out.push(l);
      out.end();
    });
    return res;
  });
  const server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s as Server));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, close: () => new Promise((r) => server.close(() => r())) };
}

const events = (body: string) => body.split('\n\n').filter(Boolean).map((e) => e.replace(/^data: /, ''));

test('an SSE stream larger than the socket buffer reaches a slow reader whole and in order (the queue waits for drain)', { timeout: 60_000 }, async () => {
  // 12 MB: far more than a loopback socket buffers, so writes report a full buffer and wait.
  const lines = Array.from({ length: 3000 }, (_, i) => `${i} ${'x'.repeat(4000)}`);
  let aborted = 0;
  const srv = await sseServer(lines, () => aborted++);
  try {
    const body = await new Promise<string>((resolve, reject) => {
      request(srv.url, (res) => {
        assert.equal(res.headers['content-type'], 'text/event-stream');
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => {
          chunks.push(d);
          res.pause(); // a slow reader
          setTimeout(() => res.resume(), 1);
        });
        res.on('end', () => resolve(Buffer.concat(chunks).toString()));
        res.on('error', reject);
      })
        .on('error', reject)
        .end();
    });
    const got = events(body);
    assert.equal(got.length, lines.length);
    got.forEach((e, i) => assert.equal(e, lines[i], `event ${i}`));
    assert.equal(aborted, 0, 'a stream that ended was not aborted');
  } finally {
    await srv.close();
  }
});

test('a client that goes mid-stream aborts the queue once, and the server keeps serving', { timeout: 60_000 }, async () => {
  const lines = Array.from({ length: 3000 }, (_, i) => `${i} ${'y'.repeat(4000)}`);
  let aborted = 0;
  const srv = await sseServer(lines, () => aborted++, 2);
  try {
    await new Promise<void>((resolve, reject) => {
      const req = request(srv.url, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => {});
      req.on('close', () => resolve());
      setTimeout(() => reject(new Error('no data within 5 s')), 5000);
      req.end();
    });
    const t0 = Date.now();
    while (aborted === 0 && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 5));
    assert.equal(aborted, 1);
    const again = await fetch(srv.url);
    assert.equal(events(await again.text()).length, lines.length);
    assert.equal(aborted, 1);
  } finally {
    await srv.close();
  }
});
