import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend } from '../model/backend.ts';
import { loadCheckpoint } from '../model/checkpoint.ts';
import { getModelVersion, getRun, listRuns, resolveAlias } from '../feedback/index.ts';
import { ALIAS } from '../feedback/aliases.ts';
import { describeEachDialect, TEST_PG_URL } from '../feedback/test-support.ts';
import { saveToySft, seedJudgements, toyLoopKnobs } from './loop-fixture.ts';
import { flag } from '../cli/command.ts';

/** Runs the loop CLI once (with `env` added to the environment); `killAt(line)` returning true SIGKILLs it right after that line. */
function runLoop(args: string[], env: NodeJS.ProcessEnv, killAt?: (line: string) => boolean): Promise<{ lines: string[]; code: number | null; signal: string | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'training/online-loop.ts', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    const lines: string[] = [];
    let buf = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c: string) => {
      buf += c;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(line);
        if (killAt?.(line)) child.kill('SIGKILL');
      }
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ lines, code, signal });
    });
  });
}

function tmpEntries(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name.includes('.tmp-')) out.push(join(dir, e.name));
    if (e.isDirectory()) out.push(...tmpEntries(join(dir, e.name)));
  }
  return out;
}

/**
 * The loop's `--database` (and, on PostgreSQL, `--database-schema`) for the suite's store: its
 * SQLite file, or its schema on the test server. A URL with a password goes through LOOP_DATABASE
 * (the CLI refuses it on the command line).
 */
function storeArgs(dialect: 'sqlite' | 'postgres', location: string): { args: string[]; env: NodeJS.ProcessEnv } {
  if (dialect === 'sqlite') return { args: ['--database', `sqlite:${location}`], env: {} };
  const schema = ['--database-schema', location];
  return new URL(TEST_PG_URL).password ? { args: schema, env: { LOOP_DATABASE: TEST_PG_URL } } : { args: ['--database', TEST_PG_URL, ...schema], env: {} };
}

await describeEachDialect('loop resume', (ctx) => {
  test('a loop killed (-9) mid-PPO resumes its run from the last completed PPO checkpoint, finishes it, and records the judgements it trained on', async () => {
    await initBackend({ backend: 'wasm', log: () => {} });
    const root = mkdtempSync(join(tmpdir(), 'loop-resume-'));
    try {
      const sft = await saveToySft(root);
      const store = ctx.store(); // a fresh store of the dialect (SQLite file or PostgreSQL schema), deleted after the suite
      const database = storeArgs(ctx.dialect, store.location);
      await seedJudgements(store, 40);
      const knobs = toyLoopKnobs(root, sft, { ppoSteps: 30, checkpointEvery: 2, once: true, disagreementTolerance: 1000 /* the run must go the whole way: the guard has its own tests */ });
      const args = [...database.args, ...Object.entries(knobs).flatMap(([k, v]) => (typeof v === 'boolean' ? [v ? flag(k) : `--no-${flag(k).slice(2)}`] : [flag(k), String(v)]))];
      const saved = (l: string) => Number(/checkpoint at PPO step (\d+)/.exec(l)?.[1] ?? NaN);

      const first = await runLoop(args, database.env, (l) => saved(l) >= 4);
      assert.equal(first.signal, 'SIGKILL', first.lines.slice(-5).join('\n'));
      const savedSteps = first.lines.map(saved).filter((n) => Number.isFinite(n));
      const last = savedSteps[savedSteps.length - 1]!;
      assert.ok(last >= 4, `a checkpoint was completed before the kill: ${savedSteps}`);
      const [run] = await listRuns(store.db, { kind: 'loop' });
      assert.equal(run?.status, 'running', 'the killed process left its run running');

      const second = await runLoop(args, database.env);
      assert.equal(second.code, 0, second.lines.slice(-8).join('\n'));
      assert.ok(second.lines.includes(`loop: resuming run ${run!.id} (${JSON.parse(run!.config_json).stamp})`), second.lines.slice(0, 8).join('\n'));
      assert.ok(second.lines.some((l) => l.startsWith(`loop: resuming PPO at step ${last} `)), `resumes from step ${last}, not 0:\n${second.lines.filter((l) => /resum/.test(l)).join('\n')}`);
      assert.ok(second.lines.some((l) => l.startsWith('loop: reusing reward model')), 'the saved reward model is reused');
      const firstStepRun = second.lines.map((l) => Number(/ppo step (\d+)\//.exec(l)?.[1] ?? NaN)).filter((n) => Number.isFinite(n));
      assert.equal(firstStepRun[0], last + 1);
      assert.equal(firstStepRun[firstStepRun.length - 1], 30);

      const runs = await listRuns(store.db, { kind: 'loop' });
      assert.equal(runs.length, 1, 'the same run continued; no second run');
      const done = await getRun(store.db, run!.id);
      assert.equal(done?.status, 'succeeded');
      const offered = await resolveAlias(store.db, ALIAS.candidate);
      const version = await getModelVersion(store.db, offered!);
      assert.equal(version?.run_id, run!.id);
      loadCheckpoint(version!.checkpoint, { kind: 'policy' });
      assert.deepEqual(tmpEntries(join(root, 'ck')), [], 'no temporary directory is left');
      assert.deepEqual(readdirSync(join(root, 'ck')).filter((n) => n.startsWith('run-')), [], 'the PPO step checkpoints are removed once the run is done');

      // Data window: the version traces back to the judgements that made it.
      const window = (JSON.parse(done!.config_json) as { dataWindow: Record<string, unknown> }).dataWindow;
      assert.equal(window.judgements, 40);
      assert.equal(window.newJudgements, 40);
      assert.equal(window.since, null);
      assert.deepEqual(window.byKind, { thumbs: 0, comparisons: 40, rankings: 0 });
      const ids = (await store.db.selectFrom('comparisons').select(['id', 'created_at']).orderBy('id').execute());
      assert.equal(window.firstId, ids[0]!.id);
      assert.equal(window.lastId, ids[ids.length - 1]!.id);
      assert.ok(String(window.until) >= ids[ids.length - 1]!.created_at);
      assert.equal(existsSync(join(root, 'ck', `policy-${JSON.parse(run!.config_json).stamp}`)), true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
