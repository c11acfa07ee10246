// Issue 4 benchmark 2: sequential first-touch write of a whole file through a pool
// mapping with the default policy (fault-around: one trapped fault answers an aligned
// 2 MiB window, allocated, zeroed, installed and populated), against the kernel's
// first touch of a fresh MAP_SHARED file mapping of the same kind, in the same run.
// Two ways to write: one 1-byte store per 4 KiB page (the fault cost), and
// buffer.fill over the whole mapping (what an application writing the file sees).
// Prints figures; asserts only that every run completed and the data reads back.
// Sizes: DAXMAP_BENCH_SEQ_MB (tmpfs, stores, default 1024), DAXMAP_BENCH_SEQ_SMALL_MB
// (tmpfs, stores and fill, default 256), DAXMAP_BENCH_SEQ_DISK_MB (disk file, stores,
// default 256).
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Pool } from '../../dist/index';
import { openDevice } from '../../dist/device/device';
import { RUNS, envInt, faultLine, fmtSummary, pairedRatio, tableOf, timeNs } from './stats';

const PAGE = 4096;
const MiB = 1 << 20;
const GiB = 1 << 30;
let seq = 0;

function tempPath(dir: string, what: string): string {
  return path.join(dir, `daxmap-bench-${what}-${process.pid}-${seq++}`);
}

type Mode = 'store' | 'fill';
const byteOf = (run: number): number => 0x40 + run;

/** Sequential first-touch write of `views` (together `size` bytes); ns. */
function write(views: Buffer[], mode: Mode, run: number): number {
  const v = byteOf(run);
  return timeNs(() => {
    for (const b of views) {
      if (mode === 'fill') b.fill(v);
      else for (let off = 0; off < b.length; off += PAGE) b[off] = v;
    }
  });
}

/** Views of at most 1 GiB each over a buffer-like source. */
function chunks(size: number, view: (off: number, len: number) => Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < size; off += GiB) out.push(view(off, Math.min(GiB, size - off)));
  return out;
}

function kernelRun(dir: string, size: number, mode: Mode, run: number): number {
  const p = tempPath(dir, 'kernel');
  try {
    const dev = openDevice(p, { create: true, size });
    try {
      return write(chunks(size, (o, l) => dev.view(o, l)), mode, run);
    } finally {
      dev.close();
    }
  } finally {
    fs.rmSync(p, { force: true });
  }
}

interface Case { kind: string; dir: string; mb: number; modes: Mode[] }
const cases: Case[] = [
  { kind: 'tmpfs', dir: '/dev/shm', mb: envInt('DAXMAP_BENCH_SEQ_MB', 1024), modes: ['store'] },
  { kind: 'tmpfs', dir: '/dev/shm', mb: envInt('DAXMAP_BENCH_SEQ_SMALL_MB', 256), modes: ['store', 'fill'] },
  { kind: 'disk file', dir: os.tmpdir(), mb: envInt('DAXMAP_BENCH_SEQ_DISK_MB', 256), modes: ['store'] },
];

for (const c of cases) {
  t.test(`sequential first-touch write, default policy, ${c.kind} pool, ${c.mb} MiB`, async (t) => {
    const size = c.mb * MiB;
    const pages = size / PAGE;
    const poolPath = tempPath(c.dir, 'pool');
    t.teardown(() => fs.rmSync(poolPath, { force: true }));
    const pool = await Pool.create(poolPath, { size: size + 128 * MiB });
    t.teardown(() => pool.close());

    // Warm-up (not timed): the service's JIT, the pool's first allocations.
    {
      const f = await pool.openFile('warmup', { create: true });
      await f.truncate(16 * MiB);
      const m = await f.map();
      write([m.buffer], 'store', 0);
      await m.unmap();
      await f.close();
      await pool.unlink('warmup');
    }

    const res = new Map<Mode, { kernel: number[]; trapped: number[] }>();
    for (const mode of c.modes) res.set(mode, { kernel: [], trapped: [] });
    const before = await pool.stats();
    let checked = 0;
    for (let run = 0; run < RUNS; run++) {
      for (const mode of c.modes) {
        const r = res.get(mode)!;
        r.kernel.push(kernelRun(c.dir, size, mode, run));
        const name = `seq-${mode}-${run}`;
        const f = await pool.openFile(name, { create: true });
        await f.truncate(size);
        const m = await f.map();
        r.trapped.push(write(chunks(size, (o, l) => m.buffer.subarray(o, o + l)), mode, run));
        await m.unmap();
        // Spot check through file.read: 64 pages spread over the file (and the last one).
        const page = Buffer.alloc(PAGE);
        const v = byteOf(run);
        for (let k = 0; k <= 64; k++) {
          const p = k === 64 ? pages - 1 : Math.floor((k * pages) / 64);
          await f.read(page, p * PAGE);
          const ok = mode === 'fill' ? page.every((x) => x === v) : page[0] === v && page[1] === 0 && page[PAGE - 1] === 0;
          if (!ok) t.fail(`${mode} run ${run}: page ${p} reads back wrong`);
          else checked++;
        }
        await f.close();
        await pool.unlink(name); // its blocks are free again for the next run
      }
    }
    const after = await pool.stats();

    t.comment(`${RUNS} runs; each writes all ${pages} pages of a fresh ${c.mb} MiB file from start to end`);
    const base = `kernel MAP_SHARED ${c.kind === 'tmpfs' ? 'tmpfs file' : 'disk file'}`;
    const rows: { label: string; runs: number[]; base: number[] }[] = [];
    const gbs: { label: string; runs: number[]; base: number[] }[] = [];
    for (const mode of c.modes) {
      const r = res.get(mode)!;
      const what = mode === 'fill' ? 'buffer.fill' : '1 store per page';
      const us = (ns: number[]): number[] => ns.map((x) => x / 1000 / pages);
      const rate = (ns: number[]): number[] => ns.map((x) => size / x); // bytes/ns = GB/s
      rows.push({ label: `${base}, ${what} (baseline)`, runs: us(r.kernel), base: us(r.kernel) });
      rows.push({ label: `daxmap map(), ${what}`, runs: us(r.trapped), base: us(r.kernel) });
      gbs.push({ label: `${base}, ${what} (baseline)`, runs: rate(r.kernel), base: rate(r.kernel) });
      gbs.push({ label: `daxmap map(), ${what}`, runs: rate(r.trapped), base: rate(r.kernel) });
    }
    for (const l of tableOf('µs per 4 KiB page', rows, [])) t.comment(l);
    for (const l of tableOf('GB/s', gbs, [], { ratio: 'throughput vs kernel (median)' })) t.comment(l);
    for (const mode of c.modes) {
      const r = res.get(mode)!;
      t.comment(`per-run time ratio daxmap/kernel, ${mode}: ${fmtSummary(pairedRatio(r.trapped, r.kernel), 2, 'x')} (aim: < 1x)`);
    }
    t.comment(`pool fault stats over the timed runs: ${faultLine(after, before)} (latency percentiles: whole pool life, log2 buckets)`);
    for (const mode of c.modes) {
      t.equal(res.get(mode)!.kernel.length, RUNS, `every kernel run completed (${mode})`);
      t.equal(res.get(mode)!.trapped.length, RUNS, `every pool run completed (${mode})`);
    }
    t.equal(checked, RUNS * c.modes.length * 65, 'every spot-checked page read back what was written');
    t.equal(after.sigbus - before.sigbus, 0, 'no fault was answered with SIGBUS');
  });
}
