/**
 * CPU time the hypervisor ran other guests while this machine's virtual CPUs had work ("steal"
 * in /proc/stat), as a share of the time they had work (busy + stolen, idle left out) over a
 * span: so a one-thread run and a two-thread run are measured alike. On a shared VM every figure
 * depends on it: a line measured while a third of that time was stolen is not the figure of a
 * quiet machine. Undefined where /proc/stat is missing (not Linux) or nothing ran.
 */
import { readFileSync } from 'node:fs';

/** The machine's summed CPU times: [steal, busy + steal] in clock ticks, or undefined. */
function cpuTicks(): [number, number] | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/stat', 'utf8');
  } catch {
    return undefined;
  }
  const line = text.split('\n', 1)[0]!;
  if (!line.startsWith('cpu ')) return undefined;
  // user nice system idle iowait irq softirq steal [guest guest_nice: already inside user and nice]
  const t = line.trim().split(/\s+/).slice(1, 9).map(Number);
  if (t.length < 8 || t.some((x) => !Number.isFinite(x))) return undefined;
  const [user, nice, system, , , irq, softirq, steal] = t as [number, number, number, number, number, number, number, number];
  return [steal, user + nice + system + irq + softirq + steal];
}

/** Starts a span; the function it returns gives the steal share since then (3 decimals), or undefined. */
export function stealMeter(): () => number | undefined {
  const from = cpuTicks();
  return () => {
    const to = cpuTicks();
    if (!from || !to || to[1] <= from[1]) return undefined;
    return +((to[0] - from[0]) / (to[1] - from[1])).toFixed(3);
  };
}
