import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs, sideBySide, DEFAULT_URL } from './chat-cli.ts';
import { startTestServer, type TestServer } from '../server/test-support.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
let srv: TestServer;

before(async () => {
  srv = await startTestServer({}, { modelConfig: { blockSize: 128 } });
});
after(async () => srv.close());

/** The CLI as a child process, with a way to wait for its output to match. */
function spawnCli(args: string[]): { child: ChildProcessWithoutNullStreams; out: () => string; waitFor: (re: RegExp, from?: number, ms?: number) => Promise<RegExpMatchArray> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'client/chat-cli.ts', ...args], { cwd: ROOT, stdio: 'pipe' });
  let out = '';
  child.stdout.on('data', (d) => (out += String(d)));
  child.stderr.on('data', (d) => (out += String(d)));
  const waitFor = (re: RegExp, from = 0, ms = 20_000): Promise<RegExpMatchArray> =>
    new Promise((resolve, reject) => {
      const deadline = Date.now() + ms;
      const tick = (): void => {
        const m = out.slice(from).match(re);
        if (m) return resolve(m);
        if (Date.now() > deadline || child.exitCode !== null) return reject(new Error(`no ${re} in output:\n${out}`));
        setTimeout(tick, 20);
      };
      tick();
    });
  return { child, out: () => out, waitFor };
}

test('arguments: default URL, --url, --max-tokens; unknown flags (the old --user too) and a missing value refused', () => {
  assert.equal(parseArgs([]).url, DEFAULT_URL);
  assert.equal(parseArgs(['--url', 'ws://h:1/ws']).url, 'ws://h:1/ws');
  assert.equal(parseArgs(['--max-tokens', '12']).maxTokens, 12);
  assert.throws(() => parseArgs(['--nope']), /unknown option --nope/);
  assert.throws(() => parseArgs(['--user', 'bob']), /unknown option --user/);
  assert.throws(() => parseArgs(['--url']), /--url: .*expected string/);
  assert.throws(() => parseArgs(['--max-tokens', '0']), /--max-tokens/);
});

test('side by side: two labelled columns, long words wrapped', () => {
  const s = sideBySide('one two', 'x'.repeat(50), 40);
  const lines = s.split('\n');
  assert.match(lines[0]!, /^A\s+\| B$/);
  assert.match(lines[1]!, /^one two\s+\| x+$/);
  assert.ok(lines.length >= 3, s);
});

test('over stdin/stdout: a streamed reply arrives, a thumbs-down and a comparison are stored', { timeout: 60_000 }, async () => {
  const cli = spawnCli(['--url', srv.wsUrl, '--max-tokens', '20']);
  try {
    // The rater is who the server says the socket is (its identity).
    const rater = (await cli.waitFor(/connected to \S+ as (\S+);/))[1]!;
    await cli.waitFor(/\[conversation (\w+)\]/);
    cli.child.stdin.write('what does lucid mean?\n');
    const r = await cli.waitFor(/\[reply (\w+) finish=\w+\]/);
    const replyId = r[1]!;
    const db = srv.chat()!.deps.store.db;
    const stored = await db.selectFrom('messages').select(['content', 'role']).where('id', '=', replyId).executeTakeFirstOrThrow();
    assert.equal(stored.role, 'assistant');
    assert.ok(cli.out().includes(`assistant: ${stored.content}`), `reply text not printed:\n${cli.out()}`);

    let from = cli.out().length;
    cli.child.stdin.write('/down unhelpful far too vague\n');
    await cli.waitFor(/\[ok\] thumb down \(unhelpful\) stored/, from);
    const thumbs = await db.selectFrom('thumbs').selectAll().where('message_id', '=', replyId).execute();
    assert.equal(thumbs.length, 1);
    assert.equal(thumbs[0]!.value, 'down');
    assert.equal(thumbs[0]!.reason, 'unhelpful');
    assert.equal(thumbs[0]!.comment, 'far too vague');
    assert.equal(thumbs[0]!.rater_id, rater);

    from = cli.out().length;
    cli.child.stdin.write('/compare\n');
    await cli.waitFor(/^A\s+\| B$/m, from);
    cli.child.stdin.write('/pick b\n');
    const c = await cli.waitFor(/\[ok\] comparison stored \(b\) id (\w+)/, from);
    const cmp = await db.selectFrom('comparisons').selectAll().where('id', '=', c[1]!).executeTakeFirstOrThrow();
    assert.equal(cmp.choice, 'b');

    from = cli.out().length;
    cli.child.stdin.write('/bogus\n/quit\n');
    await cli.waitFor(/unknown command \/bogus[\s\S]*bye/, from);
    const code = await new Promise<number | null>((resolve) => (cli.child.exitCode !== null ? resolve(cli.child.exitCode) : cli.child.once('exit', resolve)));
    assert.equal(code, 0);
  } finally {
    cli.child.kill();
  }
});
