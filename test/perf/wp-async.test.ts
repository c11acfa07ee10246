// Stores into holes with no trap, tracked all the same (docs/faults.md, "What row 4a
// would need"): test/perf/c/wp-async.c maps a sparse tmpfs file shared, registers it
// with userfaultfd in write-protect mode with UFFD_FEATURE_WP_ASYNC, and after random
// first-touch stores (and loads of other pages) lists the pages written with the
// PAGEMAP_SCAN ioctl. Prints the cost per store beside the kernel's plain mapping
// (row 4a's shape: 2,048 stores in 1 GiB; and a dense one: 8,192 in 64 MiB); asserts
// that the scan found exactly the stores, and no load.
import t from 'tap';
import { compileC, runC } from './c/cc';
import { RUNS, fmt, summarize } from './stats';

const CASES = [
  { what: 'sparse: 2,048 stores in 1 GiB (row 4a)', mib: 1024, touches: 2048 },
  { what: 'dense: 8,192 stores in 64 MiB', mib: 64, touches: 8192 },
] as const;

const bin = compileC('wp-async');
if ('skip' in bin) {
  t.skip(`write-tracked stores: ${bin.skip}`, () => {});
} else {
  t.teardown(bin.cleanup);
  for (const c of CASES) {
    t.test(`write-tracked first-touch stores, tmpfs, ${c.what}`, async (t) => {
      const lines = runC(bin.bin, ['/dev/shm', String(c.mib), String(c.touches), String(RUNS)]);
      const unsupported = lines.find((l) => l.unsupported !== undefined);
      if (unsupported) {
        t.skip(`this kernel cannot: ${String(unsupported.unsupported)}`, () => {});
        return;
      }
      t.equal(lines.length, RUNS, 'every round ran');
      const mmm = (xs: number[], d = 2): string => {
        const s = summarize(xs);
        return `${fmt(s.min, d)} / ${fmt(s.median, d)} / ${fmt(s.max, d)}`;
      };
      const col = (k: string): number[] => lines.map((l) => l[k] as number);
      const ratio = lines.map((l) => (l.tracked_us as number) / (l.kernel_us as number));
      t.comment(`${RUNS} rounds of test/perf/c/wp-async.c /dev/shm ${c.mib} ${c.touches}; min / median / max`);
      t.comment(`kernel MAP_SHARED, µs per store:            ${mmm(col('kernel_us'))}`);
      t.comment(`registered WP_ASYNC, µs per store:          ${mmm(col('tracked_us'))}  (ratio ${mmm(ratio)})`);
      t.comment(`minor faults per store, kernel / tracked:   ${fmt(summarize(col('kernel_faults')).median / c.touches, 2)} / ${fmt(summarize(col('tracked_faults')).median / c.touches, 2)}`);
      t.comment(`write-protect of the range, µs:             ${mmm(col('wp_us'), 0)}`);
      t.comment(`PAGEMAP_SCAN of the range, µs:              ${mmm(col('scan_us'), 0)}`);
      t.same(col('found'), lines.map(() => c.touches), 'the scan found every store');
      t.same(col('written'), lines.map(() => c.touches), 'and no other page');
      t.same(col('loads_written'), lines.map(() => 0), 'no page that was only loaded');
    });
  }
}
