// A one-line progress bar on stderr, drawn only when stderr is a terminal.
export interface ProgressOut {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

export class ProgressBar {
  private last = -1;
  private lastDraw = 0;
  private drawn = false;
  constructor(private readonly out: ProgressOut, private readonly enabled = out.isTTY === true) {}

  update(label: string, done: number, total: number): void {
    if (!this.enabled) return;
    const pct = total > 0 ? Math.min(100, Math.floor((done / total) * 100)) : 0;
    const now = Date.now();
    if (pct === this.last && now - this.lastDraw < 250) return;
    this.last = pct;
    this.lastDraw = now;
    const width = Math.max(10, Math.min(40, (this.out.columns ?? 80) - label.length - 12));
    const fill = Math.round((pct / 100) * width);
    this.out.write(`\r${label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${String(pct).padStart(3)}%`);
    this.drawn = true;
  }

  done(): void {
    if (this.drawn) this.out.write('\r\x1b[K');
    this.drawn = false;
  }
}
