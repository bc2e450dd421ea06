/**
 * Benchmark: judgement ingest into the feedback store.
 * 32 concurrent writers submit a mix of thumbs (50%), pairwise comparisons (30%) and 4-way
 * rankings (20%) through the store's group-commit writer for a fixed time; a write counts when
 * its promise resolves (after COMMIT). Reports throughput and latency percentiles.
 * Uses a temporary SQLite file (or, with a PostgreSQL URL, a temporary schema); never the
 * project's data directory.
 *
 *   node --import tsx bench/feedback-ingest.ts --json [--seconds 5] [--full-sync]
 *   (with DATABASE_URL=postgres://… set, PostgreSQL is measured too)
 */
import { performance } from 'node:perf_hooks';
import { openTempStore } from '../feedback/temp-store.ts';
import { seedContext, type SeededContext } from '../feedback/seed-context.ts';
import { z } from 'zod';
import { isMain, printFigures, runCommand } from '../cli/command.ts';
import { jsonOption } from '../cli/options.ts';

const WRITERS = 32;
const CONTEXTS = 64;

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function judgement(i: number, w: number, contexts: SeededContext[]): unknown {
  const c = contexts[(i * 7 + w) % contexts.length]!;
  const r = c.replies;
  const raterId = `bench-${w}-${i}`;
  const roll = i % 10;
  if (roll < 5) return { kind: 'thumb', messageId: r[i % 4], raterId, value: i % 3 ? 'up' : 'down', ...(i % 3 ? {} : { reason: 'unhelpful' }) };
  if (roll < 8) return { kind: 'comparison', contextId: c.contextId, a: r[0], b: r[1 + (i % 3)], choice: ['a', 'b', 'tie', 'both_bad'][i % 4], raterId };
  return { kind: 'ranking', contextId: c.contextId, candidates: [r[i % 4], r[(i + 1) % 4], r[(i + 2) % 4], r[(i + 3) % 4]], raterId };
}

/**
 * Runs the ingest benchmark against SQLite (no `url`; `synchronous` as in `openStore`, default
 * `normal`) or PostgreSQL (`url`).
 */
export async function benchFeedbackIngest(
  opts: { url?: string; seconds?: number; synchronous?: 'normal' | 'full' } = {},
): Promise<Record<string, unknown>> {
  const seconds = opts.seconds ?? 5;
  const synchronous = opts.synchronous ?? 'normal';
  const store = await openTempStore({ url: opts.url, prefix: 'fb_bench', synchronous });
  try {
    const contexts: SeededContext[] = [];
    for (let i = 0; i < CONTEXTS; i++) contexts.push(await seedContext(store.db, { n: 4, prompt: `question ${i}` }));

    const latencies: number[] = [];
    let refused = 0;
    const start = performance.now();
    const deadline = start + seconds * 1000;
    await Promise.all(
      Array.from({ length: WRITERS }, async (_, w) => {
        for (let i = 0; performance.now() < deadline; i++) {
          const t0 = performance.now();
          const r = await store.writer.submit(judgement(i, w, contexts));
          latencies.push(performance.now() - t0);
          if (!r.ok) refused++;
        }
      }),
    );
    const elapsed = (performance.now() - start) / 1000;
    const sorted = Float64Array.from(latencies).sort();
    const round = (x: number) => Math.round(x * 100) / 100;
    return {
      bench: 'feedback_ingest',
      db: store.dialect,
      writes_per_s: Math.round(latencies.length / elapsed),
      p50_ms: round(percentile(sorted, 50)),
      p99_ms: round(percentile(sorted, 99)),
      max_ms: round(sorted[sorted.length - 1] ?? Number.NaN),
      writers: WRITERS,
      ...(store.dialect === 'sqlite' ? { synchronous } : {}),
      judgements: latencies.length,
      refused,
      batches: store.writer.stats.batches,
      seconds: round(elapsed),
      mix: 'thumbs 50%, comparisons 30%, rankings(K=4) 20%',
    };
  } finally {
    await store.close();
  }
}

export const FeedbackIngestConfig = z.object({
  seconds: z.number().positive().optional().describe('duration of each measurement (default: the bench\'s own)'),
  fullSync: z.boolean().default(false).describe('SQLite synchronous=FULL instead of the store\'s default'),
  ...jsonOption,
});

if (isMain(import.meta.url)) {
  await runCommand({ usage: 'node --import tsx bench/feedback-ingest.ts [--json] [--seconds 5] [--full-sync]   (with DATABASE_URL=postgres://… PostgreSQL too)', schema: FeedbackIngestConfig, envPrefix: 'BENCH' }, async (cfg) => {
    const urls: (string | undefined)[] = [undefined];
    if (process.env.DATABASE_URL?.startsWith('postgres')) urls.push(process.env.DATABASE_URL);
    for (const url of urls) printFigures([await benchFeedbackIngest({ url, seconds: cfg.seconds, synchronous: cfg.fullSync ? 'full' : undefined })], cfg.json);
  });
}
