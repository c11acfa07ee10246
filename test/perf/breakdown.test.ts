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
import { defaultDecideMode } from '../../dist/fault/decide';
import { defaultReserveMode } from '../../dist/fault/reserve';
import { compileC, runC } from './c/cc';
import { RUNS, envInt, fmt, fmtSummary, summarize, pairedRatio, shuffled } from './stats';

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

const median = (xs: number[]): number => summarize(xs).median;

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

// ---- 1b. plain C, random order: the mechanism's floor under bench row 1 ----

// Row 1 (docs/bench.md) stores into the pages of a 64 MiB mapping in a random order,
// and daxmap answers each fault from the reserve: the reader installs a block with
// mmap(MAP_FIXED) + MADV_POPULATE_WRITE and wakes the thread. The C figures above
// touch pages in order, where each install merges with its neighbour's VMA; here the
// order is random and the device pages are in file order or shuffled (a VMA per
// page), with another thread of the process busy or not (test/perf/c/fault-random.c).
const RANDOM_SIZE = envInt('DAXMAP_BENCH_RANDOM_MB', 64) * MiB;

const rbin = compileC('fault-random');
if ('skip' in rbin) {
  t.skip(`plain C, random order: ${rbin.skip}`, () => {});
} else {
  t.teardown(rbin.cleanup);
  t.test('plain C, random order: the floor of bench row 1\'s native answer, µs per 4 KiB first touch, tmpfs', async (t) => {
    type Acc = Record<'p50' | 'ratio' | 'mean' | 'answer' | 'place' | 'populate' | 'wake' | 'first' | 'mid' | 'end' | 'tlb', number[]>;
    const byVariant = new Map<string, Acc>();
    const skipped = new Set<string>();
    const mib = String(RANDOM_SIZE / MiB);
    const pages = RANDOM_SIZE / PAGE;
    const BUSY: Record<string, string> = { spin: ', a thread spinning', pinned: ', pinned to one CPU', pinned_spin: ', pinned + a spinner on the other' };
    const keyOf = (l: Record<string, string | number>): string =>
      `${l.variant} ${l.order}${l.dev !== '-' ? `, device pages ${l.dev === 'file' ? 'in file order' : 'shuffled'}` : ''}` +
      `${l.resident === 1 ? ', resident' : ''}${BUSY[l.busy as string] ?? ''}`;
    const bad: string[] = [];
    for (let run = 0; run < RUNS; run++) {
      const lines = runC(rbin.bin, ['/dev/shm', mib, String(run + 1)]);
      const kernel = lines.find((l) => l.variant === 'kernel' && l.order === 'random' && l.busy === 'none')!.touch_p50_us as number;
      for (const l of lines) {
        const key = keyOf(l);
        if (l.skip !== undefined) {
          skipped.add(`${key}: ${l.skip}`);
          continue;
        }
        let e = byVariant.get(key);
        if (!e) byVariant.set(key, (e = { p50: [], ratio: [], mean: [], answer: [], place: [], populate: [], wake: [], first: [], mid: [], end: [], tlb: [] }));
        e.p50.push(l.touch_p50_us as number);
        e.ratio.push((l.touch_p50_us as number) / kernel);
        e.mean.push(l.us_per_page as number);
        e.answer.push(l.answer_p50_us as number);
        e.place.push(l.place_p50_us as number);
        e.populate.push(l.populate_p50_us as number);
        e.wake.push(l.wake_p50_us as number);
        e.first.push(l.resumed_first as number);
        e.mid.push(l.vmas_mid as number);
        e.end.push(l.vmas_end as number);
        e.tlb.push(((l.tlb as number) * 1000) / pages);
        if (l.faults !== pages || l.checked !== 1) bad.push(`${key} (run ${run + 1}): faults ${l.faults}, checked ${l.checked}`);
        // What the experiment rests on: shuffled device pages leave a VMA per page
        // (save the rare pair that lands adjacent), pages in file order merge back into one.
        if (l.dev === 'shuffled' && (l.vmas_end as number) < pages * 0.99) bad.push(`${key} (run ${run + 1}): only ${l.vmas_end} VMAs`);
        if (l.dev === 'file' && (l.vmas_end as number) > 2) bad.push(`${key} (run ${run + 1}): ${l.vmas_end} VMAs, not merged`);
      }
    }
    // The same pattern through daxmap (bench row 1: a fresh pool per run, map({ faultAround: false }),
    // the agent answering from the reserve) and through the kernel's mapping, from JavaScript, in the same runs.
    const stat = (): Record<'median' | 'mean' | 'p99' | 'slowest', number[]> => ({ median: [], mean: [], p99: [], slowest: [] });
    const js = { kernel: stat(), daxmap: stat() };
    const keep = (into: ReturnType<typeof stat>, r: ReturnType<typeof touchPages>): void => {
      for (const k of ['median', 'mean', 'p99', 'slowest'] as const) into[k].push(r[k]);
    };
    let misread = 0;
    for (let run = 0; run < RUNS; run++) {
      const order = shuffled(pages, 0x2545f491 + run);
      const kp = tempPath('/dev/shm', 'kernel');
      const dev = openDevice(kp, { create: true, size: RANDOM_SIZE });
      try {
        keep(js.kernel, touchPages(dev.view(0, RANDOM_SIZE), true, order));
      } finally {
        dev.close();
        fs.rmSync(kp, { force: true });
      }
      const poolPath = tempPath('/dev/shm', 'pool');
      const pool = await Pool.create(poolPath, { size: RANDOM_SIZE + 64 * MiB });
      try {
        const f = await pool.openFile('random', { create: true });
        await f.truncate(RANDOM_SIZE);
        const m = await f.map({ faultAround: false });
        keep(js.daxmap, touchPages(m.buffer, true, order));
        await m.unmap();
        const page = Buffer.alloc(PAGE);
        for (let i = 0; i < pages; i += 257) {
          await f.read(page, order[i]! * PAGE);
          if (page[0] !== 7) misread++;
        }
        await f.close();
      } finally {
        await pool.close();
        fs.rmSync(poolPath, { force: true });
      }
    }
    const med = (xs: number[], d = 2): string => fmt(summarize(xs).median, d);
    t.comment(`${RUNS} runs of test/perf/c/fault-random.c /dev/shm ${mib} SEED (SEED = 1..${RUNS}): each variant stores once into every page of a fresh ${mib} MiB mapping`);
    t.comment('random: a permutation of the pages (bench row 1\'s pattern); install: daxmap\'s reserve answer on the reader thread (mmap(MAP_FIXED, MAP_SHARED) of a');
    t.comment('device page, MADV_POPULATE_WRITE, UFFDIO_WAKE); copy: UFFDIO_COPY of a zero page (the round trip, no VMA); resident: the device file written');
    t.comment('with zeros first (as the reserve\'s stock is); a thread spinning: a third thread of the process on the CPU, unpinned; pinned to one CPU:');
    t.comment('the toucher and the reader on one CPU; + a spinner on the other: the same, and a third thread spinning pinned on the other CPU');
    t.comment('per run: the median touch (the mean beside it); the answer\'s median inside the reader and its parts (place: the mmap or the copy;');
    t.comment('wake: UFFDIO_WAKE); first: the share of faults whose thread had resumed and stored before the reader\'s wake returned (then the');
    t.comment('wake\'s time takes in that thread\'s run on the reader\'s CPU); VMAs in the region at half and at all pages touched; TLB shootdown');
    t.comment('interrupts per 1,000 faults (system-wide, every CPU: other processes count too); medians of the runs');
    t.comment(`${'variant'.padEnd(64)} ${'median touch µs, min / med / max'.padStart(26)}   ${'vs kernel random'.padStart(22)}   mean   answer = place + populate + wake   first   VMAs mid / end   TLB/1k`);
    for (const [key, e] of byVariant) {
      const s = summarize(e.p50);
      t.comment(`${key.padEnd(64)} ${`${fmt(s.min)} / ${fmt(s.median)} / ${fmt(s.max)}`.padStart(26)}   ${fmtSummary(summarize(e.ratio), 2, 'x').padStart(22)}` +
        `   ${med(e.mean).padStart(5)}   ${med(e.answer)} = ${med(e.place)} + ${med(e.populate)} + ${med(e.wake)}`.padEnd(40) +
        `   ${med(e.first)}   ${med(e.mid, 0)} / ${med(e.end, 0)}   ${med(e.tlb, 1)}`);
    }
    for (const sk of skipped) t.comment(`skipped: ${sk}`);
    t.comment(`the same random stores from JavaScript (a different permutation per run), ${RUNS} runs: median touch µs min / med / max; the mean, the 99th percentile`);
    t.comment('and the share of the whole time in the slowest 1% of the touches (medians of the runs)');
    const tail = (x: ReturnType<typeof stat>): string => `   mean ${med(x.mean)}, p99 ${med(x.p99)}, slowest 1%: ${fmt(100 * summarize(x.slowest).median, 0)}% of the time`;
    t.comment(row('kernel MAP_SHARED tmpfs file, fresh', js.kernel.median, tail(js.kernel)));
    t.comment(row('daxmap, fresh tmpfs pool, faultAround: false (bench row 1)', js.daxmap.median, tail(js.daxmap)));
    t.comment(`daxmap / kernel per run: median touch ${fmtSummary(pairedRatio(js.daxmap.median, js.kernel.median), 2, 'x')}, mean ${fmtSummary(pairedRatio(js.daxmap.mean, js.kernel.mean), 2, 'x')}`);
    const floor = byVariant.get('install random, device pages shuffled, resident');
    if (floor) {
      t.comment(`the C floor (install random, device pages shuffled, resident) over daxmap's touch, per run: median ${fmtSummary(pairedRatio(floor.p50, js.daxmap.median), 2, '')}, mean ${fmtSummary(pairedRatio(floor.mean, js.daxmap.mean), 2, '')}`);
    }
    t.equal(misread, 0, 'daxmap: every sampled page reads back its store');
    t.same(bad, [], 'every variant took one fault per page, every store reached its page, and the VMAs are as the variant says');
    t.equal(byVariant.size + skipped.size, 13, 'every variant ran or said why not');
  });
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

// With reserves and decided ranges off: the policy's own decision, as it is taken
// whenever a fault reaches it. With them on, a write to a hole and a write to a
// written block mostly never reach it (the agent answers them from a reserve, or the
// block was installed at map()), and a Client that answers at once installs nothing:
// every write fault of a reserve's range would take the reserve back and grant it
// anew, a cycle no real client goes through, and every fault of a decided block
// would be found installed already (docs/faults.md, "After").
function decisions(dir: string): Decisions {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'c', 'decide.js'), dir, String(SIZE)], {
    encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', DAXMAP_LOCKDEP: '0', DAXMAP_RESERVE: 'off', DAXMAP_DECIDED: 'off' }, timeout: 600_000,
  });
  if (r.status !== 0) throw new Error(`decide.js exited ${r.status ?? r.signal}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Decisions;
}

for (const b of BACKINGS) {
  t.test(`the policy's decision alone, µs per 4 KiB fault, ${b.kind} pool`, async (t) => {
    const runs: Decisions[] = [];
    for (let run = 0; run < RUNS; run++) runs.push(decisions(b.dir));
    t.comment(`${RUNS} runs of DAXMAP_RESERVE=off DAXMAP_DECIDED=off test/perf/c/decide.js ${b.dir} ${SIZE}; each: FaultPolicy.handle for ${PAGES} faults of each kind in order (faultAround: false), a Client answering at once (after ${3 * 256} faults on another file to warm the JIT): the first ${PAGES / 2} as they are, the next ${PAGES / 2} with each stage timed by wrapping its method`);
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

/**
 * Touch every page once, in order or in `order` (page numbers); the median µs of one
 * page's touch (clock reads included), the mean, the 99th percentile, and the share
 * of the whole time spent in the slowest 1% of the touches.
 */
function touchPages(b: Buffer, write: boolean, order?: ArrayLike<number>): { median: number; mean: number; p99: number; slowest: number } {
  let sum = 0;
  const n = b.length / PAGE;
  const per = new Float64Array(n);
  const t0 = process.hrtime.bigint();
  let prev = t0;
  for (let i = 0; i < n; i++) {
    const off = (order ? order[i]! : i) * PAGE;
    if (write) b[off] = 7;
    else sum += b[off]!;
    const now = process.hrtime.bigint();
    per[i] = Number(now - prev) / 1000;
    prev = now;
  }
  if (sum !== 0) throw new Error('a hole read non-zero');
  per.sort();
  const total = Number(prev - t0) / 1000;
  let slow = 0;
  for (let i = Math.floor(n * 0.99); i < n; i++) slow += per[i]!;
  return { median: per[Math.floor(n / 2)]!, mean: total / n, p99: per[Math.floor(n * 0.99)]!, slowest: slow / total };
}

const touch = (b: Buffer, write: boolean): number => touchPages(b, write).median;

// Each run also takes the same faults with reserves and decided ranges off
// (configure, root-only: docs/fault-policy.md), the two changes since the "before"
// figures that take these faults off the policy's path, so that what they buy is
// measured in the same run; the order of the two alternates from run to run.
const TODAY = { reserve: defaultReserveMode(), decided: defaultDecideMode() };
const MODES = [
  { label: 'daxmap', conf: TODAY },
  { label: 'daxmap, reserves + decided ranges off', conf: { reserve: 'off', decided: 'off' } },
] as const;

for (const b of BACKINGS) {
  t.test(`the whole fault through the public API, µs per 4 KiB first touch, ${b.kind} pool`, async (t) => {
    const poolPath = tempPath(b.dir, 'pool');
    t.teardown(() => fs.rmSync(poolPath, { force: true }));
    const pool = await Pool.create(poolPath, { size: 3 * SIZE + 64 * MiB });
    t.teardown(() => pool.close());
    const ours = MODES.map(() => new Map<Kind, number[]>(KINDS.map((k) => [k, []])));
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
        for (const i of run % 2 === 0 ? [0, 1] : [1, 0]) {
          await pool.request('configure', [MODES[i]!.conf]);
          const name = `whole-${run}-${seq++}`;
          const f = await pool.openFile(name, { create: true });
          await f.truncate(SIZE);
          if (kind === 'write to a written block') await f.write(Buffer.alloc(SIZE, 1), 0);
          const m = await f.map({ faultAround: false });
          ours[i]!.get(kind)!.push(touch(m.buffer, write));
          await m.unmap();
          const page = Buffer.alloc(PAGE);
          await f.read(page, (PAGES - 1) * PAGE);
          if (page[0] === (write ? 7 : 0)) checked++;
          await f.close();
          await pool.unlink(name);
        }
      }
    }
    await pool.request('configure', [TODAY]);
    const st = await pool.stats();
    t.comment(`${RUNS} runs; each: every page of a fresh ${SIZE / MiB} MiB file touched once in order, through map({ faultAround: false }) and through the kernel's MAP_SHARED mapping of a ${b.kind} file`);
    t.comment(`daxmap: as configured (reserve ${TODAY.reserve}, decided ${TODAY.decided}); then the same with configure({ reserve: 'off', decided: 'off' }), in the same runs`);
    t.comment(`${'case'.padEnd(58)} ${'median touch µs, min / med / max'.padStart(26)}   daxmap / kernel per run`);
    for (const kind of KINDS) {
      t.comment(row(`kernel, ${kind}`, kernel.get(kind)!));
      MODES.forEach((mode, i) => {
        t.comment(row(`${mode.label}, ${kind}`, ours[i]!.get(kind)!, `   ${fmtSummary(pairedRatio(ours[i]!.get(kind)!, kernel.get(kind)!), 2, 'x')}`));
      });
    }
    t.comment(`faults through the policy ${st.faults}, answered from reserves ${st.reserved} (grants ${st.reserveGrants}, top-ups ${st.reserveTopUps}, take-backs ${st.reserveTakeBacks})`);
    t.equal(checked, RUNS * KINDS.length * MODES.length, 'the last page of every file reads back what was stored');
    t.equal(st.sigbus, 0, 'no fault was answered with SIGBUS');
  });
}
