// Random 4 KiB first-touch writes through a pool mapping with fault-around off, on a
// tmpfs file with more pages than the installed-window budget, so the policy evicts
// older windows while faulting, against the kernel's own first touch of random pages
// of a fresh MAP_SHARED tmpfs file, in the same run. (The same below the budget, and on
// a disk-file pool, are rows 1 and 2 of the table: summary.test.ts, docs/bench.md.)
// Prints figures; asserts only that every run completed and the data reads back.
// DAXMAP_BENCH_RANDOM_BIG_MB (default 256), DAXMAP_BENCH_RANDOM_BIG_RUNS (default 1;
// 0 skips it).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Pool } from '../../dist/index';
import { defaultWindowBudget } from '../../dist/fault/budget';
import { openDevice } from '../../dist/device/device';
import { envInt, faultLine, fmtSummary, pairedRatio, shuffled, tableOf, timeNs } from './stats';

const PAGE = 4096;
const MiB = 1 << 20;
let seq = 0;

function tempPath(dir: string, what: string): string {
  return path.join(dir, `daxmap-bench-${what}-${process.pid}-${seq++}`);
}

/** One byte stored into each page, in the given order; µs per page. */
function touch(b: Buffer, order: Uint32Array, stamp: (page: number) => number): number {
  const ns = timeNs(() => {
    for (let i = 0; i < order.length; i++) {
      const p = order[i]!;
      b[p * PAGE + (p % 4093)] = stamp(p);
    }
  });
  return ns / 1000 / order.length;
}

const stampOf = (run: number) => (p: number): number => ((p * 31 + run * 7) & 0xff) | 1;

/** The kernel: a fresh file of `size` mapped MAP_SHARED, first-touched in `order`. */
function kernelRun(dir: string, size: number, order: Uint32Array, run: number): number {
  const p = tempPath(dir, 'kernel');
  try {
    const dev = openDevice(p, { create: true, size });
    try {
      return touch(dev.view(0, size), order, stampOf(run));
    } finally {
      dev.close();
    }
  } finally {
    fs.rmSync(p, { force: true });
  }
}

const bigRuns = Number(process.env['DAXMAP_BENCH_RANDOM_BIG_RUNS'] ?? 1);
const cases = [
  { kind: 'tmpfs', dir: '/dev/shm', mb: envInt('DAXMAP_BENCH_RANDOM_BIG_MB', 256), runs: Number.isSafeInteger(bigRuns) && bigRuns >= 0 ? bigRuns : 1 },
] as const;

for (const { kind, dir, mb, runs } of cases) {
  if (runs === 0) continue;
  t.test(`random 4 KiB first-touch writes, fault-around off, ${kind} pool, ${mb} MiB`, async (t) => {
    const size = mb * MiB;
    const pages = size / PAGE;
    const poolPath = tempPath(dir, 'pool');
    t.teardown(() => fs.rmSync(poolPath, { force: true }));
    const pool = await Pool.create(poolPath, { size: size + 64 * MiB });
    t.teardown(() => pool.close());

    // Warm-up (not timed): the service's JIT and the first allocations of the pool.
    {
      const f = await pool.openFile('warmup', { create: true });
      await f.truncate(4 * MiB);
      const m = await f.map({ faultAround: false });
      touch(m.buffer, shuffled(1024, 1), stampOf(0));
      await m.unmap();
      await f.close();
      await pool.unlink('warmup');
    }
    const before = await pool.stats();

    const kernel: number[] = [];
    const trapped: number[] = [];
    let checked = 0;
    for (let run = 0; run < runs; run++) {
      const order = shuffled(pages, 0x1234567 + run);
      kernel.push(kernelRun(dir, size, order, run));
      const name = `random-${run}`;
      const f = await pool.openFile(name, { create: true });
      await f.truncate(size);
      const m = await f.map({ faultAround: false });
      trapped.push(touch(m.buffer, order, stampOf(run)));
      await m.unmap();
      // Spot check through file.read (no fault): 64 pages spread over the file.
      const page = Buffer.alloc(PAGE);
      const stamp = stampOf(run);
      for (let k = 0; k < 64; k++) {
        const p = Math.floor((k * pages) / 64);
        await f.read(page, p * PAGE);
        if (page[p % 4093] !== stamp(p) || page[(p % 4093) ^ 1] !== 0) t.fail(`run ${run}: page ${p} reads back wrong`);
        else checked++;
      }
      const st = await f.stat();
      t.equal(st.allocated, size, `run ${run}: every page got a block`);
      await f.close();
      await pool.unlink(name);
    }
    const after = await pool.stats();

    const budget = defaultWindowBudget();
    t.comment(`${runs} run(s); each touches all ${pages} pages of ${mb} MiB once, in a random order (one 1-byte store per page); ` +
      `window budget ${budget}${pages > budget ? ': more pages than the budget, so faults evict older windows' : ''}`);
    for (const l of tableOf('µs per fault', [
      { label: 'kernel MAP_SHARED tmpfs file (baseline)', runs: kernel },
      { label: `daxmap map({ faultAround: false })`, runs: trapped },
    ], kernel)) t.comment(l);
    t.comment(`per-run ratio daxmap/kernel min / median / max: ${fmtSummary(pairedRatio(trapped, kernel), 2, 'x')} (aim: <= 3x)`);
    t.comment(`pool fault stats over the timed runs: ${faultLine(after, before)} (latency percentiles: whole pool life, log2 buckets)`);
    t.equal(kernel.length, runs, 'every kernel run completed');
    t.equal(trapped.length, runs, 'every pool run completed');
    t.equal(checked, runs * 64, 'every spot-checked page read back its store');
    t.equal(after.sigbus - before.sigbus, 0, 'no fault was answered with SIGBUS');
    // Each page is allocated by exactly one fault. A page may fault a second time (seen
    // once in 65536 on a loaded machine, with evictions running: a fault on a written
    // block), so the 4 KiB answers are counted, not equated.
    t.equal(after.hole - before.hole, runs * pages, 'every page was allocated by one fault on a hole');
    t.equal(after.pmd - before.pmd, 0, 'every fault was answered with 4 KiB pages');
    if (after.written - before.written > 0) t.comment(`${after.written - before.written} fault(s) on pages already allocated (a page faulted twice)`);
  });
}
