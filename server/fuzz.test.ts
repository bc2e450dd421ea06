/**
 * Property-based fuzzing (fast-check) of both doors of the server: the WebSocket protocol and
 * every HTTP route.
 *
 * What is generated: messages of every client type with valid and unknown ids, the same messages
 * mutated (a field replaced by any JSON value, or an extra field), random JSON, text that is not
 * JSON, binary frames, frames over `maxMessageBytes`; sequences of those sent without waiting, with
 * the socket closed (or terminated) mid-stream; HTTP requests to every route (and unknown ones) with
 * every method, right/wrong/missing bearer tokens, upgrades with any Origin, cookie, key and path, JSON/text/no content type, and mutated, random
 * or oversized bodies.
 *
 * What must hold, for every case:
 *  1. The process survives: no uncaught exception, no unhandled rejection, no `internal_error`.
 *  2. Every answer is documented: each WebSocket message has a known `type`; each error's `code`
 *     is one of the codes of `server/errors.ts`, the feedback store and the README's error tables
 *     (`DOCUMENTED` below), and an HTTP error's status is that code's status; a frame the protocol
 *     parser refuses gets exactly the parser's code; each request gets its terminal answer
 *     (`pong`, `conversation`, `reply`, `candidates`, `feedback_ack` or `error`).
 *  3. Nothing stays behind: after the run no sequence is decoding, and (session cache cleared) the
 *     tensor count is back to its value before the run and the heap after a full GC is within
 *     `HEAP_BOUND` of it.
 *
 * Size: `FUZZ_RUNS` cases in total (default 5,500: about 2,400 single WebSocket frames, 500
 * WebSocket sequences, 220 WebSocket upgrades with any Origin, cookie, key and path, 1,300 HTTP
 * requests in local mode and 1,100 once an API key exists), about 15–40 s on two cores.
 * `FUZZ_SEED` replays a run.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import fc from 'fast-check';
import WebSocket from 'ws';
import type { Hono } from 'hono';
import * as tf from '@tensorflow/tfjs-core';
import { createApp } from './app.ts';
import type { ModelRegistry } from './model-registry.ts';
import { Auth, Meter } from './auth.ts';
import { createApiKey } from '../feedback/api-keys.ts';
import { CHOICES, THUMB_REASONS } from '../feedback/judgement-input.ts';
import { parseClientMessage } from './ws-protocol.ts';
import { startTestServer, TestClient, type TestServer } from './test-support.ts';

const TOTAL = Number(process.env.FUZZ_RUNS ?? 5500);
const SEED = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : undefined;
const RUNS = { frames: Math.round(TOTAL * 0.43), sequences: Math.round(TOTAL * 0.09), upgrades: Math.round(TOTAL * 0.04), http: Math.round(TOTAL * 0.24), httpKeys: Math.round(TOTAL * 0.2) };
const MAX_BYTES = 16 * 1024;
const TOKEN = 'fuzz-admin-token-0123456789abcdefghijklmnop';
const HEAP_BOUND = 48 * 1024 * 1024;

/**
 * Every error code a client may see, with its HTTP status where it has one: `server/errors.ts`,
 * the feedback store's codes (`feedback/errors.ts`) and the README's error and admin tables.
 * `internal_error` is documented too, but as a bug: the fuzzer treats it as a failure.
 */
const DOCUMENTED: Record<string, number | undefined> = {
  invalid_json: 400,
  invalid_request: 400,
  unknown_type: undefined,
  binary_not_supported: undefined,
  message_too_large: 413,
  prompt_too_long: 400,
  context_length_exceeded: 400,
  unsupported_parameter: 400,
  model_too_large: 409,
  max_tokens_too_large: 400,
  rate_limited: 429,
  overloaded: 429,
  not_ready: 503,
  not_found: 404,
  unknown_conversation: 404,
  unknown_request: undefined,
  duplicate_request: 409,
  busy: 409,
  model_not_found: 404,
  cancelled: 499,
  unauthorized: 401,
  admin_disabled: 404,
  not_a_policy: 409,
  version_mismatch: 409,
  checkpoint_corrupt: undefined,
  checkpoint_missing: undefined,
  unknown_model_version: 404,
  unknown_alias: 404,
  unknown_run: 404,
  nothing_to_roll_back: 409,
  unsupported_media_type: 415,
  store_unavailable: 503,
  invalid_api_key: 401,
  forbidden: 403,
  origin_not_allowed: 403,
  too_many_connections: 429,
  unknown_api_key: 404,
  invalid_input: 400,
  unknown_message: 404,
  not_assistant_message: 400,
  conversation_mismatch: 400,
  context_mismatch: 400,
  duplicate_candidate: 400,
  too_few_candidates: 400,
  too_many_candidates: 400,
  invalid_choice: 400,
  invalid_thumb: 400,
  invalid_reason: 400,
  comment_too_long: 400,
  idempotency_conflict: 400,
  duplicate_id: 400,
};
const SERVER_TYPES = new Set(['ready', 'conversation', 'reply_start', 'delta', 'reply', 'candidates', 'feedback_ack', 'pong', 'error']);
const CLOSE_CODES = new Set([1000, 1001, 1005, 1006, 1008, 1009]);

let srv: TestServer;
let app: Hono;
let auth: Auth;
/** The API key made for the keys-mode property (empty before). */
let apiKey = '';
const problems: string[] = [];
const onRejection = (err: unknown) => problems.push(`unhandled rejection: ${String((err as Error)?.stack ?? err)}`);
const onException = (err: unknown) => problems.push(`uncaught exception: ${String((err as Error)?.stack ?? err)}`);
const consoleError = console.error;
const ids = { conversations: [] as string[], users: [] as string[], assistants: [] as string[], contexts: [] as string[], version: '' };
let baseline: { tensors: number; heap: number };
/** What the cases got (reported as test diagnostics, for the README's figures). */
const outcomes = { frames: new Map<string, number>(), sequences: new Map<string, number>(), upgrades: new Map<string, number>(), http: new Map<string, number>(), httpKeys: new Map<string, number>() };
const count = (m: Map<string, number>, k: string, n = 1) => m.set(k, (m.get(k) ?? 0) + n);
const summary = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${v}`).join(', ');

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

function checkCode(code: unknown, where: string): void {
  if (typeof code !== 'string' || !Object.hasOwn(DOCUMENTED, code)) problems.push(`${where}: undocumented code ${JSON.stringify(code)}`);
}

/** Checks one server message; returns it. */
function checkServerMessage(m: Record<string, unknown>, where: string): Record<string, unknown> {
  if (!SERVER_TYPES.has(String(m.type))) problems.push(`${where}: unknown server message type ${JSON.stringify(m.type)}`);
  if (m.type === 'error') checkCode(m.code, where);
  return m;
}

before(async () => {
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  console.error = (...args: unknown[]) => {
    problems.push(`console.error: ${args.map(String).join(' ').slice(0, 500)}`);
  };
  srv = await startTestServer({
    maxMessageBytes: MAX_BYTES,
    maxTokens: 8,
    defaultMaxTokens: 4,
    maxN: 2,
    messagesPerSecond: 1_000_000,
    floodCloseAfter: 1_000_000,
    requestsPerMinute: 1_000_000,
    judgementsPerMinute: 1_000_000,
    authFailuresPerMinute: 1_000_000,
    sessionCacheBytes: 512 * 1024,
    adminToken: TOKEN,
  });
  const chat = srv.chat()!;
  const registry = chat.deps.registry as ModelRegistry; // the server passes the whole registry
  const config = srv.config;
  auth = new Auth({ store: () => chat.deps.store, config });
  app = createApp({ chat: srv.chat, config, metrics: srv.metrics, auth, meter: new Meter(config), registry: () => registry, admin: { token: TOKEN, registry: () => registry, store: () => chat.deps.store, log: () => {}, trustProxy: true } });
  ids.version = chat.model.version;
  // Real ids for the generators: two conversations, their messages and a compared pair.
  const c = await connectAsFuzzer();
  for (let k = 0; k < 2; k++) {
    const conv = await c.request({ type: 'start', system: 'be brief' }, (m) => m.type === 'conversation');
    const id = String(conv.conversationId);
    ids.conversations.push(id);
    const r = await c.request({ type: 'user_message', requestId: `s${k}`, conversationId: id, content: 'what does lucid mean?' }, (m) => m.requestId === `s${k}` && m.type === 'reply');
    ids.assistants.push(String(r.messageId));
    ids.users.push(String(r.parentId));
    const cmp = await c.request({ type: 'compare', requestId: `c${k}`, conversationId: id, content: 'again' }, (m) => m.requestId === `c${k}` && m.type === 'candidates');
    ids.assistants.push(...(cmp.messageIds as string[]));
    ids.contexts.push(String(cmp.contextId));
  }
  c.close();
  await settle();
  baseline = measure();
});

after(async () => {
  console.error = consoleError;
  process.off('unhandledRejection', onRejection);
  process.off('uncaughtException', onException);
  await srv?.close();
});

/** The anonymous browser cookie of the one user who owns the conversations the generators name. */
let fuzzerCookie: string | undefined;
/** A socket speaking as that user (identity comes from the upgrade's cookie, never from a message). */
async function connectAsFuzzer(): Promise<TestClient> {
  const c = await TestClient.connect(srv.wsUrl, fuzzerCookie ? { Cookie: fuzzerCookie } : {});
  fuzzerCookie ??= c.cookie;
  await c.request({ type: 'start', requestId: 'identity' }, (m) => m.requestId === 'identity'); // within the start timeout
  return c;
}

/** Waits until nothing decodes, then empties the session cache (its KV caches are tensors). */
async function settle(): Promise<void> {
  const chat = srv.chat()!;
  const t0 = Date.now();
  while ((chat.deps.scheduler.activeCount > 0 || chat.deps.scheduler.queueDepth > 0) && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 10));
  assert.equal(chat.deps.scheduler.activeCount, 0, 'a sequence is still decoding long after its socket closed');
  chat.deps.sessions.clear();
}

function measure(): { tensors: number; heap: number } {
  gc();
  gc();
  return { tensors: tf.memory().numTensors, heap: process.memoryUsage().heapUsed };
}

// ------------------------------------------------------------------ generators

const text = (max = 40) => fc.string({ unit: 'binary', maxLength: max });
const nonEmpty = (max = 40) => fc.string({ unit: 'binary', minLength: 1, maxLength: max });
type IdKind = 'conversations' | 'users' | 'assistants' | 'contexts';
/** An id: mostly a real one of the right kind, sometimes a real one of another kind, a well-formed unknown one, or any string. */
const idOf = (...kinds: IdKind[]) =>
  fc.oneof(
    { weight: 12, arbitrary: fc.constantFrom(...kinds).chain((k) => fc.nat().map((i) => ids[k][i % ids[k].length]!)) },
    { weight: 2, arbitrary: fc.constantFrom<IdKind>('conversations', 'users', 'assistants', 'contexts').chain((k) => fc.nat().map((i) => ids[k][i % ids[k].length]!)) },
    { weight: 1, arbitrary: fc.stringMatching(/^[0-9A-HJKMNP-TV-Z]{26}$/) },
    { weight: 1, arbitrary: text(70) },
  );
const idArb = idOf('conversations', 'users', 'assistants', 'contexts');
const convId = idOf('conversations');
const replyId = idOf('assistants');
const userMsgId = idOf('users', 'contexts');
const requestIdArb = fc.oneof({ weight: 4, arbitrary: fc.uuid() }, { weight: 1, arbitrary: text(70) });
/** Mostly within the protocol's bounds, sometimes outside them. */
const sampling = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record(
      { temperature: fc.double({ min: 0, max: 2, noNaN: true }), topP: fc.double({ min: 0.05, max: 1, noNaN: true }), topK: fc.integer({ min: 0, max: 100 }), maxTokens: fc.integer({ min: 1, max: 8 }), seed: fc.nat(), stop: fc.array(nonEmpty(8), { maxLength: 4 }) },
      { requiredKeys: [] },
    ),
  },
  {
    weight: 1,
    arbitrary: fc.record(
      { temperature: fc.double({ min: -1, max: 3 }), topP: fc.double({ min: -0.5, max: 1.5 }), topK: fc.integer({ min: -5, max: 200_000 }), maxTokens: fc.integer({ min: -2, max: 12 }), seed: fc.integer(), stop: fc.array(text(70), { maxLength: 6 }) },
      { requiredKeys: [] },
    ),
  },
);
const content = fc.oneof({ weight: 8, arbitrary: nonEmpty(60) }, { weight: 1, arbitrary: fc.integer({ min: 200, max: 12_000 }).map((n) => 'lucid '.repeat(n / 6)) }, { weight: 1, arbitrary: fc.integer({ min: 1000, max: 12_000 }).map((n) => 'q'.repeat(n)) });
const judgement = { requestId: requestIdArb, comment: fc.oneof({ weight: 4, arbitrary: text(40) }, { weight: 1, arbitrary: text(3000) }), idempotencyKey: fc.oneof(fc.uuid(), text(140)) };
const thumbArb = fc.oneof(
  fc.record({ type: fc.constant('thumb'), messageId: replyId, value: fc.constant('up'), ...judgement }, { requiredKeys: ['type', 'messageId', 'value'] }),
  fc.record({ type: fc.constant('thumb'), messageId: replyId, value: fc.constant('down'), reason: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...THUMB_REASONS) }, { weight: 1, arbitrary: text(12) }), ...judgement }, { requiredKeys: ['type', 'messageId', 'value'] }),
  fc.record({ type: fc.constant('thumb'), messageId: replyId, value: fc.constantFrom('up', 'down', 'sideways'), reason: text(20), ...judgement }, { requiredKeys: ['type', 'messageId', 'value'] }),
);
const opt = { requiredKeys: ['type'] as ['type'] };
const messageArb: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({ type: fc.constant('ping'), requestId: requestIdArb }, opt),
  fc.record({ type: fc.constant('start'), requestId: requestIdArb, conversationId: convId, userId: text(140), system: text(80), title: text(40) }, opt),
  { weight: 3, arbitrary: fc.record({ type: fc.constant('user_message'), requestId: requestIdArb, conversationId: convId, content, parentId: userMsgId, params: sampling }, { requiredKeys: ['type', 'conversationId', 'content'] }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('regenerate'), requestId: requestIdArb, conversationId: convId, messageId: replyId, params: sampling }, { requiredKeys: ['type', 'conversationId', 'messageId'] }) },
  { weight: 2, arbitrary: fc.oneof(fc.record({ type: fc.constant('compare'), requestId: requestIdArb, conversationId: convId, content, params: sampling }, { requiredKeys: ['type', 'conversationId', 'content'] }), fc.record({ type: fc.constant('compare'), requestId: requestIdArb, conversationId: convId, content, parentId: userMsgId, params: sampling }, { requiredKeys: ['type', 'conversationId'] })) },
  fc.record({ type: fc.constant('cancel'), requestId: requestIdArb }, opt),
  { weight: 2, arbitrary: thumbArb },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('comparison'), a: replyId, b: replyId, choice: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...CHOICES) }, { weight: 1, arbitrary: text(5) }), contextId: userMsgId, ...judgement }, { requiredKeys: ['type', 'a', 'b', 'choice'] }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('ranking'), candidates: fc.oneof(fc.array(replyId, { minLength: 2, maxLength: 4 }), fc.array(idArb, { maxLength: 70 })), notRankable: fc.boolean(), contextId: userMsgId, ...judgement }, { requiredKeys: ['type', 'candidates'] }) },
);
/** A message with one field replaced by any JSON value (or a new field added). */
const mutatedArb = fc.tuple(messageArb, fc.oneof(fc.constantFrom('type', 'requestId', 'conversationId', 'content', 'messageId', 'params', 'candidates', 'value', 'a', 'choice'), text(12)), fc.jsonValue({ maxDepth: 3 })).map(([m, k, v]) => ({ ...m, [k]: v }));

type Frame = { kind: 'text'; data: string } | { kind: 'binary'; data: Buffer };
const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  { weight: 10, arbitrary: messageArb.map((m) => ({ kind: 'text' as const, data: JSON.stringify(m) })) },
  { weight: 4, arbitrary: mutatedArb.map((m) => ({ kind: 'text' as const, data: JSON.stringify(m) })) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => ({ kind: 'text' as const, data: JSON.stringify(v) ?? 'null' })) },
  { weight: 2, arbitrary: text(200).map((s) => ({ kind: 'text' as const, data: s })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((b) => ({ kind: 'binary' as const, data: Buffer.from(b) })) },
  { weight: 1, arbitrary: fc.integer({ min: MAX_BYTES - 64, max: MAX_BYTES * 3 }).map((n) => ({ kind: 'text' as const, data: JSON.stringify({ type: 'ping', requestId: 'x'.repeat(n) }) })) },
);

// ------------------------------------------------------------------ the WebSocket door

const GENERATE = new Set(['user_message', 'regenerate', 'compare']);
const JUDGE = new Set(['thumb', 'comparison', 'ranking']);

/** One socket reused across cases: frames are sent one at a time and each waits for its answer. */
class FuzzSocket {
  client!: TestClient;
  nextRequest = 1;
  async open(): Promise<void> {
    this.client = await connectAsFuzzer();
    this.nextRequest = 1;
  }

  /** Sends one frame and checks its answer. */
  async send(frame: Frame): Promise<void> {
    const c = this.client;
    const from = c.messages.length;
    const where = `frame ${frame.kind === 'text' ? frame.data.slice(0, 200) : '<binary>'}`;
    const bytes = frame.kind === 'text' ? Buffer.byteLength(frame.data) : frame.data.length;
    if (frame.kind === 'binary') c.ws.send(frame.data, { binary: true });
    else c.ws.send(frame.data);
    if (bytes > MAX_BYTES) {
      const closed = await c.waitClosed(5000);
      assert.equal(closed.code, 1009, `${where}: an oversized frame closes with 1009`);
      count(outcomes.frames, 'closed 1009');
      return this.open();
    }
    let expect: (m: Record<string, unknown>) => boolean;
    let exactCode: string | undefined;
    if (frame.kind === 'binary') {
      exactCode = 'binary_not_supported';
      expect = (m) => m.type === 'error';
    } else {
      const parsed = parseClientMessage(frame.data);
      if (!parsed.ok) {
        exactCode = parsed.code;
        expect = (m) => m.type === 'error';
      } else {
        const msg = parsed.msg;
        const type = msg.type;
        const given = 'requestId' in msg ? msg.requestId : undefined;
        const rid = given ?? (GENERATE.has(type) || JUDGE.has(type) ? `req-${this.nextRequest++}` : undefined);
        const terminal: Record<string, string> = { ping: 'pong', start: 'conversation', user_message: 'reply', regenerate: 'reply', compare: 'candidates', cancel: 'error', thumb: 'feedback_ack', comparison: 'feedback_ack', ranking: 'feedback_ack' };
        // A refusal thrown by the handler echoes the client's requestId (none if it gave none).
        expect = (m) => (m.requestId === rid && (m.type === terminal[type] || m.type === 'error')) || (m.type === 'error' && m.requestId === given);
      }
    }
    const answer = await c.next(expect, 10_000, from);
    for (const m of c.messages.slice(from)) checkServerMessage(m, where);
    if (exactCode !== undefined) assert.equal(answer.code, exactCode, `${where}: the parser's code`);
    if (answer.code === 'internal_error') problems.push(`${where}: internal_error`);
    count(outcomes.frames, answer.type === 'error' ? String(answer.code) : String(answer.type));
  }
}

test(`WebSocket: ${RUNS.frames} single frames (valid, mutated, random, binary, oversized) each get a documented answer`, async (t) => {
  const s = new FuzzSocket();
  await s.open();
  await fc.assert(
    fc.asyncProperty(frameArb, async (frame) => {
      await s.send(frame);
      assert.deepEqual(problems, []);
    }),
    { numRuns: RUNS.frames, seed: SEED, endOnFailure: true, includeErrorInReport: true },
  );
  s.client.close();
  t.diagnostic(`answers: ${summary(outcomes.frames)}`);
});

test(`WebSocket: ${RUNS.sequences} sequences sent without waiting, some cut off mid-stream, leave the server serving`, async (t) => {
  const ending = fc.constantFrom('close', 'terminate', 'ping');
  await fc.assert(
    fc.asyncProperty(fc.array(frameArb, { minLength: 1, maxLength: 10 }), ending, fc.nat({ max: 30 }), async (frames, end, waitMs) => {
      const c = await connectAsFuzzer();
      for (const f of frames) if (c.ws.readyState === WebSocket.OPEN) c.ws.send(f.data, { binary: f.kind === 'binary' });
      if (waitMs) await new Promise((r) => setTimeout(r, waitMs));
      if (end === 'ping' && c.ws.readyState === WebSocket.OPEN) {
        // The socket answers a last ping after whatever it was sent (or was closed by the server).
        const last = await pongOrClose(c, 'end-of-sequence');
        if (last === 'timeout') problems.push(`sequence: neither a pong nor a close within 10 s`);
        count(outcomes.sequences, `ended by ${last}`);
        c.close();
      } else if (end === 'terminate') c.ws.terminate();
      else c.close();
      const closed = await c.waitClosed(5000);
      if (!CLOSE_CODES.has(closed.code)) problems.push(`sequence: close code ${closed.code}`);
      count(outcomes.sequences, 'frames', frames.length);
      if (end !== 'ping') count(outcomes.sequences, `ended by ${end}`);
      for (const m of c.messages) if (m.type === 'reply') count(outcomes.sequences, `reply ${String(m.finishReason)}`);
      for (const m of c.messages) checkServerMessage(m, 'sequence');
      assert.deepEqual(problems, []);
    }),
    { numRuns: RUNS.sequences, seed: SEED, endOnFailure: true, includeErrorInReport: true },
  );
  const bystander = await TestClient.connect(srv.wsUrl);
  await bystander.request({ type: 'ping', requestId: 'after' }, (m) => m.type === 'pong');
  bystander.close();
  t.diagnostic(`outcomes: ${summary(outcomes.sequences)}`);
});

/** Sends a ping and waits for its pong, or for the socket to close. */
function pongOrClose(c: TestClient, requestId: string): Promise<'pong' | 'closed' | 'timeout'> {
  return new Promise((resolve) => {
    const done = (v: 'pong' | 'closed' | 'timeout') => {
      clearTimeout(timer);
      c.ws.off('message', onMessage);
      c.ws.off('close', onClose);
      resolve(v);
    };
    const timer = setTimeout(() => done('timeout'), 10_000);
    const onMessage = (d: WebSocket.RawData) => {
      const m = JSON.parse(String(d)) as Record<string, unknown>;
      if (m.type === 'pong' && m.requestId === requestId) done('pong');
    };
    const onClose = () => done('closed');
    c.ws.on('message', onMessage);
    c.ws.on('close', onClose);
    c.send({ type: 'ping', requestId });
  });
}

/** The answer to an upgrade: 101 (then closed), or the refusal's status and JSON code. */
function tryUpgrade(path: string, headers: Record<string, string>): Promise<{ status: number; code?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${srv.port}${path}`, { headers });
    ws.on('open', () => {
      ws.terminate();
      resolve({ status: 101 });
    });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => {
        let code: string | undefined;
        try {
          code = body ? String((JSON.parse(body) as { error?: { code?: unknown } }).error?.code) : undefined;
        } catch {
          problems.push(`upgrade ${path}: a refusal that is not JSON: ${body.slice(0, 100)}`);
        }
        resolve({ status: res.statusCode ?? 0, ...(code !== undefined ? { code } : {}) });
      });
    });
    ws.on('error', (e) => resolve({ status: -1, code: e.message }));
  });
}

const UPGRADE_STATUSES = new Set([101, 401, 403, 404, 429, 503]);
test(`WebSocket: ${RUNS.upgrades} upgrades with any Origin, cookie, key and path are opened or refused with a documented code`, async (t) => {
  const printable = fc.stringMatching(/^[\x21-\x7e]{0,60}$/);
  const headersArb = fc.record(
    {
      Origin: fc.oneof(fc.constant(`http://127.0.0.1:${srv.port}`), fc.webUrl(), fc.constant('null'), printable),
      Cookie: fc.oneof(fc.constant(fuzzerCookie ?? ''), fc.tuple(fc.constantFrom('rlhf_anon', 'rlhf_session', 'x'), printable).map(([k, v]) => `${k}=${v}`), printable),
      Authorization: fc.oneof(printable.map((v) => `Bearer ${v}`), printable),
    },
    { requiredKeys: [] },
  );
  const pathArb = fc.oneof({ weight: 4, arbitrary: fc.constant('/ws') }, { weight: 1, arbitrary: fc.constantFrom('/ws?x=1', '/ws/', '/wss', '/', '/v1/ws') });
  await fc.assert(
    fc.asyncProperty(pathArb, headersArb, async (path, headers) => {
      const r = await tryUpgrade(path, headers);
      if (!UPGRADE_STATUSES.has(r.status)) problems.push(`upgrade ${path} ${JSON.stringify(headers)}: status ${r.status} ${r.code ?? ''}`);
      if (r.code !== undefined) checkCode(r.code, `upgrade ${path}`);
      count(outcomes.upgrades, `${r.status}${r.code ? ` ${r.code}` : ''}`);
      assert.deepEqual(problems, []);
    }),
    { numRuns: RUNS.upgrades, seed: SEED, endOnFailure: true, includeErrorInReport: true },
  );
  const t0 = Date.now();
  while (srv.ws.connections > 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
  assert.equal(srv.ws.connections, 0, 'every upgraded socket is gone once closed');
  t.diagnostic(`statuses: ${summary(outcomes.upgrades)}`);
});

// ------------------------------------------------------------------ the HTTP door

const ADMIN_GET = ['/admin/versions', '/admin/promotions', '/admin/promotions?alias=champion', '/admin/canary', '/admin/feedback', '/admin/loop', '/admin/runs', '/admin/runs?kind=ppo', '/admin/runs/nope'];
const ADMIN_POST = ['/admin/promote', '/admin/rollback', '/admin/loop/pause', '/admin/loop/resume'];
const ROUTES: [string, string][] = [
  ['GET', '/healthz'], ['GET', '/metrics'], ['GET', '/'], ['GET', '/app.js'], ['GET', '/v1/models'],
  ...Array.from({ length: 8 }, () => ['POST', '/v1/chat/completions'] as [string, string]),
  ...Array.from({ length: 4 }, () => ['POST', '/v1/completions'] as [string, string]),
  ...ADMIN_GET.map((p) => ['GET', p] as [string, string]), ...ADMIN_POST.flatMap((p) => [['POST', p], ['POST', p]] as [string, string][]), ['PUT', '/admin/canary'], ['PUT', '/admin/canary'],
  ['GET', '/session'], ['POST', '/session'], ['DELETE', '/session'], ['GET', '/admin/keys'], ['POST', '/admin/keys/key_nope/revoke'], ['DELETE', '/admin/keys/key_nope'],
];
/** Key creation switches the server to keys mode: only in the keys-mode property. */
const KEY_ROUTES: [string, string][] = [['POST', '/admin/keys'], ['POST', '/admin/keys'], ['POST', '/v1/chat/completions'], ['GET', '/v1/models']];
const anyPath = fc.oneof(
  fc.constantFrom(...ROUTES.map(([, p]) => p)),
  fc.constant('/v1/models/').map((p) => `${p}${ids.version}`),
  fc.tuple(fc.constantFrom('/v1/', '/admin/', '/', '/v1/models/', '/admin/runs/'), fc.webSegment()).map(([a, b]) => a + b),
);
/** A real route with its method (most cases), or any method on any path. */
const routeArb: fc.Arbitrary<[string, string]> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...ROUTES) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS'), anyPath) },
);
const keysRouteArb: fc.Arbitrary<[string, string]> = fc.oneof({ weight: 3, arbitrary: routeArb }, { weight: 1, arbitrary: fc.constantFrom(...KEY_ROUTES) });
/** Header values are bytes: printable ASCII (what a client can put in a header). */
const headerText = fc.stringMatching(/^[\x21-\x7e]{0,60}$/);
const authArb = fc.oneof(fc.constant(undefined), fc.constant(`Bearer ${TOKEN}`), fc.constant(`Bearer ${TOKEN}`), headerText.map((s) => `Bearer ${s}`), headerText);
/** In keys mode: the real API key too (read when a case is made, after the key exists). */
const keysAuthArb = fc.oneof({ weight: 2, arbitrary: authArb }, { weight: 2, arbitrary: fc.constant('').map(() => `Bearer ${apiKey}`) }, { weight: 1, arbitrary: fc.constant('').map(() => `Bearer ${apiKey.slice(0, -1)}x`) });
/** The client address (the app trusts X-Forwarded-For here): mostly many addresses, sometimes one, so wrong admin tokens are throttled too. */
const forwardedArb = fc.oneof({ weight: 4, arbitrary: fc.ipV4() }, { weight: 1, arbitrary: fc.constant('203.0.113.7') });
const contentTypeArb = fc.constantFrom(undefined, 'application/json', 'application/json', 'application/json', 'application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x');
const chatMessage = fc.record({ role: fc.constantFrom('system', 'developer', 'user', 'assistant', 'tool'), content: fc.oneof(nonEmpty(60), fc.constant(null), fc.array(fc.record({ type: fc.constantFrom('text', 'image_url'), text: text(30) }, { requiredKeys: ['type'] }), { maxLength: 3 })) }, { requiredKeys: ['role'] });
const completionArb = fc.record(
  {
    model: fc.oneof(fc.constant('sft'), text(300)),
    messages: fc.oneof({ weight: 3, arbitrary: fc.tuple(fc.array(chatMessage, { maxLength: 4 }), nonEmpty(60)).map(([m, last]) => [...m, { role: 'user', content: last }]) }, { weight: 1, arbitrary: fc.array(chatMessage, { maxLength: 5 }) }),
    temperature: fc.oneof(fc.double({ min: -1, max: 3, noNaN: true }), fc.constant(null)),
    top_p: fc.double({ min: -0.5, max: 1.5, noNaN: true }),
    max_tokens: fc.integer({ min: -1, max: 12 }),
    max_completion_tokens: fc.integer({ min: -1, max: 12 }),
    stop: fc.oneof(text(80), fc.array(text(80), { maxLength: 6 }), fc.constant(null)),
    seed: fc.integer(),
    n: fc.integer({ min: -1, max: 4 }),
    stream: fc.boolean(),
    stream_options: fc.record({ include_usage: fc.boolean() }),
    user: text(300),
  },
  { requiredKeys: ['model', 'messages'] },
);
const textCompletionArb = fc.record(
  {
    model: fc.oneof(fc.constant('sft'), fc.constant('champion'), text(300)),
    prompt: fc.oneof(nonEmpty(60), fc.array(text(40), { maxLength: 3 }), fc.array(fc.integer({ min: -1, max: 400 }), { maxLength: 8 }), fc.array(fc.array(fc.integer({ min: 0, max: 400 }), { maxLength: 4 }), { maxLength: 3 })),
    max_tokens: fc.integer({ min: -1, max: 8 }),
    temperature: fc.oneof(fc.double({ min: -1, max: 3, noNaN: true }), fc.constant(null)),
    echo: fc.boolean(),
    logprobs: fc.oneof(fc.integer({ min: -1, max: 22 }), fc.constant(null)),
    n: fc.integer({ min: -1, max: 4 }),
    stop: fc.oneof(text(80), fc.constant(null)),
    stream: fc.boolean(),
    logit_bias: fc.dictionary(fc.oneof(fc.integer({ min: -1, max: 400 }).map(String), text(5)), fc.double({ min: -120, max: 120, noNaN: true }), { maxKeys: 3 }),
    presence_penalty: fc.double({ min: -3, max: 3, noNaN: true }),
  },
  { requiredKeys: ['model', 'prompt'] },
);
const adminBodyArb = fc.record(
  { versionId: fc.oneof(fc.constant(''), fc.constant('nope-000000000000'), text(140)).map((v) => v || ids.version), alias: fc.constantFrom('champion', 'sft', 'other', ''), reason: text(40), actor: text(40), share: fc.double({ min: -1, max: 2, noNaN: true }) },
  { requiredKeys: [] },
);
const bodyArb = fc.oneof(
  { weight: 5, arbitrary: completionArb.map((b) => JSON.stringify(b)) },
  { weight: 2, arbitrary: textCompletionArb.map((b) => JSON.stringify(b)) },
  { weight: 2, arbitrary: fc.tuple(completionArb, fc.constantFrom('model', 'messages', 'stream', 'n', 'stop', 'max_tokens'), fc.jsonValue({ maxDepth: 3 })).map(([b, k, v]) => JSON.stringify({ ...b, [k]: v })) },
  { weight: 3, arbitrary: adminBodyArb.map((b) => JSON.stringify(b)) },
  { weight: 1, arbitrary: fc.record({ userId: fc.oneof(fc.stringMatching(/^[a-z0-9._@:-]{1,20}$/), text(140)), name: text(40), apiKey: fc.oneof(text(60), fc.constant('').map(() => apiKey)), reason: text(40), excludeFromTraining: fc.boolean() }, { requiredKeys: [] }).map((b) => JSON.stringify(b)) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v) ?? '') },
  { weight: 1, arbitrary: text(200) },
  { weight: 1, arbitrary: fc.integer({ min: MAX_BYTES, max: 70 * 1024 }).map((n) => JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'w'.repeat(n) }] })) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

let lastCode = '';
async function checkResponse(res: Response, where: string, method: string): Promise<void> {
  lastCode = '';
  if (method === 'HEAD') {
    if (res.status >= 500 && res.status !== 503) problems.push(`${where}: status ${res.status}`);
    return; // no body to read
  }
  const type = res.headers.get('content-type') ?? '';
  const body = await res.text();
  if (res.status >= 500 && res.status !== 503) problems.push(`${where}: status ${res.status} ${body.slice(0, 200)}`);
  if (res.status >= 400) {
    let code: unknown;
    try {
      code = (JSON.parse(body) as { error?: { code?: unknown } }).error?.code;
    } catch {
      problems.push(`${where}: an error (${res.status}) that is not JSON: ${body.slice(0, 100)}`);
      return;
    }
    checkCode(code, where);
    lastCode = String(code);
    const status = DOCUMENTED[String(code)];
    if (status !== undefined && status !== res.status) problems.push(`${where}: ${String(code)} answered ${res.status}, documented ${status}`);
    return;
  }
  if (type.includes('text/event-stream')) {
    const events = body.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
    if (events[events.length - 1] !== '[DONE]' && !events.some((e) => e.includes('"error"'))) problems.push(`${where}: a stream that ends without [DONE]`);
    for (const e of events) {
      if (e === '[DONE]') continue;
      const chunk = JSON.parse(e) as { error?: { code?: unknown }; object?: string };
      if (chunk.error) checkCode(chunk.error.code, `${where} (stream)`);
      else if (chunk.object !== 'chat.completion.chunk' && chunk.object !== 'text_completion') problems.push(`${where}: stream event ${e.slice(0, 100)}`);
    }
  } else if (type.includes('application/json')) JSON.parse(body);
}

async function fuzzHttp(routes: fc.Arbitrary<[string, string]>, auths: fc.Arbitrary<string | undefined>, runs: number, seen: Map<string, number>): Promise<void> {
  await fc.assert(
    fc.asyncProperty(routes, auths, contentTypeArb, bodyArb, forwardedArb, async ([method, path], auth, contentType, body, forwarded) => {
      const headers: Record<string, string> = { 'x-forwarded-for': forwarded };
      if (auth !== undefined) headers.authorization = auth;
      if (contentType !== undefined) headers['content-type'] = contentType;
      const hasBody = method !== 'GET' && method !== 'HEAD' && body !== undefined;
      const where = `${method} ${path} ${hasBody ? body!.slice(0, 200) : ''}`;
      const res = await app.request(path, { method, headers, ...(hasBody ? { body } : {}) });
      await checkResponse(res, where, method);
      count(seen, `${res.status}${res.status >= 400 ? ` ${lastCode}` : ''}`);
      assert.deepEqual(problems, []);
    }),
    { numRuns: runs, seed: SEED, endOnFailure: true, includeErrorInReport: true },
  );
}

test(`HTTP: ${RUNS.http} requests to every route (methods, tokens, content types, bodies) each get a documented answer`, async (t) => {
  const localOnly = routeArb.filter(([method, path]) => !(method === 'POST' && /^\/admin\/keys\/?$/.test(path))); // no key made: local mode throughout
  await fuzzHttp(localOnly, authArb, RUNS.http, outcomes.http);
  t.diagnostic(`statuses: ${summary(outcomes.http)}`);
});

test(`HTTP in keys mode: ${RUNS.httpKeys} requests with the real API key, made-up and altered ones, and key creation, each get a documented answer`, async (t) => {
  apiKey = (await createApiKey(srv.chat()!.deps.store.db, { userId: 'fuzz-key-user' })).key;
  auth.noteKeyCreated();
  await fuzzHttp(keysRouteArb, keysAuthArb, RUNS.httpKeys, outcomes.httpKeys);
  t.diagnostic(`statuses: ${summary(outcomes.httpKeys)}`);
});

test('after the fuzzing: nothing decodes, no tensor is left behind and the heap is flat', async (t) => {
  await settle();
  const now = measure();
  t.diagnostic(`tensors ${baseline.tensors} before, ${now.tensors} after; heap ${(baseline.heap / 2 ** 20).toFixed(1)} MiB before, ${(now.heap / 2 ** 20).toFixed(1)} MiB after (full GC)`);
  assert.deepEqual(problems, []);
  assert.ok(now.tensors <= baseline.tensors, `tensors: ${baseline.tensors} before, ${now.tensors} after`);
  assert.ok(now.heap - baseline.heap < HEAP_BOUND, `heap grew by ${((now.heap - baseline.heap) / 2 ** 20).toFixed(1)} MiB`);
  const res = await fetch(`${srv.url}/healthz`);
  assert.equal(res.status, 200);
});
