// Where a fault's time goes (docs/faults.md): one 4 KiB first touch, split into its
// stages by differential experiments, with no instrumentation in lib/ or native/.
//  1. Plain C (test/perf/c/fault-stages.c): the kernel's own first touch of a
//     MAP_SHARED file mapping, a userfaultfd trap answered with the zero page or a copy
//     (the trap round trip), with MAP_FIXED installs of the file page by populate
//     flavour and window, and with the answer handed to a second thread.
//  2. The policy's decision alone: FaultPolicy driven with a Client whose run()
//     answers at once, on a real pool; its stages timed by wrapping methods from here.
//  3. The whole: daxmap's public API (embedded Pool), with the kernel's first touch of
//     a file of the same kind, in the same run.
// For tmpfs and disk-file backings. Prints tables; asserts only that every run
// completed with the expected number of faults and the data read back.
// Sizes: DAXMAP_BENCH_BREAKDOWN_MB (default 16: pages faulted per kind and run).
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Pool } from '../../dist/index';
import { openDevice } from '../../dist/device/device';
import { PoolFs } from '../../dist/pool/index';
import { poolInternals } from '../../dist/pool/internal';
import { FaultPolicy, type Client } from '../../dist/fault/policy';
import { WindowBudget } from '../../dist/fault/budget';
import { EV_WRITE, type AnswerSpec } from '../../dist/native/frames';
import { monotonicNow } from '../../dist/native/engine';
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
  t.skip(`plain C stages: ${cbin.skip}`);
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

type Acc = Map<string, number>;
interface Timing { cur: Acc; on: boolean }

/**
 * Wrap obj[name] so the time of each call (to the promise's settling, for async ones)
 * adds to acc.cur[bucket] while acc.on; while off it passes straight through (the
 * decision's own time, without the timing's extra promises).
 */
function timed(obj: any, name: string, bucket: string, acc: Timing): void {
  const orig = obj[name] as (...a: unknown[]) => unknown;
  obj[name] = function (this: unknown, ...args: unknown[]): unknown {
    if (!acc.on) return orig.apply(this, args);
    const t0 = process.hrtime.bigint();
    const add = (): void => { acc.cur.set(bucket, (acc.cur.get(bucket) ?? 0) + Number(process.hrtime.bigint() - t0)); };
    const r = orig.apply(this, args);
    if (r instanceof Promise) return r.finally(add);
    add();
    return r;
  };
}

const STAGES = [
  'range lock (shared, chunk)', 'entry lock (chunk)', 'lookup', 'ensureWritten (all of it)',
  '  alloc + log locks', '  allocate', '  zero the block', '  persist the block (msync)', '  journal (apply + append)',
  'refreshZeros (other mappings)', 'answer (client.run, here at once)',
] as const;

const median = (xs: number[]): number => summarize(xs).median;

/** Per kind: stage → the median over its faults of that stage's µs, plus 'total', 'total, stages timed' and 'mean'. */
async function decisions(dir: string): Promise<Map<Kind, Acc>> {
  const poolPath = tempPath(dir, 'decide');
  const pool = await PoolFs.create(poolPath, { size: 2 * SIZE + 64 * MiB });
  const out = new Map<Kind, Acc>();
  try {
    const ip = poolInternals(pool);
    const acc: Timing = { cur: new Map(), on: false };
    // The pool's and the policy's steps, wrapped before the policy is built (it keeps `ip`).
    timed(ip, 'lookup', 'lookup', acc);
    timed(ip, 'ensureWritten', 'ensureWritten (all of it)', acc);
    const core = ip.core as any;
    timed(core.txn.allocLock, 'acquire', '  alloc + log locks', acc);
    timed(core.txn.logLock, 'acquire', '  alloc + log locks', acc);
    timed(core.txn, 'allocate', '  allocate', acc);
    timed(core.blocks, 'fillBlocks', '  zero the block', acc);
    timed(core.blocks, 'persistRuns', '  persist the block (msync)', acc);
    timed(core.txn, 'commit', '  journal (apply + append)', acc);
    const policy = new FaultPolicy(ip);
    const inner = policy as any;
    timed(inner.ctx.entryLocks, 'acquire', 'entry lock (chunk)', acc);
    timed(inner.revoker, 'refreshZeros', 'refreshZeros (other mappings)', acc);
    const client: Client = {
      id: 'bench',
      run: (answers: AnswerSpec[]) => answers.map(() => 0),
      budget: new WindowBudget(1 << 30),
      deviceId: 1,
    };
    timed(client, 'run', 'answer (client.run, here at once)', acc);
    const f = await pool.openFile('f', { create: true });
    await f.truncate(SIZE);
    const inode = ip.inode(f);
    timed(ip.rangeLock(inode), 'acquireShared', 'range lock (shared, chunk)', acc);
    const written = await pool.openFile('w', { create: true });
    await written.truncate(SIZE);
    const winode = ip.inode(written);
    await ip.ensureWritten(winode, 0, SIZE, {});
    timed(ip.rangeLock(winode), 'acquireShared', 'range lock (shared, chunk)', acc);
    // Warm the JIT on every path first: 256 reads of holes, writes to them, and writes
    // to the blocks those made, on a file of their own.
    const warm = await pool.openFile('warm', { create: true });
    await warm.truncate(256 * PAGE);
    for (const [r, flags] of [[101, 0], [102, EV_WRITE], [103, EV_WRITE]] as const) {
      policy.map(client, { region: r, inode: ip.inode(warm), fileOffset: 0, length: 256 * PAGE, private: false, sync: false, faultAround: false, writable: true });
      for (let p = 0; p < 256; p++) await policy.handle(client, [{ region: r, flags, count: 1, offset: p * PAGE, tid: 0, seq: p, timeNs: monotonicNow() }]);
      policy.unmap(client, r);
    }
    await warm.close();
    const warmFaults = 3 * 256;
    let region = 1;
    for (const kind of KINDS) {
      const r = region++;
      const ino = kind === 'write to a written block' ? winode : inode;
      policy.map(client, { region: r, inode: ino, fileOffset: 0, length: SIZE, private: false, sync: false, faultAround: false, writable: true });
      const flags = kind === 'read of a hole' ? 0 : EV_WRITE;
      // The first half of the pages as they are (the decision alone), the second half
      // with every stage timed; per fault, then the median over the faults.
      const half = PAGES / 2;
      const per = new Map<string, number[]>();
      const push = (k: string, ns: number): void => { let a = per.get(k); if (!a) per.set(k, (a = [])); a.push(ns / 1000); };
      let sum = 0;
      for (let p = 0; p < PAGES; p++) {
        acc.on = p >= half;
        acc.cur = new Map();
        const ev = { region: r, flags, count: 1, offset: p * PAGE, tid: 0, seq: p, timeNs: monotonicNow() };
        const t0 = process.hrtime.bigint();
        await policy.handle(client, [ev]);
        const ns = Number(process.hrtime.bigint() - t0);
        if (!acc.on) {
          push('total', ns);
          sum += ns;
          continue;
        }
        push('total, stages timed', ns);
        for (const st of STAGES) push(st, acc.cur.get(st) ?? 0);
      }
      acc.on = false;
      const res: Acc = new Map([...per].map(([k, xs]) => [k, median(xs)]));
      res.set('mean', sum / 1000 / half);
      res.set('worst', Math.max(...per.get('total')!));
      out.set(kind, res);
      policy.unmap(client, r);
    }
    const st = policy.snapshot();
    if (st.sigbus !== 0) throw new Error(`the policy answered ${st.sigbus} faults with SIGBUS`);
    if (st.faults !== warmFaults + PAGES * KINDS.length) throw new Error(`the policy counted ${st.faults} faults, not ${warmFaults + PAGES * KINDS.length}`);
    await f.close();
    await written.close();
  } finally {
    await pool.close();
    fs.rmSync(poolPath, { force: true });
  }
  return out;
}

for (const b of BACKINGS) {
  t.test(`the policy's decision alone, µs per 4 KiB fault, ${b.kind} pool`, async (t) => {
    const runs: Map<Kind, Acc>[] = [];
    for (let run = 0; run < RUNS; run++) runs.push(await decisions(b.dir));
    t.comment(`${RUNS} runs; each: FaultPolicy.handle for ${PAGES} faults of each kind in order (faultAround: false), a Client answering at once (after ${3 * 256} faults on another file to warm the JIT): the first ${PAGES / 2} as they are, the next ${PAGES / 2} with each stage timed by wrapping its method`);
    t.comment('per run: the median over its faults (the mean, and the worst single fault, beside it); nested stages indented; a stage\'s time includes the await that resumes its caller');
    for (const kind of KINDS) {
      const us = (stage: string): number[] => runs.map((r) => r.get(kind)!.get(stage) ?? 0);
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
