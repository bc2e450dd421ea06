/**
 * Kill -9 tests of the whole server (a child process, `kill-server-fixture.ts`), on SQLite and on
 * PostgreSQL: SIGKILL while a reply is streaming and while judgements arrive in a burst from
 * several sockets; then the server is started again on the same store and
 *  - every judgement the server acknowledged (`feedback_ack`) is in the store,
 *  - every conversation resumes with its stored turns (the last reply each client received is on
 *    the active branch) and takes a new turn.
 * And a checkpoint writer killed mid-write (`kill-checkpoint-fixture.ts`): every checkpoint it
 * reported saved loads and passes its sha256, no directory is half written, `latest` names a whole one.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { openStore } from '../feedback/open-store.ts';
import { requirePostgres, TEST_PG_URL } from '../feedback/test-support.ts';
import { makeTinyCheckpoint, rmDir, TestClient } from './test-support.ts';

const fixture = fileURLToPath(new URL('./kill-server-fixture.ts', import.meta.url));
/** One browser (its anonymous cookie) across both server processes: the same person after the restart. */
const COOKIE = { Cookie: `rlhf_anon=${randomBytes(32).toString('base64url')}` };

interface Child {
  proc: ChildProcess;
  port: number;
  exited: Promise<NodeJS.Signals | null>;
}

async function startChild(args: string[]): Promise<Child> {
  const proc = spawn(process.execPath, ['--import', 'tsx', fixture, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<NodeJS.Signals | null>((resolve) => proc.on('exit', (_code, signal) => resolve(signal)));
  children.push({ proc, port: 0, exited });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    proc.on('exit', () => reject(new Error(`server exited before ready: ${stderr}`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /ready (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
  });
  return { proc, port, exited };
}

async function connect(port: number): Promise<TestClient> {
  return TestClient.connect(`ws://127.0.0.1:${port}/ws`, COOKIE);
}

/** Every child started, killed at the end whatever happened. */
const children: Child[] = [];
after(async () => {
  for (const c of children) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
  await Promise.all(children.map((c) => c.exited));
});

async function killMidStreamAndBurst(args: string[], dialect: string): Promise<string> {
  const first = await startChild(args);
  const streamer = await connect(first.port);
  const raters = await Promise.all(Array.from({ length: 4 }, () => connect(first.port)));
  // Each rater: one conversation and two replies to judge.
  const convs: { id: string; replies: string[] }[] = [];
  for (const [k, c] of raters.entries()) {
    const conv = await c.request({ type: 'start', requestId: `s${k}` }, (m) => m.requestId === `s${k}` && m.type === 'conversation');
    const id = String(conv.conversationId);
    const cmp = await c.request({ type: 'compare', requestId: `c${k}`, conversationId: id, content: 'what does lucid mean?', params: { maxTokens: 4 } }, (m) => m.requestId === `c${k}` && (m.type === 'candidates' || m.type === 'error'));
    assert.equal(cmp.type, 'candidates', JSON.stringify(cmp));
    convs.push({ id, replies: cmp.messageIds as string[] });
  }
  // The last message of each conversation the client was told of before the kill (the stored branch must contain it).
  const lastReply = new Map<string, string>();
  for (const c of convs) lastReply.set(c.id, c.replies[0]!);

  // A stream that is always in flight.
  const sconv = await streamer.request({ type: 'start', requestId: 'st' }, (m) => m.requestId === 'st' && m.type === 'conversation');
  const streamConv = String(sconv.conversationId);
  let streaming = true;
  let inFlight = false;
  let deltasInFlight = 0;
  streamer.ws.on('message', (d) => {
    const m = JSON.parse(String(d)) as Record<string, unknown>;
    if (m.type === 'reply_start') {
      inFlight = true;
      deltasInFlight = 0;
      lastReply.set(streamConv, String(m.userMessageId)); // the message being answered is stored before its reply starts
    }
    else if (m.type === 'delta') deltasInFlight++;
    else if (m.type === 'reply') {
      inFlight = false;
      lastReply.set(streamConv, String(m.messageId));
      if (streaming) streamer.send({ type: 'user_message', conversationId: streamConv, content: 'tell me more', params: { maxTokens: 200, temperature: 1 } });
    }
  });
  streamer.send({ type: 'user_message', conversationId: streamConv, content: 'tell me a story', params: { maxTokens: 200, temperature: 1 } });

  // The burst: every rater sends judgements without waiting; acknowledgements are collected.
  const acked: { kind: string; id: string }[] = [];
  const refusals = new Map<string, number>(); // error code → count: what the burst got instead of acks
  let n = 0;
  for (const c of raters) {
    c.ws.on('message', (d) => {
      const m = JSON.parse(String(d)) as Record<string, unknown>;
      if (m.type === 'feedback_ack') acked.push({ kind: String(m.kind), id: String(m.id) });
      else if (m.type === 'error') refusals.set(String(m.code), (refusals.get(String(m.code)) ?? 0) + 1);
    });
  }
  const burst = setInterval(() => {
    for (const [k, c] of raters.entries()) {
      const { replies } = convs[k]!;
      for (let j = 0; j < 4; j++, n++) {
        if (n % 2 === 0) c.send({ type: 'thumb', messageId: replies[(n >> 1) % 2], value: n % 4 === 0 ? 'up' : 'down', ...(n % 4 === 0 ? {} : { reason: 'unhelpful' }) });
        else c.send({ type: 'comparison', a: replies[0], b: replies[1], choice: n % 3 === 0 ? 'a' : 'b' });
      }
    }
  }, 2);
  const t0 = Date.now();
  while ((acked.length < 300 || !inFlight || deltasInFlight === 0) && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 2));
  assert.ok(inFlight && deltasInFlight > 0, 'a reply was streaming at the kill');
  const killedAfterMs = Date.now() - t0;
  first.proc.kill('SIGKILL');
  streaming = false;
  clearInterval(burst);
  assert.equal(await first.exited, 'SIGKILL');
  const ackedAtKill = acked.length;
  assert.ok(ackedAtKill >= 300, `${ackedAtKill} judgements acknowledged before the kill; refused: ${JSON.stringify(Object.fromEntries(refusals))}`);
  for (const c of [streamer, ...raters]) c.ws.terminate();

  // Restart on the same store.
  const second = await startChild(args);
  try {
    const store = await openStore({ url: args[1], ...(args[2] ? { schema: args[2] } : {}), migrate: false });
    try {
      const missing: string[] = [];
      for (const [kind, table] of [['thumb', 'thumbs'], ['comparison', 'comparisons']] as const) {
        const rows = new Set((await store.db.selectFrom(table).select('id').execute()).map((r) => r.id));
        for (const a of acked) if (a.kind === kind && !rows.has(a.id)) missing.push(a.id);
      }
      assert.deepEqual(missing, [], `[${dialect}] ${missing.length} of ${acked.length} acknowledged judgements were lost`);
    } finally {
      await store.close();
    }
    const c = await connect(second.port);
    for (const [convId, replyId] of lastReply) {
      const rid = `r-${convId}`;
      const conv = await c.request({ type: 'start', conversationId: convId, requestId: rid }, (m) => m.requestId === rid);
      assert.equal(conv.type, 'conversation', JSON.stringify(conv));
      assert.equal(conv.resumed, true);
      const path = (conv.messages as { id: string }[]).map((m) => m.id);
      assert.ok(path.includes(replyId), `[${dialect}] the last message acknowledged in ${convId} is on its branch after the restart`);
      const next = await c.request({ type: 'user_message', requestId: `n-${convId}`, conversationId: convId, content: 'and then?', params: { maxTokens: 4 } }, (m) => m.requestId === `n-${convId}` && (m.type === 'reply' || m.type === 'error'));
      assert.equal(next.type, 'reply', JSON.stringify(next));
    }
    c.close();
    return `${ackedAtKill} judgements acknowledged in ${killedAfterMs} ms before the kill (${acked.length} by the time the socket saw it die), all stored; refused meanwhile: ${JSON.stringify(Object.fromEntries(refusals))}; ${lastReply.size} conversations resumed`;
  } finally {
    second.proc.kill('SIGKILL');
    await second.exited;
  }
}

test('SIGKILL mid-stream and mid-burst on SQLite: no acknowledged judgement is lost and every conversation resumes', async (t) => {
  const ckpt = await makeTinyCheckpoint({ blockSize: 256 });
  const dir = mkdtempSync(join(tmpdir(), 'srv-kill-'));
  try {
    t.diagnostic(await killMidStreamAndBurst([ckpt, `sqlite:${join(dir, 'feedback.sqlite')}`], 'sqlite'));
  } finally {
    rmDir(dir);
    rmDir(join(ckpt, '..'));
  }
});

test('SIGKILL mid-stream and mid-burst on PostgreSQL: no acknowledged judgement is lost and every conversation resumes', async (t) => {
  await requirePostgres();
  const ckpt = await makeTinyCheckpoint({ blockSize: 256 });
  const schema = `kill_${randomBytes(6).toString('hex')}`;
  try {
    t.diagnostic(await killMidStreamAndBurst([ckpt, TEST_PG_URL, schema], 'postgres'));
  } finally {
    const client = new pg.Client({ connectionString: TEST_PG_URL });
    await client.connect();
    await client.query(`drop schema if exists "${schema}" cascade`);
    await client.end();
    rmDir(join(ckpt, '..'));
  }
});

test('a checkpoint writer killed -9 mid-write leaves only whole checkpoints: every one reported saved loads and passes its sha256, and latest names a whole one', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ckpt-kill-'));
  const writer = fileURLToPath(new URL('./kill-checkpoint-fixture.ts', import.meta.url));
  try {
    let killedAt = -1;
    for (let round = 0; round < 5; round++) {
      const proc = spawn(process.execPath, ['--import', 'tsx', writer, join(root, `r${round}`)], { stdio: ['ignore', 'pipe', 'pipe'] });
      const exited = new Promise<NodeJS.Signals | null>((resolve) => proc.on('exit', (_code, signal) => resolve(signal)));
      const saved: number[] = [];
      let out = '';
      // Kill a different time after the third save each round: somewhere inside a write.
      const after = 3 + (round % 3);
      await new Promise<void>((resolve, reject) => {
        proc.on('exit', () => reject(new Error('the writer exited by itself')));
        proc.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const lines = out.split('\n');
          out = lines.pop()!;
          for (const l of lines) if (l.startsWith('saved ')) saved.push(Number(l.slice(6)));
          if (saved.length >= after && killedAt < round) {
            killedAt = round;
            setTimeout(() => (proc.kill('SIGKILL'), resolve()), 3 + round * 8);
          }
        });
      });
      assert.equal(await exited, 'SIGKILL');
      const dir = join(root, `r${round}`);
      const entries = readdirSync(dir);
      const checkpoints = entries.filter((e) => e.startsWith('ck-'));
      for (const n of saved) assert.ok(checkpoints.includes(`ck-${n}`), `ck-${n} was reported saved`);
      for (const ck of checkpoints) {
        const loaded = loadCheckpoint(join(dir, ck), { kind: 'policy' }); // throws checkpoint_corrupt on a bad hash or a missing file
        assert.equal(loaded.meta.step, Number(ck.slice(3)));
      }
      const latest = readFileSync(join(dir, 'latest'), 'utf8').trim();
      assert.ok(checkpoints.includes(latest), `latest names ${latest}`);
      loadCheckpoint(join(dir, latest));
      t.diagnostic(`round ${round}: ${saved.length} reported saved, ${checkpoints.length} whole on disk, ${entries.filter((e) => e.startsWith('.tmp-')).length} unfinished temporary directories left aside`);
    }
  } finally {
    rmDir(root);
  }
});
