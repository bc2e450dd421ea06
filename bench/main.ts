/**
 * `npm run bench -- [--json] [--only NAME[,NAME]] [--tiny] [--peer-python PYTHON] [--peer PATH | --no-peer]`:
 * the project's benchmarks, one JSON object per line with `--json`. `load` takes
 * `--clients N --seconds S --swaps K [--shape tiny]`.
 *
 * The PyTorch peer (bench/peer/torch_gpt.py, or `--peer PATH` / `PEER_SCRIPT`) runs on the same
 * shapes in the same run, with `--peer-python` / `PEER_PYTHON`, else the first `python3` on PATH
 * whose PyTorch is 2.x (bench/peer.ts). Lines it applies to get `peer_tokens_per_s`, `ratio`,
 * `peer_torch` and `peer_threads`; when it cannot run, `peer_skipped` says why. `--no-peer` skips it.
 * Each training shape runs three rounds, the project's steps then a fresh peer run: its line is
 * the round of median ratio, with `rounds` (every round's figures) and `ratio_range`.
 *
 * `--tiny` runs every benchmark at a size that takes seconds (for tests; figures meaningless).
 */
import { cpus, loadavg } from 'node:os';
import { z } from 'zod';
import { printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';
import { initBackend } from '../model/backend.ts';
import { benchTrain, trainFlopsPerToken, SHAPES, type ShapeName } from './train.ts';
import { findPeerPython, peerDecoder, PEER_SCRIPT, runPeer, type PeerDecoder, type PeerFigures, type PeerPython } from './peer.ts';
import { stealMeter } from './cpu-steal.ts';

type Line = Record<string, unknown>;
type Bench = { name: string; run: (ctx: Ctx) => Promise<Line[]> };
export const BenchConfig = z.object({
  only: z.string().optional().describe('comma-separated benchmarks to run (default: all)'),
  tiny: z.boolean().default(false).describe('every benchmark at a size that takes seconds (for tests; figures meaningless)'),
  peer: z.union([z.string(), z.literal(false)]).optional().describe('PyTorch peer script run on the same shapes (default: PEER_SCRIPT, else bench/peer/torch_gpt.py); --no-peer skips it'),
  peerPython: z.string().optional().describe('python that runs the peer (default: PEER_PYTHON, else the first python3 on PATH whose PyTorch is 2.x)'),
  clients: z.number().int().positive().optional().describe('load: concurrent WebSocket clients'),
  seconds: z.number().positive().optional().describe('load: duration'),
  swaps: z.number().int().nonnegative().optional().describe('load: hot swaps during the run'),
  shape: z.enum(['tiny', 'small']).optional().describe('load: model shape'),
  ...jsonOption,
});
type BenchConfig = Readonly<z.infer<typeof BenchConfig>>;

/** What every benchmark gets: the flags, the size, and the peer (found and run at most once per shape). */
class Ctx {
  private python?: PeerPython;
  private readonly figures = new Map<ShapeName, PeerFigures | { skipped: string }>();

  constructor(
    readonly cfg: BenchConfig,
    readonly tiny: boolean,
    /** The peer script, or undefined when the peer is off. */
    private readonly script: string | undefined,
    private readonly peerPython: string | undefined,
  ) {}

  /** The peer's figures on `shape`, or why there are none (the reason is printed once); `fresh` runs it again. */
  peer(shape: ShapeName, fresh = false): PeerFigures | { skipped: string } {
    const hit = this.figures.get(shape);
    if (hit && !(fresh && !('skipped' in hit))) return hit;
    let out: PeerFigures | { skipped: string };
    const found = this.found();
    if ('skipped' in found) out = found;
    else {
      try {
        out = runPeer(found.python, found.script, SHAPES[shape]);
      } catch (err) {
        out = { skipped: (err as Error).message };
      }
    }
    if ('skipped' in out && this.script && ![...this.figures.values()].some((f) => 'skipped' in f && f.skipped === out.skipped)) console.error(`bench: peer skipped: ${out.skipped}`);
    this.figures.set(shape, out);
    return out;
  }

  /** The peer's decoding, run when called (for lines compared with the same moment), or why there is none. */
  decoder(): PeerDecoder | { skipped: string } {
    const found = this.found();
    return 'skipped' in found ? found : peerDecoder(found.script, found.python, SHAPES.small);
  }

  /** The peer script and the python that runs it (looked for once), or why there is none. */
  private found(): { script: string; python: string } | { skipped: string } {
    if (!this.script) return { skipped: 'peer off (--no-peer)' };
    this.python ??= findPeerPython(this.peerPython);
    return 'skipped' in this.python ? this.python : { script: this.script, python: this.python.python };
  }

  /** Adds the peer's figure `pick(peer)` beside `line[key]`: the figure, the ratio, PyTorch's version and threads. */
  compare(line: Line, shape: ShapeName, key: string, pick: (p: PeerFigures) => number | undefined, fresh = false): void {
    const p = this.peer(shape, fresh);
    if ('skipped' in p) {
      line.peer_skipped = p.skipped;
      return;
    }
    const figure = pick(p);
    if (figure === undefined) return;
    line[`peer_${key}`] = figure;
    line.ratio = +((line[key] as number) / figure).toFixed(3);
    line.peer_torch = p.peer.replace(/^pytorch-/, '');
    line.peer_threads = p.threads;
    if (p.cpu_steal !== undefined) line.peer_cpu_steal = p.cpu_steal;
  }
}

/** Alternating rounds (project, then peer) per training shape; the line is the median round. */
const trainRounds = (tiny: boolean) => (tiny ? 2 : 3);

const BENCHES: Bench[] = [
  {
    name: 'train',
    run: async (ctx) => {
      await initBackend({ log: () => {} });
      const { gemmRoof } = await import('./kernels.ts');
      const roof = gemmRoof(ctx.tiny ? 20 : 150);
      const shapes: ShapeName[] = ctx.tiny ? ['tiny'] : ['small', 'medium'];
      const roofLine: Line = { bench: 'gemm_roof', m: 1024, n: 1024, k: 1024, gflops: roof.gflops, backend: roof.backend };
      ctx.compare(roofLine, shapes[0]!, 'gflops', (p) => p.gemm_gflops);
      const out: Line[] = [roofLine];
      for (const shape of shapes) {
        // Rounds of the project's steps then the peer's, alternating: the line is the round of
        // median ratio (both figures from one round), with every round's figures beside it.
        const rounds: Line[] = [];
        for (let r = 0; r < trainRounds(ctx.tiny); r++) {
          const line = await benchTrain(shape, { gemmGflops: roof.gflops, ...(ctx.tiny ? { steps: 2 } : {}) });
          ctx.compare(line, shape, 'tokens_per_s', (p) => p.train_tokens_per_s, r > 0);
          const peer = ctx.peer(shape);
          if (!('skipped' in peer)) {
            const flops = trainFlopsPerToken(shape, line.params as number);
            line.mfu_peer_roof = +((line.gflops as number) / peer.gemm_gflops).toFixed(3);
            line.peer_mfu = +((peer.train_tokens_per_s * flops) / 1e9 / peer.gemm_gflops).toFixed(3);
            line.peer_gemm_gflops = peer.gemm_gflops;
          }
          rounds.push(line);
        }
        const key = (l: Line) => (l.ratio ?? l.tokens_per_s) as number;
        const sorted = [...rounds].sort((a, b) => key(a) - key(b));
        const line = sorted[Math.floor((sorted.length - 1) / 2)]!;
        line.rounds = rounds.map((l) => ({ tokens_per_s: l.tokens_per_s, ...(l.ratio !== undefined ? { peer_tokens_per_s: l.peer_tokens_per_s, ratio: l.ratio } : {}) }));
        if (line.ratio !== undefined) line.ratio_range = [key(sorted[0]!), key(sorted[sorted.length - 1]!)];
        out.push(line);
      }
      return out;
    },
  },
  {
    name: 'feedback_ingest',
    run: async (ctx) => {
      const { benchFeedbackIngest } = await import('./feedback-ingest.ts');
      const seconds = ctx.tiny ? 0.5 : undefined;
      const out = [await benchFeedbackIngest({ seconds })];
      if (process.env.DATABASE_URL?.startsWith('postgres')) out.push(await benchFeedbackIngest({ url: process.env.DATABASE_URL, seconds }));
      return out;
    },
  },
  {
    name: 'decode',
    run: async (ctx) => {
      const lines: Line[] = await (await import('./decode.ts')).benchDecode(ctx.tiny ? { shapes: ['tiny'] } : {});
      for (const line of lines) ctx.compare(line, line.shape as ShapeName, 'tokens_per_s', (p) => (line.batch === 1 ? p.gen_tokens_per_s : line.batch === p.gen_batch ? p.gen_batch_tokens_per_s : undefined));
      return lines;
    },
  },
  {
    name: 'generate',
    run: async (ctx) => {
      // Streams through the server against the peer decoding as many sequences in one batch,
      // run right after each line (bench/generate.ts).
      const decoder = ctx.decoder();
      const peer = 'skipped' in decoder ? undefined : decoder;
      const lines: Line[] = await (await import('./generate.ts')).benchGenerate({ ...(ctx.tiny ? { shape: 'tiny', seconds: 1, skipIdle: true, wsStreams: [2], openaiStreams: [2] } : {}), peer });
      if ('skipped' in decoder) for (const line of lines) if (line.bench === 'generate') line.peer_skipped = decoder.skipped;
      return lines;
    },
  },
  {
    name: 'rlhf',
    run: async (ctx) => (await import('./rlhf.ts')).benchRlhf(ctx.tiny ? { shape: 'tiny' } : {}),
  },
  {
    name: 'loop',
    run: async (ctx) => (await import('./loop.ts')).benchLoop({ tiny: ctx.tiny }),
  },
  {
    name: 'hot_swap',
    run: async (ctx) => [await (await import('./hot-swap.ts')).benchHotSwap(ctx.tiny ? { streams: 2, swaps: 1, shape: 'tiny' } : {})],
  },
  {
    name: 'load',
    run: async (ctx) => {
      const { clients, seconds, swaps } = ctx.cfg;
      const { benchLoad } = await import('./load.ts');
      const tiny = ctx.tiny ? { clients: 4, seconds: 3, swaps: 1 } : {};
      return [await benchLoad({ ...tiny, clients: clients ?? tiny.clients, seconds: seconds ?? tiny.seconds, swaps: swaps ?? tiny.swaps, shape: ctx.cfg.shape ?? (ctx.tiny ? 'tiny' : undefined) })];
    },
  },
  {
    name: 'gemm',
    run: async (ctx) => {
      const { benchKernels } = await import('./kernels.ts');
      const lines = await benchKernels(ctx.tiny ? { budgetMs: 10, baseline: false } : {});
      const square = lines.find((l) => l.bench === 'gemm' && l.m === 1024 && l.n === 1024 && l.k === 1024 && !l.transA && !l.transB);
      if (square) ctx.compare(square, ctx.tiny ? 'tiny' : 'small', 'gflops', (p) => p.gemm_gflops);
      return lines;
    },
  },
];

async function main(cfg: BenchConfig): Promise<void> {
  const only = cfg.only?.split(',');
  const script = cfg.peer === false ? undefined : (cfg.peer ?? (process.env.PEER_SCRIPT || PEER_SCRIPT));
  const ctx = new Ctx(cfg, cfg.tiny, script, cfg.peerPython ?? (process.env.PEER_PYTHON || undefined));
  const unknown = only?.filter((n) => !BENCHES.some((b) => b.name === n));
  if (unknown?.length) throw new Error(`unknown benchmark ${unknown.join(', ')}; known: ${BENCHES.map((b) => b.name).join(', ')}`);
  // What else the machine was doing: on a shared machine every figure depends on it.
  const machine = (when: string): Line => ({ bench: 'machine', when, cpus: cpus().length, cpu: cpus()[0]?.model ?? '', load_avg_1m: +loadavg()[0]!.toFixed(2), node: process.version });
  printFigures([machine('start')], cfg.json);
  for (const b of BENCHES) {
    if (only && !only.includes(b.name)) continue;
    // Lines that time a span of their own (training, serving) carry its steal; the others the group's.
    const steal = stealMeter();
    const lines = await b.run(ctx);
    const share = steal();
    if (share !== undefined) for (const line of lines) line.cpu_steal ??= share;
    printFigures(lines, cfg.json);
  }
  printFigures([machine('end')], cfg.json);
}

// Exit explicitly: the wasm backend and closed servers can keep the event loop alive for a while.
await runCommand({ usage: 'npm run bench -- [--json] [--only NAME[,NAME]] [--tiny] [--peer-python PYTHON] [--peer PATH | --no-peer] [load: --clients N --seconds S --swaps K --shape tiny|small]', schema: BenchConfig, envPrefix: 'BENCH' }, main);
process.exit(process.exitCode ?? 0);
