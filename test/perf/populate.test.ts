// How to populate an installed 2 MiB window (docs/faults.md, "Populating a window"),
// in plain C (test/perf/c/populate.c): mmap(MAP_FIXED) of a file window, populated
// for writing, for reading or not at all, or populated for reading elsewhere and moved
// into place with mremap ("staged"), then a store into each of its pages; over
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
      type Acc = { install: number[]; store: number[]; faults: number[]; total: number[]; stage: number[] };
      const by = new Map<string, Acc>();
      for (let run = 0; run < RUNS; run++) {
        for (const l of runC(bin.bin, [b.dir])) {
          const key = `${l.pages} ${l.populate}`;
          let a = by.get(key);
          if (!a) by.set(key, (a = { install: [], store: [], faults: [], total: [], stage: [] }));
          if (typeof l.stage_us === 'number') a.stage.push(l.stage_us);
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
      t.comment('staged: the install is the mremap alone; the staging (mmap and populate elsewhere, beforehand) is in the last column, not in µs per page');
      t.comment(`${'pages, populate'.padEnd(20)} ${'install µs'.padStart(24)} ${'stores µs'.padStart(24)} ${'faults'.padStart(8)} ${'µs per page'.padStart(24)}`);
      for (const [key, a] of by) {
        const staging = a.stage.length > 0 ? `   staging ${mmm(a.stage)} µs` : '';
        t.comment(`${key.padEnd(20)} ${mmm(a.install).padStart(24)} ${mmm(a.store).padStart(24)} ${fmt(summarize(a.faults).median, 1).padStart(8)} ${mmm(a.total, 3).padStart(24)}${staging}`);
      }
      t.equal(by.size, 8, 'every variant ran');
      if (b.kind === 'tmpfs') {
        t.same(by.get('resident read')!.faults.filter((f) => f !== 0), [], 'tmpfs: a window populated for reading takes its stores with no fault');
        t.same(by.get('resident staged')!.faults.filter((f) => f !== 0), [], 'tmpfs: a window moved into place keeps its page tables: no fault');
      }
    });
  }
}
