// The benchmark table (docs/bench.md): every row measured here, against the kernel's
// own mapping of the same kind of backing (kmap.ts: MAP_SHARED or MAP_PRIVATE of a
// tmpfs file under /dev/shm, or of a disk file under DAXMAP_BENCH_DISK_DIR, default
// /var/tmp) in the same run, DAXMAP_BENCH_RUNS runs (default 5). Ends with the table
// and the path of the same figures as JSON (DAXMAP_BENCH_JSON names the file).
// daxmap is driven through its public API only (the package root and daxmapd).
// Asserts what the data must be (stores read back, holes stay zero, private copies
// stay private), never timing.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Pool, type PoolFile } from '../../dist/index';
import { KernelFile } from './kmap';
import { aim, result, tableLines, writeJson, type Row, type RowResult } from './report';
import { RUNS, envInt, settleHeap, shuffled, summarize, timeNs } from './stats';
import { DaemonBench } from './daemon-bench';
import { randomReads } from './reads';
import { hugetlb } from '../hugetlb';
import { hugeTmpfs, mappingAddress, smapsSum, vmasIn } from '../pmd';
import { Worker } from 'node:worker_threads';
import { defaultWindowBudget } from '../../dist/fault/budget';

const PAGE = 4096;
const MiB = 1 << 20;
const GiB = 1 << 30;
const SHM = '/dev/shm';
const DISK = process.env['DAXMAP_BENCH_DISK_DIR'] ?? '/var/tmp';

const RANDOM_MB = envInt('DAXMAP_BENCH_RANDOM_MB', 64);
const DISK_RANDOM_MB = envInt('DAXMAP_BENCH_RANDOM_DISK_MB', 8);
const WRITTEN_MB = envInt('DAXMAP_BENCH_WRITTEN_MB', 32);
const SPARSE_MB = envInt('DAXMAP_BENCH_SPARSE_MB', 1024);
const SPARSE_TOUCHES = envInt('DAXMAP_BENCH_SPARSE_TOUCHES', 2048);
const SEQ_MB = envInt('DAXMAP_BENCH_SEQ_MB', 256);
const SEQ_DISK_MB = envInt('DAXMAP_BENCH_SEQ_DISK_MB', 256);
const FILL_MB = envInt('DAXMAP_BENCH_FILL_MB', 256);
const CHURN_MB = envInt('DAXMAP_BENCH_CHURN_MB', 1024);
const FILL_REPS = envInt('DAXMAP_BENCH_FILL_REPS', 4);
const DAEMON_MB = envInt('DAXMAP_BENCH_DAEMON_MB', 32);
const SYNC_FAULTS = envInt('DAXMAP_BENCH_SYNC_FAULTS', 512);
const PRIVATE_MB = envInt('DAXMAP_BENCH_PRIVATE_MB', 32);
const CHURN_FILES = envInt('DAXMAP_BENCH_CHURN_FILES', 128);
const TLB_MB = envInt('DAXMAP_BENCH_TLB_MB', 1024);
const TLB_READS = envInt('DAXMAP_BENCH_TLB_READS', 16 << 20);
const PAST_MB = envInt('DAXMAP_BENCH_PAST_MB', 256);
const RMW_MB = envInt('DAXMAP_BENCH_RMW_MB', 32);

/** The rows in table order (the ids the measuring tests below fill in). */
const ORDER = [
  { id: '1', what: `random 4 KiB first-touch writes, faultAround:false, tmpfs pool, ${RANDOM_MB} MiB` },
  { id: '1u', what: 'row 1\'s unmap() after its stores (staged pages are copied into blocks then), per page' },
  { id: '2', what: `same, disk-file pool, ${DISK_RANDOM_MB} MiB` },
  { id: '3a', what: `4 KiB write faults on written blocks (fresh mapping, random), ${WRITTEN_MB} MiB, vs kernel first touch` },
  { id: '3b', what: 'same, vs the kernel\'s write fault on a written file' },
  { id: '3c', what: '4 KiB read faults on written blocks (fresh mapping, random)' },
  { id: '4a', what: `random first-touch writes, default policy, ${SPARSE_TOUCHES} in a ${SPARSE_MB} MiB sparse file: time` },
  { id: '4b', what: 'same: space, allocated bytes / bytes touched' },
  { id: '4u', what: 'row 4a\'s unmap() after its stores, per touch' },
  { id: '5', what: `sequential first touch, default policy, tmpfs pool, ${SEQ_MB} MiB` },
  { id: '6', what: `same, disk-file pool, ${SEQ_DISK_MB} MiB` },
  { id: '7a', what: `fill() ${FILL_MB} MiB, first pass after the first touch, fresh pool` },
  { id: '7b', what: 'same, later passes (median), fresh pool' },
  { id: '7c', what: `fill() first pass, churned pool (${CHURN_MB} MiB written and unlinked first)` },
  { id: '7d', what: 'same, later passes (median), churned pool' },
  { id: '8', what: `daxmapd: two clients faulting at once vs one (${DAEMON_MB} MiB each, random 4 KiB)` },
  { id: '8k', what: 'the same two clients vs one with the kernel\'s own mappings: what this machine allows' },
  { id: '9', what: 'daxmapd: time per random 4 KiB first-touch write vs embedded' },
  { id: '10a', what: `${SYNC_FAULTS} 4 KiB write faults, tmpfs pool: preallocated (written blocks)` },
  { id: '10b', what: 'same: allocating (holes)' },
  { id: '10c', what: 'same: allocating + map({ sync: true })' },
  { id: '10d', what: `${SYNC_FAULTS} 4 KiB write faults, disk-file pool: preallocated` },
  { id: '10e', what: 'same: allocating' },
  { id: '10f', what: 'same: allocating + map({ sync: true })' },
  { id: '10g', what: `${SYNC_FAULTS} sync allocating 4 KiB write faults, disk-file pool, two threads at once (group commit): wall time per fault` },
  { id: '11a', what: `private: true, random 4 KiB first-touch reads of a written file, ${PRIVATE_MB} MiB` },
  { id: '11b', what: 'same, writes' },
  { id: '12', what: `random 4 KiB first-touch writes, faultAround:false, churned pool, ${RANDOM_MB} MiB` },
  { id: '13a', what: `TLB-bound: ${TLB_READS} random 8-byte reads over an already-faulted ${TLB_MB} MiB mapping, huge tmpfs pool (PMD)` },
  { id: '13b', what: 'same, hugetlbfs stand-in pool (2 MiB pages)' },
  { id: '14', what: `random 4 KiB first-touch writes past the window budget, faultAround:false, tmpfs pool, ${PAST_MB} MiB` },
  { id: '15a', what: `random 4 KiB first-touch read-modify-writes (b[i] |= x: a load, then a store), faultAround:false, tmpfs pool, ${RMW_MB} MiB` },
  { id: '15b', what: 'same, default policy (fault-around)' },
];

const results: RowResult[] = [];
/** Rows that cannot be measured here (root, huge pages), with the reason. */
const notMeasured: Record<string, string> = {};
let seq = 0;
/** Kernel baseline runs whose stores did not land where they should (kmap.c's own check). */
let baselineBad = 0;

/** A row's description, by its id (never by its place in ORDER: a new row moves the places). */
function whatOf(id: string): string {
  const o = ORDER.find((x) => x.id === id);
  if (!o) throw new Error(`no row ${id} in ORDER`);
  return o.what;
}

function tempPath(dir: string, what: string): string {
  return path.join(dir, `daxmap-bench-${what}-${process.pid}-${seq++}`);
}

function add(t: Test, row: Row): void {
  t.equal(row.ours.length, RUNS, `row ${row.id}: every daxmap run completed`);
  t.equal(row.base.length, RUNS, `row ${row.id}: every baseline run completed`);
  results.push(result(row));
}

// ---- touching pages ----

const stampOf = (run: number) => (p: number): number => ((p * 31 + run * 7) & 0xff) | 1;
/** The byte of a page that a touch stores into or loads (not always the first: cache sets). */
const spot = (p: number): number => p * PAGE + (p % 4093);
let sink = 0;

/**
 * One 1-byte store (or load, or `rmw`: a load then a store, `b[i] |= x`) per page, in
 * `order`; µs per page. On a fresh page the rmw leaves what the store leaves.
 */
function touch(b: Buffer, order: ArrayLike<number>, write: boolean | 'rmw', run = 0): number {
  const stamp = stampOf(run);
  settleHeap();
  const ns = write === 'rmw'
    ? timeNs(() => {
      for (let i = 0; i < order.length; i++) { const p = order[i]!; b[spot(p)] |= stamp(p); }
    })
    : write
    ? timeNs(() => {
      for (let i = 0; i < order.length; i++) { const p = order[i]!; b[spot(p)] = stamp(p); }
    })
    : timeNs(() => {
      let s = 0;
      for (let i = 0; i < order.length; i++) s += b[spot(order[i]!)]!;
      sink += s;
    });
  return ns / 1000 / order.length;
}

/** Like touch (writes), each store timed alone; the median µs (a short run's mean is at the mercy of one stall). */
function touchEachMedian(b: Buffer, order: ArrayLike<number>, run: number): number {
  const stamp = stampOf(run);
  const us = new Float64Array(order.length);
  settleHeap();
  for (let i = 0; i < order.length; i++) {
    const p = order[i]!;
    us[i] = timeNs(() => { b[spot(p)] = stamp(p); }) / 1000;
  }
  return summarize(Array.from(us)).median;
}

/** Sequential first touch, one store per page, of views of at most 1 GiB; µs per page. */
function touchSeq(b: Buffer, byte: number): number {
  settleHeap();
  const ns = timeNs(() => {
    for (let off = 0; off < b.length; off += PAGE) b[off] = byte;
  });
  return ns / 1000 / (b.length / PAGE);
}

/** Reads `pages` (sampled: at most 64) through file.read and counts those whose spot byte is not `expect(p)`. */
async function misreads(f: PoolFile, pages: ArrayLike<number>, expect: (p: number) => number): Promise<number> {
  const page = Buffer.alloc(PAGE);
  let bad = 0;
  const step = Math.max(1, Math.floor(pages.length / 64));
  for (let i = 0; i < pages.length; i += step) {
    const p = pages[i]!;
    await f.read(page, p * PAGE);
    if (page[p % 4093] !== expect(p)) bad++;
  }
  return bad;
}

// ---- pools ----

interface BenchPool { pool: Pool; close(): Promise<void> }

/** A fresh pool in a file under `dir`, warmed up (the service's JIT, its first allocations; not timed). */
async function freshPool(dir: string, size: number): Promise<BenchPool> {
  const file = tempPath(dir, 'pool');
  const pool = await Pool.create(file, { size });
  try {
    const f = await pool.openFile('warmup', { create: true });
    await f.truncate(4 * MiB);
    const m = await f.map({ faultAround: false });
    touch(m.buffer, shuffled(1024, 1), true);
    await m.unmap();
    await f.close();
    await pool.unlink('warmup');
  } catch (e) {
    await pool.close().catch(() => undefined);
    fs.rmSync(file, { force: true });
    throw e;
  }
  return {
    pool,
    async close() {
      try {
        await pool.close();
      } finally {
        fs.rmSync(file, { force: true });
      }
    },
  };
}

/** A file of `size` bytes in the pool: holes, or written through file.write with `fillByte`. */
async function poolFile(pool: Pool, name: string, size: number, fillByte?: number): Promise<PoolFile> {
  const f = await pool.openFile(name, { create: true });
  await f.truncate(size);
  if (fillByte !== undefined) {
    const chunk = Buffer.alloc(Math.min(size, MiB), fillByte);
    for (let off = 0; off < size; off += chunk.length) await f.write(chunk.subarray(0, Math.min(chunk.length, size - off)), off);
  }
  return f;
}

/** Wall time of the pool's background zeroing of free space since open, ms (docs/pool.md, "Clean free space"). */
async function zeroerBusyMs(pool: Pool): Promise<number> {
  return (await pool.statfs()).clean?.busyMs ?? 0;
}

async function drop(pool: Pool, f: PoolFile, name: string): Promise<void> {
  await f.close();
  await pool.unlink(name);
}

/** Many files created, written interleaved (so their extents interleave) and unlinked: odd ones first, then the rest. */
async function churnFiles(pool: Pool, files: number, bytesEach: number): Promise<void> {
  const piece = 16 * 1024;
  const handles: PoolFile[] = [];
  for (let i = 0; i < files; i++) handles.push(await pool.openFile(`churn-${i}`, { create: true }));
  const data = Buffer.alloc(piece, 0xc3);
  for (let off = 0; off < bytesEach; off += piece) for (const f of handles) await f.write(data, off);
  for (const pass of [1, 0]) {
    for (let i = pass; i < files; i += 2) {
      await handles[i]!.close();
      await pool.unlink(`churn-${i}`);
    }
  }
}

/** A big file allocated through a mapping (default policy: 2 MiB windows), written, then unlinked. */
async function churnBig(pool: Pool, bytes: number): Promise<void> {
  const f = await poolFile(pool, 'churn-big', bytes);
  const m = await f.map();
  for (let off = 0; off < bytes; off += GiB) m.buffer.subarray(off, Math.min(bytes, off + GiB)).fill(0xa5);
  await m.unmap();
  await drop(pool, f, 'churn-big');
}

/** Runs `a` and `b` in an order that alternates with the run, so both see the same drift of a noisy machine. */
async function both<A, B>(run: number, a: () => A | Promise<A>, b: () => B | Promise<B>): Promise<[A, B]> {
  if (run % 2 === 0) {
    const x = await a();
    return [x, await b()];
  }
  const y = await b();
  return [await a(), y];
}

/** The kernel's first touch of a fresh file (or a written one, or MAP_PRIVATE), in `order`; µs per page. */
function kernelTouch(dir: string, size: number, order: ArrayLike<number>, write: boolean | 'rmw', run: number, opts: { fillByte?: number; private?: boolean; each?: boolean; closeUs?: number[] } = {}): number {
  const k = KernelFile.create(tempPath(dir, 'kernel'), size, opts);
  let closing = 0n;
  try {
    const us = opts.each === true ? touchEachMedian(k.buffer, order, run) : touch(k.buffer, order, write, run);
    if (write) {
      // the baseline did what it claims: the stores are in the mapping, and in the file unless private
      const p = order[0]!;
      const inFile = Buffer.alloc(1);
      const fd = fs.openSync(k.file, 'r');
      try {
        fs.readSync(fd, inFile, 0, 1, spot(p));
      } finally {
        fs.closeSync(fd);
      }
      if (k.buffer[spot(p)] !== stampOf(run)(p) || inFile[0] !== (opts.private === true ? opts.fillByte ?? 0 : stampOf(run)(p))) baselineBad++;
    }
    closing = process.hrtime.bigint();
    return us;
  } finally {
    k.close();
    // munmap and close: what the kernel does where daxmap's unmap() copies staged pages
    if (closing !== 0n) opts.closeUs?.push(Number(process.hrtime.bigint() - closing) / 1000 / order.length);
  }
}

// Rows 1 and 12: random first-touch writes, one trapped 4 KiB fault per touch.
t.test('rows 1 and 12: random 4 KiB first-touch writes, faultAround: false, fresh and churned tmpfs pools', async (t) => {
  const size = RANDOM_MB * MiB;
  const pages = size / PAGE;
  const kernel: number[] = [];
  const fresh: number[] = [];
  const churned: number[] = [];
  const kClose: number[] = [];
  const unmaps: number[] = [];
  let bad = 0;
  for (let run = 0; run < RUNS; run++) {
    const order = shuffled(pages, 0x1234567 + run);
    const stamp = stampOf(run);
    kernel.push(kernelTouch(SHM, size, order, true, run, { closeUs: kClose }));
    for (const [out, churn] of [[fresh, false], [churned, true]] as const) {
      const p = await freshPool(SHM, size + (churn ? CHURN_FILES * MiB : 0) + 64 * MiB);
      try {
        if (churn) await churnFiles(p.pool, CHURN_FILES, MiB);
        await p.pool.settled(); // no background zeroing of free space beside the run's start
        const f = await poolFile(p.pool, 'random', size);
        const m = await f.map({ faultAround: false });
        out.push(touch(m.buffer, order, true, run));
        const u0 = process.hrtime.bigint();
        await m.unmap();
        if (!churn) unmaps.push(Number(process.hrtime.bigint() - u0) / 1000 / pages);
        bad += await misreads(f, order, stamp);
        t.equal((await f.stat()).allocated, size, `run ${run}${churn ? ' (churned)' : ''}: every page got a block`);
        await drop(p.pool, f, 'random');
      } finally {
        await p.close();
      }
    }
  }
  t.equal(bad, 0, 'every sampled page reads back its store');
  add(t, { id: '1', what: whatOf('1'), unit: 'µs/fault', baseline: 'kernel MAP_SHARED tmpfs file, fresh, same order', ours: fresh, base: kernel, aim: aim.ratioAtMost(3), note: 'a fresh pool per run, idle (settled()) before the run' });
  add(t, { id: '1u', what: whatOf('1u'), unit: 'µs/page', baseline: 'the kernel mapping\'s munmap and close after the same stores', ours: unmaps, base: kClose, aim: aim.none() });
  add(t, {
    id: '12', what: whatOf('12'), unit: 'µs/fault', baseline: 'kernel MAP_SHARED tmpfs file, fresh, same order (row 1\'s)', ours: churned, base: kernel, aim: aim.ratioAtMost(3),
    note: `before the run, ${CHURN_FILES} files of 1 MiB were written interleaved in 16 KiB pieces and unlinked (odd, then even), then the pool left to be idle (settled())`,
  });
});

// Row 15: what Buffer.writeUInt32LE (its bounds check reads the page) or `b[i] |= x`
// does to a fresh page: a load, then a store. The load is a read fault on a hole, the
// store a write-protect fault on its zero page (docs/fault-policy.md, "Reserves").
t.test('row 15: random 4 KiB first-touch read-modify-writes, without and with fault-around', async (t) => {
  const size = RMW_MB * MiB;
  const pages = size / PAGE;
  let bad = 0;
  for (const [id, faultAround] of [['15a', false], ['15b', true]] as const) {
    const kernel: number[] = [];
    const ours: number[] = [];
    for (let run = 0; run < RUNS; run++) {
      const order = shuffled(pages, 0x4567891 + run);
      await both(run,
        () => { kernel.push(kernelTouch(SHM, size, order, 'rmw', run)); },
        async () => {
          const p = await freshPool(SHM, size + 64 * MiB);
          try {
            const f = await poolFile(p.pool, 'rmw', size);
            const m = await f.map({ faultAround });
            ours.push(touch(m.buffer, order, 'rmw', run));
            await m.unmap();
            bad += await misreads(f, order, stampOf(run));
            t.equal((await f.stat()).allocated, size, `row ${id}, run ${run}: every page got a block`);
            await drop(p.pool, f, 'rmw');
          } finally {
            await p.close();
          }
        });
    }
    add(t, { id, what: whatOf(id), unit: 'µs/page', baseline: 'kernel MAP_SHARED tmpfs file, fresh, same order, the same loop', ours, base: kernel, aim: aim.ratioAtMost(3), note: 'a fresh pool per run' });
  }
  t.equal(bad, 0, 'every sampled page reads back its store');
});

// Row 14: row 1 over more pages than the window budget holds: eviction runs all along.
t.test('row 14: random 4 KiB first-touch writes past the window budget', async (t) => {
  const size = PAST_MB * MiB;
  const pages = size / PAGE;
  const kernel: number[] = [];
  const ours: number[] = [];
  let bad = 0;
  let evicted = 0;
  for (let run = 0; run < RUNS; run++) {
    const order = shuffled(pages, 0x3456789 + run);
    await both(run,
      () => { kernel.push(kernelTouch(SHM, size, order, true, run)); },
      async () => {
        const p = await freshPool(SHM, size + 64 * MiB);
        try {
          const f = await poolFile(p.pool, 'past', size);
          const m = await f.map({ faultAround: false });
          const s0 = await p.pool.stats();
          ours.push(touch(m.buffer, order, true, run));
          evicted += (await p.pool.stats()).evictions - s0.evictions;
          await m.unmap();
          bad += await misreads(f, order, stampOf(run));
          await drop(p.pool, f, 'past');
        } finally {
          await p.close();
        }
      });
  }
  t.equal(bad, 0, 'every sampled page reads back its store');
  // As single-page windows the file would not fit the budget (eviction all along, as
  // before reserve windows). With them, a window's gaps are one budget window each,
  // and single pages are only those stored before their window's upgrade: whether
  // anything is evicted now depends on how many that is.
  t.ok(pages > defaultWindowBudget(), `${pages} pages, more than the budget's ${defaultWindowBudget()} windows`);
  add(t, {
    id: '14', what: whatOf('14'), unit: 'µs/fault', baseline: 'kernel MAP_SHARED tmpfs file, fresh, same order', ours, base: kernel, aim: aim.ratioAtMost(3),
    note: `${pages} pages against a budget of ${defaultWindowBudget()} windows; windows evicted: ${evicted} in ${RUNS} runs (reserve windows: a gap is one budget window)`,
  });
});

t.test('row 2: random 4 KiB first-touch writes, faultAround: false, disk-file pool', async (t) => {
  const size = DISK_RANDOM_MB * MiB;
  const pages = size / PAGE;
  const kernel: number[] = [];
  const ours: number[] = [];
  let bad = 0;
  const p = await freshPool(DISK, size + 64 * MiB);
  t.teardown(() => p.close());
  for (let run = 0; run < RUNS; run++) {
    const order = shuffled(pages, 0x2345678 + run);
    await both(run,
      () => { kernel.push(kernelTouch(DISK, size, order, true, run)); },
      async () => {
        const f = await poolFile(p.pool, `random-${run}`, size);
        const m = await f.map({ faultAround: false });
        ours.push(touch(m.buffer, order, true, run));
        await m.unmap();
        bad += await misreads(f, order, stampOf(run));
        await drop(p.pool, f, `random-${run}`);
      });
  }
  t.equal(bad, 0, 'every sampled page reads back its store');
  add(t, { id: '2', what: whatOf('2'), unit: 'µs/fault', baseline: `kernel MAP_SHARED disk file (${DISK}), fresh, same order`, ours, base: kernel, aim: aim.ratioAtMost(3) });
});

t.test('row 3: 4 KiB faults on written blocks, fresh mapping, random order', async (t) => {
  const size = WRITTEN_MB * MiB;
  const pages = size / PAGE;
  const kFresh: number[] = [];
  const kWrite: number[] = [];
  const kRead: number[] = [];
  const oWrite: number[] = [];
  const oRead: number[] = [];
  let bad = 0;
  const p = await freshPool(SHM, size + 64 * MiB);
  t.teardown(() => p.close());
  const before = await p.pool.stats();
  for (let run = 0; run < RUNS; run++) {
    const order = shuffled(pages, 0x3456789 + run);
    const fill = 0x5a;
    await both(run,
      () => {
        kFresh.push(kernelTouch(SHM, size, order, true, run));
        kRead.push(kernelTouch(SHM, size, order, false, run, { fillByte: fill }));
        kWrite.push(kernelTouch(SHM, size, order, true, run, { fillByte: fill }));
      },
      async () => {
        const f = await poolFile(p.pool, `written-${run}`, size, fill);
        let m = await f.map({ faultAround: false });
        const s0 = sink;
        oRead.push(touch(m.buffer, order, false, run));
        if (sink - s0 !== pages * fill) bad++;
        await m.unmap();
        m = await f.map({ faultAround: false });
        oWrite.push(touch(m.buffer, order, true, run));
        await m.unmap();
        bad += await misreads(f, order, stampOf(run));
        await drop(p.pool, f, `written-${run}`);
      });
  }
  const after = await p.pool.stats();
  t.equal(bad, 0, 'the reads saw the written bytes, every sampled page reads back its store');
  t.equal(after.sigbus - before.sigbus, 0, 'no fault was answered with SIGBUS');
  add(t, { id: '3a', what: whatOf('3a'), unit: 'µs/fault', baseline: 'kernel MAP_SHARED tmpfs file, fresh (first-touch write allocating a page), same order', ours: oWrite, base: kFresh, aim: aim.ratioAtMost(2), note: 'daxmap\'s file was written through file.write' });
  add(t, { id: '3b', what: whatOf('3b'), unit: 'µs/fault', baseline: 'kernel MAP_SHARED tmpfs file written through write(2), fresh mapping, same order', ours: oWrite, base: kWrite, aim: aim.none() });
  add(t, { id: '3c', what: whatOf('3c'), unit: 'µs/fault', baseline: 'kernel MAP_SHARED tmpfs file written through write(2), fresh mapping, read faults, same order', ours: oRead, base: kRead, aim: aim.ratioAtMost(2) });
});

t.test('row 4: random first-touch writes into a large sparse file, default policy: time and space', async (t) => {
  const size = SPARSE_MB * MiB;
  const touched = SPARSE_TOUCHES * PAGE;
  const kTime: number[] = [];
  const kSpace: number[] = [];
  const oTime: number[] = [];
  const oSpace: number[] = [];
  const used: number[] = [];
  const kClose: number[] = [];
  const unmaps: number[] = [];
  let bad = 0;
  let zeros = 0;
  for (let run = 0; run < RUNS; run++) {
    const order = shuffled(size / PAGE, 0x456789a + run).slice(0, SPARSE_TOUCHES);
    await both(run,
      () => {
        const k = KernelFile.create(tempPath(SHM, 'kernel'), size);
        let c0 = 0n;
        try {
          kTime.push(touch(k.buffer, order, true, run));
          kSpace.push(k.allocated() / touched);
          c0 = process.hrtime.bigint();
        } finally {
          k.close();
          if (c0 !== 0n) kClose.push(Number(process.hrtime.bigint() - c0) / 1000 / order.length);
        }
      },
      async () => {
        const p = await freshPool(SHM, size + 128 * MiB);
        try {
          const free0 = (await p.pool.statfs()).free;
          const f = await poolFile(p.pool, 'sparse', size);
          const m = await f.map();
          oTime.push(touch(m.buffer, order, true, run));
          // an untouched page next to a touched one reads as zeros
          const q = order[0]! ^ 1;
          if (!order.includes(q) && m.buffer[spot(q)] !== 0) zeros++;
          const u0 = process.hrtime.bigint();
          await m.unmap();
          unmaps.push(Number(process.hrtime.bigint() - u0) / 1000 / order.length);
          bad += await misreads(f, order, stampOf(run));
          oSpace.push((await f.stat()).allocated / touched);
          used.push((free0 - (await p.pool.statfs()).free) / touched);
          await drop(p.pool, f, 'sparse');
        } finally {
          await p.close();
        }
      });
  }
  t.equal(bad, 0, 'every sampled page reads back its store');
  t.equal(zeros, 0, 'an untouched page reads as zeros');
  add(t, { id: '4a', what: whatOf('4a'), unit: 'µs/touch', baseline: `kernel MAP_SHARED sparse tmpfs file of ${SPARSE_MB} MiB, same pages, same order`, ours: oTime, base: kTime, aim: aim.ratioAtMost(3), note: 'a fresh pool per run' });
  add(t, {
    id: '4b', what: whatOf('4b'), unit: 'bytes/byte', baseline: 'the kernel tmpfs file\'s st_blocks * 512 / bytes touched', ours: oSpace, base: kSpace, aim: aim.valueAtMost(1.1),
    note: `daxmap: file.stat().allocated / bytes touched; the pool's used-bytes delta / bytes touched: ${summarize(used).median.toFixed(2)} (median)`,
  });
  add(t, { id: '4u', what: whatOf('4u'), unit: 'µs/touch', baseline: 'the kernel mapping\'s munmap and close after the same stores', ours: unmaps, base: kClose, aim: aim.none() });
});

t.test('rows 5 and 6: sequential first touch, default policy, tmpfs and disk-file pools', async (t) => {
  for (const [id, dir, mb, what, goal] of [['5', SHM, SEQ_MB, whatOf('5'), aim.ratioBelowEveryRun(0.6)], ['6', DISK, SEQ_DISK_MB, whatOf('6'), aim.ratioBelow(1)]] as const) {
    const size = mb * MiB;
    const kernel: number[] = [];
    const ours: number[] = [];
    const zeroerMs: number[] = [];
    let bad = 0;
    const p = await freshPool(dir, size + 128 * MiB);
    try {
      // the pool's background zeroing of free space (docs/pool.md, "Clean free space")
      // never runs beside a kernel baseline: the pool is idle before each pair
      await p.pool.settled();
      for (let run = 0; run < RUNS; run++) {
        const byte = 0x40 + run;
        await both(run,
          () => {
            const k = KernelFile.create(tempPath(dir, 'kernel'), size);
            try {
              kernel.push(touchSeq(k.buffer, byte));
            } finally {
              k.close();
            }
          },
          async () => {
            const busy0 = await zeroerBusyMs(p.pool);
            const f = await poolFile(p.pool, `seq-${run}`, size);
            const m = await f.map();
            ours.push(touchSeq(m.buffer, byte));
            await m.unmap();
            const sample = Array.from({ length: 65 }, (_, k) => (k === 64 ? size / PAGE - 1 : Math.floor((k * size) / PAGE / 64)));
            const page = Buffer.alloc(PAGE);
            for (const q of sample) {
              await f.read(page, q * PAGE);
              if (page[0] !== byte || page[1] !== 0) bad++;
            }
            await drop(p.pool, f, `seq-${run}`);
            await p.pool.settled();
            zeroerMs.push((await zeroerBusyMs(p.pool)) - busy0);
          });
      }
    } finally {
      await p.close();
    }
    t.equal(bad, 0, `row ${id}: every sampled page reads back its store`);
    const z = summarize(zeroerMs).median;
    add(t, {
      id, what, unit: 'µs/page', baseline: `kernel MAP_SHARED ${dir === SHM ? 'tmpfs' : `disk (${DISK})`} file, fresh, one store per page`, ours, base: kernel, aim: goal,
      note: `one pool, a new file per run; the pool idle (settled()) before each run; its background zeroing: ${z.toFixed(0)} ms per run (median, ${((z * 1000) / (size / PAGE)).toFixed(2)} µs per page), off the writer's thread, during the run and after the drop`,
    });
  }
});

t.test('row 7: fill() bandwidth after the first touch, first pass and later passes, fresh and churned pools', async (t) => {
  const size = FILL_MB * MiB;
  const median = (xs: number[]): number => summarize(xs).median;
  const gbs = (b: Buffer, v: number): number => {
    settleHeap();
    return size / timeNs(() => b.fill(v));
  };
  let bad = 0;
  for (const churn of [false, true]) {
    const first = { k: [] as number[], o: [] as number[] };
    const later = { k: [] as number[], o: [] as number[] };
    for (let run = 0; run < RUNS; run++) {
      const p = await freshPool(SHM, size + (churn ? CHURN_MB * MiB : 0) + 64 * MiB);
      const k = KernelFile.create(tempPath(SHM, 'kernel'), size);
      try {
        if (churn) await churnBig(p.pool, CHURN_MB * MiB);
        const f = await poolFile(p.pool, 'fill', size);
        const m = await f.map();
        touchSeq(k.buffer, 1);
        touchSeq(m.buffer, 1);
        const [kf, of] = await both(run, () => gbs(k.buffer, 0x10 + run), () => gbs(m.buffer, 0x10 + run));
        first.k.push(kf);
        first.o.push(of);
        const ks: number[] = [];
        const os_: number[] = [];
        let v = 0;
        for (let r = 0; r < FILL_REPS; r++) {
          v = 0x20 + r + run;
          const [a, b] = await both(run + r, () => gbs(k.buffer, v), () => gbs(m.buffer, v));
          ks.push(a);
          os_.push(b);
        }
        later.k.push(median(ks));
        later.o.push(median(os_));
        await m.unmap();
        bad += await misreads(f, [0, size / PAGE / 2, size / PAGE - 1], () => v);
        await drop(p.pool, f, 'fill');
      } finally {
        k.close();
        await p.close();
      }
    }
    const pool = churn ? 'churned pool' : 'fresh pool';
    const base = `kernel MAP_SHARED tmpfs file, every page touched once first, the same pass (GB/s; ratio: bandwidth, higher is better)`;
    add(t, { id: churn ? '7c' : '7a', what: whatOf(churn ? '7c' : '7a'), unit: 'GB/s', baseline: base, ours: first.o, base: first.k, aim: aim.ratioAtLeast(0.95), note: `a new ${pool} per run` });
    add(t, { id: churn ? '7d' : '7b', what: whatOf(churn ? '7d' : '7b'), unit: 'GB/s', baseline: base, ours: later.o, base: later.k, aim: aim.ratioAtLeast(0.95), note: `${FILL_REPS} passes per run, alternating with the kernel's` });
  }
  t.equal(bad, 0, 'every sampled page holds the last fill');
});

t.test('rows 8 and 9: daxmapd, two clients vs one, and vs embedded', async (t) => {
  const d = await DaemonBench.start(DAEMON_MB);
  t.teardown(() => d.stop());
  const one: number[] = [];
  const two: number[] = [];
  const embedded: number[] = [];
  const daemon: number[] = [];
  const cpus: number[] = [];
  const kOne: number[] = [];
  const kTwo: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    const r = await d.run(run);
    cpus.push(r.oneCpus);
    one.push(r.oneFaultsPerSec);
    two.push(r.twoFaultsPerSec);
    kOne.push(r.kernelOneFaultsPerSec);
    kTwo.push(r.kernelTwoFaultsPerSec);
    embedded.push(r.embeddedUs);
    daemon.push(r.daemonUs);
  }
  t.equal(d.bad, 0, 'every sampled page read back its store');
  t.equal(d.sigbus, 0, 'no fault was answered with SIGBUS');
  add(t, { id: '8', what: whatOf('8'), unit: 'faults/s', baseline: 'daxmapd, one client alone (throughput; ratio higher is better)', ours: two, base: one, aim: aim.ratioAtLeast(1.6), note: `${os.cpus().length} CPUs; one client alone kept ${summarize(cpus).median.toFixed(2)} CPUs busy (client CPU time from getrusage, the daemon's threads' from /proc schedstat, over wall time; median), so two can get at most ${(os.cpus().length / summarize(cpus).median).toFixed(2)}× of one; both clients start at the same instant (each waits for it)` });
  add(t, { id: '8k', what: whatOf('8k'), unit: 'faults/s', baseline: 'one client alone, kernel MAP_SHARED tmpfs file (same harness, same orders)', ours: kTwo, base: kOne, aim: aim.none(), note: 'the ceiling of row 8 on this machine: no daxmap code in either' });
  add(t, { id: '9', what: whatOf('9'), unit: 'µs/fault', baseline: 'embedded pool (service in a worker thread), same client process, same order', ours: daemon, base: embedded, aim: aim.ratioAtMost(1.5), note: 'mean µs per touch (wall time / pages)' });
});

t.test('row 10: write faults, preallocated / allocating / allocating + sync', async (t) => {
  const size = SYNC_FAULTS * PAGE;
  let bad = 0;
  for (const [ids, dir, kind] of [[['10a', '10b', '10c'], SHM, 'tmpfs'], [['10d', '10e', '10f'], DISK, `disk (${DISK})`]] as const) {
    const kernel: number[] = [];
    const pre: number[] = [];
    const alloc: number[] = [];
    const sync: number[] = [];
    const p = await freshPool(dir, 64 * MiB);
    try {
      for (let run = 0; run < RUNS; run++) {
        const order = shuffled(SYNC_FAULTS, 0x56789ab + run);
        const cases: [number[], number | undefined, boolean][] = [[pre, 0x77, false], [alloc, undefined, false], [sync, undefined, true]];
        await both(run,
          () => { kernel.push(kernelTouch(dir, size, order, true, run, { each: true })); },
          async () => {
            for (const [out, fillByte, syncMap] of cases) {
              const f = await poolFile(p.pool, `f-${run}`, size, fillByte);
              const m = await f.map({ faultAround: false, sync: syncMap });
              out.push(touchEachMedian(m.buffer, order, run));
              await m.unmap();
              bad += await misreads(f, order, stampOf(run));
              await drop(p.pool, f, `f-${run}`);
            }
          });
      }
    } finally {
      await p.close();
    }
    add(t, { id: ids[0], what: whatOf(ids[0]), unit: 'µs/fault', baseline: `kernel MAP_SHARED ${kind} file, fresh, first-touch writes, same order`, ours: pre, base: kernel, aim: aim.none(), note: `each of the ${SYNC_FAULTS} stores timed alone: the median per run (here and in the next two rows)` });
    add(t, { id: ids[1], what: whatOf(ids[1]), unit: 'µs/fault', baseline: `daxmap preallocated (row ${ids[0]})`, ours: alloc, base: pre, aim: aim.none('kernel shape 2.2x') });
    add(t, { id: ids[2], what: whatOf(ids[2]), unit: 'µs/fault', baseline: `daxmap preallocated (row ${ids[0]})`, ours: sync, base: pre, aim: aim.none('kernel shape 12.4x') });
  }
  t.equal(bad, 0, 'every sampled page reads back its store');
});

/**
 * `threads` worker threads (test/fault/fixtures/sync-worker.js), each with its own
 * sync mapping of one fresh file, take SYNC_FAULTS allocating write faults between
 * them at once, in a random order inside each thread's own 2 MiB chunks (faults of
 * one chunk are serialized by its entry lock). Wall µs per fault, and log persists
 * per fault (pool.stats: the group commit's sharing).
 */
async function syncThreads(pool: Pool, name: string, threads: number, run: number): Promise<{ us: number; persists: number; bad: number }> {
  const per = SYNC_FAULTS / threads;
  const span = Math.ceil(per / 512) * 512;
  const f = await poolFile(pool, name, threads * span * PAGE);
  const sab = new SharedArrayBuffer(4);
  const pagesOf = (id: number): number[] => Array.from(shuffled(per, 0x789abc + run * 7 + id), (i) => id * span + i);
  const workers = Array.from({ length: threads }, (_, id) => {
    const shared = pool.share();
    return new Worker(path.join(__dirname, '../fault/fixtures/sync-worker.js'), { execArgv: [], workerData: { shared, name, pages: pagesOf(id), salt: run * 7, sab }, transferList: shared.transferList });
  });
  const next = (w: Worker): Promise<unknown> => new Promise((res, rej) => { w.once('message', res); w.once('error', rej); });
  try {
    const ready = await Promise.all(workers.map(next));
    if (ready.some((r) => r !== 'ready')) throw new Error(`sync worker: ${String(ready)}`);
    const s0 = await pool.stats();
    const done = Promise.all(workers.map(next));
    const t0 = process.hrtime.bigint();
    Atomics.store(new Int32Array(sab), 0, 1);
    Atomics.notify(new Int32Array(sab), 0);
    const res = await done;
    const us = Number(process.hrtime.bigint() - t0) / 1000 / SYNC_FAULTS;
    if (res.some((r) => typeof r !== 'object')) throw new Error(`sync worker: ${String(res)}`);
    const s1 = await pool.stats();
    const closed = Promise.all(workers.map(next));
    for (const w of workers) w.postMessage('close');
    await closed;
    let bad = 0;
    for (let id = 0; id < threads; id++) bad += await misreads(f, pagesOf(id), (p) => ((p * 31 + run * 7) & 0xff) | 1);
    await drop(pool, f, name);
    return { us, persists: (s1.logPersists - s0.logPersists) / SYNC_FAULTS, bad };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

// Row 10g: group commit. Two threads taking sync allocating faults at once on a
// disk-file pool share the log's persists (docs/pool.md, "Group commit"); the baseline
// is one thread taking the same faults alone, on the same pool, in the same run.
t.test('row 10g: sync allocating faults from two threads at once, disk-file pool', async (t) => {
  const one: number[] = [];
  const two: number[] = [];
  const perFault: number[] = [];
  const perFaultOne: number[] = [];
  let bad = 0;
  const p = await freshPool(DISK, 64 * MiB);
  try {
    for (let run = 0; run < RUNS; run++) {
      await both(run,
        async () => { const r = await syncThreads(p.pool, `one-${run}`, 1, run); one.push(r.us); perFaultOne.push(r.persists); bad += r.bad; },
        async () => { const r = await syncThreads(p.pool, `two-${run}`, 2, run); two.push(r.us); perFault.push(r.persists); bad += r.bad; });
    }
  } finally {
    await p.close();
  }
  t.equal(bad, 0, 'every sampled page reads back its store');
  const med = (a: number[]): string => [...a].sort((x, y) => x - y)[a.length >> 1]!.toFixed(2);
  add(t, { id: '10g', what: whatOf('10g'), unit: 'µs/fault', baseline: 'daxmap, one thread taking the same faults alone (same pool, same run)', ours: two, base: one, aim: aim.ratioAtMost(1), note: `log persists per fault, median: two threads ${med(perFault)}, one thread ${med(perFaultOne)}` });
});

t.test('row 11: private mapping of a written file, random 4 KiB first-touch reads and writes', async (t) => {
  const size = PRIVATE_MB * MiB;
  const pages = size / PAGE;
  const fill = 0x3c;
  const kRead: number[] = [];
  const kWrite: number[] = [];
  const oRead: number[] = [];
  const oWrite: number[] = [];
  let bad = 0;
  const p = await freshPool(SHM, size + 64 * MiB);
  t.teardown(() => p.close());
  const f = await poolFile(p.pool, 'private', size, fill);
  for (let run = 0; run < RUNS; run++) {
    const order = shuffled(pages, 0x6789abc + run);
    await both(run,
      () => {
        kRead.push(kernelTouch(SHM, size, order, false, run, { fillByte: fill, private: true }));
        kWrite.push(kernelTouch(SHM, size, order, true, run, { fillByte: fill, private: true }));
      },
      async () => {
        let m = await f.map({ private: true, faultAround: false });
        const s0 = sink;
        oRead.push(touch(m.buffer, order, false, run));
        if (sink - s0 !== pages * fill) bad++;
        await m.unmap();
        m = await f.map({ private: true, faultAround: false });
        oWrite.push(touch(m.buffer, order, true, run));
        if (m.buffer[spot(order[0]!)] !== stampOf(run)(order[0]!)) bad++;
        await m.unmap();
        bad += await misreads(f, order, () => fill); // the file never changes
      });
  }
  await f.close();
  t.equal(bad, 0, 'private reads saw the file, private writes stayed private');
  add(t, { id: '11a', what: whatOf('11a'), unit: 'µs/fault', baseline: 'kernel MAP_PRIVATE of a written tmpfs file, fresh mapping, same order', ours: oRead, base: kRead, aim: aim.none(), note: 'faultAround: false' });
  add(t, { id: '11b', what: whatOf('11b'), unit: 'µs/fault', baseline: 'kernel MAP_PRIVATE of a written tmpfs file, fresh mapping, same order', ours: oWrite, base: kWrite, aim: aim.none(), note: 'faultAround: false' });
});

// Row 13: random reads over memory already mapped, where the TLB decides: daxmap's
// 2 MiB windows are PMD mappings on a huge tmpfs (and 2 MiB pages on the hugetlbfs
// stand-in), the kernel's mapping of a plain tmpfs file is 4 KiB pages. The reads are
// a C loop (reads.c), the same for both.
t.test('row 13: TLB-bound random 8-byte reads over an already-faulted mapping', async (t) => {
  const size = TLB_MB * MiB;
  const fill = 0x5d;
  const word = BigInt(fill) * 0x0101010101010101n;
  const expectSum = (BigInt(TLB_READS) * word) & ((1n << 64n) - 1n);
  const k = KernelFile.create(tempPath(SHM, 'kernel'), size, { fillByte: fill });
  t.teardown(() => k.close());
  let pre = 0;
  for (let off = 0; off < size; off += PAGE) pre += k.buffer[off]!; // every page faulted before the timed reads
  t.equal(pre, (size / PAGE) * fill, 'the kernel\'s file reads its bytes');
  const ht = hugeTmpfs(t, TLB_MB + 128);
  // the pool is the mapped file plus 64 MiB of metadata and slack: that many huge pages
  const hl = await hugetlb(t, (size + 64 * MiB) / (2 * MiB));
  const backings = [
    { id: '13a', dir: typeof ht === 'string' ? ht : ht.dir, why: typeof ht === 'string' ? ht : null, pageField: 'ShmemPmdMapped' },
    { id: '13b', dir: typeof hl === 'string' ? hl : hl.dir, why: typeof hl === 'string' ? hl : null, pageField: 'hugetlb' },
  ];
  for (const b of backings) {
    const what = whatOf(b.id);
    if (b.why !== null) {
      notMeasured[b.id] = b.why;
      t.comment(`row ${b.id} not measured: ${b.why}`);
      continue;
    }
    const file = tempPath(b.dir, 'pool');
    let pool: Pool;
    try {
      pool = await Pool.create(file, { size: size + 64 * MiB });
    } catch (e) {
      // Huge pages are shared by the machine: another process giving back its own
      // while still using them takes free ones, ours included, before the pool maps them.
      fs.rmSync(file, { force: true });
      if ((e as { code?: string }).code !== 'ENOMEM') throw e;
      notMeasured[b.id] = `the pool could not map its huge pages (${(e as Error).message}; HugePages_Free ${/HugePages_Free:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1]})`;
      t.comment(`row ${b.id} not measured: ${notMeasured[b.id]}`);
      continue;
    }
    try {
      const f = await pool.openFile('tlb', { create: true });
      await f.truncate(size);
      const m = await f.map();
      for (let off = 0; off < size; off += GiB) m.buffer.subarray(off, Math.min(size, off + GiB)).fill(fill);
      const at = mappingAddress(m);
      const mapped2M = b.pageField === 'hugetlb'
        ? vmasIn(at, size).reduce((n, v) => n + (v.kb['KernelPageSize'] === 2048 ? (v.kb['Shared_Hugetlb'] ?? 0) + (v.kb['Private_Hugetlb'] ?? 0) : 0), 0)
        : smapsSum(at, size, b.pageField);
      t.equal(mapped2M * 1024, size, `row ${b.id}: the whole mapping is mapped in 2 MiB units (smaps)`);
      const ours: number[] = [];
      const base: number[] = [];
      const s0 = await pool.stats();
      let sums = 0;
      for (let run = 0; run < RUNS; run++) {
        const seed = 0x1300 + run;
        await both(run,
          () => { settleHeap(); const r = randomReads(k.map.buffer.buffer as ArrayBuffer, TLB_READS, seed); base.push(r.nsPerRead); if (r.sum === expectSum) sums++; },
          () => { settleHeap(); const r = randomReads(m.arrayBuffer, TLB_READS, seed); ours.push(r.nsPerRead); if (r.sum === expectSum) sums++; });
      }
      const s1 = await pool.stats();
      t.equal(sums, 2 * RUNS, `row ${b.id}: every run read the bytes written (the sum of the words read)`);
      t.equal(s1.faults - s0.faults, 0, `row ${b.id}: no fault during the reads (the mapping was already faulted)`);
      add(t, {
        id: b.id, what, unit: 'ns/read', baseline: 'kernel MAP_SHARED of a written /dev/shm tmpfs file (4 KiB pages), every page touched first, same reads',
        ours, base, aim: aim.ratioBelow(1), note: `the same C loop (test/perf/reads.c) on both; daxmap's file written through a default-policy mapping`,
      });
      await m.unmap();
      await f.close();
    } finally {
      await pool.close();
      fs.rmSync(file, { force: true });
    }
  }
});

t.test('the table', async (t) => {
  const lines = tableLines(results, ORDER, notMeasured);
  const json = writeJson(results, {
    date: new Date().toISOString(), runs: RUNS, cpus: os.cpus().length, kernel: os.release(), node: process.version,
    diskDir: DISK, note: 'per-run ratios daxmap / baseline; each pair measured in the same run',
  });
  t.comment(`daxmap benchmark table: ${RUNS} runs per row, ${os.cpus().length} CPUs, Linux ${os.release()}, ${new Date().toISOString()}`);
  for (const l of lines) t.comment(l);
  t.comment(`the same figures as JSON: ${json}`);
  t.equal(results.length + Object.keys(notMeasured).length, ORDER.length, 'every row was measured, or says why not');
  t.equal(baselineBad, 0, 'every kernel baseline run stored into its mapping (and its file, unless MAP_PRIVATE)');
});
