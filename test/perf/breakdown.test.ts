// Where a fault's time goes (docs/faults.md): one 4 KiB first touch, split into its
// stages by differential experiments, with no instrumentation in lib/ or native/.
//  1. Plain C (test/perf/c/fault-stages.c): the kernel's own first touch of a
//     MAP_SHARED file mapping, a userfaultfd trap answered with the zero page or a copy
//     (the trap round trip), with MAP_FIXED installs of the file page by populate
//     flavour and window, and with the answer handed to a second thread.
//  2. The policy's decision alone: FaultPolicy driven with a Client whose run()
//     answers at once, on a real pool; its stages timed by wrapping their methods
//     (test/perf/c/decide.js, in a plain node child).
//  3. The whole: daxmap's public API (embedded Pool), with the kernel's first touch of
//     a file of the same kind, in the same run.
// For tmpfs and disk-file backings. Prints tables; asserts only that every run
// completed with the expected number of faults and the data read back.
// Sizes: DAXMAP_BENCH_BREAKDOWN_MB (default 16: pages faulted per kind and run).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Pool } from '../../dist/index';
import { openDevice } from '../../dist/device/device';
import { compileC, runC } from './c/cc';
import { RUNS, envInt, fmt, fmtSummary, summarize, pairedRatio } from './stats';

const PAGE = 4096;
const MiB = 1 << 20;
const SIZE = envInt('DAXMAP_BENCH_BREAKDOWN_MB', 16) * MiB;
const PAGES = SIZE / PAGE;
const BACKINGS = [
  { kind: 'tmpfs', dir: '/dev/shm' },
  { kind: 'disk file', dir: os.tmpdir() },
] as const;
const KINDS = ['read of a hole', 'write to a hole', 'write to a written block'] as const;
type Kind = (typeof KINDS)[number];
let seq = 0;

const tempPath = (dir: string, what: string): string => path.join(dir, `daxmap-bench-breakdown-${what}-${process.pid}-${seq++}`);

function row(label: string, xs: number[], extra = ''): string {
  const s = summarize(xs);
  return `${label.padEnd(58)} ${`${fmt(s.min)} / ${fmt(s.median)} / ${fmt(s.max)}`.padStart(26)}${extra}`;
}

// ---- 1. plain C ----

const cbin = compileC('fault-stages');
if ('skip' in cbin) {
  t.skip(`plain C stages: ${cbin.skip}`, () => {});
} else {
  t.teardown(cbin.cleanup);
  for (const b of BACKINGS) {
    t.test(`plain C: one 4 KiB first touch, µs per page, ${b.kind}`, async (t) => {
      const byVariant = new Map<string, { p50: number[]; mean: number[]; answer: number[]; faults: number[]; kernel: number[] }>();
      const mib = String(SIZE / MiB);
      for (let run = 0; run < RUNS; run++) {
        const lines = runC(cbin.bin, [b.dir, mib]);
        const kernelWrite = lines.find((l) => l.variant === 'kernel' && l.access === 'write')!.touch_p50_us as number;
        for (const l of lines) {
          const key = `${l.variant} ${l.access}${l.variant === 'kernel' ? '' : ` ${l.window_kib} KiB`}${l.populate !== '-' ? ` ${l.populate}` : ''}`;
          let e = byVariant.get(key);
          if (!e) byVariant.set(key, (e = { p50: [], mean: [], answer: [], faults: [], kernel: [] }));
          e.p50.push(l.touch_p50_us as number);
          e.mean.push(l.us_per_page as number);
          e.answer.push(l.answer_p50_us as number);
          e.faults.push(l.faults as number);
          e.kernel.push(kernelWrite);
        }
      }
      t.comment(`${RUNS} runs of test/perf/c/fault-stages.c ${b.dir} ${mib}: each variant touches every page of a fresh ${mib} MiB file in order`);
      t.comment('per run: the median touch (one fault each for 4 KiB windows; the mean, which spreads a window\'s fault over its pages and');
      t.comment('takes in every preemption of a loaded machine, beside it); the answer: median µs inside the answering thread per fault');
      t.comment(`${'variant'.padEnd(58)} ${'median touch µs, min / med / max'.padStart(26)}   ${'vs kernel write'.padStart(22)}   mean µs/page (median)   answer µs`);
      for (const [key, e] of byVariant) {
        t.comment(row(key, e.p50, `   ${fmtSummary(pairedRatio(e.p50, e.kernel), 2, 'x').padStart(22)}   ${fmt(summarize(e.mean).median).padStart(21)}   ${fmt(summarize(e.answer).median)}`));
      }
      for (const [key, e] of byVariant) {
        const win = /(\d+) KiB/.exec(key);
        const expected = win ? SIZE / (Number(win[1]) * 1024) : PAGES;
        t.ok(e.faults.every((f) => f === expected), `${key}: ${expected} faults in every run`);
      }
      t.equal(byVariant.size, 20, 'every variant ran');
    });
  }
}

// ---- 2. the policy's decision alone ----

// In a plain node child (test/perf/c/decide.js says why: tap's instrumentation of
// this process doubles the cost of every promise; the pool's service worker runs
// without it).
const STAGES = [
  'range lock (shared, chunk)', 'entry lock (chunk)', 'lookup', 'ensureWritten (all of it)',
  '  alloc + log locks', '  allocate', '  zero the block', '  persist the block (msync)', '  journal (apply + append)',
  'refreshZeros (other mappings)', 'answer (client.run, here at once)',
] as const;

type Decisions = Record<Kind, Record<string, number>>;

function decisions(dir: string): Decisions {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'c', 'decide.js'), dir, String(SIZE)], {
    encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', DAXMAP_LOCKDEP: '0' }, timeout: 600_000,
  });
  if (r.status !== 0) throw new Error(`decide.js exited ${r.status ?? r.signal}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Decisions;
}

const median = (xs: number[]): number => summarize(xs).median;

for (const b of BACKINGS) {
  t.test(`the policy's decision alone, µs per 4 KiB fault, ${b.kind} pool`, async (t) => {
    const runs: Decisions[] = [];
    for (let run = 0; run < RUNS; run++) runs.push(decisions(b.dir));
    t.comment(`${RUNS} runs of test/perf/c/decide.js ${b.dir} ${SIZE}; each: FaultPolicy.handle for ${PAGES} faults of each kind in order (faultAround: false), a Client answering at once (after ${3 * 256} faults on another file to warm the JIT): the first ${PAGES / 2} as they are, the next ${PAGES / 2} with each stage timed by wrapping its method`);
    t.comment('per run: the median over its faults (the mean, and the worst single fault, beside it); nested stages indented; a stage\'s time includes the await that resumes its caller');
    for (const kind of KINDS) {
      const us = (stage: string): number[] => runs.map((r) => r[kind][stage] ?? 0);
      t.comment(`${kind}:`);
      t.comment(row('  decision, in all (handle → answered), median', us('total'), `   mean ${fmt(median(us('mean')))}, worst ${fmt(median(us('worst')) / 1000)} ms (medians of the runs)`));
      t.comment(row('  the same with its stages timed (below), median', us('total, stages timed')));
      for (const s of STAGES) {
        if (us(s).every((x) => x < 0.01)) continue; // not on this kind's path
        t.comment(row(`    ${s}`, us(s)));
      }
    }
    t.equal(runs.length, RUNS, 'every run completed');
  });
}

// ---- 3. the whole, through the public API ----

/** Touch every page in order; the median µs of one page's touch (clock reads included). */
function touch(b: Buffer, write: boolean): number {
  let sum = 0;
  const per: number[] = [];
  let prev = process.hrtime.bigint();
  for (let off = 0; off < b.length; off += PAGE) {
    if (write) b[off] = 7;
    else sum += b[off]!;
    const now = process.hrtime.bigint();
    per.push(Number(now - prev) / 1000);
    prev = now;
  }
  if (sum !== 0) throw new Error('a hole read non-zero');
  return median(per);
}

for (const b of BACKINGS) {
  t.test(`the whole fault through the public API, µs per 4 KiB first touch, ${b.kind} pool`, async (t) => {
    const poolPath = tempPath(b.dir, 'pool');
    t.teardown(() => fs.rmSync(poolPath, { force: true }));
    const pool = await Pool.create(poolPath, { size: 3 * SIZE + 64 * MiB });
    t.teardown(() => pool.close());
    const ours = new Map<Kind, number[]>(KINDS.map((k) => [k, []]));
    const kernel = new Map<Kind, number[]>(KINDS.map((k) => [k, []]));
    let checked = 0;
    for (let run = 0; run < RUNS; run++) {
      for (const kind of KINDS) {
        const write = kind !== 'read of a hole';
        // The kernel's own first touch of a fresh file of the same kind (written first
        // for the written-block case: its pages are in the page cache, as ours are in the device).
        const kp = tempPath(b.dir, 'kernel');
        const dev = openDevice(kp, { create: true, size: SIZE });
        try {
          if (kind === 'write to a written block') fs.writeFileSync(kp, Buffer.alloc(SIZE, 1));
          kernel.get(kind)!.push(touch(dev.view(0, SIZE), write));
        } finally {
          dev.close();
          fs.rmSync(kp, { force: true });
        }
        const name = `whole-${run}-${seq++}`;
        const f = await pool.openFile(name, { create: true });
        await f.truncate(SIZE);
        if (kind === 'write to a written block') await f.write(Buffer.alloc(SIZE, 1), 0);
        const m = await f.map({ faultAround: false });
        ours.get(kind)!.push(touch(m.buffer, write));
        await m.unmap();
        const page = Buffer.alloc(PAGE);
        await f.read(page, (PAGES - 1) * PAGE);
        if (page[0] === (write ? 7 : 0)) checked++;
        await f.close();
        await pool.unlink(name);
      }
    }
    const st = await pool.stats();
    t.comment(`${RUNS} runs; each: every page of a fresh ${SIZE / MiB} MiB file touched once in order, through map({ faultAround: false }) and through the kernel's MAP_SHARED mapping of a ${b.kind} file`);
    t.comment(`${'case'.padEnd(58)} ${'median touch µs, min / med / max'.padStart(26)}   daxmap / kernel per run`);
    for (const kind of KINDS) {
      t.comment(row(`kernel, ${kind}`, kernel.get(kind)!));
      t.comment(row(`daxmap, ${kind}`, ours.get(kind)!, `   ${fmtSummary(pairedRatio(ours.get(kind)!, kernel.get(kind)!), 2, 'x')}`));
    }
    t.equal(checked, RUNS * KINDS.length, 'the last page of every file reads back what was stored');
    t.equal(st.sigbus, 0, 'no fault was answered with SIGBUS');
  });
}
