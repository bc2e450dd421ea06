/**
 * Hot swap under load, through the real server (in-process, ephemeral port, temporary SQLite
 * store), "small" shape with random weights: 16 WebSocket streams in flight while the champion
 * is promoted 10 times through `/admin/promote` (alternating two versions).
 *
 * `pause_ms`: the longest gap between two deltas of any stream in a window around a swap, minus
 * the median gap over the whole run. `failed_requests`: replies that ended in an error or not at all.
 *
 * Run: `node --import tsx bench/hot-swap.ts [--json]` or `npm run bench -- --only hot_swap --json`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { initBackend } from '../model/backend.ts';
import { readCheckpointMeta, saveCheckpoint, versionId } from '../model/checkpoint.ts';
import { GPT } from '../model/gpt.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { registerModelVersion } from '../feedback/model-versions.ts';
import { openTempStore } from '../feedback/temp-store.ts';
import { defaultServerConfig } from '../server/config.ts';
import { loadServedModel } from '../server/model-host.ts';
import { startServer } from '../server/server.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';
import { benchTokenizer } from './bench-tokenizer.ts';

const SHAPES = {
  small: { nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 128, vocabSize: 2048 },
  tiny: { nLayer: 1, nHead: 2, nEmbd: 32, blockSize: 64, vocabSize: 300 },
} as const;
const TOKEN = 'bench-hot-swap-admin-token';

async function save(dir: string, tok: Tokenizer, shape: keyof typeof SHAPES, seed: number): Promise<string> {
  const config = { ...SHAPES[shape], vocabSize: tok.vocabSize };
  const gpt = GPT.create(config, 'policy', seed);
  saveCheckpoint(dir, { weights: await gpt.exportWeights(), meta: { stage: 'sft', kind: 'policy', config, tokenizerFingerprint: tok.fingerprint(), parent: null, step: 0, metrics: {}, runConfig: {} }, tokenizer: tok.toJSON() });
  gpt.dispose();
  return dir;
}

export async function benchHotSwap(opts: { streams?: number; swaps?: number; shape?: keyof typeof SHAPES } = {}): Promise<Record<string, unknown>> {
  const shape = opts.shape ?? 'small';
  const streams = opts.streams ?? 16;
  const swaps = opts.swaps ?? 10;
  await initBackend({ log: () => {} });
  const root = mkdtempSync(join(tmpdir(), 'bench-swap-'));
  const tok = benchTokenizer(SHAPES[shape].vocabSize);
  const dirA = await save(join(root, 'sft'), tok, shape, 1);
  const dirB = await save(join(root, 'ppo'), tok, shape, 2);
  const store = await openTempStore({ prefix: 'bench_swap' });
  const srv = await startServer(defaultServerConfig({ port: 0, host: '127.0.0.1', adminToken: TOKEN, maxTokens: 4096, requestsPerMinute: 1_000_000, messagesPerSecond: 100_000 }), { model: await loadServedModel(dirA), store, ownStore: true, defaultMetrics: false, log: () => {} });
  await srv.ready;
  const idA = srv.chat()!.model.version;
  const metaB = readCheckpointMeta(dirB);
  const idB = versionId(dirB, metaB.sha256);
  await registerModelVersion(store.db, { id: idB, kind: 'policy', checkpoint: dirB, sha256: metaB.sha256, stage: 'policy' });

  const gaps: number[] = [];
  const deltaTimes: number[][] = [];
  let failed = 0;
  const errors = new Map<string, number>();
  let running = true;
  const runStream = async (i: number) => {
    const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/ws`);
    const times: number[] = [];
    deltaTimes.push(times);
    let resolveReply: ((ok: boolean) => void) | undefined;
    let conversationId = '';
    await new Promise<void>((res, rej) => {
      ws.on('message', (d) => {
        const m = JSON.parse(String(d)) as Record<string, unknown>;
        if (m.type === 'ready') ws.send(JSON.stringify({ type: 'start', userId: `b${i}` }));
        else if (m.type === 'conversation') ((conversationId = m.conversationId as string), res());
        else if (m.type === 'delta') times.push(performance.now());
        else if (m.type === 'reply') resolveReply?.(true);
        else if (m.type === 'error') {
          errors.set(String(m.code), (errors.get(String(m.code)) ?? 0) + 1);
          resolveReply?.(false);
        }
      });
      ws.on('error', rej);
    });
    while (running) {
      const ok = await new Promise<boolean>((res) => {
        resolveReply = res;
        const t = setTimeout(() => res(false), 60_000);
        ws.send(JSON.stringify({ type: 'user_message', conversationId, content: `tell me about word${i}`, params: { maxTokens: shape === 'tiny' ? 16 : 100, temperature: 1, seed: i } }));
        resolveReply = (v) => (clearTimeout(t), res(v));
      });
      if (!ok) failed++;
      // A new conversation each time keeps prompts short (no context growth).
      conversationId = await new Promise<string>((res) => {
        ws.once('message', (d) => res((JSON.parse(String(d)) as { conversationId: string }).conversationId));
        ws.send(JSON.stringify({ type: 'start', userId: `b${i}` }));
      });
    }
    ws.close();
  };
  const all = Array.from({ length: streams }, (_, i) => runStream(i));
  await new Promise((r) => setTimeout(r, 1500)); // steady state
  const swapTimes: number[] = [];
  for (let s = 0; s < swaps; s++) {
    const t = performance.now();
    const r = await fetch(`${srv.url}/admin/promote`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ versionId: s % 2 === 0 ? idB : idA }) });
    if (r.status !== 200) throw new Error(`promote failed: ${await r.text()}`);
    swapTimes.push(t, performance.now());
    await new Promise((r2) => setTimeout(r2, 400));
  }
  running = false;
  await Promise.all(all);
  for (const times of deltaTimes) for (let k = 1; k < times.length; k++) gaps.push(times[k]! - times[k - 1]!);
  const sorted = [...gaps].sort((x, y) => x - y);
  const normal = sorted[Math.floor(sorted.length / 2)] ?? 0;
  let worst = 0;
  for (let s = 0; s < swapTimes.length; s += 2) {
    const from = swapTimes[s]! - 50;
    const to = swapTimes[s + 1]! + 200;
    for (const times of deltaTimes) for (let k = 1; k < times.length; k++) if (times[k]! >= from && times[k - 1]! <= to) worst = Math.max(worst, times[k]! - times[k - 1]!);
  }
  await srv.close();
  rmSync(root, { recursive: true, force: true });
  return { bench: 'hot_swap', shape, pause_ms: +Math.max(0, worst - normal).toFixed(1), failed_requests: failed, errors: Object.fromEntries(errors), streams, swaps, normal_gap_ms: +normal.toFixed(1), max_gap_ms: +worst.toFixed(1) };
}

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx bench/hot-swap.ts [--json]', schema: z.object(jsonOption), envPrefix: 'BENCH' }, async ({ json }) => printFigures([await benchHotSwap()], json));
  process.exit(process.exitCode ?? 0);
}
