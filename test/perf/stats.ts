// Benchmark helpers: repeated runs, min/median/max, and ratios to a baseline
// measured in the same run (the machine is shared and noisy).
import { readFileSync } from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';

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

// ---- helpers for the mapping benchmarks (test/perf/map-*.test.ts) ----

export interface TableOptions {
  /** Digits after the point (default 2). */
  digits?: number;
  /** Header of the ratio column (default 'ratio to kernel (median)'). */
  ratio?: string;
}

/**
 * Like `table`, for any unit (higher- or lower-is-better): each row's median over the
 * baseline's median. With a baseline per row (`base`), each row is compared to its own
 * kernel baseline measured in the same runs.
 */
export function tableOf(unit: string, rows: { label: string; runs: number[]; base?: number[] }[], baseline: number[], opts: TableOptions = {}): string[] {
  const d = opts.digits ?? 2;
  const lines = [`${'case'.padEnd(48)} ${unit.padStart(30)}   ${opts.ratio ?? 'ratio to kernel (median)'}`];
  lines.push(`${''.padEnd(48)} ${'min / median / max'.padStart(30)}`);
  for (const r of rows) {
    const s = summarize(r.runs);
    const b = summarize(r.base ?? baseline);
    const v = `${fmt(s.min, d)} / ${fmt(s.median, d)} / ${fmt(s.max, d)}`;
    lines.push(`${r.label.padEnd(48)} ${v.padStart(30)}   ${fmt(s.median / b.median)}x`);
  }
  return lines;
}

/** Per-run ratios a[i] / b[i] (pairs measured in the same run), summarized. */
export function pairedRatio(a: number[], b: number[]): Summary {
  return summarize(a.map((x, i) => x / b[i]!));
}

export function fmtSummary(s: Summary, digits = 2, suffix = ''): string {
  return `${fmt(s.min, digits)}${suffix} / ${fmt(s.median, digits)}${suffix} / ${fmt(s.max, digits)}${suffix}`;
}

/** An integer from the environment, else `dflt`. */
export function envInt(name: string, dflt: number): number {
  const v = Number(process.env[name]);
  return Number.isSafeInteger(v) && v > 0 ? v : dflt;
}

/** A permutation of 0..n-1 from a fixed seed (xorshift32 + Fisher-Yates). */
export function shuffled(n: number, seed = 0x9e3779b9): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  let s = seed >>> 0 || 1;
  for (let i = n - 1; i > 0; i--) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    const j = s % (i + 1);
    const x = p[i]!; p[i] = p[j]!; p[j] = x;
  }
  return p;
}

/** A field of /proc/self/status in KiB (VmRSS, RssShmem, VmPTE...). */
export function procStatusKiB(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** Nanoseconds of a synchronous call. */
let collect: (() => void) | undefined;

/**
 * A full garbage collection of this process's heap, before a timed section: mapping a
 * large file (daxmap's Buffer, or the kernel baseline's external ArrayBuffer alike)
 * adds its length to V8's external memory, which starts a major GC whose concurrent
 * marking then ran on four threads beside the timed stores (docs/bench.md, "The
 * harness").
 */
export function settleHeap(): void {
  if (collect === undefined) {
    v8.setFlagsFromString('--expose-gc');
    collect = vm.runInNewContext('gc') as () => void;
  }
  collect();
}

export function timeNs(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0);
}

/** One line from a pool's fault stats (the fields a benchmark wants to see), or the difference of two snapshots' counters. */
export function faultLine(s: FaultCounters, before?: FaultCounters): string {
  const d = (k: keyof Omit<FaultCounters, 'latencyUs'>): number => s[k] - (before?.[k] ?? 0);
  const l = s.latencyUs;
  return `faults ${d('faults')} (read ${d('read')}, write ${d('write')}; pmd ${d('pmd')}, pte ${d('pte')}; zero-page ${d('zeroPage')}; ` +
    `hole ${d('hole')}, written ${d('written')}; evictions ${d('evictions')}, sigbus ${d('sigbus')}), ` +
    `latency µs p50 ${Math.round(l.p50)} p90 ${Math.round(l.p90)} p99 ${Math.round(l.p99)} max ${Math.round(l.max)} over ${l.count}`;
}

/** The counters of a pool's `stats()` that faultLine prints (structurally the FaultStats of the package root). */
export interface FaultCounters {
  faults: number; read: number; write: number; pmd: number; pte: number; zeroPage: number;
  hole: number; written: number; evictions: number; sigbus: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number; count: number };
}
