// Issue 4 benchmark 4: growth of the process's resident set (VmRSS, /proc/self/status)
// after reading every page of a sparse file (all holes) through a pool mapping, one
// byte per page, against the same read through the kernel's MAP_SHARED mapping of a
// fresh sparse tmpfs file, in the same run. The pool answers a read of a hole with
// the shared zero page (no block, no memory per page); tmpfs allocates a page per hole
// read. Also prints µs per page and the page-table growth (VmPTE).
// Prints figures; asserts only that every run completed, the holes read as zeros and
// no block was allocated.
// Sizes: DAXMAP_BENCH_HOLES_MB (default 1024, default policy), DAXMAP_BENCH_HOLES_4K_MB
// (default 128, faultAround: false: one trapped fault per page).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Pool } from '../../dist/index';
import { openDevice } from '../../dist/device/device';
import { RUNS, envInt, faultLine, fmt, fmtSummary, procStatusKiB, summarize, tableOf, timeNs } from './stats';

const PAGE = 4096;
const MiB = 1 << 20;
const GiB = 1 << 30;
let seq = 0;

function tempPath(what: string): string {
  return path.join('/dev/shm', `daxmap-bench-${what}-${process.pid}-${seq++}`);
}

interface Sample { rssMiB: number; pagesMiB: number; anonMiB: number; pteMiB: number; usPerPage: number; sum: number }

/** Read one byte of every page; RSS and page-table growth in MiB, µs per page. */
function readHoles(views: Buffer[], pages: number): Sample {
  let sum = 0;
  const rss0 = procStatusKiB('VmRSS');
  const file0 = procStatusKiB('RssFile') + procStatusKiB('RssShmem');
  const anon0 = procStatusKiB('RssAnon');
  const pte0 = procStatusKiB('VmPTE');
  const ns = timeNs(() => {
    for (const b of views) for (let off = 0; off < b.length; off += PAGE) sum += b[off]!;
  });
  return {
    rssMiB: (procStatusKiB('VmRSS') - rss0) / 1024,
    pagesMiB: (procStatusKiB('RssFile') + procStatusKiB('RssShmem') - file0) / 1024,
    anonMiB: (procStatusKiB('RssAnon') - anon0) / 1024,
    pteMiB: (procStatusKiB('VmPTE') - pte0) / 1024,
    usPerPage: ns / 1000 / pages,
    sum,
  };
}

function chunks(size: number, view: (off: number, len: number) => Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < size; off += GiB) out.push(view(off, Math.min(GiB, size - off)));
  return out;
}

function kernelRun(size: number): Sample {
  const p = tempPath('kernel');
  try {
    const dev = openDevice(p, { create: true, size }); // tmpfs files stay sparse
    try {
      return readHoles(chunks(size, (o, l) => dev.view(o, l)), size / PAGE);
    } finally {
      dev.close();
    }
  } finally {
    fs.rmSync(p, { force: true });
  }
}

const cases = [
  { mb: envInt('DAXMAP_BENCH_HOLES_MB', 1024), faultAround: true },
  { mb: envInt('DAXMAP_BENCH_HOLES_4K_MB', 128), faultAround: false },
] as const;

for (const c of cases) {
  const policy = c.faultAround ? 'default policy (2 MiB zero windows)' : 'faultAround: false (4 KiB zero pages)';
  t.test(`RSS growth after reading ${c.mb} MiB of holes, ${policy}, tmpfs pool`, async (t) => {
    const size = c.mb * MiB;
    const pages = size / PAGE;
    const poolPath = tempPath('pool');
    t.teardown(() => fs.rmSync(poolPath, { force: true }));
    // The file is all holes: the pool needs no room for it.
    const pool = await Pool.create(poolPath, { size: 256 * MiB });
    t.teardown(() => pool.close());
    {
      // Warm-up (not measured): the service's JIT and its first allocations.
      const f = await pool.openFile('warmup', { create: true });
      await f.truncate(16 * MiB);
      const m = await f.map({ faultAround: c.faultAround });
      readHoles([m.buffer], (16 * MiB) / PAGE);
      await m.unmap();
      await f.close();
      await pool.unlink('warmup');
    }
    const kernel: Sample[] = [];
    const trapped: Sample[] = [];
    let zeros = 0;
    let unallocated = 0;
    const before = await pool.stats();
    for (let run = 0; run < RUNS; run++) {
      kernel.push(kernelRun(size));
      const name = `holes-${run}`;
      const f = await pool.openFile(name, { create: true });
      await f.truncate(size);
      const m = await f.map({ faultAround: c.faultAround });
      const s = readHoles(chunks(size, (o, l) => m.buffer.subarray(o, o + l)), pages);
      trapped.push(s);
      if (s.sum === 0) zeros++;
      await m.unmap();
      const st = await f.stat();
      if (st.allocated === 0 && st.extents.length === 0) unallocated++;
      await f.close();
      await pool.unlink(name);
    }
    const after = await pool.stats();
    const col = (xs: Sample[], k: keyof Sample): number[] => xs.map((x) => x[k]);
    t.comment(`${RUNS} runs; each reads one byte of each of the ${pages} pages of a fresh sparse ${c.mb} MiB file`);
    for (const l of tableOf('VmRSS growth, MiB', [
      { label: 'kernel MAP_SHARED sparse tmpfs file (baseline)', runs: col(kernel, 'rssMiB') },
      { label: `daxmap map(${c.faultAround ? '' : '{ faultAround: false }'})`, runs: col(trapped, 'rssMiB') },
    ], col(kernel, 'rssMiB'), { digits: 1 })) t.comment(l);
    const pool16 = summarize(col(trapped, 'rssMiB'));
    t.comment(`daxmap RSS growth max ${fmt(pool16.max, 1)} MiB for ${c.mb} MiB of holes (aim: < 16 MiB for 1 GiB)`);
    t.comment('of which file and shmem pages (RssFile + RssShmem), MiB, and anonymous memory (RssAnon: both threads\' JS heaps), MiB, min / median / max:');
    t.comment(`  kernel: pages ${fmtSummary(summarize(col(kernel, 'pagesMiB')), 1)}, anon ${fmtSummary(summarize(col(kernel, 'anonMiB')), 1)}`);
    t.comment(`  daxmap: pages ${fmtSummary(summarize(col(trapped, 'pagesMiB')), 1)}, anon ${fmtSummary(summarize(col(trapped, 'anonMiB')), 1)}`);
    t.comment(`page tables (VmPTE growth, MiB) min / median / max: kernel ${fmtSummary(summarize(col(kernel, 'pteMiB')), 1)}, daxmap ${fmtSummary(summarize(col(trapped, 'pteMiB')), 1)}`);
    for (const l of tableOf('µs per page read', [
      { label: 'kernel MAP_SHARED sparse tmpfs file (baseline)', runs: col(kernel, 'usPerPage') },
      { label: `daxmap map(${c.faultAround ? '' : '{ faultAround: false }'})`, runs: col(trapped, 'usPerPage') },
    ], col(kernel, 'usPerPage'))) t.comment(l);
    t.comment(`pool fault stats over the runs: ${faultLine(after, before)}`);
    t.equal(kernel.length, RUNS, 'every kernel run completed');
    t.equal(trapped.length, RUNS, 'every pool run completed');
    t.equal(zeros, RUNS, 'every hole read as zeros');
    t.equal(unallocated, RUNS, 'reading holes allocated no block');
    t.equal(after.sigbus - before.sigbus, 0, 'no fault was answered with SIGBUS');
    t.equal(after.write - before.write, 0, 'only read faults');
  });
}
