// How to populate an installed 2 MiB window (docs/faults.md, "Populating a window"),
// in plain C (test/perf/c/populate.c): mmap(MAP_FIXED) of a file window, populated
// for writing, for reading or not at all, then a store into each of its pages; over
// pages already written with zeros (as daxmap's clean space and reserves hold them)
// and over holes, on tmpfs and on a disk file. Prints the table; asserts that every
// variant ran, and the fact daxmap's tmpfs installs rely on: a shared tmpfs window
// populated for reading takes its stores with no page fault.
import t from 'tap';
import os from 'node:os';
import { compileC, runC } from './c/cc';
import { RUNS, fmt, summarize } from './stats';

const BACKINGS = [
  { kind: 'tmpfs', dir: '/dev/shm' },
  { kind: 'disk file', dir: os.tmpdir() },
] as const;

const bin = compileC('populate');
if ('skip' in bin) {
  t.skip(`populate flavours: ${bin.skip}`, () => {});
} else {
  t.teardown(bin.cleanup);
  for (const b of BACKINGS) {
    t.test(`populate flavours of a 2 MiB window, ${b.kind}`, async (t) => {
      type Acc = { install: number[]; store: number[]; faults: number[]; total: number[] };
      const by = new Map<string, Acc>();
      for (let run = 0; run < RUNS; run++) {
        for (const l of runC(bin.bin, [b.dir])) {
          const key = `${l.pages} ${l.populate}`;
          let a = by.get(key);
          if (!a) by.set(key, (a = { install: [], store: [], faults: [], total: [] }));
          a.install.push(l.install_us as number);
          a.store.push(l.store_us as number);
          a.faults.push(l.store_faults as number);
          a.total.push(l.total_us_per_page as number);
        }
      }
      const mmm = (xs: number[], d = 1) => {
        const s = summarize(xs);
        return `${fmt(s.min, d)} / ${fmt(s.median, d)} / ${fmt(s.max, d)}`;
      };
      t.comment(`${RUNS} runs of test/perf/c/populate.c ${b.dir}: 32 windows per variant, medians per window; min / median / max over the runs`);
      t.comment(`${'pages, populate'.padEnd(20)} ${'install µs'.padStart(24)} ${'stores µs'.padStart(24)} ${'faults'.padStart(8)} ${'µs per page'.padStart(24)}`);
      for (const [key, a] of by) {
        t.comment(`${key.padEnd(20)} ${mmm(a.install).padStart(24)} ${mmm(a.store).padStart(24)} ${fmt(summarize(a.faults).median, 1).padStart(8)} ${mmm(a.total, 3).padStart(24)}`);
      }
      t.equal(by.size, 6, 'every variant ran');
      if (b.kind === 'tmpfs') {
        t.same(by.get('resident read')!.faults.filter((f) => f !== 0), [], 'tmpfs: a window populated for reading takes its stores with no fault');
      }
    });
  }
}
