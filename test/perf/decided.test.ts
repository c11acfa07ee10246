// Decided ranges (docs/fault-policy.md, "Decided ranges"): random 4 KiB first-touch
// writes and reads over a file whose blocks are all written beforehand (by
// file.write), against the kernel's own first touch of a fresh MAP_SHARED mapping of
// a same-size file of the same backing whose pages are all written too, in the same
// run. One pool per way of deciding (DAXMAP_DECIDED when the pool starts):
//   off + faultAround false  every touch is a trapped 4 KiB fault answered by the policy
//   off                      the policy's 2 MiB windows (fault-around), populated
//   direct                   the agent answers from its direct table (not populated)
//   direct-populate          same, populating the faulting page on the reader
//   install                  the written pieces installed at map(), not populated
// Sizes: DAXMAP_BENCH_DECIDED_MB (default 64), on tmpfs (/dev/shm) and on a disk file
// (/var/tmp). Asserts only that the data reads back; prints figures.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Pool } from '../../dist/index';
import { openDevice } from '../../dist/device/device';
import { agentStats } from '../../dist/native/engine';
import { RUNS, envInt, fmtSummary, pairedRatio, shuffled, tableOf, timeNs } from './stats';

const PAGE = 4096;
const MiB = 1 << 20;
const MB = envInt('DAXMAP_BENCH_DECIDED_MB', 64);
let seq = 0;

const tempPath = (dir: string, what: string): string => path.join(dir, `daxmap-bench-decided-${what}-${process.pid}-${seq++}`);

/** One byte stored into (or read from) each page in the given order; µs per page. */
function touch(b: Buffer, order: Uint32Array, write: boolean, stamp: number): number {
  let sum = 0;
  const ns = timeNs(() => {
    for (let i = 0; i < order.length; i++) {
      const p = order[i]!;
      if (write) b[p * PAGE + (p % 4093)] = stamp;
      else sum += b[p * PAGE + (p % 4093)]!;
    }
  });
  if (sum < 0) throw new Error('unreachable');
  return ns / 1000 / order.length;
}

/** A file of `size` bytes written in full (its pages in the page cache), then mapped afresh and touched. */
function kernelRun(dir: string, size: number, order: Uint32Array, write: boolean): number {
  const p = tempPath(dir, 'kernel');
  try {
    const fd = fs.openSync(p, 'w');
    const chunk = Buffer.alloc(MiB, 0x5a);
    for (let off = 0; off < size; off += MiB) fs.writeSync(fd, chunk, 0, MiB, off);
    fs.closeSync(fd);
    const dev = openDevice(p, {});
    try {
      return touch(dev.view(0, size), order, write, 0x11);
    } finally {
      dev.close();
    }
  } finally {
    fs.rmSync(p, { force: true });
  }
}

const MODES = [
  { label: 'off, faultAround false', mode: 'off', faultAround: false },
  { label: 'off (2 MiB fault-around)', mode: 'off', faultAround: true },
  { label: 'direct', mode: 'direct', faultAround: true },
  { label: 'direct-populate', mode: 'direct-populate', faultAround: true },
  { label: 'install', mode: 'install', faultAround: true },
] as const;

for (const { kind, dir } of [{ kind: 'tmpfs', dir: '/dev/shm' }, { kind: 'disk file', dir: '/var/tmp' }]) {
  t.test(`decided ranges: random 4 KiB first touches of a written ${MB} MiB file, ${kind}`, async (t) => {
    const size = MB * MiB;
    const pages = size / PAGE;
    const pools: { pool: Pool; poolPath: string }[] = [];
    const saved = process.env.DAXMAP_DECIDED;
    t.teardown(async () => {
      if (saved === undefined) delete process.env.DAXMAP_DECIDED; else process.env.DAXMAP_DECIDED = saved;
      for (const { pool, poolPath } of pools) {
        await pool.close().catch(() => {});
        fs.rmSync(poolPath, { force: true });
      }
    });
    const files = [];
    for (const m of MODES) {
      process.env.DAXMAP_DECIDED = m.mode;
      const poolPath = tempPath(dir, 'pool');
      const pool = await Pool.create(poolPath, { size: size + 64 * MiB });
      pools.push({ pool, poolPath });
      const f = await pool.openFile('data', { create: true });
      const chunk = Buffer.alloc(MiB, 0x5a);
      for (let off = 0; off < size; off += MiB) await f.write(chunk, off);
      // Warm-up (not timed): one map, a few touches.
      const w = await f.map({ faultAround: m.faultAround });
      touch(w.buffer, shuffled(pages, 7).subarray(0, 256), false, 0);
      await w.unmap();
      files.push(f);
    }
    const kernel = { write: [] as number[], read: [] as number[] };
    const res = MODES.map(() => ({ write: [] as number[], read: [] as number[], mapMs: [] as number[], direct: 0, faults: 0 }));
    for (let run = 0; run < RUNS; run++) {
      const order = shuffled(pages, 0x51f15 + run);
      for (const write of [true, false]) {
        const k = write ? 'write' : 'read';
        kernel[k].push(kernelRun(dir, size, order, write));
        for (let i = 0; i < MODES.length; i++) {
          const f = files[i]!;
          const before = agentStats().direct;
          const s0 = (await pools[i]!.pool.stats()).faults;
          const t0 = process.hrtime.bigint();
          const m = await f.map({ faultAround: MODES[i]!.faultAround });
          res[i]!.mapMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
          res[i]![k].push(touch(m.buffer, order, write, (run + 1) & 0xff));
          await m.unmap();
          res[i]!.direct += agentStats().direct - before;
          res[i]!.faults += (await pools[i]!.pool.stats()).faults - s0;
        }
      }
    }
    // Every page of every file reads back the last run's stamp at its touched byte.
    for (let i = 0; i < MODES.length; i++) {
      const buf = Buffer.alloc(size);
      await files[i]!.read(buf, 0);
      let bad = 0;
      for (let p = 0; p < pages; p++) if (buf[p * PAGE + (p % 4093)] !== (RUNS & 0xff)) bad++;
      t.equal(bad, 0, `${MODES[i]!.label}: every store reached the file`);
    }
    t.comment(`${RUNS} run(s); each touches all ${pages} pages once in a random order (a 1-byte store, or a load), on a fresh mapping`);
    for (const k of ['write', 'read'] as const) {
      for (const l of tableOf(`µs per page (${k})`, [
        { label: `kernel MAP_SHARED ${kind} (baseline)`, runs: kernel[k] },
        ...MODES.map((m, i) => ({ label: `daxmap, ${m.label}`, runs: res[i]![k] })),
      ], kernel[k])) t.comment(l);
      for (let i = 0; i < MODES.length; i++) {
        t.comment(`  ${k} ${MODES[i]!.label}: per-run ratio to kernel min / median / max ${fmtSummary(pairedRatio(res[i]![k], kernel[k]), 2, 'x')}`);
      }
    }
    for (let i = 0; i < MODES.length; i++) {
      t.comment(`${MODES[i]!.label}: map() ms min / median / max ${fmtSummary(pairedRatio(res[i]!.mapMs, res[i]!.mapMs.map(() => 1)), 2)}; ` +
        `faults answered natively ${res[i]!.direct}, by the policy ${res[i]!.faults} (over ${2 * RUNS} mappings)`);
    }
  });
}
