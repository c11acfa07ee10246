// The benchmark table (docs/bench.md): one row per measured case, each with daxmap's
// per-run figures and its baseline's, measured in the same runs, the per-run ratios
// daxmap / baseline summarized, and the aim. Printed as lines, and written as JSON.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fmt, summarize, type Summary } from './stats';

/** What a row aims at: a bound on the ratio's median (or on every run's ratio), or on daxmap's own figure. */
export interface Aim {
  text: string;
  met(ratio: Summary, ours: Summary): boolean | undefined;
}

export const aim = {
  ratioAtMost: (x: number): Aim => ({ text: `<= ${x}x`, met: (r) => r.median <= x }),
  ratioAtLeast: (x: number): Aim => ({ text: `>= ${x}x`, met: (r) => r.median >= x }),
  ratioBelow: (x: number): Aim => ({ text: `< ${x}x`, met: (r) => r.median < x }),
  ratioBelowEveryRun: (x: number): Aim => ({ text: `< ${x}x every run`, met: (r) => r.max < x }),
  valueAtMost: (x: number): Aim => ({ text: `daxmap <= ${x}`, met: (_r, o) => o.median <= x }),
  /** No bound: the row is there for comparison (`text` says with what). */
  none: (text = '-'): Aim => ({ text, met: () => undefined }),
};

export interface Row {
  /** Row number of the table ("1", "3a", ...). */
  id: string;
  what: string;
  unit: string;
  /** What the daxmap figure is divided by. */
  baseline: string;
  /** Per-run figures, daxmap and baseline; ours[i] and base[i] come from the same run. */
  ours: number[];
  base: number[];
  aim: Aim;
  note?: string;
}

export interface RowResult {
  id: string;
  what: string;
  unit: string;
  baseline: string;
  daxmap: Summary & { runs: number[] };
  kernel: Summary & { runs: number[] };
  ratio: Summary & { runs: number[] };
  aim: string;
  met: boolean | null;
  note?: string;
}

export function result(r: Row): RowResult {
  const ratios = r.ours.map((x, i) => x / r.base[i]!);
  const ratio = summarize(ratios);
  const ours = summarize(r.ours);
  return {
    id: r.id, what: r.what, unit: r.unit, baseline: r.baseline,
    daxmap: { ...ours, runs: r.ours },
    kernel: { ...summarize(r.base), runs: r.base },
    ratio: { ...ratio, runs: ratios },
    aim: r.aim.text,
    met: r.ours.length === 0 ? null : r.aim.met(ratio, ours) ?? null,
    ...(r.note !== undefined ? { note: r.note } : {}),
  };
}

function digitsFor(x: number): number {
  const a = Math.abs(x);
  return a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
}

const mmm = (s: Summary): string => [s.min, s.median, s.max].map((x) => fmt(x, digitsFor(s.median))).join(' / ');

/** The table's lines: rows in `order` (ids), a row not measured says so (and why, if `why` has its id). */
export function tableLines(results: RowResult[], order: { id: string; what: string }[], why: Record<string, string> = {}): string[] {
  const head = ['#', 'what', 'unit', 'daxmap min / median / max', 'baseline min / median / max', 'ratio median (min-max)', 'aim', 'met'];
  const body: string[][] = [];
  for (const o of order) {
    const r = results.find((x) => x.id === o.id);
    if (r === undefined) {
      body.push([o.id, o.what, '', `not measured (${why[o.id] ?? 'its test failed'})`, '', '', '', '']);
      continue;
    }
    const ratio = `${fmt(r.ratio.median)}x (${fmt(r.ratio.min)}-${fmt(r.ratio.max)})`;
    body.push([r.id, r.what, r.unit, mmm(r.daxmap), mmm(r.kernel), ratio, r.aim, r.met === null ? '-' : r.met ? 'yes' : 'NO']);
  }
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i >= 3 && i <= 5 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ').trimEnd();
  const out = [line(head), widths.map((w) => '-'.repeat(w)).join('-|-')];
  for (const b of body) out.push(line(b));
  out.push('');
  out.push('baselines (the ratio is daxmap / baseline, per run, both measured in that run):');
  for (const o of order) {
    const r = results.find((x) => x.id === o.id);
    if (r !== undefined) out.push(`  ${r.id.padEnd(4)} ${r.baseline}${r.note !== undefined ? `; ${r.note}` : ''}`);
  }
  return out;
}

/** Writes the results as JSON (DAXMAP_BENCH_JSON, else a fresh temporary directory); returns the path. */
export function writeJson(results: RowResult[], meta: Record<string, unknown>): string {
  const file = process.env['DAXMAP_BENCH_JSON'] ?? path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-bench-')), 'bench-results.json');
  fs.writeFileSync(file, JSON.stringify({ ...meta, rows: results }, null, 2) + '\n');
  return file;
}
