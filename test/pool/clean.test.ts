// Clean free space (docs/pool.md, "Clean free space"): the background zeroer keeps
// free blocks known to hold durable zeros, allocations take them without zeroing,
// and no block that held data is ever handed out unzeroed — with the zeroer racing
// the allocations (its zeros land late, as a libuv thread's do), through a model of
// every file's bytes; close() while a zeroing is in flight; a mapping's windows
// over reused blocks through the public API; and the zeroing's thread, at nice 19.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { MemoryStorage, CHUNK_SIZE } from '../../dist/device/storage.js';
import { PoolFs, PoolFsFile, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals } from '../../dist/pool/internal.js';
import { BlockAllocator, type Run } from '../../dist/pool/allocator.js';
import { withOperation } from '../../dist/lock/index.js';
import { Pool } from '../../dist/index.js';
import { B, rng, stamp, readAll } from './helpers.ts';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const MiB = 1 << 20;
const GROUP = 512;

/**
 * A memory device with an off-thread zeroing, as DeviceStorage has: the zeros land
 * (and are persisted) a few event-loop turns after the call, or once `gate` opens.
 */
class LateZeroStorage extends MemoryStorage {
  gate: Promise<void> | null = null;
  inFlight = 0;
  constructor(size: number, private readonly turns: () => number) {
    super(size, { trackPersistence: true });
  }

  async zeroPersistAsync(zero: Float64Array, persist: Float64Array): Promise<void> {
    this.inFlight++;
    try {
      for (let i = this.turns(); i > 0; i--) await new Promise<void>((res) => setImmediate(res));
      if (this.gate) await this.gate;
      for (let i = 0; i < zero.length; i += 2) {
        for (let off = zero[i]!, end = zero[i]! + zero[i + 1]!; off < end;) {
          const n = Math.min(end - off, CHUNK_SIZE - (off % CHUNK_SIZE));
          this.view(off, n).fill(0);
          off += n;
        }
      }
      for (let i = 0; i < persist.length; i += 2) this.persist(persist[i]!, persist[i + 1]!);
    } finally {
      this.inFlight--;
    }
  }
}

/** Every block the allocator calls clean is free and reads zeros, in memory and in what a power failure would leave. */
function cleanProblems(pool: PoolFs, storage: MemoryStorage): string[] {
  const core = coreOf(pool);
  const a = core.state.alloc;
  const img = storage.crashImage();
  const out: string[] = [];
  for (let d = a.dataStart; d < a.dataEnd && out.length < 5; d++) {
    if (!a.isClean(d)) continue;
    if (a.isUsed(d)) out.push(`clean block ${d} is used`);
    if (!storage.view(d * B, B).every((x) => x === 0)) out.push(`clean block ${d} holds bytes`);
    const c = Math.floor((d * B) / CHUNK_SIZE);
    const o = d * B - c * CHUNK_SIZE;
    if (!img[c]!.subarray(o, o + B).every((x) => x === 0)) out.push(`clean block ${d} holds bytes in the durable image`);
  }
  return out;
}

/** A 2 MiB window write fault's pool work (the fault policy's ensureWritten), under the range lock. */
async function window(pool: PoolFs, f: PoolFsFile, offset: number): Promise<number> {
  const ip = poolInternals(pool);
  const ino = ip.inode(f);
  return withOperation('test.window', async () => {
    const h = await ino.rangeLock.acquireShared(offset, offset + 2 * MiB);
    try {
      const ext = await ip.ensureWritten(ino, offset, 2 * MiB, { preferAligned: true, resident: true });
      return ext[0]!.deviceOffset;
    } finally {
      h.release();
    }
  });
}

t.test('the allocator: windows take clean groups first, small allocations and fallocate leave them whole', async (t) => {
  const a = new BlockAllocator(1000, 1000 + 5 * GROUP);
  const z = a.beginZero(2 * GROUP, true);
  t.same(z, [{ start: 1000, len: 2 * GROUP }], 'the zeroer takes whole free groups first, in order');
  t.equal(a.free, 3 * GROUP, 'out of the free pool while zeroed');
  a.endZero(z, true);
  t.equal(a.cleanFree, 2 * GROUP, 'clean once zeroed');
  t.same(a.checkCounters(), [], 'counters agree');
  const small: Run[] = [];
  const s = a.take(3, {}, small);
  t.ok(s[0]!.start >= 1000 + 2 * GROUP, 'a small allocation breaks a dirty group, not a clean one');
  t.same(small, [], 'it took nothing clean');
  const fal: Run[] = [];
  const f = a.take(GROUP, { wholeGroups: true, clean: 'avoid' }, fal);
  t.same([f, fal], [[{ start: 1000 + 3 * GROUP, len: GROUP }], []], 'fallocate\'s whole group: a dirty one');
  const win: Run[] = [];
  const w = a.take(GROUP, { wholeGroups: true, goal: 1000 + 4 * GROUP }, win);
  t.same([w, win], [[{ start: 1000, len: GROUP }], [{ start: 1000, len: GROUP }]], 'a window: a clean group, its dirty goal giving way');
  a.markUsed(1000 + GROUP + 5, 1);
  t.equal(a.cleanFree, GROUP - 1, 'a block taken is clean no more');
  a.unmark(1000 + GROUP + 5, 1);
  t.notOk(a.isClean(1000 + GROUP + 5), 'and comes back dirty');
  t.same(a.checkCounters(), [], 'counters agree');
});

t.test('freed blocks are zeroed in the background, and a 2 MiB window taken from them zeroes nothing on its path', async (t) => {
  for (const on of [true, false]) {
    const storage = new MemoryStorage(32 * MiB, { trackPersistence: true });
    const pool = PoolFs.createOn(storage, { cleanTarget: 0 });
    const core = coreOf(pool);
    // nearly every block holds another file's bytes, then is freed
    const old = await pool.openFile('old', { create: true });
    const oldBytes = Math.floor(core.state.alloc.free / GROUP) * GROUP * B - 2 * MiB;
    await old.write(stamp(1, 0, oldBytes), 0);
    const oldDevs = core.state.names.get('old')!.extents.all().map((e) => [e.dev, e.dev + e.len] as const);
    await pool.unlink('old');
    t.ok(core.state.alloc.pendingCount > 0, 'the freed blocks are pending (until a checkpoint)');
    pool.setCleanTarget(on ? 8 * MiB : 0);
    await pool.settled();
    const st = (await pool.statfs()).clean!;
    if (on) {
      t.ok(st.checkpoints >= 1, 'the zeroer took a checkpoint to release the freed blocks');
      t.ok(st.cleanFree >= 6 * MiB, `clean free space reached the target (${st.cleanFree} bytes)`);
      t.ok(st.zeroedAhead >= st.cleanFree, 'zeroed in the background');
      t.same(cleanProblems(pool, storage), [], 'every clean block reads zeros, durably');
    } else {
      t.equal(st.cleanFree, 0, 'zeroer off: nothing clean');
    }
    t.same(core.checkState(), [], 'consistent');
    // room for the window: with the zeroer off the freed blocks need the checkpoint now
    const f = await pool.openFile('new', { create: true });
    await f.truncate(4 * MiB);
    const before = (await pool.statfs()).clean!;
    const dev = await window(pool, f, 0);
    const after = (await pool.statfs()).clean!;
    if (on) {
      t.equal(after.zeroedOnPath - before.zeroedOnPath, 0, 'the window zeroed nothing on its path');
      t.equal(after.cleanTaken - before.cleanTaken, 2 * MiB, 'it took 2 MiB of clean space');
      t.ok(oldDevs.some(([a, b]) => a * B <= dev && dev < b * B), 'the window reuses blocks of the unlinked file');
    } else {
      t.equal(after.zeroedOnPath - before.zeroedOnPath, 2 * MiB, 'zeroer off: the window zeroed its 2 MiB on its path');
    }
    const b = Buffer.alloc(2 * MiB);
    await f.read(b, 0);
    t.ok(b.every((x) => x === 0), 'the window reads zeros');
    t.same(core.checkState(), [], 'consistent');
    await pool.close();
  }
});

t.test('model: random operations with the zeroer racing them; no file ever shows a byte it did not write', async (t) => {
  for (const seed of [3, 7, 11]) {
    const r = rng(seed);
    const storage = new LateZeroStorage(24 * MiB, () => r.int(4));
    const pool = PoolFs.createOn(storage, { cleanTarget: 6 * MiB });
    const core = coreOf(pool);
    const ip = poolInternals(pool);
    const names = ['a', 'b', 'c'];
    const model = new Map<string, Buffer>();
    const files = new Map<string, PoolFsFile>();
    for (const n of names) {
      files.set(n, await pool.openFile(n, { create: true }));
      model.set(n, Buffer.alloc(0));
    }
    const resize = (n: string, size: number): Buffer => {
      const m = model.get(n)!;
      const x = Buffer.alloc(size);
      m.copy(x, 0, 0, Math.min(size, m.length));
      model.set(n, x);
      return x;
    };
    let inFlightSeen = 0;
    let ops = 0;
    const one = async (op: number, n: string): Promise<void> => {
      const f = files.get(n)!;
      const k = r.int(12);
      const size = model.get(n)!.length;
      const off = r.chance(0.3) ? r.int(3) * 2 * MiB : r.int(3 * MiB);
      const len = r.chance(0.3) ? 2 * MiB : 1 + r.int(64 * 1024);
      try {
        if (k < 4) {
          const data = stamp(op, off, len);
          await f.write(data, off);
          const m = off + len > size ? resize(n, off + len) : model.get(n)!;
          data.copy(m, off);
        } else if (k === 4) {
          await f.truncate(off);
          resize(n, off);
        } else if (k === 5) {
          await f.punchHole(off, len);
          model.get(n)!.fill(0, Math.min(off, size), Math.min(off + len, size));
        } else if (k === 6) {
          await f.zeroRange(off, len, { keepSize: false });
          const m = off + len > size ? resize(n, off + len) : model.get(n)!;
          m.fill(0, off, off + len);
        } else if (k === 7) {
          await f.fallocate(off, len, { keepSize: true });
        } else if (k === 8 && size >= 2 * MiB) {
          await window(pool, f, Math.floor(r.int(size - 2 * MiB + 1) / (2 * MiB)) * 2 * MiB);
        } else if (k === 9) {
          // blocks of the reserve, stored into as a mapping would, then given back (dirty)
          const devs = await ip.takeReserve(1 + r.int(64));
          for (const d of devs) ip.storage.view(d, B).fill(0xee);
          ip.returnReserve(devs);
        } else if (k === 10) {
          await f.close();
          await pool.unlink(n);
          files.set(n, await pool.openFile(n, { create: true }));
          model.set(n, Buffer.alloc(0));
        } else {
          await pool.sync();
        }
      } catch (e) {
        if ((e as { code?: string }).code !== 'ENOSPC') throw e;
        // ENOSPC changes nothing (docs/pool.md)
      }
      if (storage.inFlight > 0 || core.state.alloc.zeroing > 0) inFlightSeen++;
      ops++;
    };
    for (let step = 0; step < 150; step++) {
      // two operations at once (on different files: the model applies them in any
      // order), while zeroing goes on
      const op = step * 2;
      const first = r.pick(names);
      const second = r.pick(names.filter((x) => x !== first));
      await Promise.all([one(op + 1, first), r.chance(0.5) ? one(op + 2, second) : Promise.resolve()]);
      if (step % 10 === 9) {
        t.same(core.checkState(), [], `seed ${seed} step ${step}: consistent`);
        const bad = cleanProblems(pool, storage);
        if (bad.length > 0) t.same(bad, [], `seed ${seed} step ${step}: clean blocks read zeros`);
        for (const n of names) {
          const got = await readAll(files.get(n)!);
          if (!got.equals(model.get(n)!)) {
            const i = got.findIndex((v, j) => v !== model.get(n)![j]);
            t.fail(`seed ${seed} step ${step}: file ${n} differs from the model at byte ${i} (${got.length} vs ${model.get(n)!.length} bytes)`);
          }
        }
      }
    }
    await pool.settled();
    const st = (await pool.statfs()).clean!;
    t.ok(st.zeroedAhead > 0 && st.cleanTaken > 0, `seed ${seed}: the zeroer ran (${st.zeroedAhead} bytes) and allocations took clean space (${st.cleanTaken} bytes)`);
    t.ok(inFlightSeen > 0, `seed ${seed}: operations ended while a zeroing was in flight (${inFlightSeen} of ${ops})`);
    t.same(cleanProblems(pool, storage), [], `seed ${seed}: clean blocks read zeros at the end`);
    for (const n of names) t.ok((await readAll(files.get(n)!)).equals(model.get(n)!), `seed ${seed}: file ${n} matches the model`);
    await pool.close();
  }
});

t.test('close() while a zeroing is in flight waits for it, and the reopened pool knows nothing clean and leaks nothing', async (t) => {
  const storage = new LateZeroStorage(16 * MiB, () => 0);
  let open!: () => void;
  storage.gate = new Promise<void>((res) => { open = res; });
  const pool = PoolFs.createOn(storage, { cleanTarget: 4 * MiB });
  const core = coreOf(pool);
  const f = await pool.openFile('f', { create: true });
  await f.write(Buffer.alloc(3 * MiB, 0x5a), 0);
  while (storage.inFlight === 0) await new Promise<void>((res) => setImmediate(res));
  t.ok(core.state.alloc.zeroing > 0, 'free blocks are being zeroed');
  let closed = false;
  const closing = pool.close().then(() => { closed = true; });
  for (let i = 0; i < 5; i++) await new Promise<void>((res) => setImmediate(res));
  t.equal(closed, false, 'close() waits for the zeroing in flight');
  open();
  await closing;
  t.equal(storage.inFlight, 0, 'no zeroing left running');
  const again = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }), { cleanTarget: 0 });
  const c2 = coreOf(again);
  t.equal(c2.state.alloc.cleanFree, 0, 'after open nothing is known clean');
  t.same(c2.checkState(), [], 'consistent');
  t.equal(c2.state.alloc.free + c2.state.alloc.pendingCount, c2.state.alloc.capacity - 3 * MiB / B, 'every block but the file\'s is free: none leaked');
  const g = await again.openFile('f');
  t.ok((await readAll(g)).equals(Buffer.alloc(3 * MiB, 0x5a)), 'the file is intact');
  await again.close();
});

t.test('through a mapping: windows over the blocks of an unlinked file read zeros and are taken clean', async (t) => {
  const dir = fs.mkdtempSync('/dev/shm/daxmap-clean-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const p = path.join(dir, 'pool');
  const pool = await Pool.create(p, { size: 64 * MiB });
  try {
    await pool.request('configure', [{ cleanTarget: 16 * MiB }]);
    const fs0 = await pool.statfs();
    // the unlinked file leaves 6 MiB never used: the rest of the clean space is its blocks
    const oldSize = Math.floor((fs0.free - 6 * MiB) / (2 * MiB)) * 2 * MiB;
    const pat = Buffer.alloc(oldSize);
    for (let i = 0; i < oldSize; i += 16) Buffer.from('CLEAN-STALE-PAT!').copy(pat, i);
    const old = await pool.openFile('old', { create: true });
    await old.write(pat, 0);
    await old.close();
    await pool.unlink('old');
    await pool.settled();
    const st0 = (await pool.statfs()).clean!;
    t.ok(st0.cleanFree >= 14 * MiB, `clean space reached (${st0.cleanFree} bytes, ${st0.checkpoints} checkpoints)`);
    const f = await pool.openFile('new', { create: true });
    const size = 12 * MiB;
    await f.truncate(size);
    const m = await f.map();
    for (let off = 0; off < size; off += B) m.buffer[off] = 1;
    await m.unmap();
    const st1 = (await pool.statfs()).clean!;
    t.equal(st1.zeroedOnPath - st0.zeroedOnPath, 0, 'the windows zeroed nothing on their path');
    t.ok(st1.cleanTaken - st0.cleanTaken >= size, `they took clean space (${st1.cleanTaken - st0.cleanTaken} bytes)`);
    const b = Buffer.alloc(size);
    await f.read(b, 0);
    let bad = 0;
    for (let off = 0; off < size; off += B) if (b[off] !== 1 || !b.subarray(off + 1, off + B).every((x) => x === 0)) bad++;
    t.equal(bad, 0, 'every page holds its store and zeros');
    t.equal(b.indexOf('CLEAN-STALE-PAT!'), -1, 'no byte of the unlinked file shows');
    await f.close();
  } finally {
    await pool.close();
  }
});

/** Threads of this process named `name`: their nice values (field 19 of /proc/self/task/<tid>/stat) and CPU time (ns). */
function threadsNamed(name: string): { nice: number; cpuNs: number }[] {
  const out: { nice: number; cpuNs: number }[] = [];
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      if (fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() !== name) continue;
      const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      // after the ")" that ends the command: state is field 3, nice field 19
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.push({ nice: Number(fields[16]), cpuNs: Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]) });
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

t.test('the zeroing of free space runs on the background thread at nice 19, not on the faulting threads\' CPUs', async (t) => {
  const dir = fs.mkdtempSync('/dev/shm/daxmap-clean-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pool = await Pool.create(path.join(dir, 'pool'), { size: 64 * MiB });
  try {
    const cpu0 = threadsNamed('daxmap-zero').reduce((s, x) => s + x.cpuNs, 0);
    await pool.request('configure', [{ cleanTarget: 32 * MiB }]);
    await pool.settled();
    const st = (await pool.statfs()).clean!;
    t.ok(st.zeroedAhead >= 32 * MiB, `the zeroer zeroed ahead (${st.zeroedAhead} bytes in ${st.jobs} jobs)`);
    const zero = threadsNamed('daxmap-zero');
    t.equal(zero.length, 1, 'one background thread in the process');
    t.equal(zero[0]?.nice, 19, 'at nice 19');
    const cpu = zero.reduce((s, x) => s + x.cpuNs, 0) - cpu0;
    // 32 MiB of zeros written: well over a ms of CPU on any machine; none of it there before this change
    t.ok(cpu > 1e6, `the zeroing ran there (${(cpu / 1e6).toFixed(1)} ms of CPU)`);
  } finally {
    await pool.close();
  }
});
