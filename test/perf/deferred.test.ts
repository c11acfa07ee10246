// Issue 11 benchmark: first-touch writes through a mapping of a file in a disk-file
// pool under /var/tmp, where an allocating write fault used to msync its zeroed block
// before answering, against the kernel's MAP_SHARED mapping of a fresh disk file of
// the same size in /var/tmp, in the same run. Two cases: a sequential first touch
// (default policy, fault-around on; one 1-byte store per 4 KiB page) and random
// 4 KiB first-touch writes with fault-around off. The time of the flush that follows
// (Mapping.flush for daxmap: data msync + conversions logged; msync for the kernel)
// is shown apart: the deferred conversion moves the durability cost there. A tmpfs
// pool is measured in the same runs: the cost of the fault path without the disk.
// Prints figures; asserts only that every run completed and the data reads back.
// Sizes: DAXMAP_BENCH_DEFERRED_SEQ_MB (default 256), DAXMAP_BENCH_DEFERRED_RANDOM_MB
// (default 8); DAXMAP_BENCH_DEFERRED_DIR (default /var/tmp).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Pool } from '../../dist/index';
import { openDevice } from '../../dist/device/device';
import { RUNS, envInt, faultLine, fmtSummary, pairedRatio, shuffled, tableOf, timeNs } from './stats';

const PAGE = 4096;
const MiB = 1 << 20;
const DIR = process.env['DAXMAP_BENCH_DEFERRED_DIR'] ?? '/var/tmp';
let seq = 0;

function tempPath(what: string): string {
  return path.join(DIR, `daxmap-bench-deferred-${what}-${process.pid}-${seq++}`);
}

const stampOf = (run: number) => (p: number): number => ((p * 31 + run * 7) & 0xff) | 1;

/** One byte stored into each page, in `order`; ns. */
function touch(b: Buffer, order: Uint32Array, stamp: (page: number) => number): number {
  return timeNs(() => {
    for (let i = 0; i < order.length; i++) {
      const p = order[i]!;
      b[p * PAGE + (p % 4093)] = stamp(p);
    }
  });
}

function sequential(pages: number): Uint32Array {
  const o = new Uint32Array(pages);
  for (let i = 0; i < pages; i++) o[i] = i;
  return o;
}

interface Times { touch: number; flush: number }

function kernelRun(size: number, order: Uint32Array, run: number): Times {
  const p = tempPath('kernel');
  try {
    const dev = openDevice(p, { create: true, size });
    try {
      const tt = touch(dev.view(0, size), order, stampOf(run));
      const tf = timeNs(() => dev.persistAll());
      return { touch: tt, flush: tf };
    } finally {
      dev.close();
    }
  } finally {
    fs.rmSync(p, { force: true });
  }
}

const cases = [
  { what: 'sequential first touch, fault-around on', mb: envInt('DAXMAP_BENCH_DEFERRED_SEQ_MB', 256), random: false, aim: '< 1x' },
  { what: 'random 4 KiB first-touch writes, fault-around off', mb: envInt('DAXMAP_BENCH_DEFERRED_RANDOM_MB', 8), random: true, aim: '<= 3x' },
] as const;

type MapOpts = { faultAround?: boolean };

/** One timed first touch of a fresh file of `size` in `pool`, its flush, and a spot check of 64 pages through file.read. */
async function poolRun(pool: Pool, name: string, size: number, order: Uint32Array, run: number, mapOpts: MapOpts): Promise<Times & { checked: number }> {
  const f = await pool.openFile(name, { create: true });
  await f.truncate(size);
  const m = await f.map(mapOpts);
  const tt = touch(m.buffer, order, stampOf(run));
  const t0 = process.hrtime.bigint();
  await m.flush();
  const tf = Number(process.hrtime.bigint() - t0);
  await m.unmap();
  const pages = size / PAGE;
  const page = Buffer.alloc(PAGE);
  const stamp = stampOf(run);
  let checked = 0;
  for (let k = 0; k < 64; k++) {
    const p = Math.floor((k * pages) / 64);
    await f.read(page, p * PAGE);
    if (page[p % 4093] === stamp(p) && page[(p % 4093) ^ 1] === 0) checked++;
  }
  await f.close();
  await pool.unlink(name);
  return { touch: tt, flush: tf, checked };
}

for (const c of cases) {
  t.test(`${c.what}, disk-file pool in ${DIR}, ${c.mb} MiB`, async (t) => {
    const size = c.mb * MiB;
    const pages = size / PAGE;
    const mapOpts: MapOpts = c.random ? { faultAround: false } : {};
    const pools: Pool[] = [];
    for (const where of ['disk', 'tmpfs'] as const) {
      const poolPath = where === 'disk' ? tempPath('pool') : `/dev/shm/daxmap-bench-deferred-${process.pid}-${seq++}`;
      t.teardown(() => fs.rmSync(poolPath, { force: true }));
      const pool = await Pool.create(poolPath, { size: size + 128 * MiB });
      t.teardown(() => pool.close());
      // warm-up (not timed): the service's JIT, the pool's first allocations
      await poolRun(pool, 'warmup', 4 * MiB, c.random ? shuffled(1024, 1) : sequential(1024), 0, mapOpts);
      pools.push(pool);
    }
    const [disk, shm] = pools as [Pool, Pool];
    const before = await disk.stats();
    const kernel: Times[] = [];
    const trapped: Times[] = [];
    const tmpfs: Times[] = [];
    let checked = 0;
    for (let run = 0; run < RUNS; run++) {
      const order = c.random ? shuffled(pages, 0x1234567 + run) : sequential(pages);
      kernel.push(kernelRun(size, order, run));
      const d = await poolRun(disk, `deferred-${run}`, size, order, run, mapOpts);
      trapped.push(d);
      tmpfs.push(await poolRun(shm, `deferred-${run}`, size, order, run, mapOpts));
      checked += d.checked;
    }
    const after = await disk.stats();

    const us = (xs: Times[], k: keyof Times): number[] => xs.map((x) => x[k] / 1000 / pages);
    const ms = (xs: Times[], k: keyof Times): number[] => xs.map((x) => x[k] / 1e6);
    const label = `daxmap map(${c.random ? '{ faultAround: false }' : ''})`;
    t.comment(`${RUNS} runs; each touches all ${pages} pages of a fresh ${c.mb} MiB file once (one 1-byte store per page)`);
    for (const l of tableOf('µs per page, first touch', [
      { label: 'kernel MAP_SHARED disk file (baseline)', runs: us(kernel, 'touch') },
      { label: `${label}, disk-file pool`, runs: us(trapped, 'touch') },
      { label: `${label}, tmpfs pool (the fault path alone)`, runs: us(tmpfs, 'touch') },
    ], us(kernel, 'touch'))) t.comment(l);
    for (const l of tableOf('ms, the flush after it', [
      { label: 'kernel msync of the whole mapping (baseline)', runs: ms(kernel, 'flush') },
      { label: 'daxmap Mapping.flush(), disk-file pool', runs: ms(trapped, 'flush') },
    ], ms(kernel, 'flush'))) t.comment(l);
    t.comment(`per-run first-touch ratio daxmap/kernel min / median / max: ${fmtSummary(pairedRatio(trapped.map((x) => x.touch), kernel.map((x) => x.touch)), 2, 'x')} (aim: ${c.aim})`);
    t.comment(`per-run first-touch ratio disk-file pool / tmpfs pool min / median / max: ${fmtSummary(pairedRatio(trapped.map((x) => x.touch), tmpfs.map((x) => x.touch)), 2, 'x')}`);
    t.comment(`per-run touch+flush ratio daxmap/kernel min / median / max: ${fmtSummary(pairedRatio(trapped.map((x) => x.touch + x.flush), kernel.map((x) => x.touch + x.flush)), 2, 'x')}`);
    t.comment(`disk-file pool fault stats over the timed runs: ${faultLine(after, before)}`);
    t.equal(kernel.length, RUNS, 'every kernel run completed');
    t.equal(trapped.length, RUNS, 'every disk-file pool run completed');
    t.equal(tmpfs.length, RUNS, 'every tmpfs pool run completed');
    t.equal(checked, RUNS * 64, 'every spot-checked page read back its store');
    t.equal(after.sigbus - before.sigbus, 0, 'no fault was answered with SIGBUS');
  });
}
