/**
 * The official `openai` npm client (a dev dependency), pointed at the server, works unchanged.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startTestServer, type TestServer } from './test-support.ts';

let srv: TestServer | undefined;

before(async () => {
  srv = await startTestServer();
});
after(async () => {
  await srv?.close();
});

test('the official openai client lists models and gets a completion, plain and streamed', async () => {
  const client = new OpenAI({ baseURL: `${srv!.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m: { id: string }) => m.id), [srv!.model.version, 'champion', 'sft']);

  const done = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 6, temperature: 0, seed: 1 });
  assert.equal(done.object, 'chat.completion');
  assert.equal(typeof done.choices[0].message.content, 'string');
  assert.ok(done.usage!.total_tokens > 0);

  const stream = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 6, temperature: 0, seed: 1, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage: { completion_tokens: number } | undefined;
  let guard = 0;
  for await (const chunk of stream) {
    if (++guard > 100) break;
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, done.choices[0].message.content);
  assert.equal(usage?.completion_tokens, done.usage!.completion_tokens);

  await assert.rejects(
    client.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: 'x' }], max_tokens: 1_000_000 }),
    (e: { status?: number; code?: string }) => e.status === 400 && e.code === 'max_tokens_too_large',
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: 'lucid '.repeat(300) }] }),
    (e: { status?: number; code?: string; param?: string }) => e.status === 400 && e.code === 'context_length_exceeded' && e.param === 'messages',
  );
});
