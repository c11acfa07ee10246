// The pool side of the reserve of pre-zeroed blocks (docs/pool.md, "Reserve"): the
// cost of takeReserve(1) from a full stock against ensureWritten of one 4 KiB hole
// (what an allocating write fault costs the pool today), and adoptReserved per block,
// in batches of 64 and of 1. tmpfs pool and disk-file pool (adoptions deferred
// there, like ensureWritten). Several runs; min / median / max of µs per block and
// the ratio to ensureWritten's median in the same run. Prints figures; never fails
// on time. `npm run bench -- test/perf/reserve-pool.test.ts`.
import t from 'tap';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals } from '../../dist/pool/internal.js';
import { fmt, summarize, RUNS } from './stats.ts';

const B = 4096;
const N = Number(process.env['DAXMAP_BENCH_OPS'] ?? 512);

/** µs per unit of fn(i) for i in [0, n). */
async function usPer(n: number, units: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn(i);
  return Number(process.hrtime.bigint() - t0) / 1e3 / units;
}

for (const [kind, dir] of [['tmpfs', '/dev/shm'], ['disk-file', '/var/tmp']] as const) {
  t.test(`reserve vs ensureWritten, ${kind} pool`, async (t) => {
    const path = join(dir, `daxmap-bench-reserve-${process.pid}`);
    t.teardown(() => rmSync(path, { force: true }));
    const pool = await PoolFs.create(path, { size: 512 << 20 });
    const core = coreOf(pool);
    const ip = poolInternals(pool);
    core.reserve.target = 2 * N;
    core.reserve.lowWater = N;
    const rows: Record<string, number[]> = { ensure: [], take: [], adopt64: [], adopt1: [] };
    for (let run = 0; run < RUNS; run++) {
      const f = await pool.openFile(`f${run}`, { create: true });
      await f.truncate(4 * N * B);
      const ino = ip.inode(f);
      const locked = async <T>(fn: () => Promise<T>): Promise<T> => {
        const h = await ino.rangeLock.acquireShared(0, 4 * N * B);
        try { return await fn(); } finally { h.release(); }
      };
      // today: an allocating write fault's pool work, one 4 KiB hole at a time (every other block)
      rows['ensure']!.push(await usPer(N, N, (i) => locked(() => ip.ensureWritten(ino, 2 * i * B, B))));
      // the stock full, then N single takes
      await ip.takeReserve(1).then((d) => ip.returnReserve(d));
      await core.reserve.settled();
      const got: number[] = [];
      rows['take']!.push(await usPer(N, N, async () => { got.push(...(await ip.takeReserve(1))); }));
      await core.reserve.settled(); // the refill the takes started is not counted in the adoptions
      // adoptions into the other blocks' holes: batches of 64, then single ones
      const half = Math.floor(N / 2 / 64) * 64;
      rows['adopt64']!.push(await usPer(half / 64, half, (k) => locked(() => ip.adoptReserved(ino, got.slice(k * 64, k * 64 + 64).map((dev, j) => ({ fb: 2 * (k * 64 + j) + 1, dev }))))));
      rows['adopt1']!.push(await usPer(N - half, 1 * (N - half), (k) => locked(() => ip.adoptReserved(ino, [{ fb: 2 * (half + k) + 1, dev: got[half + k]! }]))));
      await core.reserve.settled();
      await f.fsync();
      await f.close();
      await pool.unlink(`f${run}`);
    }
    const base = summarize(rows['ensure']!).median;
    const label: Record<string, string> = {
      ensure: 'ensureWritten, one 4 KiB hole',
      take: 'takeReserve(1) from the stock',
      adopt64: 'adoptReserved, batch of 64, per block',
      adopt1: 'adoptReserved, batch of 1',
    };
    t.comment(`${kind} pool, ${N} blocks per run, ${RUNS} runs: us per block, min / median / max, ratio to ensureWritten (median)`);
    for (const [k, runs] of Object.entries(rows)) {
      const s = summarize(runs);
      t.comment(`  ${label[k]!.padEnd(40)} ${`${fmt(s.min)} / ${fmt(s.median)} / ${fmt(s.max)}`.padStart(28)}   ${fmt(s.median / base)}x`);
    }
    t.ok(Object.values(rows).every((r) => r.length === RUNS && r.every((x) => x > 0)), 'every case measured');
    t.equal(ip.reserveStats().out, 0, 'every block handed out was adopted');
    await pool.close();
  });
}
