/**
 * Draws the README's picture of the end-to-end story: gold and proxy reward against KL to the
 * SFT model, one panel per `npm run simulate -- --json` result (its `curve`: every evaluation
 * the loop's PPO runs logged on held-out prompts, round by round), one point per evaluation.
 *
 *   npm run plot-curve -- docs/simulate-honest.json docs/simulate-kl-off.json docs/simulate-exploitable.json \
 *     --out docs/simulate-curve.png
 *
 * Drawn with Chart.js (the admin page's charting library) in headless Chromium
 * (`/usr/bin/chromium`, driven by playwright-core, a dev dependency), saved as PNG.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

interface Point { round?: number; step: number; kl: number; proxy: number; gold: number }
interface SimResult { curve?: Point[]; kl_coef?: number; exploitable?: boolean; gold_win_rate_vs_sft?: number | null; rounds?: number; judgements?: number; minutes?: number; iterations?: { round: number; status: string; reason?: string }[] }

/** A panel's title: which rubric, which leash, the outcome, and how often the Goodhart guard stopped PPO. */
export function panelTitle(r: SimResult): string {
  const rubric = r.exploitable ? 'users with a verbosity bias' : 'honest users';
  const leash = r.kl_coef === 0 ? 'no KL leash' : `KL coefficient ${r.kl_coef ?? '?'}`;
  const its = r.iterations ?? [];
  const stopped = its.filter((i) => /Goodhart|proxy reward rose.* while gold reward fell/.test(i.reason ?? '')).length;
  const guard = stopped ? `; guard stopped PPO in ${stopped}/${its.length} rounds` : '';
  return `${rubric}, ${leash} — gold win rate vs SFT ${r.gold_win_rate_vs_sft ?? '?'}${guard}`;
}

/** Chart.js datasets of one result: every evaluation as a point, gold and proxy against KL. */
export function datasets(r: SimResult): { label: string; data: { x: number; y: number }[] }[] {
  const pts = r.curve ?? [];
  return [
    { label: 'gold reward (hidden rubric)', data: pts.map((p) => ({ x: p.kl, y: p.gold })) },
    { label: 'proxy reward (that round\'s reward model)', data: pts.map((p) => ({ x: p.kl, y: p.proxy })) },
  ];
}

function page(results: SimResult[], chartJs: string): string {
  const panels = results.map((r, i) => ({ id: `c${i}`, title: panelTitle(r), datasets: datasets(r) }));
  return `<!doctype html><html><head><meta charset="utf-8"><style>
body { margin: 0; font: 14px system-ui, sans-serif; background: #fff; }
#all { display: flex; gap: 16px; padding: 16px; width: ${results.length * 600}px; }
.panel { width: 580px; height: 380px; }
</style><script>${chartJs}</script></head><body><div id="all">${panels.map((p) => `<div class="panel"><canvas id="${p.id}"></canvas></div>`).join('')}</div>
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
}
document.body.dataset.ready = '1';
</script></body></html>`;
}

/** Renders the panels to a PNG buffer. */
export async function renderCurves(results: SimResult[]): Promise<Buffer> {
  const chartJs = readFileSync(fileURLToPath(new URL('../node_modules/chart.js/dist/chart.umd.js', import.meta.url)), 'utf8');
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true, timeout: 20_000 });
  try {
    const p = await browser.newPage({ viewport: { width: results.length * 600 + 32, height: 420 }, deviceScaleFactor: 1.5 });
    await p.setContent(page(results, chartJs), { waitUntil: 'load' });
    await p.waitForSelector('body[data-ready="1"]');
    return await p.locator('#all').screenshot({ type: 'png' });
  } finally {
    await browser.close();
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { out: { type: 'string', default: 'docs/simulate-curve.png' } } });
  if (!positionals.length) throw new Error('give one or more `npm run simulate -- --json` result files');
  const results = positionals.map((f) => JSON.parse(readFileSync(f, 'utf8').trim().split('\n').at(-1)!) as SimResult);
  for (const [i, r] of results.entries()) if (!r.curve?.length) throw new Error(`${positionals[i]} has no curve (was it written by npm run simulate -- --json?)`);
  writeFileSync(values.out!, await renderCurves(results));
  console.error(`plot-curve: wrote ${values.out}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    console.error(`plot-curve: ${(err as Error).message}`);
    process.exit(1);
  });
}
