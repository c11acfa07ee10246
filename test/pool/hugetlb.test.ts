// Pool rules on the device-DAX stand-in (a pool file on hugetlbfs, 2 MiB-granular like
// /dev/dax; docs/pool.md, "2 MiB-granular devices"; test/hugetlb.ts): a unit written by
// one file, freed and reused by another, reads zeros (the 2 MiB zeroing path), through
// a mapping and file.read; racing first touches of one window all see one zeroed unit.
// Files are whole units (a shared fault in a last unit that EOF cuts is not answered
// whole yet: docs/pool.md, "Not done yet"). Skipped, with the reason, where huge pages
// cannot be reserved or hugetlbfs cannot be mounted.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { hugetlb } from '../hugetlb';
import { checkLockdep, HUGE, PAGE, Pool } from '../fault/helpers';
import { fsckErrors } from '../fsck';

const PAT = Buffer.from('<<UNIT-OF-A!!!>>');

/** Offsets of the bytes of b that are not zero, plus `base` (the first `max`). */
function nonzero(b: Buffer, base = 0, max = 256): number[] {
  const out: number[] = [];
  for (let i = 0; i < b.length && out.length < max; i++) if (b[i] !== 0) out.push(base + i);
  return out;
}

t.test('pool rules on the hugetlbfs stand-in', async (t) => {
  const h = await hugetlb(t, 48);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }

  /** A pool in a new file of the stand-in, closed (if open) and removed after the test; done() checks and closes it. */
  const newPool = async (t: Test, size: number): Promise<{ pool: Pool; done: () => Promise<void> }> => {
    const p = h.file();
    const pool = await Pool.create(p, { size });
    t.teardown(async () => {
      if (!pool.closed) await pool.close();
      fs.rmSync(p, { force: true });
    });
    return {
      pool,
      done: async () => {
        t.equal((await pool.stats()).sigbus, 0, 'no fault failed');
        await checkLockdep(t, pool);
        await pool.close();
        t.same(fsckErrors(p), [], 'fsck clean');
      },
    };
  };

  t.test('a pool bigger than the free huge pages: ENOMEM that says so, and the file it created is gone', async (t) => {
    const p = h.file();
    // far more pages than the machine has: hugetlbfs refuses the mapping at mmap
    const size = Math.max(64 << 30, (Math.floor(os.totalmem() / HUGE) + 1024) * HUGE);
    const err = await Pool.create(p, { size }).then(() => null, (e: Error & { code?: string }) => e);
    t.equal(err?.code, 'ENOMEM', 'create fails with ENOMEM');
    t.match(err?.message ?? '', /not enough free huge pages.*nr_hugepages/, 'the message names the cause and the knob');
    t.notOk(fs.existsSync(p), 'no pool file is left behind');
  });

  for (const how of ['truncate', 'punch', 'unlink'] as const) {
    t.test(`every unit written by file A, freed by ${how}, reused by file B: B reads zeros through a mapping and file.read`, async (t) => {
      const { pool, done } = await newPool(t, 16 << 20);
      const units = Math.floor((await pool.statfs()).free / HUGE);
      t.ok(units >= 4, `${units} units free`);
      const a = await pool.openFile('a', { create: true });
      await a.truncate(units * HUGE);
      const ma = await a.map();
      for (let o = 0; o < units * HUGE; o += PAT.length) PAT.copy(ma.buffer, o);
      await ma.flush();
      await ma.unmap();
      t.equal((await a.stat()).allocated, units * HUGE, 'A holds every unit of the pool');
      if (how === 'truncate') await a.truncate(0);
      else if (how === 'punch') await a.punchHole(0, units * HUGE);
      else await pool.unlink('a');
      // B takes every unit again, so each is one A wrote: the even ones by file.write
      // of a few bytes (the rest of the unit zeroed), the odd ones by a write fault.
      const b = await pool.openFile('b', { create: true });
      await b.truncate(units * HUGE);
      const mb = await b.map({ faultAround: false });
      const stores: number[] = [];
      for (let i = 0; i < units; i++) {
        const o = i * HUGE + (i + 1) * 3 * PAGE + i;
        stores.push(o);
        if (i % 2 === 0) await b.write(Buffer.from([0xb0 + i]), o);
        else mb.buffer[o] = 0xb0 + i;
      }
      t.equal((await b.stat()).allocated, units * HUGE, 'B reuses every unit A had');
      t.equal(mb.buffer.indexOf(PAT), -1, 'no byte of A through B\'s mapping');
      t.same(nonzero(mb.buffer), stores, 'B\'s mapping: zeros but for B\'s stores');
      await mb.flush();
      const back = Buffer.alloc(units * HUGE);
      await b.read(back, 0);
      t.same(nonzero(back), stores, 'file.read: zeros but for B\'s stores');
      t.ok(stores.every((o, i) => back[o] === 0xb0 + i), 'B\'s stores read back');
      if (how === 'truncate' || how === 'punch') {
        await a.truncate(2 * HUGE);
        const r = Buffer.alloc(2 * HUGE);
        await a.read(r, 0);
        t.same(nonzero(r), [], 'A grown again reads zeros');
      } else {
        await t.rejects(a.stat(), { code: 'ENOENT' }, 'A is gone');
      }
      await mb.unmap();
      await done();
    });
  }

  t.test('truncate and punch inside a unit: the bytes past EOF and in the hole read zeros once the file grows again', async (t) => {
    const { pool, done } = await newPool(t, 16 << 20);
    const a = await pool.openFile('a', { create: true });
    await a.truncate(2 * HUGE);
    const m = await a.map();
    for (let o = 0; o < 2 * HUGE; o += PAT.length) PAT.copy(m.buffer, o);
    await m.flush();
    await a.punchHole(HUGE + 8 * PAGE, 4 * PAGE);
    await a.truncate(HUGE + 100);
    t.equal((await a.stat()).allocated, 2 * HUGE, 'the unit EOF cuts stays whole');
    await a.truncate(2 * HUGE);
    // The mapping was revoked: its windows fault again, whole.
    const tail = m.buffer.subarray(HUGE + 100, 2 * HUGE);
    t.same(nonzero(tail, HUGE + 100), [], 'through the mapping: zeros past the old EOF');
    t.equal(m.buffer.indexOf(PAT.subarray(0, 4), HUGE + 100), -1, 'no old byte past it');
    t.ok(m.buffer.subarray(HUGE, HUGE + 100).equals(Buffer.concat([PAT, PAT, PAT, PAT, PAT, PAT, PAT]).subarray(0, 100)), 'below it the bytes stay');
    const r = Buffer.alloc(HUGE);
    await a.read(r, HUGE);
    t.same(nonzero(r.subarray(100), HUGE + 100), [], 'file.read: zeros past the old EOF, the punched hole included');
    await m.unmap();
    await done();
  });

  for (const faultAround of [true, false]) {
    t.test(`racing first touches of a window from 4 threads (faultAround ${faultAround}): one zeroed unit, every store kept`, async (t) => {
      const { pool, done } = await newPool(t, 32 << 20);
      const N = 4;
      const rounds = 6;
      const f = await pool.openFile('race', { create: true });
      await f.truncate(rounds * HUGE);
      const free0 = (await pool.statfs()).free;
      const offsetsOf = (id: number): number[] => [0, 1, 2, 3].map((k) => (k * HUGE) / 4 + id * 5 * PAGE + id * 13);
      const untouched = HUGE - 1;
      const sab = new SharedArrayBuffer(4);
      const gen = new Int32Array(sab);
      const workers = Array.from({ length: N }, (_, id) => {
        const shared = pool.share();
        return new Worker(path.join(__dirname, 'fixtures', 'touch-worker.js'), {
          execArgv: [],
          workerData: { shared, id, rounds, stride: HUGE, faultAround, sab, offsets: offsetsOf(id), untouched },
          transferList: shared.transferList,
        });
      });
      t.teardown(() => Promise.all(workers.map((w) => w.terminate())));
      const messages = workers.map((w) => {
        const q: unknown[] = [];
        const waiting: ((m: unknown) => void)[] = [];
        w.on('message', (m) => (waiting.length ? waiting.shift()!(m) : q.push(m)));
        w.on('error', (e) => (waiting.length ? waiting.shift()!(`error ${e.stack}`) : q.push(`error ${e.stack}`)));
        return (): Promise<unknown> => (q.length ? Promise.resolve(q.shift()) : new Promise((res) => waiting.push(res)));
      });
      t.same(await Promise.all(messages.map((next) => next())), Array(N).fill('ready'), 'every thread mapped the file');
      for (let r = 0; r < rounds; r++) {
        // Release every worker at once into the round's untouched window.
        Atomics.store(gen, 0, r + 1);
        Atomics.notify(gen, 0);
        const got = await Promise.all(messages.map((next) => next()));
        if (!got.every((m) => m === 'round')) t.fail(`round ${r}: ${JSON.stringify(got)}`);
      }
      const ends = (await Promise.all(messages.map((next) => next()))) as { dirty: number }[];
      t.same(ends.map((e) => e.dirty), Array(N).fill(0), 'no thread saw a byte that was not zero before its own stores');
      // [file offset, the byte stored there] for every store of every round
      const want = Array.from({ length: rounds }, (_, r) => Array.from({ length: N }, (_, id) => offsetsOf(id).map((o) => [r * HUGE + o, id + 1]))).flat(2).sort((x, y) => x[0]! - y[0]!);
      const data = Buffer.alloc(rounds * HUGE);
      await f.read(data, 0);
      t.same(nonzero(data), want.map(([o]) => o), `all ${want.length} stores are in the file, every other byte is zero`);
      t.ok(want.every(([o, v]) => data[o!] === v), 'each store is its thread\'s byte');
      t.equal((await f.stat()).allocated, rounds * HUGE, 'each window was allocated once: one unit');
      t.equal(free0 - (await pool.statfs()).free, rounds * HUGE, 'and no other unit was taken');
      const s = await pool.stats();
      t.ok(s.pmd >= rounds, `the windows were answered whole (${s.pmd})`);
      await done();
    });
  }
});
