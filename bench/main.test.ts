import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findPeerPython } from './peer.ts';

const main = fileURLToPath(new URL('./main.ts', import.meta.url));
const tsx = import.meta.resolve('tsx');

/** A stand-in python: prints `version` for the torch probe, else the peer's JSON line with the given figures. */
function fakePython(dir: string, version: string | undefined, figures: Record<string, unknown> = {}): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'python3');
  const line = JSON.stringify({ peer: `pytorch-${version}`, threads: 2, params: 1, train_step_ms: 1, train_tokens_per_s: 1000, gen_tokens_per_s: 500, gen_batch: 16, gen_batch_tokens_per_s: 4000, gemm_gflops: 100, ...figures });
  const probe = version === undefined ? `echo "ModuleNotFoundError: No module named 'torch'" >&2; exit 1` : `echo '${version}'; exit 0`;
  // Each peer run appends its arguments to `runs` beside the script.
  writeFileSync(file, `#!/bin/sh\nif [ "$1" = "-c" ]; then ${probe}; fi\necho "$*" >> "${join(dir, 'runs')}"\necho '${line}'\n`);
  chmodSync(file, 0o755);
  return file;
}

/** Runs `bench/main.ts` with `args` in `cwd` (a directory with no data/, as in a fresh clone). */
function bench(cwd: string, args: string[], timeout = 120_000) {
  return spawnSync(process.execPath, ['--import', tsx, main, '--json', ...args], { cwd, encoding: 'utf8', timeout, env: { ...process.env, PEER_PYTHON: '', PEER_SCRIPT: '' } });
}

/** Runs `fn` in a fresh temporary directory (no data/, as in a fresh clone), removed afterwards. */
function withTempDir(prefix: string, fn: (root: string) => void): void {
  const root = mkdtempSync(join(tmpdir(), prefix));
  try {
    fn(root);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

const isShare = (v: unknown) => typeof v === 'number' && v >= 0 && v <= 1;

/** The benchmark lines of a run (without the `machine` lines that open and close it, which are checked here). */
function lines(stdout: string): Record<string, unknown>[] {
  const all = stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(all[0]?.bench, 'machine', stdout);
  assert.equal(all[all.length - 1]?.bench, 'machine', stdout);
  assert.ok((all[0]!.cpus as number) > 0 && typeof all[0]!.load_avg_1m === 'number', stdout);
  return all.slice(1, -1);
}

test('the peer python is the first python3 on PATH with PyTorch 2.x; one with 1.x or none is never used, and the reason says what was found', () => {
  withTempDir('bench-peer-', (root) => {
    fakePython(join(root, 'a'), undefined);
    fakePython(join(root, 'b'), '1.13.1');
    const two = fakePython(join(root, 'c'), '2.13.0+cpu');
    fakePython(join(root, 'd'), '2.1.0');
    const path = ['a', 'b', 'c', 'd'].map((d) => join(root, d)).join(':');
    assert.deepEqual(findPeerPython(undefined, path), { python: two, torch: '2.13.0+cpu' });
    const none = findPeerPython(undefined, [join(root, 'a'), join(root, 'b'), join(root, 'missing')].join(':'));
    assert.ok('skipped' in none);
    assert.match(none.skipped, /no python3 on PATH has PyTorch 2\.x/);
    assert.match(none.skipped, /no torch/);
    assert.match(none.skipped, /PyTorch 1\.13\.1/);
    const explicit = findPeerPython(join(root, 'b', 'python3'), path);
    assert.ok('skipped' in explicit && /has PyTorch 1\.13\.1, not 2\.x/.test(explicit.skipped), JSON.stringify(explicit));
    assert.deepEqual(findPeerPython(join(root, 'd', 'python3'), path), { python: join(root, 'd', 'python3'), torch: '2.1.0' });
  });
});

test('training lines carry the peer figure with its PyTorch version and threads, the ratio, MFU over the run\'s GEMM roof and a step profile', () => {
  withTempDir('bench-train-', (root) => {
    const python = fakePython(join(root, 'bin'), '2.13.0+cpu', { train_tokens_per_s: 250, gemm_gflops: 80 });
    const r = bench(root, ['--only', 'train', '--tiny', '--peer-python', python]);
    assert.equal(r.status, 0, r.stderr);
    const out = lines(r.stdout);
    const roof = out.find((l) => l.bench === 'gemm_roof');
    const train = out.find((l) => l.bench === 'train');
    assert.equal(roof!.bench, 'gemm_roof');
    assert.ok((roof!.gflops as number) > 0);
    assert.equal(roof!.peer_gflops, 80);
    assert.equal(train!.bench, 'train');
    assert.equal(train!.peer_tokens_per_s, 250);
    assert.equal(train!.peer_torch, '2.13.0+cpu');
    assert.equal(train!.peer_threads, 2);
    assert.equal(train!.ratio, +((train!.tokens_per_s as number) / 250).toFixed(3));
    // Two rounds at the tiny size, each with a peer run of its own; the line is the lower one.
    const rounds = train!.rounds as { tokens_per_s: number; peer_tokens_per_s: number; ratio: number }[];
    assert.equal(rounds.length, 2, JSON.stringify(train));
    for (const round of rounds) assert.equal(round.ratio, +(round.tokens_per_s / 250).toFixed(3));
    assert.equal(train!.ratio, Math.min(...rounds.map((x) => x.ratio)));
    assert.deepEqual(train!.ratio_range, [Math.min(...rounds.map((x) => x.ratio)), Math.max(...rounds.map((x) => x.ratio))]);
    const peerRuns = readFileSync(join(root, 'bin', 'runs'), 'utf8').trim().split('\n');
    assert.equal(peerRuns.filter((a) => a.includes('--batch 2')).length, 2, peerRuns.join('\n'));
    assert.equal(train!.gemm_roof_gflops, roof!.gflops);
    assert.ok(Math.abs((train!.mfu as number) - (train!.gflops as number) / (roof!.gflops as number)) < 2e-3, JSON.stringify(train));
    assert.ok(Math.abs((train!.mfu_peer_roof as number) - (train!.gflops as number) / 80) < 2e-3);
    const share = train!.share as Record<string, number>;
    assert.deepEqual(Object.keys(share).sort(), ['attention', 'elementwise', 'matmul', 'optimizer', 'overhead']);
    assert.ok(Object.values(share).every((x) => x >= 0 && x <= 1));
    assert.ok(Math.abs(Object.values(share).reduce((a, b) => a + b, 0) - 1) < 0.01, JSON.stringify(share));
    assert.ok(share.matmul! > 0 && share.attention! > 0 && share.optimizer! > 0, JSON.stringify(share));
    if (existsSync('/proc/stat')) {
      // The share of CPU time the hypervisor took while the line was measured, and over the peer's
      // run when it lasted a clock tick (this stand-in peer may not).
      for (const line of [roof!, train!]) {
        assert.ok(isShare(line.cpu_steal), `cpu_steal of ${JSON.stringify(line)}`);
        assert.ok(line.peer_cpu_steal === undefined || isShare(line.peer_cpu_steal), `peer_cpu_steal of ${JSON.stringify(line)}`);
      }
    }
  });
});

test('each serving line is compared with a peer run made right after it, at as many sequences as it had streams', () => {
  withTempDir('bench-generate-peer-', (root) => {
    const python = fakePython(join(root, 'bin'), '2.13.0+cpu', { gen_tokens_per_s: 500, gen_batch_tokens_per_s: 4000 });
    const r = bench(root, ['--only', 'generate', '--tiny', '--peer-python', python]);
    assert.equal(r.status, 0, r.stderr);
    const serving = lines(r.stdout).filter((l) => l.bench === 'generate');
    assert.equal(serving.length, 2, r.stdout);
    for (const line of serving) {
      assert.equal(line.peer_batch, line.concurrency);
      assert.equal(line.peer_tokens_per_s, 4000);
      assert.equal(line.ratio, +((line.tokens_per_s as number) / 4000).toFixed(3));
      assert.equal(line.peer_torch, '2.13.0+cpu');
      if (existsSync('/proc/stat')) assert.ok(isShare(line.cpu_steal) && (line.peer_cpu_steal === undefined || isShare(line.peer_cpu_steal)), JSON.stringify(line));
    }
    // One decoding run per line (the version probe aside), each at the line's stream count.
    const runs = readFileSync(join(root, 'bin', 'runs'), 'utf8').trim().split('\n');
    assert.deepEqual(runs.map((a) => /--gen-batch (\d+)/.exec(a)?.[1]), serving.map((l) => String(l.concurrency)));
  });
});

test('with only PyTorch 1.x available the peer columns are skipped with the reason, never filled from 1.x', () => {
  withTempDir('bench-old-peer-', (root) => {
    const python = fakePython(join(root, 'bin'), '1.13.1');
    const r = bench(root, ['--only', 'decode', '--tiny', '--peer-python', python]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /peer skipped: .*PyTorch 1\.13\.1, not 2\.x/);
    for (const line of lines(r.stdout)) {
      assert.match(String(line.peer_skipped), /1\.13\.1, not 2\.x/);
      assert.equal(line.peer_tokens_per_s, undefined);
      assert.equal(line.ratio, undefined);
    }
  });
});

test('every benchmark runs at a tiny size in a fresh clone (no data/ directory) and prints its lines', () => {
  withTempDir('bench-fresh-', (root) => {
    const known = bench(root, ['--only', 'no-such-benchmark']);
    assert.notEqual(known.status, 0);
    const names = /known: (.*)$/m.exec(known.stderr)?.[1]?.split(', ') ?? [];
    assert.ok(names.length >= 9 && names.includes('rlhf') && names.includes('loop'), known.stderr);
    for (const name of names) {
      const r = bench(root, ['--only', name, '--tiny', '--no-peer']);
      assert.equal(r.status, 0, `${name}: ${r.stderr}`);
      const out = lines(r.stdout);
      assert.ok(out.length > 0, `${name} printed nothing`);
      for (const line of out) assert.equal(typeof line.bench, 'string', `${name}: ${JSON.stringify(line)}`);
      if (name === 'rlhf') {
        const ppo = out.find((l) => l.bench === 'ppo');
        const reward = out.find((l) => l.bench === 'reward');
        assert.ok((ppo!.episodes_per_s as number) > 0 && (ppo!.rollout_ms as number) > 0 && (ppo!.update_ms as number) > 0, JSON.stringify(ppo));
        assert.ok((reward!.pairs_per_s as number) > 0, JSON.stringify(reward));
      }
      if (name === 'loop') {
        const loop = out.find((l) => l.bench === 'loop');
        assert.ok((loop!.idle_tokens_per_s as number) > 0 && (loop!.training_tokens_per_s as number) > 0, JSON.stringify(loop));
        assert.equal(loop!.tokens_share, +((loop!.training_tokens_per_s as number) / (loop!.idle_tokens_per_s as number)).toFixed(3));
        assert.ok(Number.isFinite(loop!.p99_ms) && (loop!.ppo_steps as number) > 0, JSON.stringify(loop));
      }
    }
  });
});
