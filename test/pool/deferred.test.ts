// Deferred conversion (docs/pool.md, "Durability"): a write fault of a non-sync
// mapping on a disk-file pool records its new block unwritten, zeroes it in memory
// only, and converts it once the data is durable (fsync, sync, Mapping.flush, close,
// a checkpoint, the periodic writeback). Memory pools with the deferral forced on, so
// that what survives a power cut can be looked at (crashImage); the SIGKILL and
// power-failure tests are in deferred-crash.test.ts and powerfail-deferred.test.ts.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, PoolFsFile, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals } from '../../dist/pool/internal.js';
import { fsckStorage } from '../../dist/pool/fsck.js';
import { withOperation } from '../../dist/lock/index.js';
import { memPool, B, readAll } from './helpers.ts';
import { until } from '../wait.ts';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const SECRET = Buffer.from('<<DEFER-SECRET>>');

/** What a write fault of a mapping does to the pool: ensureWritten under the range lock, then stores through the device. */
async function fault(pool: PoolFs, f: PoolFsFile, off: number, len: number, byte: number | null, opts: { sync?: boolean } = {}): Promise<{ deviceOffset: number; length: number }[]> {
  const ip = poolInternals(pool);
  const ino = ip.inode(f);
  return withOperation('test.fault', async () => {
    const h = await ino.rangeLock.acquireShared(off, off + len);
    try {
      const exts = await ip.ensureWritten(ino, off, len, opts);
      if (byte !== null) for (const e of exts) ip.storage.view(e.deviceOffset, e.length).fill(byte);
      return exts;
    } finally {
      h.release();
    }
  });
}

/** What a power cut now leaves: the reopened pool (fsck'ed first). */
async function crash(t: Test, storage: MemoryStorage): Promise<PoolFs> {
  const img = storage.crashImage();
  const rep = fsckStorage(new MemoryStorage(storage.size, { from: img }));
  t.ok(rep.clean, `fsck of the crash image is clean ${rep.errors.slice(0, 3).join('; ')}`);
  const p = PoolFs.openOn(new MemoryStorage(storage.size, { from: img }));
  t.same(coreOf(p).checkState(), [], 'the recovered state is consistent');
  return p;
}

function deferredPool(opts: { logBytes?: number; writebackMs?: number } = {}): { pool: PoolFs; storage: MemoryStorage } {
  return memPool(16 << 20, { trackPersistence: true, deferConversion: true, ...opts });
}

const queued = (pool: PoolFs): number => coreOf(pool).txn.unconverted.blocks;

/** A deferred pool with a file 'f' of `size` bytes. */
async function withFile(size: number, opts: { logBytes?: number; writebackMs?: number } = {}): Promise<{ pool: PoolFs; storage: MemoryStorage; f: PoolFsFile }> {
  const { pool, storage } = deferredPool(opts);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(size);
  return { pool, storage, f };
}

/** File 'f' as a power cut now leaves it: its bytes and its extents' states. */
async function afterCrash(t: Test, storage: MemoryStorage): Promise<{ data: Buffer; states: string[] }> {
  const p = await crash(t, storage);
  const f = await p.openFile('f');
  const data = await readAll(f);
  const states = (await f.stat()).extents.map((e) => e.state);
  await p.close();
  return { data, states };
}

/** True when bytes [from, to) of `b` all equal `v`. */
const all = (b: Buffer, v: number, from = 0, to = b.length): boolean => b.subarray(from, to).every((x) => x === v);

t.test('a fault on a hole is written in memory and unwritten on the medium until fsync', async (t) => {
  const { pool, storage } = deferredPool();
  const f = await pool.openFile('f', { create: true });
  const g = await pool.openFile('g', { create: true });
  await f.truncate(16 * B);
  await f.fsync();
  await fault(pool, f, 0, 4 * B, 0xab);
  const ip = poolInternals(pool);
  t.equal(ip.lookup(ip.inode(f), 0).state, 'written', 'lookup: written');
  t.same((await f.stat()).extents.map((e) => e.state), ['written'], 'stat: written');
  t.ok(all(await readAll(f), 0xab, 0, 4 * B), 'file.read sees the stores');
  t.equal(queued(pool), 4, 'four blocks wait for conversion');
  await g.fsync(); // makes the log durable: the unwritten records, not the zeros or the data
  t.equal(queued(pool), 4, 'another file\'s fsync leaves them queued');
  const before = await afterCrash(t, storage);
  t.same(before.states, ['unwritten'], 'on the medium: unwritten');
  t.ok(all(before.data, 0), 'a crash before the conversion reads zeros');
  await f.fsync();
  t.equal(queued(pool), 0, 'fsync converted them');
  const after = await afterCrash(t, storage);
  t.same(after.states, ['written'], 'on the medium: written');
  t.ok(all(after.data, 0xab, 0, 4 * B) && all(after.data, 0, 4 * B), 'every fsync\'ed byte is there');
  await pool.close();
});

t.test('a fault on an unwritten (fallocated) block converts it in memory only', async (t) => {
  const { pool, storage } = deferredPool();
  const f = await pool.openFile('f', { create: true });
  await f.fallocate(0, 8 * B, { keepSize: false });
  await f.fsync();
  const appended = coreOf(pool).txn.log.appended;
  await fault(pool, f, 2 * B, B, 0x77);
  t.equal(coreOf(pool).txn.log.appended, appended, 'no record: the block is already unwritten on the medium');
  t.same((await f.stat()).extents.map((e) => e.state), ['unwritten', 'written', 'unwritten']);
  t.ok(all((await afterCrash(t, storage)).data, 0), 'crash before conversion: zeros');
  await pool.sync();
  t.ok(all((await afterCrash(t, storage)).data, 0x77, 2 * B, 3 * B), 'pool.sync() converted it with its data');
  await pool.close();
});

t.test('a block freed by another file and reallocated by a fault reads zeros after a crash before conversion', async (t) => {
  const { pool, storage } = memPool(8 << 20, { trackPersistence: true, deferConversion: true });
  const free0 = (await pool.statfs()).free;
  const sec = await pool.openFile('secret', { create: true });
  const pat = Buffer.alloc(4 << 20);
  for (let i = 0; i < pat.length; i += SECRET.length) SECRET.copy(pat, i);
  await sec.write(pat, 0);
  await sec.fsync();
  await pool.unlink('secret');
  const ckpts = coreOf(pool).txn.checkpoints;
  const n = await pool.openFile('n', { create: true });
  const size = Math.floor((free0 - 8 * B) / B) * B; // more than was never used: the freed blocks come back
  await n.truncate(size);
  const g = await pool.openFile('g', { create: true });
  await g.fsync();
  const exts: { deviceOffset: number; length: number }[] = [];
  for (let off = 0; off < size; off += 64 * B) exts.push(...await fault(pool, n, off, Math.min(64 * B, size - off), null));
  t.ok(coreOf(pool).txn.checkpoints > ckpts, 'allocation pressure made the freed blocks reusable (checkpoint)');
  t.equal(exts.filter((e) => storage.view(e.deviceOffset, e.length).indexOf(SECRET) >= 0).length, 0, 'in memory the blocks are zeroed');
  await g.fsync(); // the unwritten records are durable; the zeroes are not
  const durable = new MemoryStorage(storage.size, { from: storage.crashImage() });
  const stale = exts.filter((e) => durable.view(e.deviceOffset, e.length).indexOf(SECRET) >= 0).length;
  t.ok(stale > 0, `the durable bytes of ${stale} reallocated extents still hold the old file's pattern`);
  const p = await crash(t, storage);
  const back = await readAll(await p.openFile('n'));
  t.equal(back.length, size);
  t.equal(back.indexOf(SECRET), -1, 'the pattern never shows through the new file');
  t.ok(all(back, 0), 'it reads zeros');
  await p.close();
  await pool.close();
});

type Freer = (pool: PoolFs, f: PoolFsFile) => Promise<void>;
const freers: Record<string, { free: Freer; check: (t: Test, p: PoolFs) => Promise<void> }> = {
  'punch hole': {
    free: async (_p, f) => { await f.punchHole(0, 8 * B); },
    check: async (t, p) => { t.ok(all(await readAll(await p.openFile('f')), 0), 'the punched range reads zeros'); },
  },
  'zero range': {
    free: async (_p, f) => { await f.zeroRange(0, 8 * B, { keepSize: true }); },
    check: async (t, p) => { t.ok(all(await readAll(await p.openFile('f')), 0), 'the zeroed range reads zeros'); },
  },
  truncate: {
    free: async (_p, f) => { await f.truncate(0); await f.truncate(8 * B); },
    check: async (t, p) => {
      const f = await p.openFile('f');
      t.equal((await f.stat()).allocated, 0, 'no block left');
      t.ok(all(await readAll(f), 0), 'reads zeros');
    },
  },
  unlink: {
    free: async (pool) => { await pool.unlink('f'); },
    check: async (t, p) => { t.notOk((await p.list()).includes('f'), 'the file is gone'); },
  },
  'rename over': {
    free: async (pool) => { await pool.openFile('o', { create: true }); await pool.rename('o', 'f'); },
    check: async (t, p) => { t.equal((await (await p.openFile('f')).stat()).allocated, 0, 'the file renamed over it has no block'); },
  },
};

for (const [how, { free, check }] of Object.entries(freers)) {
  t.test(`${how} drops the queued conversion of the blocks it frees`, async (t) => {
    const { pool, storage, f } = await withFile(8 * B);
    await fault(pool, f, 0, 8 * B, 0x5a);
    t.equal(queued(pool), 8);
    await free(pool, f);
    await pool.sync();
    t.equal(queued(pool), 0, 'the queue is empty after sync');
    const p = await crash(t, storage);
    await check(t, p);
    await p.close();
    // the range faulted again gets new blocks, converted at the next sync
    if (how !== 'unlink' && how !== 'rename over') {
      await fault(pool, f, B, B, 0x66);
      await pool.sync();
      const { data } = await afterCrash(t, storage);
      t.ok(all(data, 0x66, B, 2 * B) && all(data, 0, 2 * B), 'a new fault after it is converted with its own data');
    }
    await pool.close();
  });
}

t.test('a sync fault over a queued block makes its conversion durable before it returns', async (t) => {
  const { pool, storage, f } = await withFile(4 * B);
  await fault(pool, f, 0, B, 0x21);
  await fault(pool, f, 0, B, null, { sync: true });
  t.equal(queued(pool), 0, 'converted');
  t.ok(all((await afterCrash(t, storage)).data, 0x21, 0, B), 'the stores made before the sync fault survive');
  // a sync fault on a hole: written and durable at once, never queued
  await fault(pool, f, 2 * B, B, null, { sync: true });
  t.equal(queued(pool), 0, 'a sync fault is never deferred');
  t.same((await afterCrash(t, storage)).states, ['written', 'written'], 'both blocks are written on the medium');
  await pool.close();
});

t.test('the periodic writeback converts without an fsync', async (t) => {
  const { pool, storage, f } = await withFile(4 * B, { writebackMs: 10 });
  await fault(pool, f, 0, 2 * B, 0x42);
  await until(() => queued(pool) === 0, 'the writeback to convert the queued blocks');
  t.ok(all((await afterCrash(t, storage)).data, 0x42, 0, 2 * B), 'the data is durable and written');
  await pool.close();
});

t.test('a backlog of queued conversions starts a writeback at once', async (t) => {
  const { pool, storage, f } = await withFile(16 * B, { writebackMs: 3600_000 });
  coreOf(pool).writebackRuns = 3;
  for (const p of [0, 4, 8, 12]) await fault(pool, f, p * B, B, 0x30 + p);
  await until(() => queued(pool) === 0, 'the backlog writeback');
  const { data } = await afterCrash(t, storage);
  for (const pg of [0, 4, 8, 12]) t.ok(all(data, 0x30 + pg, pg * B, pg * B + B), `page ${pg} converted with its data`);
  await pool.close();
});

t.test('a checkpoint records queued blocks written after making their data durable', async (t) => {
  const { pool, storage, f } = await withFile(4 * B);
  await fault(pool, f, 0, B, 0x99);
  const core = coreOf(pool);
  await withOperation('test.checkpoint', () => core.txn.locked(() => core.txn.checkpoint()));
  t.equal(queued(pool), 0, 'the checkpoint emptied the queue');
  const { data, states } = await afterCrash(t, storage);
  t.same(states, ['written']);
  t.ok(all(data, 0x99, 0, B), 'with its data');
  await pool.close();
});

t.test('a conversion whose data cannot be made durable stays queued, and fsync fails', async (t) => {
  const { pool, storage, f } = await withFile(4 * B);
  await f.fsync();
  await fault(pool, f, 0, B, 0x55);
  const persist = storage.persist.bind(storage);
  storage.persist = () => { throw Object.assign(new Error('EIO (injected)'), { code: 'EIO' }); };
  await t.rejects(f.fsync(), { code: 'EIO' });
  t.equal(queued(pool), 1, 'still queued');
  storage.persist = persist;
  t.ok(all((await afterCrash(t, storage)).data, 0), 'not converted: zeros after a crash');
  await f.fsync();
  t.equal(queued(pool), 0);
  t.ok(all((await afterCrash(t, storage)).data, 0x55, 0, B), 'the next fsync converted it');
  await pool.close();
});

t.test('close converts everything; the reopened pool has every byte', async (t) => {
  const { pool, storage, f } = await withFile(64 * B);
  for (let p = 0; p < 64; p += 3) await fault(pool, f, p * B, B, p + 1);
  await pool.close();
  const { data } = await afterCrash(t, storage);
  const wrong = [];
  for (let pg = 0; pg < 64; pg++) if (!all(data, pg % 3 === 0 ? pg + 1 : 0, pg * B, pg * B + B)) wrong.push(pg);
  t.same(wrong, [], 'every page reads what was stored in it, or zeros');
});

t.test('the deferral is on by default for disk-file pools only', async (t) => {
  const disk = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-defer-')), 'pool');
  const shm = `/dev/shm/daxmap-defer-${process.pid}`;
  t.teardown(() => { fs.rmSync(path.dirname(disk), { recursive: true, force: true }); fs.rmSync(shm, { force: true }); });
  const d = await PoolFs.create(disk, { size: 16 << 20 });
  t.equal(coreOf(d).storage.kind, 'file');
  t.equal(coreOf(d).deferConversion, true, 'disk file: deferred');
  await d.close();
  const s = await PoolFs.create(shm, { size: 16 << 20 });
  t.equal(coreOf(s).deferConversion, false, 'tmpfs: persisted at the fault, as before');
  await s.close();
  const { pool } = memPool();
  t.equal(coreOf(pool).deferConversion, false, 'memory: off unless asked for');
  await pool.close();
});

t.test('through the package API on a disk-file pool: a copy of the device reads zeros or the stores before Mapping.flush, and every store after it', async (t) => {
  const { Pool } = await import('../../dist/index.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-defer-api-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dev = path.join(dir, 'pool');
  const pool = await Pool.create(dev, { size: 32 << 20 });
  const f = await pool.openFile('f', { create: true });
  await f.truncate(64 * B);
  await f.fsync();
  const m = await f.map({ faultAround: false });
  for (let p = 0; p < 64; p += 2) m.buffer.fill(p + 1, p * B, (p + 1) * B);
  t.same((await f.stat()).extents.every((e) => e.state === 'written'), true, 'the faulted blocks are written as the pool sees them');
  /** What the device file holds now (as a SIGKILL would leave it), reopened. */
  const copy = async (what: string): Promise<{ data: Buffer; states: string[] }> => {
    const c = path.join(dir, what);
    fs.copyFileSync(dev, c);
    const p = await PoolFs.open(c);
    t.same(coreOf(p).checkState(), [], `${what}: consistent`);
    const cf = await p.openFile('f');
    const out = { data: await readAll(cf), states: (await cf.stat()).extents.map((e) => e.state) };
    await p.close();
    return out;
  };
  const pageOk = (data: Buffer, p: number, converted: boolean): boolean => {
    const want = p % 2 === 0 ? p + 1 : 0;
    return all(data, want, p * B, (p + 1) * B) || (!converted && all(data, 0, p * B, (p + 1) * B));
  };
  const early = await copy('before-flush');
  const badEarly = [];
  for (let p = 0; p < 64; p++) if (!pageOk(early.data, p, false)) badEarly.push(p);
  t.same(badEarly, [], 'before the flush every page reads zeros or its stores (unwritten until converted)');
  await m.flush();
  const late = await copy('after-flush');
  const badLate = [];
  for (let p = 0; p < 64; p++) if (!pageOk(late.data, p, true)) badLate.push(p);
  t.same(badLate, [], 'after the flush every store is there');
  t.ok(late.states.every((s) => s === 'written'), 'and the blocks are written on the medium');
  await m.unmap();
  await pool.close();
});
