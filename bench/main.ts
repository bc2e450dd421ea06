/**
 * `npm run bench -- [--json] [--only NAME[,NAME]] [--peer PATH]`: the project's benchmarks, one
 * JSON object per line with `--json`. `load` takes `--clients N --seconds S --swaps K [--shape tiny]`.
 *
 * `--peer PATH` (or `PEER_SCRIPT`) runs the PyTorch peer script (`torch_gpt.py`) on the same
 * shapes in the same run and adds `peer_tokens_per_s` and `ratio` to the training lines, so the
 * comparison is made on one machine at one moment.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { z } from 'zod';
import { printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';
import { benchTrain, SHAPES, type ShapeName } from './train.ts';

type Line = Record<string, unknown>;
type Bench = { name: string; run: (ctx: Ctx) => Promise<Line[]> };
export const BenchConfig = z.object({
  only: z.string().optional().describe('comma-separated benchmarks to run (default: all)'),
  peer: z.string().optional().describe('PyTorch peer script (torch_gpt.py) run on the same shapes (default: PEER_SCRIPT)'),
  clients: z.number().int().positive().optional().describe('load: concurrent WebSocket clients'),
  seconds: z.number().positive().optional().describe('load: duration'),
  swaps: z.number().int().nonnegative().optional().describe('load: hot swaps during the run'),
  shape: z.enum(['tiny', 'small']).optional().describe('load: model shape'),
  ...jsonOption,
});
type BenchConfig = Readonly<z.infer<typeof BenchConfig>>;

interface Ctx {
  peer?: string;
  cfg: BenchConfig;
}

function runPeer(script: string, shape: ShapeName): Line | undefined {
  const s = SHAPES[shape];
  const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const r = spawnSync(python, [script, '--layers', `${s.nLayer}`, '--heads', `${s.nHead}`, '--embd', `${s.nEmbd}`, '--block', `${s.blockSize}`, '--vocab', `${s.vocabSize}`, '--batch', `${s.batch}`], { encoding: 'utf8' });
  if (r.status !== 0) {
    console.error(`peer failed on ${shape}: ${r.stderr.trim().split('\n').pop()}`);
    return undefined;
  }
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Line;
}

const BENCHES: Bench[] = [
  {
    name: 'train',
    run: async (ctx) => {
      const out: Line[] = [];
      for (const shape of ['small', 'medium'] as const) {
        const line: Line = await benchTrain(shape);
        if (ctx.peer) {
          const peer = runPeer(ctx.peer, shape);
          if (peer) {
            line.peer_tokens_per_s = peer.train_tokens_per_s;
            line.ratio = +((line.tokens_per_s as number) / (peer.train_tokens_per_s as number)).toFixed(3);
          }
        }
        out.push(line);
      }
      return out;
    },
  },
  {
    name: 'feedback_ingest',
    run: async () => {
      const { benchFeedbackIngest } = await import('./feedback-ingest.ts');
      const out = [await benchFeedbackIngest({})];
      if (process.env.DATABASE_URL?.startsWith('postgres')) out.push(await benchFeedbackIngest({ url: process.env.DATABASE_URL }));
      return out;
    },
  },
  {
    name: 'decode',
    run: async (ctx) => {
      const lines: Line[] = await (await import('./decode.ts')).benchDecode();
      if (ctx.peer) {
        const peers = new Map<string, Line | undefined>();
        for (const line of lines) {
          const shape = line.shape as ShapeName;
          if (!peers.has(shape)) peers.set(shape, runPeer(ctx.peer, shape));
          const peer = peers.get(shape);
          if (!peer) continue;
          line.peer_tokens_per_s = line.batch === 1 ? peer.gen_tokens_per_s : peer.gen_batch_tokens_per_s;
          line.ratio = +((line.tokens_per_s as number) / (line.peer_tokens_per_s as number)).toFixed(3);
        }
      }
      return lines;
    },
  },
  {
    name: 'generate',
    run: async () => (await import('./generate.ts')).benchGenerate(),
  },
  {
    name: 'rlhf',
    run: async () => (await import('./rlhf.ts')).benchRlhf(),
  },
  {
    name: 'loop',
    run: async () => (await import('./loop.ts')).benchLoop(),
  },
  {
    name: 'hot_swap',
    run: async () => [await (await import('./hot-swap.ts')).benchHotSwap()],
  },
  {
    name: 'load',
    run: async (ctx) => {
      const { clients, seconds, swaps, shape } = ctx.cfg;
      const { benchLoad } = await import('./load.ts');
      return [await benchLoad({ clients, seconds, swaps, shape })];
    },
  },
  {
    name: 'gemm',
    run: async () => {
      const { benchKernels } = await import('./kernels.ts');
      return benchKernels();
    },
  },
];

async function main(cfg: BenchConfig): Promise<void> {
  const only = cfg.only?.split(',');
  const ctx: Ctx = { peer: cfg.peer ?? process.env.PEER_SCRIPT, cfg };
  const unknown = only?.filter((n) => !BENCHES.some((b) => b.name === n));
  if (unknown?.length) throw new Error(`unknown benchmark ${unknown.join(', ')}; known: ${BENCHES.map((b) => b.name).join(', ')}`);
  for (const b of BENCHES) {
    if (only && !only.includes(b.name)) continue;
    printFigures(await b.run(ctx), cfg.json);
  }
}

// Exit explicitly: the wasm backend and closed servers can keep the event loop alive for a while.
await runCommand({ usage: 'npm run bench -- [--json] [--only NAME[,NAME]] [--peer PATH] [load: --clients N --seconds S --swaps K --shape tiny|small]', schema: BenchConfig, envPrefix: 'BENCH' }, main);
process.exit(process.exitCode ?? 0);
