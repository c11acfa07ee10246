// Benchmark helpers: repeated runs, min/median/max, and ratios to a baseline
// measured in the same run (the machine is shared and noisy).
export interface Summary {
  min: number;
  median: number;
  max: number;
}

export function summarize(xs: number[]): Summary {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0] ?? NaN, median: s[Math.floor(s.length / 2)] ?? NaN, max: s[s.length - 1] ?? NaN };
}

export function fmt(x: number, digits = 2): string {
  return Number.isFinite(x) ? x.toFixed(digits) : String(x);
}

/** Rows: label, per-run values (lower is better), and the baseline's per-run values. */
export function table(unit: string, rows: { label: string; runs: number[] }[], baseline: number[]): string[] {
  const base = summarize(baseline);
  const lines = [`${'case'.padEnd(44)} ${unit.padStart(28)}   ratio to kernel (median)`];
  lines.push(`${''.padEnd(44)} ${'min / median / max'.padStart(28)}`);
  for (const r of rows) {
    const s = summarize(r.runs);
    const v = `${fmt(s.min)} / ${fmt(s.median)} / ${fmt(s.max)}`;
    lines.push(`${r.label.padEnd(44)} ${v.padStart(28)}   ${fmt(s.median / base.median)}x`);
  }
  return lines;
}

export const RUNS = Number(process.env.DAXMAP_BENCH_RUNS ?? 5);
