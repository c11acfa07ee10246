// The reserve of pre-zeroed blocks (docs/pool.md, "Reserve"): takeReserve hands out
// zeroed blocks logged as reserved, adoptReserved makes them file blocks in one
// transaction (refusing pairs whose block is no longer a hole, past EOF, or of an
// unlinked file), returnReserve gives unused ones back. On a tmpfs pool and on
// memory pools with and without deferred conversion.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PoolFs, PoolFsFile, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals, type PoolInternals } from '../../dist/pool/internal.js';
import { MemoryStorage } from '../../dist/device/storage.js';
import { fsckDevice, fsckStorage } from '../../dist/pool/fsck.js';
import { withOperation } from '../../dist/lock/index.js';
import { memPool, B, readAll } from './helpers.ts';
import { RESERVE_BLOCKS, RESERVE_LOW_WATER } from '../../dist/fault/reserve.js';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const shmDir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'daxmap-reserve-'));
t.teardown(() => fs.rmSync(shmDir, { recursive: true, force: true }));

/** Adopt under the range lock over the blocks, as the fault policy does. */
async function adopt(pool: PoolFs, f: PoolFsFile, pairs: { fb: number; dev: number }[], opts: { sync?: boolean; keepRefused?: boolean } = {}): Promise<{ adopted: { fb: number; dev: number }[]; refused: { fb: number; dev: number }[] }> {
  const ip = poolInternals(pool);
  const ino = ip.inode(f);
  return withOperation('test.adopt', async () => {
    const h = await ino.rangeLock.acquireShared(0, Number.MAX_SAFE_INTEGER);
    try {
      return await ip.adoptReserved(ino, pairs, opts);
    } finally {
      h.release();
    }
  });
}

const isZero = (b: Buffer): boolean => b.every((x) => x === 0);

/** Store `byte` into the block at device offset dev, as a process would through a mapping. */
function store(ip: PoolInternals, dev: number, byte: number): void {
  ip.storage.view(dev, B).fill(byte);
}

async function basics(t: Test, pool: PoolFs): Promise<void> {
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(64 * B);
  const before = ip.reserveStats();
  t.equal(before.enabled, true, 'the reserve is on');
  t.equal(before.reserved, 0, 'nothing reserved before the first take');
  const devs = await ip.takeReserve(8);
  t.equal(devs.length, 8, 'eight blocks handed out');
  t.equal(new Set(devs).size, 8, 'all distinct');
  for (const d of devs) {
    t.equal(d % B, 0, 'block aligned');
    t.ok(isZero(Buffer.from(ip.storage.view(d, B))), `block at ${d} reads zeros`);
  }
  t.equal(ip.reserveStats().out, 8, 'eight out');
  t.same(coreOf(pool).checkState(), [], 'consistent with blocks out');
  const inFiles = (await f.stat()).allocated;
  t.equal(inFiles, 0, 'the file owns none of them');

  // stores into three blocks, then adoption of those at file blocks 1, 2 and 10
  store(ip, devs[0]!, 0x41);
  store(ip, devs[1]!, 0x42);
  store(ip, devs[2]!, 0x43);
  const r = await adopt(pool, f, [{ fb: 1, dev: devs[0]! }, { fb: 2, dev: devs[1]! }, { fb: 10, dev: devs[2]! }]);
  t.equal(r.adopted.length, 3, 'three adopted');
  t.equal(r.refused.length, 0, 'none refused');
  const data = await readAll(f);
  t.equal(data[1 * B], 0x41, 'file block 1 holds the stores');
  t.equal(data[2 * B], 0x42);
  t.equal(data[10 * B], 0x43);
  t.ok(isZero(data.subarray(0, B)), 'block 0 still a hole');
  const st = await f.stat();
  t.equal(st.allocated, 3 * B, 'three blocks allocated');
  t.equal(ip.reserveStats().out, 5, 'five still out');

  // the rest go back; the reserve zeroes them again before handing them out
  store(ip, devs[3]!, 0x44);
  ip.returnReserve(devs.slice(3));
  t.equal(ip.reserveStats().out, 0, 'none out');
  t.throws(() => ip.returnReserve([devs[3]!]), { code: 'EINVAL' }, 'a block not out cannot be returned');
  await t.rejects(adopt(pool, f, [{ fb: 5, dev: devs[4]! }]), { code: 'EINVAL' }, 'nor adopted');
  await coreOf(pool).reserve.settled();
  t.equal(ip.reserveStats().dirty, 0, 'the returned blocks were zeroed again');
  t.ok(isZero(Buffer.from(ip.storage.view(devs[3]!, B))), 'the returned block that held stores reads zeros again');
  t.same(coreOf(pool).checkState(), [], 'consistent');
  const s = await pool.statfs();
  t.equal(s.reserved, ip.reserveStats().reserved * B, 'statfs reports the reserve');
  await f.close();
}

t.test('the stock holds a grant and its first top-up: a sparse writer\'s blocks are not zeroed on the worker\'s path', async (t) => {
  // The fault policy grants RESERVE_BLOCKS and tops up RESERVE_BLOCKS - RESERVE_LOW_WATER
  // at a time (lib/fault/reserve.ts), faster than the background refill can follow. A
  // stock of 1,024 blocks was emptied by the grant, and each top-up then zeroed its
  // blocks on the worker's path (10-25 ms) while the writer's reserve ran dry.
  const pool = await PoolFs.create(path.join(shmDir, 'stock'), { size: 128 << 20 });
  t.teardown(() => pool.close());
  const ip = poolInternals(pool);
  const r = coreOf(pool).reserve;
  t.ok(r.target >= 1024 && r.target <= 4096, `the stock's target is from 1,024 to 4,096 blocks (${r.target})`);
  t.equal(r.lowWater, Math.floor(r.target / 4), 'its refill starts at a quarter of it');
  ip.refillReserve(); // as a take does (the first take of a pool's life waits for its zeroing)
  await r.settled();
  t.equal(ip.reserveStats().stock, r.target, 'the stock filled in the background');
  const topUp = RESERVE_BLOCKS - RESERVE_LOW_WATER;
  const got = [await ip.takeReserve(RESERVE_BLOCKS), await ip.takeReserve(topUp), await ip.takeReserve(topUp)];
  t.same(got.map((g) => g.length), [RESERVE_BLOCKS, topUp, topUp], 'a grant and two top-ups, taken back to back');
  t.equal(ip.reserveStats().zeroedForeground, 0, 'none of their blocks was zeroed on the taker\'s path');
  ip.returnReserve(got.flat());
  const small = await PoolFs.create(path.join(shmDir, 'stock-small'), { size: 16 << 20 });
  t.teardown(() => small.close());
  t.equal(coreOf(small).reserve.target, 1024, 'a small pool keeps a stock of 1,024 blocks');
});

t.test('take, adopt, return on a tmpfs pool', async (t) => {
  const pool = await PoolFs.create(path.join(shmDir, 'pool'), { size: 32 << 20 });
  t.equal(coreOf(pool).deferConversion, false, 'a tmpfs pool does not defer');
  await basics(t, pool);
  const ip = poolInternals(pool);
  await coreOf(pool).reserve.settled();
  t.equal(ip.reserveStats().stock, coreOf(pool).reserve.target, 'the background refill filled the stock');
  t.ok(ip.reserveStats().zeroedBackground > 0, 'zeroed in the background');
  const f = await pool.openFile('f');
  const st = await f.stat();
  t.ok(st.extents.length > 0 && st.extents.every((e) => e.state === 'written'), 'adopted blocks are written on tmpfs');
  await pool.close();
  const rep = fsckDevice(path.join(shmDir, 'pool'));
  t.ok(rep.clean, `fsck clean after close ${rep.errors.join('; ')}`);
  t.equal(rep.summary?.reservedBlocks, 0, 'close freed the reserve');
  const p2 = await PoolFs.open(path.join(shmDir, 'pool'));
  const f2 = await p2.openFile('f');
  const d2 = await readAll(f2);
  t.equal(d2[1 * B], 0x41, 'adopted data survives close and open');
  t.equal(d2[10 * B], 0x43);
  await p2.close();
});

t.test('a tmpfs pool zeroes its stock off the thread; close waits for a zeroing under way', async (t) => {
  const file = path.join(shmDir, 'pool-close');
  const pool = await PoolFs.create(file, { size: 64 << 20 });
  const ip = poolInternals(pool);
  // An empty stock: the taker's own zeroing of 8,192 blocks (32 MiB), on a libuv thread.
  const taking = ip.takeReserve(8192).then((d) => d.length, (e: unknown) => e);
  while (ip.reserveStats().zeroing === 0) await new Promise<void>((res) => setImmediate(res));
  t.ok(ip.reserveStats().zeroing > 0, 'blocks are being zeroed');
  await pool.close();
  t.equal(ip.reserveStats().zeroing, 0, 'close returned after the zeroing was done');
  // The device was not closed under the job: its descriptor (and lock) is gone now.
  const p2 = await PoolFs.open(file);
  t.pass('the pool opens again at once (no EBUSY from a descriptor a zeroing still held)');
  await p2.close();
  const got = await taking;
  t.ok(typeof got === 'number' || (got as { code?: string }).code === 'EBADF', `the take ended (${String((got as { code?: string }).code ?? got)})`);
  const rep = fsckDevice(file);
  t.ok(rep.clean, `fsck clean ${rep.errors.join('; ')}`);
  t.equal(rep.summary?.reservedBlocks, 0, 'nothing left reserved');
});

t.test('take, adopt, return on a memory pool that defers conversions', async (t) => {
  const { pool } = memPool(16 << 20, { trackPersistence: true, deferConversion: true });
  await basics(t, pool);
  const f = await pool.openFile('f');
  const ex = (await f.stat()).extents;
  t.ok(ex.length > 0 && ex.every((e) => e.state === 'written'), 'written in memory');
  t.ok(coreOf(pool).txn.unconverted.blocks >= 3, 'queued for conversion');
  await f.fsync();
  t.equal(coreOf(pool).txn.unconverted.blocks, 0, 'fsync converted them');
  await pool.close();
});

t.test('adopt refuses blocks that are no longer holes, past EOF, named twice, or of an unlinked file', async (t) => {
  const { pool } = memPool();
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(8 * B + 100);
  await f.write(Buffer.alloc(B, 7), 3 * B);
  await f.fallocate(4 * B, B, {});
  const devs = await ip.takeReserve(7);
  for (const d of devs) store(ip, d, 0x55);
  const r = await adopt(pool, f, [
    { fb: 3, dev: devs[0]! }, // written
    { fb: 4, dev: devs[1]! }, // unwritten
    { fb: 9, dev: devs[2]! }, // past EOF (size is 8 blocks + 100 bytes: block 8 is the EOF block)
    { fb: 8, dev: devs[3]! }, // the EOF block: adopted
    { fb: 8, dev: devs[4]! }, // named twice
  ]);
  t.same(r.adopted.map((p) => p.fb), [8], 'only the EOF block is adopted');
  t.same(r.refused.map((p) => p.fb).sort(), [3, 4, 8, 9], 'the others are refused');
  const data = await readAll(f);
  t.ok(data.subarray(3 * B, 4 * B).every((x) => x === 7), 'the written block keeps its data');
  t.ok(isZero(data.subarray(4 * B, 5 * B)), 'the unwritten block reads zeros');
  t.equal(data[8 * B], 0x55, 'the adopted EOF block holds the stores');
  await pool.unlink('f');
  const r2 = await adopt(pool, f, [{ fb: 1, dev: devs[5]! }]);
  t.same(r2.refused.length, 1, 'an unlinked file adopts nothing');
  ip.returnReserve([devs[6]!]);
  const st = ip.reserveStats();
  t.equal(st.out, 0, 'every block came back');
  t.equal(st.refused, 5, 'five refused');
  t.equal(st.adopted, 1, 'one adopted');
  t.same(coreOf(pool).checkState(), [], 'consistent');
  await coreOf(pool).reserve.settled();
  t.equal(ip.reserveStats().dirty, 0, 'refused blocks were zeroed again');
  for (const d of devs) if (d !== devs[3]) t.ok(isZero(Buffer.from(ip.storage.view(d, B))), `refused/returned block ${d} reads zeros again`);
  await pool.close();
});

t.test('keepRefused: a refused block stays handed out (its page still mapped) until the caller gives it back', async (t) => {
  const { pool } = memPool();
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(8 * B);
  await f.write(Buffer.alloc(B, 7), 3 * B);
  const devs = await ip.takeReserve(2);
  for (const d of devs) store(ip, d, 0x55);
  const r = await adopt(pool, f, [{ fb: 3, dev: devs[0]! }, { fb: 5, dev: devs[1]! }], { keepRefused: true });
  t.same(r.refused.map((p) => p.fb), [3], 'the written block is refused');
  t.same(r.adopted.map((p) => p.fb), [5]);
  await coreOf(pool).reserve.settled();
  t.equal(ip.reserveStats().out, 1, 'the refused block is still handed out');
  t.equal(Buffer.from(ip.storage.view(devs[0]!, B))[0], 0x55, 'and not zeroed: a store through its page still lands there harmlessly');
  ip.returnReserve([devs[0]!]);
  await coreOf(pool).reserve.settled();
  const st = ip.reserveStats();
  t.equal(st.out, 0, 'given back by the caller');
  t.equal(st.dirty, 0, 'then zeroed again, or freed');
  t.same(coreOf(pool).checkState(), [], 'consistent');
  await pool.close();
});

t.test('mappedRuns: the byte runs with blocks, in one pass, adjacent extents merged, clipped', async (t) => {
  const { pool } = memPool();
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(64 * B);
  await f.write(Buffer.alloc(2 * B, 1), 2 * B);
  await f.write(Buffer.alloc(B, 1), 10 * B);
  await f.write(Buffer.alloc(B, 1), 11 * B); // its own extent or merged: one run either way
  await f.fallocate(20 * B, 3 * B, {}); // unwritten counts too
  const ino = ip.inode(f);
  t.same(ip.mappedRuns(ino, 0, 64 * B), [[2 * B, 4 * B], [10 * B, 12 * B], [20 * B, 23 * B]]);
  t.same(ip.mappedRuns(ino, 3 * B, 21 * B), [[3 * B, 4 * B], [10 * B, 12 * B], [20 * B, 21 * B]], 'clipped to the range');
  t.same(ip.mappedRuns(ino, 4 * B, 10 * B), [], 'a hole');
  await pool.close();
});

t.test('argument checks', async (t) => {
  const { pool } = memPool();
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await t.rejects(ip.takeReserve(0), { code: 'EINVAL' });
  await t.rejects(ip.takeReserve(1.5), { code: 'EINVAL' });
  const [d] = await ip.takeReserve(1);
  await t.rejects(adopt(pool, f, [{ fb: 0, dev: d! + 1 }]), { code: 'EINVAL' }, 'unaligned offset');
  await t.rejects(adopt(pool, f, [{ fb: -1, dev: d! }]), { code: 'EINVAL' }, 'negative file block');
  await t.rejects(adopt(pool, f, [{ fb: 0, dev: d! }, { fb: 1, dev: d! }]), { code: 'EINVAL' }, 'a block named twice');
  t.equal(ip.reserveStats().out, 1, 'nothing changed');
  t.throws(() => ip.returnReserve([d! + B * 1000]), { code: 'EINVAL' }, 'a block never handed out');
  ip.returnReserve([d!]);
  await pool.close();
  await t.rejects(ip.takeReserve(1), { code: 'EBADF' }, 'closed');
});

t.test('stale data: blocks freed by a file, taken into the reserve, read zeros when adopted', async (t) => {
  for (const deferConversion of [false, true]) {
    const { pool, storage } = memPool(8 << 20, { trackPersistence: true, deferConversion });
    const ip = poolInternals(pool);
    const core = coreOf(pool);
    const PAT = Buffer.from('<<STALE-FILE-A>>');
    const a = await pool.openFile('a', { create: true });
    const free = core.state.alloc.free;
    const pat = Buffer.alloc(free * B);
    for (let i = 0; i < pat.length; i += PAT.length) PAT.copy(pat, i);
    await a.write(pat, 0);
    await a.fsync();
    t.equal(core.state.alloc.free, 0, 'file a holds every data block');
    await a.close();
    await pool.unlink('a');
    const devs = await ip.takeReserve(free);
    t.equal(devs.length, free, `every block (${free}) handed out: the checkpoint released a's`);
    t.ok(devs.every((d) => isZero(Buffer.from(ip.storage.view(d, B)))), 'each reads zeros in memory');
    const img = storage.crashImage();
    t.ok(devs.every((d) => isZero(img[0]!.subarray(d, d + B))), 'and on the medium (zeros persisted before the hand-out)');
    const b = await pool.openFile('b', { create: true });
    await b.truncate(free * B);
    const r = await adopt(pool, b, devs.map((dev, i) => ({ fb: i, dev })));
    t.equal(r.adopted.length, free, 'all adopted');
    const data = await readAll(b);
    t.ok(isZero(data), `file b reads zeros (deferConversion ${deferConversion})`);
    t.equal(data.indexOf(PAT), -1, "never a's pattern");
    // a power cut once the adoption is logged (the log persisted, the data not flushed): never a's pattern either
    await core.txn.locked(() => core.txn.log.persist());
    const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }));
    const b2 = await p2.openFile('b');
    t.equal((await readAll(b2)).indexOf(PAT), -1, 'after a power cut, no pattern of a in b');
    await p2.close();
    await pool.close();
  }
});

t.test('a checkpoint carries the reserve; the open after a crash frees it', async (t) => {
  const { pool, storage } = memPool(16 << 20, { trackPersistence: true });
  const ip = poolInternals(pool);
  const core = coreOf(pool);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(16 * B);
  const devs = await ip.takeReserve(6);
  await core.txn.locked(() => core.txn.checkpoint());
  t.ok(core.txn.log.used > 0, 'the new epoch starts with the reserve recorded again');
  store(ip, devs[0]!, 0x61);
  store(ip, devs[5]!, 0x66);
  await adopt(pool, f, [{ fb: 2, dev: devs[0]! }]);
  await f.fsync();
  await core.reserve.settled();
  await core.txn.locked(() => core.txn.log.persist()); // the refill's records too
  const img = storage.crashImage();
  const rep = fsckStorage(new MemoryStorage(storage.size, { from: img }));
  t.ok(rep.clean, `fsck clean with blocks reserved ${rep.errors.join('; ')}`);
  const reservedNow = core.state.reserved.size;
  t.equal(rep.summary?.reservedBlocks, reservedNow, 'the crash image holds the reserve (stock and blocks out)');
  t.ok(reservedNow >= 5, 'the five blocks out among them');
  const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: img, trackPersistence: true }));
  const c2 = coreOf(p2);
  t.equal(c2.state.reserved.size, 0, 'open freed every reserved block');
  t.equal(c2.state.alloc.pendingCount, reservedNow, 'held back until the next checkpoint');
  t.same(c2.checkState(), [], 'consistent');
  const f2 = await p2.openFile('f');
  const d = await readAll(f2);
  t.equal(d[2 * B], 0x61, 'the block adopted after the checkpoint is there');
  t.equal(d.indexOf(0x66), -1, 'the stores of a block never adopted are in no file');
  await p2.close();
  // blocks reserved before the checkpoint, freed after it: the log still replays
  core.reserve.target = 0;
  ip.returnReserve(devs.slice(1));
  await core.reserve.settled();
  t.equal(core.state.reserved.size, 0, 'returned beyond the target: unreserved');
  await core.txn.locked(() => core.txn.log.persist());
  const rep2 = fsckStorage(new MemoryStorage(storage.size, { from: storage.crashImage() }));
  t.ok(rep2.clean, `unreserve after the checkpoint replays ${rep2.errors.join('; ')}`);
  await pool.close();
});

t.test('the stock gives way to allocations; takeReserve fails only with nothing free', async (t) => {
  const { pool } = memPool(8 << 20);
  const ip = poolInternals(pool);
  const core = coreOf(pool);
  const [d0] = await ip.takeReserve(1);
  await core.reserve.settled();
  const stock = ip.reserveStats().stock;
  t.ok(stock > 0, `a stock of ${stock}`);
  const free = core.state.alloc.free;
  const s = await pool.statfs();
  t.equal(s.free, (free + stock) * B, 'statfs counts the stock as free');
  const a = await pool.openFile('a', { create: true });
  await a.write(Buffer.alloc((free + stock) * B, 1), 0);
  t.equal(ip.reserveStats().stock, 0, 'the write took the stock back');
  t.same(core.checkState(), [], 'consistent');
  await t.rejects(ip.takeReserve(4), { code: 'ENOSPC' }, 'nothing left');
  await a.truncate(2 * B);
  const got = await ip.takeReserve(4);
  t.equal(got.length, 4, 'after a truncate, the taker gets blocks (a checkpoint releases them)');
  ip.returnReserve([d0!, ...got]);
  await pool.close();
});

t.test('blocks being zeroed for the stock give way too: an allocation that needs them waits for them', async (t) => {
  const file = path.join(shmDir, 'pool-zeroing');
  const pool = await PoolFs.create(file, { size: 8 << 20 });
  // the zeroer of free space off: it would hold free blocks on the same held zeroing
  pool.setCleanTarget(0);
  t.teardown(() => pool.close());
  const ip = poolInternals(pool);
  const core = coreOf(pool);
  // Hold the refill's zeroing (off the thread on tmpfs) until the allocation waits.
  let release!: () => void;
  const gate = new Promise<void>((res) => (release = res));
  const storage = ip.storage;
  const zeroPersistAsync = storage.zeroPersistAsync!.bind(storage);
  storage.zeroPersistAsync = async (zero, persist) => {
    await gate;
    return zeroPersistAsync(zero, persist);
  };
  const a = await pool.openFile('a', { create: true });
  const free = core.state.alloc.free;
  const left = 16;
  await a.write(Buffer.alloc((free - left) * B, 1), 0);
  t.equal(core.state.alloc.free, left, `${left} blocks free`);
  core.reserve.kick(); // the refill takes them all, and zeroes them
  while (ip.reserveStats().zeroing < left) await new Promise<void>((res) => setImmediate(res));
  t.equal(core.state.alloc.free, 0, 'none free: all in the refill');
  t.equal((await pool.statfs()).free, left * B, 'statfs counts the blocks being zeroed as free');
  const b = await pool.openFile('b', { create: true });
  const writing = b.write(Buffer.alloc(left * B, 2), 0).then(() => 'written', (e: { code?: string }) => e.code ?? 'an error without a code');
  await new Promise<void>((res) => setImmediate(res));
  release();
  t.equal(await writing, 'written', 'the write got the blocks once they were zeroed (no ENOSPC)');
  t.equal((await b.stat()).allocated, left * B, 'all of them');
  t.same(core.checkState(), [], 'consistent');
});

t.test('adoptReserved: pairs adopted in file order; a block not out, or named twice, changes nothing', async (t) => {
  const { pool } = memPool();
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(16 * B);
  const [a, b, c, d] = await ip.takeReserve(4) as [number, number, number, number];
  await t.rejects(adopt(pool, f, [{ fb: 5, dev: a }, { fb: 1, dev: b }, { fb: 3, dev: a }]), { code: 'EINVAL' }, 'a block named twice');
  t.equal(ip.reserveStats().out, 4, 'every block still out');
  await t.rejects(adopt(pool, f, [{ fb: 5, dev: a }, { fb: 1, dev: b + 1024 * B }]), { code: 'EINVAL' }, 'a block not handed out');
  t.equal(ip.reserveStats().out, 4, 'every block still out');
  t.equal((await f.stat()).allocated, 0, 'nothing adopted');
  const r = await adopt(pool, f, [{ fb: 5, dev: a }, { fb: 1, dev: b }, { fb: 9, dev: c }, { fb: 1, dev: d }]);
  t.same(r.adopted.map((p) => p.fb), [1, 5, 9], 'adopted in file order');
  t.same(r.refused, [{ fb: 1, dev: d }], 'the second pair for file block 1 refused');
  t.equal(ip.reserveStats().out, 0, 'none out: three adopted, the refused one given back');
  t.equal(ip.reserveStats().refused, 1);
  t.same(coreOf(pool).checkState(), [], 'consistent');
  await pool.close();
});

t.test('fewer blocks than asked when the pool is short', async (t) => {
  const { pool } = memPool(8 << 20);
  const ip = poolInternals(pool);
  const core = coreOf(pool);
  const a = await pool.openFile('a', { create: true });
  await a.write(Buffer.alloc((core.state.alloc.free - 3) * B, 1), 0);
  const got = await ip.takeReserve(10);
  t.equal(got.length, 3, 'the three free blocks');
  ip.returnReserve(got);
  await pool.close();
});

t.test('the reserve is off on a 2 MiB-granular device', async (t) => {
  const storage = new MemoryStorage(16 << 20, { align: 2 << 20 });
  const pool = PoolFs.createOn(storage);
  const ip = poolInternals(pool);
  t.equal(ip.reserveStats().enabled, false, 'disabled');
  await t.rejects(ip.takeReserve(1), { code: 'EOPNOTSUPP' });
  await pool.close();
});

t.test('the reserve has a cap: EAGAIN when every block up to it is out', async (t) => {
  const { pool } = memPool(16 << 20, { logBytes: 64 * 1024 });
  const ip = poolInternals(pool);
  const limit = coreOf(pool).reserve.limit;
  t.equal(limit, Math.floor((64 * 1024) / 4 / 24), 'a quarter of a 64 KiB log in 24-byte records');
  const got = await ip.takeReserve(limit + 10);
  t.equal(got.length, limit, 'up to the cap');
  await t.rejects(ip.takeReserve(1), { code: 'EAGAIN' }, 'then EAGAIN, not ENOSPC: the pool has free blocks');
  ip.returnReserve(got.slice(0, 5));
  await coreOf(pool).reserve.settled();
  t.equal((await ip.takeReserve(10)).length, 5, 'the blocks given back are handed out again');
  await pool.close();
});

t.test('adoptReserved with sync: written and durable before it returns, on a pool that defers', async (t) => {
  const { pool, storage } = memPool(16 << 20, { trackPersistence: true, deferConversion: true });
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await f.truncate(8 * B);
  await f.fsync();
  const [d0, d1] = await ip.takeReserve(2);
  store(ip, d0!, 0x71);
  await adopt(pool, f, [{ fb: 1, dev: d1! }]);
  t.equal(coreOf(pool).txn.unconverted.blocks, 1, 'a plain adoption is queued for conversion');
  await adopt(pool, f, [{ fb: 3, dev: d0! }], { sync: true });
  t.equal(coreOf(pool).txn.unconverted.blocks, 0, "sync converted the file's queue too");
  // a power cut right after it returns: both blocks are recorded written
  const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }));
  const f2 = await p2.openFile('f');
  const ex = (await f2.stat()).extents;
  t.same(ex.map((e) => [e.offset, e.state]), [[B, 'written'], [3 * B, 'written']], 'both adopted blocks are written on the medium');
  const d = await readAll(f2);
  t.ok(d.subarray(3 * B, 4 * B).every((x) => x === 0 || x === 0x71), 'block 3 reads zeros or its stores');
  await p2.close();
  await pool.close();
});
