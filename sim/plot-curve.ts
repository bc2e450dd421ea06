/**
 * Draws the README's pictures of the story: one panel per `npm run simulate -- --json` result
 * (the file's last line; a pooled line draws its seeds together). Top: gold and proxy reward
 * against KL to the SFT model, one point per evaluation the loop's optimiser runs logged on
 * held-out prompts (every seed's). Bottom: the users' arena per round (the first seed's): the
 * always-valid interval of P(candidate ≻ champion) as a bar, the estimate and its
 * length-controlled value as points, and the line at one half.
 *
 *   npm run plot-curve -- docs/simulate-honest.json docs/simulate-over-optimisation.json docs/simulate-verbosity.json \
 *     --out docs/simulate-curve.png
 *
 * Drawn with Chart.js (the admin page's charting library) in headless Chromium
 * (`/usr/bin/chromium`, driven by playwright-core, a dev dependency), saved as PNG.
 */
import { CHROMIUM, CHROMIUM_ARGS } from '../client/headless-chromium.ts';
import { readFileSync, writeFileSync } from 'node:fs';
import { z } from 'zod';
import { isMain, runCommand } from '../cli/command.ts';
import { ConfigError } from '../cli/config.ts';
import { fileURLToPath } from 'node:url';


interface Point { round?: number; step: number; kl: number; proxy: number; gold: number }
interface Arena { n: number; p: number | null; interval: [number | null, number | null]; decision: string; length_controlled?: { p: number | null } }
interface Round { round: number; status?: string; decisions?: { by: string; action: string }[]; arena?: Arena | null }
/** A story's result: a per-seed line of `npm run simulate -- --json`, or the pooled last line (its `per_seed`). */
export interface SimResult {
  curve?: Point[];
  rounds?: Round[];
  per_seed?: SimResult[];
  kl_coef?: number | null;
  exploitable?: boolean;
  gold_gate?: boolean;
  gold_win_rate_vs_sft?: number | null;
  gold_win_rate_ci95?: [number | null, number | null];
  length_controlled_win_rate?: number | null;
}

/** The pooled line's seeds drawn together: every seed's evaluations, the first seed's rounds. */
export function flatten(r: SimResult): SimResult {
  if (!r.per_seed?.length) return r;
  return { ...r, curve: r.per_seed.flatMap((s) => s.curve ?? []), rounds: r.per_seed[0]!.rounds ?? [] };
}

/** A panel's title: which users, which leash, the outcome with its interval, and what the arena and the guards did. */
export function panelTitle(raw: SimResult): string {
  const r = flatten(raw);
  const rubric = r.exploitable ? 'users with a verbosity bias' : 'honest users';
  const leash = r.kl_coef === 0 ? 'no KL leash' : `KL coefficient ${r.kl_coef ?? '?'}`;
  const ci = r.gold_win_rate_ci95 ? ` [${r.gold_win_rate_ci95[0]}, ${r.gold_win_rate_ci95[1]}]` : '';
  const lc = r.length_controlled_win_rate !== undefined ? `, length-controlled ${r.length_controlled_win_rate}` : '';
  const decisions = (r.rounds ?? []).flatMap((x) => x.decisions ?? []);
  const count = (f: (d: { by: string; action: string }) => boolean): number => decisions.filter(f).length;
  const verdicts = [`users promoted ${count((d) => d.by === 'arena' && d.action === 'promote')}`, `rejected ${count((d) => d.by === 'arena' && d.action === 'reject')}`];
  const guards = count((d) => d.by === 'guard');
  return `${rubric}, ${leash}${r.gold_gate ? ', gold-gate ablation' : ''} — gold win rate vs SFT ${r.gold_win_rate_vs_sft ?? '?'}${ci}${lc}; ${verdicts.join(', ')}${guards ? `; guards acted ${guards}×` : ''}`;
}

/** Chart.js datasets of one result: every evaluation as a point, gold and proxy against KL. */
export function datasets(raw: SimResult): { label: string; data: { x: number; y: number }[] }[] {
  const pts = flatten(raw).curve ?? [];
  return [
    { label: 'gold reward (hidden rubric; reported, never decides)', data: pts.map((p) => ({ x: p.kl, y: p.gold })) },
    { label: 'proxy reward (that round\'s reward model)', data: pts.map((p) => ({ x: p.kl, y: p.proxy })) },
  ];
}

/** The arena per round: the interval as a floating bar, P(candidate ≻ champion) and its length-controlled value as points. */
export function arenaSeries(raw: SimResult): { labels: string[]; interval: [number, number][]; p: (number | null)[]; lengthControlled: (number | null)[] } {
  const rounds = (flatten(raw).rounds ?? []).filter((x) => x.arena && x.arena.p !== null);
  return {
    labels: rounds.map((x) => `round ${x.round}: ${x.arena!.decision} (n ${x.arena!.n})`),
    interval: rounds.map((x) => [x.arena!.interval[0] ?? 0, x.arena!.interval[1] ?? 1]),
    p: rounds.map((x) => x.arena!.p),
    lengthControlled: rounds.map((x) => x.arena!.length_controlled?.p ?? null),
  };
}

function page(results: SimResult[], chartJs: string): string {
  const panels = results.map((r, i) => ({ id: `c${i}`, title: panelTitle(r), datasets: datasets(r), arena: arenaSeries(r) }));
  return `<!doctype html><html><head><meta charset="utf-8"><style>
body { margin: 0; font: 14px system-ui, sans-serif; background: #fff; }
#all { display: flex; gap: 16px; padding: 16px; width: ${results.length * 600}px; }
.panel { width: 580px; }
.chart { height: 380px; }
.arena { height: 240px; margin-top: 8px; }
</style><script>${chartJs}</script></head><body><div id="all">${panels.map((p) => `<div class="panel"><div class="chart"><canvas id="${p.id}"></canvas></div><div class="arena"><canvas id="${p.id}a"></canvas></div></div>`).join('')}</div>
<script>
const panels = ${JSON.stringify(panels)};
const colours = ['#1b9e4b', '#2f6fd6'];
for (const p of panels) {
  new Chart(document.getElementById(p.id), {
    type: 'scatter',
    data: { datasets: p.datasets.map((d, k) => ({ ...d, borderColor: colours[k], backgroundColor: colours[k] + '99', pointStyle: k ? 'triangle' : 'circle', pointRadius: 5 })) },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      plugins: { title: { display: true, text: p.title }, legend: { position: 'bottom' } },
      scales: { x: { title: { display: true, text: 'KL to the SFT model (nats per reply)' } }, y: { title: { display: true, text: 'mean reward on held-out prompts' } } },
    },
  });
  new Chart(document.getElementById(p.id + 'a'), {
    type: 'bar',
    data: {
      labels: p.arena.labels,
      datasets: [
        { type: 'bar', label: 'head-to-head interval of the users (always valid, 95%)', data: p.arena.interval, backgroundColor: '#f2a33a88', borderColor: '#f2a33a', borderWidth: 1, order: 3 },
        { type: 'line', showLine: false, label: 'P(candidate ≻ champion)', order: 1, data: p.arena.p, borderColor: '#c0392b', backgroundColor: '#c0392b', pointRadius: 5 },
        { type: 'line', showLine: false, label: 'at equal length', order: 1, data: p.arena.lengthControlled, borderColor: '#555', backgroundColor: '#555', pointStyle: 'rectRot', pointRadius: 5 },
        { type: 'line', label: 'one half', data: p.arena.labels.map(() => 0.5), borderColor: '#999', borderDash: [4, 4], pointRadius: 0 },
      ],
    },
    options: { animation: false, responsive: true, maintainAspectRatio: false, plugins: { legend: { position: 'bottom' } }, scales: { y: { min: 0, max: 1, title: { display: true, text: 'arena, per round' } } } },
  });
}
document.body.dataset.ready = '1';
</script></body></html>`;
}

/** Renders the panels to a PNG buffer. */
export async function renderCurves(results: SimResult[]): Promise<Buffer> {
  const chartJs = readFileSync(fileURLToPath(new URL('../node_modules/chart.js/dist/chart.umd.js', import.meta.url)), 'utf8');
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS], headless: true, timeout: 20_000 });
  try {
    const p = await browser.newPage({ viewport: { width: results.length * 600 + 32, height: 680 }, deviceScaleFactor: 1.5 });
    const errors: string[] = [];
    p.on('pageerror', (e) => errors.push(e.message));
    await p.setContent(page(results, chartJs), { waitUntil: 'load' });
    if (errors.length) throw new Error(`the chart page failed: ${errors.join('; ')}`);
    await p.waitForSelector('body[data-ready="1"]');
    return await p.locator('#all').screenshot({ type: 'png' });
  } finally {
    await browser.close();
  }
}

export const PlotConfig = z.object({
  out: z.string().min(1).default('docs/simulate-curve.png').describe('the PNG written'),
});

async function main(cfg: Readonly<z.infer<typeof PlotConfig>>, positionals: readonly string[]): Promise<void> {
  if (!positionals.length) throw new ConfigError('give one or more `npm run simulate -- --json` result files');
  const results = positionals.map((f) => JSON.parse(readFileSync(f, 'utf8').trim().split('\n').at(-1)!) as SimResult);
  for (const [i, r] of results.entries()) if (!flatten(r).curve?.length) throw new Error(`${positionals[i]} has no curve (was it written by npm run simulate -- --json?)`);
  writeFileSync(cfg.out, await renderCurves(results));
  console.error(`plot-curve: wrote ${cfg.out}`);
}

if (isMain(import.meta.url)) {
  const usage = 'npm run plot-curve -- <simulate result.json>… [--out docs/simulate-curve.png]\n  one panel per result (its last JSON line): proxy and gold against KL, and the arena interval per round';
  await runCommand({ usage, schema: PlotConfig, envPrefix: 'PLOT_CURVE', positionals: 'result.json…' }, (cfg, { positionals }) => main(cfg, positionals));
}
