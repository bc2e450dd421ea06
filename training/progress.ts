/**
 * A progress line for training runs: step, loss, tokens/s and ETA. On a terminal it redraws one
 * line; otherwise (CI, logs) it prints a line every few seconds.
 */
export class Progress {
  private readonly t0 = performance.now();
  private lastPrint = 0;
  private readonly tty = Boolean(process.stderr.isTTY);

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly start = 0,
    private readonly out: (s: string) => void = (s) => process.stderr.write(s),
  ) {}

  update(step: number, figures: { loss: number; tokensPerSecond: number }): void {
    const now = performance.now();
    if (now - this.lastPrint < (this.tty ? 200 : 10_000) && step < this.total) return;
    this.lastPrint = now;
    const done = step - this.start;
    const perStep = (now - this.t0) / Math.max(1, done);
    const eta = ((this.total - step) * perStep) / 1000;
    const width = 24;
    const filled = Math.round((width * step) / this.total);
    const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
    const line = `${this.label} [${bar}] ${step}/${this.total} loss ${figures.loss.toFixed(3)} ${Math.round(figures.tokensPerSecond)} tok/s ETA ${formatDuration(eta)}`;
    this.out(this.tty ? `\r${line}\x1b[K` : `${line}\n`);
  }

  /** A line that stays (evaluations, warnings). */
  note(line: string): void {
    this.out(this.tty ? `\r\x1b[K${this.label}: ${line}\n` : `${this.label}: ${line}\n`);
    this.lastPrint = 0;
  }

  done(): void {
    if (this.tty) this.out('\n');
  }
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m` : `${m}m${String(s % 60).padStart(2, '0')}s`;
}
