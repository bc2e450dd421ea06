/**
 * The OpenAI API as its users call it, through the official `openai` npm client: log-probabilities
 * in chat completions, text completions as lm-evaluation-harness scores with them, `model`
 * selecting the version that decodes (aliases, version ids, an LRU of versions loaded on demand,
 * the canary), penalties and `logit_bias`, and the fields that are refused.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import OpenAI from 'openai';
import { readCheckpointMeta, versionId } from '../model/checkpoint.ts';
import { promptLogprobs } from '../model/generate.ts';
import { registerModelVersion } from '../feedback/model-versions.ts';
import { getGeneration } from '../feedback/generations.ts';
import { modelBytes } from './model-cache.ts';
import { loadServedModel } from './model-host.ts';
import { makeTinyCheckpoint, startTestServer, watchedSteps, type TestServer } from './test-support.ts';

const TOKEN = 'test-admin-token-0123';
let srv: TestServer;
let client: OpenAI;
/** Two more policies (same shape and tokenizer, other weights), registered but not served. */
let other: string;
let third: string;

async function register(seed: number, name: string): Promise<string> {
  const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), name);
  cpSync(await makeTinyCheckpoint({ blockSize: 128 }, seed), dir, { recursive: true });
  const meta = readCheckpointMeta(dir);
  const id = versionId(dir, meta.sha256);
  await registerModelVersion(srv.chat()!.deps.store.db, { id, kind: 'policy', checkpoint: dir, stage: meta.stage, sha256: meta.sha256 });
  return id;
}

function admin(path: string, body: unknown, method = 'POST'): Promise<Response> {
  return fetch(`${srv.url}/admin${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

before(async () => {
  const model = await loadServedModel(await makeTinyCheckpoint({ blockSize: 128 }));
  // Room for one version loaded on demand, not two.
  srv = await startTestServer({ adminToken: TOKEN, registryPollMs: 50, maxN: 4, modelCacheBytes: Math.floor(modelBytes(model) * 1.5) }, { model });
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
  other = await register(99, 'ppo-1');
  third = await register(98, 'ppo-2');
});
after(async () => srv.close());

const messages = [{ role: 'user' as const, content: 'what does lucid mean?' }];
const text = (bytes: number[][]) => Buffer.from(bytes.flat()).toString('utf8');
type Refusal = { status?: number; code?: string; param?: string | null };
const refused = (code: string, param: string | null) => (e: Refusal) => {
  assert.deepEqual([e.status, e.code, e.param], [400, code, param]);
  return true;
};

test('chat logprobs: each content token with its log-probability, bytes and top_logprobs, the same streamed and not', async () => {
  const req = { model: 'gpt-4o', messages, max_tokens: 10, temperature: 0.7, top_p: 0.9, seed: 3, logprobs: true, top_logprobs: 5 };
  const done = await client.chat.completions.create(req);
  const content = done.choices[0]!.logprobs!.content!;
  assert.ok(content.length > 0);
  assert.equal(text(content.map((t) => t.bytes!)), done.choices[0]!.message.content, 'the tokens are the reply');
  for (const t of content) {
    assert.ok(t.logprob <= 0 && t.top_logprobs.length >= 1 && t.top_logprobs.length <= 5);
    assert.ok(t.top_logprobs.every((a, i) => i === 0 || a.logprob <= t.top_logprobs[i - 1]!.logprob), 'most likely first');
    const self = t.top_logprobs.find((a) => a.token === t.token && a.bytes!.join() === t.bytes!.join());
    if (self) assert.equal(self.logprob, t.logprob);
    else assert.ok(t.logprob <= t.top_logprobs.at(-1)!.logprob, 'a token not among the top ones is less likely than them');
  }
  const stream = await client.chat.completions.create({ ...req, stream: true });
  const streamed: typeof content = [];
  let guard = 0;
  for await (const chunk of stream) {
    if (++guard > 200) break;
    streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
  }
  assert.deepEqual(streamed, content, 'the streamed log-probabilities are those of the plain reply');

  const plain = await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 4 });
  assert.equal(plain.choices[0]!.logprobs, null, 'off unless asked');
  await assert.rejects(client.chat.completions.create({ model: 'x', messages, top_logprobs: 2 }), refused('invalid_request', 'top_logprobs'));
  await assert.rejects(client.chat.completions.create({ model: 'x', messages, logprobs: true, top_logprobs: 21 }), refused('invalid_request', 'top_logprobs'));
});

test('chat logprobs are those of the distribution sampled from: a nucleus renormalised, and a point mass when greedy', async () => {
  // top_p 0.02 keeps a few tokens of the tiny model's flat distribution: their probabilities add up to 1.
  const nucleus = await client.chat.completions.create({ model: 'x', messages, max_tokens: 6, temperature: 1, top_p: 0.02, seed: 8, logprobs: true, top_logprobs: 20 });
  for (const t of nucleus.choices[0]!.logprobs!.content!) {
    if (t.top_logprobs.length === 20) continue; // a nucleus of 20 or more: the sum is over a part only
    const sum = t.top_logprobs.reduce((a, x) => a + Math.exp(x.logprob), 0);
    assert.ok(Math.abs(sum - 1) < 1e-6, `the kept tokens carry all the probability: ${sum}`);
  }
  assert.ok(nucleus.choices[0]!.logprobs!.content!.some((t) => t.top_logprobs.length < 20), 'top_p cut the distribution');
  const greedy = await client.chat.completions.create({ model: 'x', messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
  for (const t of greedy.choices[0]!.logprobs!.content!) assert.deepEqual([t.logprob, t.top_logprobs.length, t.top_logprobs[0]!.logprob], [0, 1, 0]);
});

test('text completions score a prompt as lm-evaluation-harness does: echo, logprobs 1, max_tokens 0 or 1', async () => {
  const prompt = 'the cat sat on the mat. the dog';
  const ids = srv.model.tok.encode(prompt);
  const scored = await client.completions.create({ model: 'gpt-4o', prompt, echo: true, max_tokens: 0, logprobs: 1, temperature: 0, seed: 1234 });
  assert.equal(scored.object, 'text_completion');
  const c = scored.choices[0]!;
  assert.equal(c.text, prompt);
  const lp = c.logprobs!;
  assert.equal(lp.tokens!.length, ids.length);
  assert.equal(lp.tokens!.join(''), prompt);
  assert.equal(lp.token_logprobs![0], null);
  assert.equal(lp.top_logprobs![0], null);
  assert.deepEqual(lp.text_offset, ids.map((_, i) => srv.model.tok.decode(ids.slice(0, i)).length));
  const want = promptLogprobs(srv.model.gpt, ids, 1);
  for (let t = 1; t < ids.length; t++) {
    assert.ok(Math.abs(lp.token_logprobs![t]! - want[t]!.logprob) < 1e-5, `token ${t} scored by the model`);
    assert.deepEqual(Object.values(lp.top_logprobs![t]!), [want[t]!.top[0]!.logprob]);
  }
  assert.deepEqual(scored.usage, { prompt_tokens: ids.length, completion_tokens: 0, total_tokens: ids.length });

  const one = await client.completions.create({ model: 'gpt-4o', prompt, echo: true, max_tokens: 1, logprobs: 1, temperature: 0, seed: 1234 });
  const lp1 = one.choices[0]!.logprobs!;
  assert.equal(lp1.tokens!.length, ids.length + 1);
  assert.deepEqual(lp1.token_logprobs!.slice(0, ids.length), lp.token_logprobs);
  assert.ok(one.choices[0]!.text.startsWith(prompt));
  // lm-eval's is_greedy: the generated token's log-probability is the best of its top_logprobs.
  assert.equal(lp1.token_logprobs!.at(-1), Math.max(...Object.values(lp1.top_logprobs!.at(-1)!)));
  assert.equal(lp1.text_offset!.at(-1), prompt.length);
});

test('text completions: several prompts (strings or token ids), n, seed, stop, and streaming', async () => {
  const tok = srv.model.tok;
  const many = await client.completions.create({ model: 'x', prompt: ['the cat', 'what does'], n: 2, max_tokens: 5, temperature: 1, seed: 4 });
  assert.deepEqual(many.choices.map((c) => c.index), [0, 1, 2, 3]);
  const again = await client.completions.create({ model: 'x', prompt: ['the cat', 'what does'], n: 2, max_tokens: 5, temperature: 1, seed: 4 });
  assert.deepEqual(again.choices.map((c) => c.text), many.choices.map((c) => c.text), 'same seed, same texts');
  assert.equal(many.usage!.prompt_tokens, tok.encode('the cat').length + tok.encode('what does').length);
  const byIds = await client.completions.create({ model: 'x', prompt: tok.encode('the cat'), echo: true, max_tokens: 0 });
  assert.equal(byIds.choices[0]!.text, 'the cat');

  const free = await client.completions.create({ model: 'x', prompt: 'the dog', max_tokens: 20, temperature: 0 });
  const stop = free.choices[0]!.text.slice(3, 5);
  assert.equal(stop.length, 2, `a greedy completion long enough to cut: ${JSON.stringify(free.choices[0]!.text)}`);
  const cut = await client.completions.create({ model: 'x', prompt: 'the dog', max_tokens: 20, temperature: 0, stop });
  assert.equal(cut.choices[0]!.text, free.choices[0]!.text.slice(0, free.choices[0]!.text.indexOf(stop)));
  assert.equal(cut.choices[0]!.finish_reason, 'stop');

  const req = { model: 'x', prompt: 'the dog', max_tokens: 8, temperature: 1, seed: 9, echo: true, logprobs: 2 };
  const whole = await client.completions.create(req);
  const stream = await client.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let streamed = '';
  const tokens: string[] = [];
  const finish: (string | null)[] = [];
  let usage: { completion_tokens: number } | undefined;
  let guard = 0;
  for await (const chunk of stream) {
    if (++guard > 200) break;
    for (const ch of chunk.choices) {
      streamed += ch.text;
      tokens.push(...(ch.logprobs?.tokens ?? []));
      if (ch.finish_reason) finish.push(ch.finish_reason);
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(streamed, whole.choices[0]!.text);
  assert.deepEqual(tokens, whole.choices[0]!.logprobs!.tokens);
  assert.deepEqual(finish, [whole.choices[0]!.finish_reason]);
  assert.equal(usage?.completion_tokens, whole.usage!.completion_tokens);

  await assert.rejects(client.completions.create({ model: 'x', prompt: [tok.vocabSize + 5] }), refused('invalid_request', 'prompt'));
  await assert.rejects(client.completions.create({ model: 'x', prompt: ['fine', 'lucid '.repeat(200)], max_tokens: 1 }), refused('context_length_exceeded', 'prompt[1]'));
  await assert.rejects(client.completions.create({ model: 'x', prompt: 'x', max_tokens: 100_000 }), refused('max_tokens_too_large', 'max_tokens'));
});

test('logit_bias forces or bans tokens, penalties curb repetition, and both are validated', async () => {
  const tok = srv.model.tok;
  const fox = tok.encode(' the')[0]!;
  const forced = await client.completions.create({ model: 'x', prompt: 'the cat', max_tokens: 5, temperature: 1, seed: 2, logit_bias: { [fox]: 100 }, logprobs: 0 });
  assert.deepEqual(forced.choices[0]!.logprobs!.tokens, Array(5).fill(' the'));
  // Banned by id: the greedy reply's first token (found by its bytes) never comes back.
  const greedy = await client.chat.completions.create({ model: 'x', messages, max_tokens: 10, temperature: 0, logprobs: true });
  const firstBytes = greedy.choices[0]!.logprobs!.content![0]!.bytes!.join();
  const firstId = Array.from({ length: tok.vocabSize }, (_, id) => id).find((id) => Array.from(tok.bytesOf(id)).join() === firstBytes)!;
  const banned = await client.chat.completions.create({ model: 'x', messages, max_tokens: 10, temperature: 0, logprobs: true, logit_bias: { [firstId]: -100 } });
  assert.ok(banned.choices[0]!.logprobs!.content!.every((t) => t.bytes!.join() !== firstBytes), `token ${firstId} never sampled`);
  assert.notEqual(banned.choices[0]!.message.content, greedy.choices[0]!.message.content);
  const count = (r: { choices: { logprobs: { tokens?: string[] } | null }[] }) => r.choices[0]!.logprobs!.tokens!.filter((t) => t === ' the').length;
  const biased = { model: 'x', prompt: 'the cat', max_tokens: 12, temperature: 0, logprobs: 0, logit_bias: { [fox]: 5 } };
  const repeats = await client.completions.create(biased);
  const penalised = await client.completions.create({ ...biased, frequency_penalty: 2, presence_penalty: 2 });
  assert.ok(count(repeats) > 1 && count(penalised) < count(repeats), `${count(penalised)} < ${count(repeats)}`);
  const chat = await client.chat.completions.create({ model: 'x', messages, max_tokens: 4, temperature: 1, seed: 1, logit_bias: { [fox]: 100 }, logprobs: true });
  assert.deepEqual(chat.choices[0]!.logprobs!.content!.map((t) => t.token), Array(4).fill(' the'));

  await assert.rejects(client.chat.completions.create({ model: 'x', messages, presence_penalty: 2.5 }), refused('invalid_request', 'presence_penalty'));
  await assert.rejects(client.chat.completions.create({ model: 'x', messages, frequency_penalty: -3 }), refused('invalid_request', 'frequency_penalty'));
  await assert.rejects(client.chat.completions.create({ model: 'x', messages, logit_bias: { [fox]: 101 } }), refused('invalid_request', `logit_bias.${fox}`));
  await assert.rejects(client.chat.completions.create({ model: 'x', messages, logit_bias: { [tok.vocabSize]: 1 } }), refused('invalid_request', 'logit_bias'));
  await assert.rejects(client.completions.create({ model: 'x', prompt: 'x', logit_bias: { word: 1 } }), (e: Refusal) => e.status === 400 && e.code === 'invalid_request' && e.param!.startsWith('logit_bias'));
});

test('fields the model cannot honour are refused with unsupported_parameter naming the field; ones that ask for nothing pass', async () => {
  const tool = { type: 'function' as const, function: { name: 'f', parameters: { type: 'object', properties: {} } } };
  const refusedChat: [string, unknown][] = [
    ['tools', [tool]],
    ['tool_choice', 'auto'],
    ['parallel_tool_calls', true],
    ['functions', [{ name: 'f', parameters: {} }]],
    ['function_call', 'auto'],
    ['response_format', { type: 'json_object' }],
    ['modalities', ['text', 'audio']],
    ['audio', { voice: 'alloy', format: 'mp3' }],
    ['store', false],
    ['metadata', { k: 'v' }],
    ['reasoning_effort', 'low'],
    ['service_tier', 'flex'],
    ['best_of', 2],
    ['some_future_field', 1],
  ];
  for (const [field, value] of refusedChat) {
    await assert.rejects(client.chat.completions.create({ model: 'x', messages, max_tokens: 2, [field]: value } as never), refused('unsupported_parameter', field), field);
  }
  for (const [field, value] of [['suffix', 'end'], ['best_of', 3], ['tools', [tool]], ['odd', true]] as const) {
    await assert.rejects(client.completions.create({ model: 'x', prompt: 'x', max_tokens: 2, [field]: value } as never), refused('unsupported_parameter', field), field);
  }
  const toolHistory = [
    { role: 'user' as const, content: 'weather?' },
    { role: 'assistant' as const, content: null, tool_calls: [{ id: 'c1', type: 'function' as const, function: { name: 'f', arguments: '{}' } }] },
    { role: 'user' as const, content: 'and?' },
  ];
  await assert.rejects(client.chat.completions.create({ model: 'x', messages: toolHistory, max_tokens: 2 }), refused('unsupported_parameter', 'messages[1].tool_calls'));
  const fine = await client.chat.completions.create({ model: 'x', messages, max_tokens: 2, tools: [], tool_choice: 'none', response_format: { type: 'text' }, store: true, user: 'ignored' } as never);
  assert.equal((fine as { object: string }).object, 'chat.completion');
});

test('model selects the version that decodes: aliases, registered ids (loaded on demand, LRU-bounded), anything else the champion', async () => {
  const champion = srv.model.version;
  const db = srv.chat()!.deps.store.db;
  const ask = async (model: string) => {
    const r = await client.chat.completions.create({ model, messages, max_tokens: 3, temperature: 0 });
    const gen = await getGeneration(db, (r.choices[0] as unknown as { message_id: string }).message_id);
    assert.equal(gen?.model_version_id, r.model, 'the stored reply names the same version');
    assert.equal(r.system_fingerprint, r.model);
    return r.model;
  };
  assert.equal(await ask('gpt-4o'), champion);
  assert.equal(await ask('champion'), champion);
  assert.equal(await ask('sft'), champion);
  assert.equal(await ask(other), other);
  const completion = await client.completions.create({ model: other, prompt: 'the cat', max_tokens: 2 });
  assert.equal(completion.model, other);
  const listed = async () => (await client.models.list()).data.map((m) => m.id);
  assert.deepEqual(await listed(), [champion, other, 'champion', 'sft']);
  // The budget holds one version loaded on demand: loading the third evicts the other, whose
  // weights are freed (same shape: as many tensors after as before).
  const tensors = tf.memory().numTensors;
  assert.equal(await ask(third), third);
  assert.deepEqual(await listed(), [champion, third, 'champion', 'sft']);
  assert.equal(tf.memory().numTensors, tensors);
  assert.equal(await ask(other), other, 'an evicted version is loaded again');
  await assert.rejects(client.chat.completions.create({ model: 'candidate', messages }), (e: Refusal) => e.status === 404 && e.code === 'model_not_found' && e.param === 'model');
  const reward = 'reward-000000000001';
  await registerModelVersion(db, { id: reward, kind: 'reward', checkpoint: srv.model.dir });
  await assert.rejects(client.chat.completions.create({ model: reward, messages }), (e: Refusal) => e.status === 409 && e.code === 'not_a_policy' && e.param === 'model');
});

test('under a canary the response names the candidate that decoded it, streamed and not', async () => {
  assert.equal((await admin('/promote', { versionId: other, alias: 'candidate' })).status, 200);
  assert.equal((await admin('/canary', { share: 1 }, 'PUT')).status, 200);
  try {
    const done = await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 3 });
    assert.equal(done.model, other);
    assert.equal((await getGeneration(srv.chat()!.deps.store.db, (done.choices[0] as unknown as { message_id: string }).message_id))?.model_version_id, other);
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 3, stream: true });
    const models = new Set<string>();
    for await (const chunk of stream) models.add(chunk.model);
    assert.deepEqual([...models], [other]);
    assert.equal(await client.chat.completions.create({ model: 'champion', messages, max_tokens: 2 }).then((r) => r.model), srv.model.version, 'naming the champion skips the canary');
    assert.equal(await client.chat.completions.create({ model: 'candidate', messages, max_tokens: 2 }).then((r) => r.model), other);
  } finally {
    await admin('/canary', { share: 0 }, 'PUT');
  }
});

test('during a hot swap a stream in flight names the version it started on, and the next request the new champion', async () => {
  // A decode step slowed to ≥ 2 ms keeps the stream decoding while the promotion swaps the champion.
  const base = await loadServedModel(await makeTinyCheckpoint({ blockSize: 128 }));
  const slow = await startTestServer({ adminToken: TOKEN, registryPollMs: 50 }, { model: watchedSteps(base, { busyMs: 2 }) });
  try {
    const dir = join(mkdtempSync(join(tmpdir(), 'srv-ckpt-')), 'ppo-3');
    cpSync(await makeTinyCheckpoint({ blockSize: 128 }, 97), dir, { recursive: true });
    const meta = readCheckpointMeta(dir);
    const next = versionId(dir, meta.sha256);
    const db = slow.chat()!.deps.store.db;
    await registerModelVersion(db, { id: next, kind: 'policy', checkpoint: dir, stage: meta.stage, sha256: meta.sha256 });
    const api = new OpenAI({ baseURL: `${slow.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
    // Loaded on demand first: the promotion below takes that copy out of the cache instead of loading another.
    assert.equal((await api.chat.completions.create({ model: next, messages, max_tokens: 2 })).model, next);
    const copy = (await slow.chat()!.deps.registry!.listing!()).loaded.find((m) => m.version === next);
    assert.ok(copy);
    const stream = await api.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 60, temperature: 1, seed: 5, stream: true, logit_bias: { [base.tok.specialId('<|end|>')]: -100 } });
    const models = new Set<string>();
    let messageId: string | undefined;
    let promoted: Response | undefined;
    let guard = 0;
    for await (const chunk of stream) {
      if (++guard > 200) break;
      models.add(chunk.model);
      messageId ??= (chunk.choices[0] as { message_id?: string } | undefined)?.message_id;
      if (!promoted && chunk.choices[0]?.delta?.content) {
        promoted = await fetch(`${slow.url}/admin/promote`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ versionId: next, reason: 'test' }) });
        const answer = await promoted.json();
        assert.equal(promoted.status, 200, JSON.stringify(answer));
        const serving = answer.serving;
        assert.equal(serving.champion, next);
        assert.ok(serving.liveVersions.includes(base.version), 'the stream was still decoding at the swap');
      }
    }
    assert.deepEqual([...models], [base.version]);
    assert.equal((await getGeneration(db, messageId!))?.model_version_id, base.version);
    const after = await api.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 2 });
    assert.equal(after.model, next);
    assert.equal(slow.chat()!.model, copy, 'the champion is the copy loaded on demand');
    assert.deepEqual((await api.models.list()).data.map((m) => m.id), [next, 'champion', 'sft']);
  } finally {
    await slow.close();
  }
});

test('streamed deltas that wait for one write (deltaCoalesceMs) join into one chunk, for chat and text completions; with logprobs, or at 0, a chunk per token', async () => {
  const end = srv.model.tok.specialId('<|end|>');
  const streamed = async (api: OpenAI, kind: 'chat' | 'text', logprobs = false) => {
    // Greedy, the end of turn banned: the reply runs to max_tokens.
    const common = { model: 'x', max_tokens: 24, temperature: 0, logit_bias: { [end]: -100 }, stream: true as const, stream_options: { include_usage: true } };
    const stream = kind === 'chat' ? await api.chat.completions.create({ ...common, messages, logprobs }) : await api.completions.create({ ...common, prompt: 'the dog', ...(logprobs ? { logprobs: 0 } : {}) });
    let text = '';
    let chunks = 0;
    let tokens = 0;
    for await (const chunk of stream as AsyncIterable<{ choices: { delta?: { content?: string | null }; text?: string; logprobs?: { content?: unknown[] | null; tokens?: string[] } | null }[]; usage?: { completion_tokens: number } | null }>) {
      const ch = chunk.choices[0];
      const piece = ch?.delta?.content ?? ch?.text ?? '';
      if (piece) chunks++;
      text += piece;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
    return { text, chunks, tokens };
  };
  // One decode step per turn, so each token comes to the door as a delta of its own (in slices,
  // the scheduler already hands a reply's tokens of a slice over as one delta).
  const held = await startTestServer({ deltaCoalesceMs: 10_000, decodeSliceMs: 0 }, { model: srv.model });
  const each = await startTestServer({ deltaCoalesceMs: 0, decodeSliceMs: 0 }, { model: srv.model });
  try {
    const heldApi = new OpenAI({ baseURL: `${held.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
    const eachApi = new OpenAI({ baseURL: `${each.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
    for (const kind of ['chat', 'text'] as const) {
      const a = await streamed(heldApi, kind);
      const b = await streamed(eachApi, kind);
      const c = await streamed(heldApi, kind, true);
      assert.equal(a.tokens, 24, `${kind}: the reply ran to max_tokens`);
      assert.equal(a.text, b.text, `${kind}: the same text either way`);
      assert.equal(c.text, b.text, `${kind}: the same text with logprobs`);
      // The first two writes go at once (chat: the role chunk, then the first text; text: two texts).
      const first = kind === 'chat' ? 1 : 2;
      assert.ok(a.chunks <= first + 1, `${kind}: ${a.chunks} content chunks for ${a.tokens} tokens: ${first} at once, the rest joined at the end`);
      assert.ok(b.chunks >= b.tokens / 2, `${kind}: ${b.chunks} content chunks for ${b.tokens} tokens without coalescing`);
      assert.ok(c.chunks >= c.tokens / 2, `${kind}: ${c.chunks} content chunks for ${c.tokens} tokens with logprobs (a chunk carries its tokens' logprobs)`);
    }
  } finally {
    await held.close();
    await each.close();
  }
});
