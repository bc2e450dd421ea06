import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { request } from 'node:http';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { jsonAround, sseQueue, TEXT_SLOT } from './openai-common.ts';

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

test('text deltas queued while a write waits join into one event per head; any other event between them keeps them apart', async () => {
  const app = new Hono();
  const a = jsonAround(JSON.stringify({ choices: [{ index: 0, delta: { content: TEXT_SLOT }, finish_reason: null }] }), TEXT_SLOT);
  const b = jsonAround(JSON.stringify({ choices: [{ index: 1, delta: { content: TEXT_SLOT }, finish_reason: null }] }), TEXT_SLOT);
  app.get('/', (c) => {
    // A long coalescing wait: after the first two writes everything queued goes in the last one.
    const out = sseQueue(c, () => {}, { coalesceMs: 60_000 });
    out.push('role');
    const res = out.response();
    setImmediate(() => {
      out.text(a, 'first');
      setImmediate(() => {
        for (const t of ['He said ', '"hi"', ' \u00e9\n', '\u0000']) out.text(a, t);
        out.text(b, 'other');
        out.text(a, ' again');
        out.push('between');
        out.text(a, ' after');
        out.end();
      });
    });
    return res;
  });
  const server = await new Promise<Server>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s as Server));
  });
  try {
    const body = await (await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`)).text();
    const content = (i: number, text: string) => JSON.stringify({ choices: [{ index: i, delta: { content: text }, finish_reason: null }] });
    assert.deepEqual(events(body), ['role', content(0, 'first'), content(0, 'He said "hi" \u00e9\n\u0000'), content(1, 'other'), content(0, ' again'), 'between', content(0, ' after')]);
  } finally {
    await new Promise((r) => server.close(() => r(undefined)));
  }
});

test('jsonAround splits a JSON text around its last string value: head + JSON.stringify(text) + tail is the JSON with that text', () => {
  const make = (content: string) => JSON.stringify({ id: 'x\u0000"y', model: 'm', choices: [{ index: 3, delta: { content }, logprobs: null, finish_reason: null }] });
  const { head, tail } = jsonAround(make(TEXT_SLOT), TEXT_SLOT);
  for (const t of ['', 'plain', 'quote " and \\ backslash', 'nul \u0000 and \u2028 and emoji \u{1F600}', TEXT_SLOT]) assert.equal(head + JSON.stringify(t) + tail, make(t));
  assert.throws(() => jsonAround('{"a":1}', TEXT_SLOT), /not in the JSON/);
});

test('off Node\'s server (Hono\'s app.request, the fuzzer\'s way in) the queue joins text deltas by the same rule', async () => {
  const app = new Hono();
  const a = jsonAround(JSON.stringify({ choices: [{ index: 0, delta: { content: TEXT_SLOT } }] }), TEXT_SLOT);
  const b = jsonAround(JSON.stringify({ choices: [{ index: 1, delta: { content: TEXT_SLOT } }] }), TEXT_SLOT);
  app.get('/', (c) => {
    const out = sseQueue(c, () => {}, { coalesceMs: 60_000 });
    out.push('role');
    const res = out.response();
    // All queued before the stream's first write: they go out in it.
    for (const t of ['one', ' two', ' "three"']) out.text(a, t);
    out.text(b, 'other');
    out.text(a, ' four');
    out.push('[DONE]');
    out.end();
    return res;
  });
  const res = await app.request('/');
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  const content = (i: number, text: string) => JSON.stringify({ choices: [{ index: i, delta: { content: text } }] });
  assert.deepEqual(events(await res.text()), ['role', content(0, 'one two "three"'), content(1, 'other'), content(0, ' four'), '[DONE]']);
});
