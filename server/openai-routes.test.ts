import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { getGeneration } from '../feedback/generations.ts';
import { startTestServer, watchedSteps, type TestServer } from './test-support.ts';

let srv: TestServer;
before(async () => {
  srv = await startTestServer({ maxN: 3 });
});
after(async () => {
  await srv.close();
});

const post = (body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
const user = (content: string) => [{ role: 'user', content }];

/** Parses an SSE body into its `data:` payloads. */
function sse(text: string): string[] {
  return text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6));
}

test('GET /v1/models lists the loaded versions (the champion first), then the aliases with the version each names', async () => {
  const r = await fetch(`${srv.url}/v1/models`);
  const body = (await r.json()) as { object: string; data: { id: string; object: string; version?: string }[] };
  assert.equal(body.object, 'list');
  const v = srv.model.version;
  assert.deepEqual(body.data.map((m) => [m.id, m.object, m.version]), [[v, 'model', undefined], ['champion', 'model', v], ['sft', 'model', v]]);
  const one = (await (await fetch(`${srv.url}/v1/models/sft`)).json()) as { id: string; version: string };
  assert.deepEqual([one.id, one.version], ['sft', v]);
  const missing = await fetch(`${srv.url}/v1/models/gpt-4o`);
  assert.equal(missing.status, 404);
  assert.deepEqual(((await missing.json()) as { error: { code: string; param: string } }).error, { message: 'no model gpt-4o is loaded; GET /v1/models lists the aliases and loaded versions', type: 'not_found_error', code: 'model_not_found', param: 'model' });
});

test('a non-streaming completion has the OpenAI shape, usage, and is stored with its version and parameters', async () => {
  const r = await post({ model: 'anything', messages: [{ role: 'system', content: 'be brief' }, ...user('hello')], max_tokens: 7, temperature: 0.5, top_p: 0.9, seed: 11 });
  assert.equal(r.status, 200);
  const body = (await r.json()) as Record<string, any>;
  assert.equal(body.object, 'chat.completion');
  assert.match(body.id, /^chatcmpl-/);
  assert.equal(body.model, srv.model.version);
  assert.equal(body.choices.length, 1);
  assert.equal(body.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(body.choices[0].finish_reason));
  assert.ok(body.usage.completion_tokens <= 7 && body.usage.prompt_tokens > 0);
  assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);
  const gen = await getGeneration(srv.chat()!.deps.store.db, body.choices[0].message_id);
  assert.equal(gen?.model_version_id, srv.model.version);
  assert.equal(gen?.seed, 11);
  assert.deepEqual([JSON.parse(gen!.params_json).temperature, JSON.parse(gen!.params_json).topP, JSON.parse(gen!.params_json).source], [0.5, 0.9, 'openai']);
});

test('the same seed gives the same completion; max_completion_tokens and n are honoured', async () => {
  const req = { model: 'x', messages: user('the cat'), max_completion_tokens: 6, temperature: 1, seed: 5 };
  const a = (await (await post(req)).json()) as Record<string, any>;
  const b = (await (await post(req)).json()) as Record<string, any>;
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.ok(a.usage.completion_tokens <= 6);
  const many = (await (await post({ ...req, n: 3 })).json()) as Record<string, any>;
  assert.deepEqual(many.choices.map((c: { index: number }) => c.index), [0, 1, 2]);
  assert.equal(new Set(many.choices.map((c: { message_id: string }) => c.message_id)).size, 3);
});

test('a stop string ends the completion before it', async () => {
  const free = (await (await post({ model: 'x', messages: user('hello'), max_tokens: 20, temperature: 0 })).json()) as Record<string, any>;
  const text: string = free.choices[0].message.content;
  const stop = text.slice(3, 5);
  assert.ok(stop.length === 2, `a greedy reply long enough to cut: ${JSON.stringify(text)}`);
  const cut = (await (await post({ model: 'x', messages: user('hello'), max_tokens: 20, temperature: 0, stop })).json()) as Record<string, any>;
  assert.equal(cut.choices[0].message.content, text.slice(0, text.indexOf(stop)));
  assert.equal(cut.choices[0].finish_reason, 'stop');
});

test('streaming sends chat.completion.chunk events whose deltas add up to the text, then usage, then [DONE]', async () => {
  const r = await post({ model: 'x', messages: user('hello'), max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /text\/event-stream/);
  const events = sse(await r.text());
  assert.equal(events[events.length - 1], '[DONE]');
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as Record<string, any>);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0]!.id));
  assert.equal(chunks[0]!.choices[0].delta.role, 'assistant');
  const text = chunks.flatMap((c) => c.choices).map((ch: { delta: { content?: string } }) => ch.delta.content ?? '').join('');
  const finish = chunks.flatMap((c) => c.choices).filter((ch: { finish_reason: string | null }) => ch.finish_reason);
  assert.equal(finish.length, 1);
  const usage = chunks[chunks.length - 1]!;
  assert.deepEqual(usage.choices, []);
  assert.ok(usage.usage.completion_tokens > 0);
  const plain = (await (await post({ model: 'x', messages: user('hello'), max_tokens: 8, temperature: 0 })).json()) as Record<string, any>;
  assert.equal(text, plain.choices[0].message.content, 'streamed and plain greedy replies agree');
});

test('bad requests get 400 with an OpenAI error body and a stable code', async () => {
  const cases: [unknown, string, string | null][] = [
    ['{not json', 'invalid_json', null],
    [{ messages: user('x') }, 'invalid_request', 'model'],
    [{ model: 'x', messages: [] }, 'invalid_request', 'messages'],
    [{ model: 'x', messages: user('x'), temperature: 'hot' }, 'invalid_request', 'temperature'],
    [{ model: 'x', messages: [{ role: 'assistant', content: 'x' }] }, 'invalid_request', 'messages'],
    [{ model: 'x', messages: [{ role: 'tool', content: 'x' }] }, 'invalid_request', 'messages[0].role'],
    [{ model: 'x', messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'image_url' }] }] }, 'invalid_request', 'messages[0].content[1]'],
    [{ model: 'x', messages: user('x'), n: 9 }, 'invalid_request', 'n'],
    [{ model: 'x', messages: user('x'), max_tokens: 100_000 }, 'max_tokens_too_large', 'max_tokens'],
    [{ model: 'x', messages: user('x'), max_completion_tokens: 100_000 }, 'max_tokens_too_large', 'max_completion_tokens'],
    [{ model: 'x', messages: user('lucid '.repeat(300)) }, 'context_length_exceeded', 'messages'],
  ];
  for (const [body, code, param] of cases) {
    const r = await post(body);
    const json = (await r.json()) as { error: { code: string; type: string; message: string; param: string | null } };
    assert.equal(r.status, 400, `${JSON.stringify(body).slice(0, 60)} → ${JSON.stringify(json)}`);
    assert.equal(json.error.code, code);
    assert.equal(json.error.type, 'invalid_request_error');
    assert.equal(json.error.param, param, JSON.stringify(json));
  }
  const big = await post({ model: 'x', messages: user('x'.repeat(srv.config.maxMessageBytes)) });
  assert.equal(big.status, 413);
  assert.equal(((await big.json()) as { error: { code: string } }).error.code, 'message_too_large');
});

/** POSTs `body` to a chat completion in `chunks` pieces with no Content-Length (Transfer-Encoding: chunked). */
function postChunked(body: string, chunks: number): Promise<{ status: number; json: { error?: { code: string }; choices?: unknown[] } }> {
  return new Promise((resolve, reject) => {
    const url = new URL(`${srv.url}/v1/chat/completions`);
    const req = httpRequest({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as never }));
    });
    req.on('error', reject);
    const size = Math.ceil(body.length / chunks);
    for (let i = 0; i < body.length; i += size) req.write(body.slice(i, i + size));
    req.end();
  });
}

test('a body over the limit gets 413 message_too_large whether its length is declared or it comes in chunks; one under it is served either way', async () => {
  const max = srv.config.maxMessageBytes;
  const pad = (bytes: number) => {
    const base = JSON.stringify({ model: 'x', messages: user(''), max_tokens: 2 });
    return JSON.stringify({ model: 'x', messages: user('x'.repeat(bytes - base.length)), max_tokens: 2 });
  };
  const over = pad(max + 1);
  const under = JSON.stringify({ model: 'x', messages: user('lucid means'), max_tokens: 2 });
  assert.equal(Buffer.byteLength(over), max + 1);
  const declared = await post(over);
  assert.equal(declared.status, 413);
  assert.equal(((await declared.json()) as { error: { code: string } }).error.code, 'message_too_large');
  const streamed = await postChunked(over, 7);
  assert.equal(streamed.status, 413);
  assert.equal(streamed.json.error?.code, 'message_too_large');
  // Under the limit: the same reply whichever way the body came.
  const ok = await post(under);
  assert.equal(ok.status, 200, await ok.clone().text());
  assert.equal(((await ok.json()) as { choices: unknown[] }).choices.length, 1);
  const okChunked = await postChunked(under, 5);
  assert.equal(okChunked.status, 200, JSON.stringify(okChunked.json));
  assert.equal(okChunked.json.choices?.length, 1);
});

test('when the queue is full a request gets 429 "overloaded" with Retry-After', async () => {
  // A decode step slowed to ≥ 3 ms keeps the first reply in its slot while the second arrives.
  const tight = await startTestServer({ maxBatch: 1, maxQueue: 0, retryAfterSeconds: 3 }, { model: watchedSteps(srv.model, { busyMs: 3 }) });
  try {
    const ctl = new AbortController();
    const first = fetch(`${tight.url}/v1/chat/completions`, { method: 'POST', signal: ctl.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: user('hi'), max_tokens: 200, temperature: 1, seed: 1, stream: true }) });
    const res = await first;
    const reader = res.body!.getReader();
    await reader.read(); // the first reply is decoding
    const r = await fetch(`${tight.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: user('hi'), max_tokens: 4 }) });
    assert.equal(r.status, 429);
    assert.equal(r.headers.get('retry-after'), '3');
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'overloaded');
    // A vanished client frees its slot.
    ctl.abort();
    await reader.cancel().catch(() => {});
    const chat = tight.chat()!;
    const t0 = Date.now();
    while (chat.deps.scheduler.activeCount > 0 && Date.now() - t0 < 2000) await new Promise((res2) => setTimeout(res2, 5));
    assert.equal(chat.deps.scheduler.activeCount, 0);
    const ok = await fetch(`${tight.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: user('hi'), max_tokens: 4 }) });
    assert.equal(ok.status, 200);
  } finally {
    await tight.close();
  }
});

test('a sampled NUL reaches the client as U+FFFD, as it is stored: what was streamed is what the store holds', async () => {
  const nul = srv.model.tok.encode('\u0000');
  assert.equal(nul.length, 1, 'the byte-level tokenizer has a token for NUL');
  const r = await post({ model: 'x', messages: user('hello'), max_tokens: 3, temperature: 0, stream: true, logit_bias: { [nul[0]!]: 100 } });
  assert.equal(r.status, 200);
  const chunks = sse(await r.text()).filter((e) => e !== '[DONE]').map((e) => JSON.parse(e) as { choices: { delta: { content?: string }; message_id?: string }[] });
  const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
  assert.ok(text.includes('\uFFFD') && !text.includes('\u0000'), JSON.stringify(text));
  const id = chunks.map((c) => c.choices[0]?.message_id).find(Boolean)!;
  const stored = await srv.chat()!.deps.store.db.selectFrom('messages').select('content').where('id', '=', id).executeTakeFirstOrThrow();
  assert.equal(stored.content, text);
});
