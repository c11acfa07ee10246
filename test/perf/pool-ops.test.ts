// Metadata operations per second on a pool in a tmpfs file: 4 KiB fallocate,
// 4 KiB punch hole, small writes (allocating and overwriting), fsync. Prints figures;
// never fails on time. Run with `npm run bench` (or npx tap test/perf/pool-ops.test.ts).
import t from 'tap';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PoolFs } from '../../dist/pool/pool-fs.js';

const B = 4096;
const N = Number(process.env['DAXMAP_BENCH_OPS'] ?? 50000);
// (disk-file pools persist through msync of a real file: fewer operations there)

async function rate(label: string, n: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn(i);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const r = n / s;
  t.comment(`${label.padEnd(44)} ${String(Math.round(r)).padStart(8)} ops/s  (${n} ops, ${(s * 1e6 / n).toFixed(1)} us/op)`);
  return r;
}

for (const [kind, dir, n] of [['tmpfs', '/dev/shm', N], ['disk file', tmpdir(), Math.min(N, 5000)]] as const) t.test(`metadata ops/second, ${kind} pool`, async (t) => {
  const path = join(dir, `daxmap-bench-${process.pid}`);
  const N = n;
  t.teardown(() => rmSync(path, { force: true }));
  const pool = await PoolFs.create(path, { size: 2 * 2 ** 30 });
  const f = await pool.openFile('bench', { create: true });
  // every other block, so each fallocate makes its own extent (no merging)
  const perm = Array.from({ length: N }, (_, i) => i);
  for (let i = perm.length - 1; i > 0; i--) { const j = (i * 7919) % (i + 1); [perm[i], perm[j]] = [perm[j]!, perm[i]!]; }
  const r1 = await rate('fallocate 4 KiB (random, distinct extents)', N, (i) => f.fallocate(perm[i]! * 2 * B, B));
  const r2 = await rate('punch hole 4 KiB (same blocks)', N, (i) => f.punchHole(perm[i]! * 2 * B, B));
  const g = await pool.openFile('writes', { create: true });
  const small = Buffer.alloc(512, 1);
  const r3 = await rate('512 B write into a new block (allocating)', N, (i) => g.write(small, perm[i]! * 2 * B + 100));
  const r4 = await rate('512 B write into a written block', N, (i) => g.write(small, perm[i]! * 2 * B + 1000));
  const r5 = await rate('512 B read', N, (i) => g.read(small, perm[i]! * 2 * B + 1000));
  const r6 = await rate('512 B write + fsync', Math.min(2000, N), (i) => g.write(small, perm[i]! * 2 * B).then(() => g.fsync()));
  const r7 = await rate('create + unlink', Math.min(5000, N), async (i) => { await pool.openFile(`n${i}`, { create: true }); await pool.unlink(`n${i}`); });
  t.ok([r1, r2, r3, r4, r5, r6, r7].every((x) => x > 0));
  await pool.close();
});
