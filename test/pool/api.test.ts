// The public API's contract on a memory pool: argument checks, error codes,
// ENOSPC with nothing half-done, read/write edge cases, and the internal entry
// points the fault policy builds on (lookup, ensureWritten, the invalidation hook).
import t from 'tap';
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals } from '../../dist/pool/internal.js';
import { withOperation, lockdep } from '../../dist/lock/index.js';
import { memPool, B } from './helpers.ts';
import { useLockdep } from '../lock/guard.ts';
import { until } from '../wait.ts';

useLockdep(t);

t.test('names', async (t) => {
  const { pool } = memPool();
  for (const bad of ['', 'a/b', 'a\0b', 'x'.repeat(256), 'é'.repeat(128), '\ud800']) {
    await t.rejects(pool.openFile(bad, { create: true }), { code: 'EINVAL' }, JSON.stringify(bad).slice(0, 20));
  }
  await t.rejects(pool.openFile(42 as never, { create: true }), { code: 'EINVAL' });
  const long = 'é'.repeat(127) + 'x';
  const f = await pool.openFile(long, { create: true });
  t.equal(f.name, long);
  await pool.openFile('Ωmega', { create: true });
  t.same(await pool.list(), [long, 'Ωmega'].sort());
  await t.rejects(pool.openFile('missing'), { code: 'ENOENT' });
  await t.rejects(pool.openFile('Ωmega', { create: true, exclusive: true }), { code: 'EEXIST' });
  await t.rejects(pool.unlink('missing'), { code: 'ENOENT' });
  await t.rejects(pool.rename('missing', 'x'), { code: 'ENOENT' });
  await t.rejects(pool.rename('Ωmega', 'a/b'), { code: 'EINVAL' });
  await pool.close();
});

t.test('offsets and lengths are checked', async (t) => {
  const { pool } = memPool();
  const f = await pool.openFile('f', { create: true });
  const bads = [-1, 1.5, NaN, Infinity, 2 ** 60, '3' as never];
  for (const v of bads) {
    await t.rejects(f.write(Buffer.from('x'), v), { code: 'EINVAL' }, `write at ${String(v)}`);
    await t.rejects(f.read(Buffer.alloc(1), v), { code: 'EINVAL' });
    await t.rejects(f.truncate(v), { code: 'EINVAL' });
    await t.rejects(f.fallocate(v, 10), { code: 'EINVAL' });
    await t.rejects(f.fallocate(0, v), { code: 'EINVAL' });
    await t.rejects(f.punchHole(v, 10), { code: 'EINVAL' });
    await t.rejects(f.zeroRange(0, v), { code: 'EINVAL' });
  }
  await t.rejects(f.write(Buffer.from('x'), 2 ** 44), { code: 'EINVAL' }, 'past the size limit');
  await t.rejects(f.fallocate(0, 0), { code: 'EINVAL' });
  await t.rejects(f.punchHole(0, 0), { code: 'EINVAL' });
  await t.rejects(f.write('str' as never, 0), { code: 'EINVAL' });
  t.equal(await f.write(Buffer.alloc(0), 5), 0);
  t.equal((await f.stat()).size, 0);
  await pool.close();
});

t.test('reads: short at EOF, zero past it, holes and unwritten read zeros', async (t) => {
  const { pool, storage } = memPool();
  const f = await pool.openFile('f', { create: true });
  await f.write(Buffer.from('hello'), 10);
  const b = Buffer.alloc(100, 0xaa);
  t.equal(await f.read(b, 0), 15);
  t.same([...b.subarray(0, 10)], Array(10).fill(0));
  t.equal(b.toString('latin1', 10, 15), 'hello');
  t.equal(b[15], 0xaa, 'bytes past the count untouched');
  t.equal(await f.read(b, 15), 0);
  t.equal(await f.read(b, 1000), 0);
  t.equal(await f.read(Buffer.alloc(0), 0), 0);
  // partial write into a new block zeroed the rest of the block on the device
  const ip = poolInternals(pool);
  const lk = ip.lookup(ip.inode(f), 0);
  t.equal(lk.state, 'written');
  const dev = storage.view(lk.deviceOffset!, B);
  t.equal(dev.toString('latin1', 10, 15), 'hello');
  t.equal(dev.subarray(15).every((x) => x === 0), true);
  await f.fallocate(B, 3 * B, { keepSize: true });
  await f.truncate(5 * B);
  const all = Buffer.alloc(5 * B, 1);
  t.equal(await f.read(all, 0), 5 * B);
  t.equal(all.subarray(15).every((x) => x === 0), true);
  t.same((await f.stat()).extents, [{ offset: 0, length: B, state: 'written' }, { offset: B, length: 3 * B, state: 'unwritten' }]);
  await pool.close();
});

t.test('ENOSPC leaves nothing half-done', async (t) => {
  const { pool } = memPool(8 << 20);
  const f = await pool.openFile('f', { create: true });
  const fs0 = await pool.statfs();
  t.equal(fs0.blockSize, 4096);
  await f.write(Buffer.alloc(1000, 7), 0);
  const before = await f.stat();
  const free1 = (await pool.statfs()).free;
  await t.rejects(f.fallocate(0, fs0.size + B), { code: 'ENOSPC' });
  await t.rejects(f.write(Buffer.alloc(fs0.size, 1), B), { code: 'ENOSPC' });
  t.same(await f.stat(), before);
  t.equal((await pool.statfs()).free, free1);
  // fill exactly, then one more block fails
  const g = await pool.openFile('g', { create: true });
  await g.fallocate(0, free1);
  t.equal((await pool.statfs()).free, 0);
  await t.rejects(f.write(Buffer.from('x'), 10 * B), { code: 'ENOSPC' });
  t.same(coreOf(pool).checkState(), []);
  // freeing makes room again (after the checkpoint that lets freed blocks be reused)
  await g.punchHole(0, 8 * B);
  t.equal((await pool.statfs()).free, 8 * B);
  await f.write(Buffer.from('x'), 10 * B);
  t.same(coreOf(pool).checkState(), []);
  await pool.close();
});

t.test('file count limit is ENOSPC', async (t) => {
  const { pool } = memPool(8 << 20, { maxFiles: 3 });
  for (const n of ['a', 'b', 'c']) await pool.openFile(n, { create: true });
  await t.rejects(pool.openFile('d', { create: true }), { code: 'ENOSPC' });
  await pool.unlink('a');
  await pool.openFile('d', { create: true });
  await pool.close();
});

t.test('closed pools and files, unlinked files', async (t) => {
  const { pool } = memPool();
  const f = await pool.openFile('f', { create: true });
  const g = await pool.openFile('g', { create: true });
  await f.close();
  await t.rejects(f.write(Buffer.from('x'), 0), { code: 'EBADF' });
  await pool.unlink('g');
  await t.rejects(g.write(Buffer.from('x'), 0), { code: 'ENOENT' });
  await t.rejects(g.stat(), { code: 'ENOENT' });
  await pool.close();
  await pool.close();
  t.equal(pool.closed, true);
  await t.rejects(pool.list(), { code: 'EBADF' });
  await t.rejects(pool.openFile('f'), { code: 'EBADF' });
});

t.test('rename: over a file, onto itself, handles follow the file', async (t) => {
  const { pool } = memPool();
  const a = await pool.openFile('a', { create: true });
  const b = await pool.openFile('b', { create: true });
  await a.write(Buffer.from('AAA'), 0);
  await b.write(Buffer.from('BBB'), 0);
  await pool.rename('a', 'a');
  await pool.rename('a', 'b');
  t.same(await pool.list(), ['b']);
  t.equal(a.name, 'b');
  const buf = Buffer.alloc(3);
  await (await pool.openFile('b')).read(buf, 0);
  t.equal(buf.toString(), 'AAA');
  await t.rejects(b.stat(), { code: 'ENOENT' });
  t.same(coreOf(pool).checkState(), []);
  await pool.close();
});

t.test('metadata survives close and reopen', async (t) => {
  const { pool, storage } = memPool(8 << 20, { trackPersistence: true });
  const f = await pool.openFile('f', { create: true, mode: 0o600 });
  await f.write(Buffer.from('data'), 3 * B + 1);
  await f.fallocate(8 * B, 2 * B, { keepSize: true });
  const st = await f.stat();
  await pool.close();
  const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }));
  const st2 = await (await p2.openFile('f')).stat();
  t.same(st2, st);
  t.equal(st2.mode, 0o600);
  t.equal(coreOf(p2).openInfo.replay.records, 0, 'close checkpointed: nothing to replay');
  await p2.close();
});

t.test('info: what the pool is and where its log stands', async (t) => {
  const { pool, storage } = memPool(8 << 20, { trackPersistence: true, maxFiles: 100 });
  const i0 = await pool.info();
  t.match(i0, { device: storage.path, kind: 'memory', deviceBytes: 8 << 20, formatVersion: 1, files: 0, maxFiles: 100,
    logBytesUsed: 0, checkpointGeneration: 1, replayedRecords: 0 });
  t.match(i0.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  t.ok(Math.abs(i0.createdMs - Date.now()) < 60_000, 'formatted just now');
  t.equal(i0.logBytes % B, 0);
  await pool.openFile('a', { create: true });
  await pool.openFile('b', { create: true });
  const i1 = await pool.info();
  t.equal(i1.files, 2);
  t.ok(i1.logBytesUsed > 0, 'the creates are in the log');
  await pool.sync();
  // a crash now: the next open replays the two creates (and the session record)
  const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }));
  const i2 = await p2.info();
  t.equal(i2.uuid, i0.uuid);
  t.equal(i2.createdMs, i0.createdMs);
  t.ok(i2.replayedRecords >= 2, `replayed ${i2.replayedRecords} records`);
  await p2.close();
  await pool.close();
  await t.rejects(pool.info(), { code: 'EBADF' });
});

t.test('mtime changes are logged by fsync', async (t) => {
  const { pool, storage } = memPool(8 << 20, { trackPersistence: true });
  const f = await pool.openFile('f', { create: true });
  await f.write(Buffer.alloc(B), 0);
  const m0 = (await f.stat()).mtimeMs;
  // mtime is in ms: once the clock has passed it, the overwrite gives a new one.
  await until(() => Date.now() > m0, 'the clock to pass the first write\'s mtime', { ms: 5000 });
  await f.write(Buffer.from('x'), 0); // overwrite: no metadata change but mtime
  const m = (await f.stat()).mtimeMs;
  t.ok(m > m0, 'the overwrite changed mtime');
  await f.fsync();
  const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }));
  t.equal((await (await p2.openFile('f')).stat()).mtimeMs, m);
  await p2.close();
  await pool.close();
});

t.test('large writes get 2 MiB-aligned device runs congruent with the file offset', async (t) => {
  const { pool } = memPool(32 << 20);
  const small = await pool.openFile('small', { create: true });
  await small.write(Buffer.alloc(3 * B, 1), 0);
  const f = await pool.openFile('big', { create: true });
  await f.write(Buffer.alloc(4 << 20, 2), 0);
  const ip = poolInternals(pool);
  for (const off of [0, 2 << 20]) {
    const lk = ip.lookup(ip.inode(f), off);
    t.equal(lk.state, 'written');
    t.equal(lk.deviceOffset! % (2 << 20), 0, `chunk at ${off} is device aligned`);
    t.ok(lk.length >= 2 << 20);
  }
  await pool.close();
});

t.test('internal API: lookup, ensureWritten (idempotent, never re-zeroes), sync', async (t) => {
  const { pool, storage } = memPool(16 << 20, { trackPersistence: true });
  const f = await pool.openFile('f', { create: true });
  await f.truncate(4 << 20);
  const ip = poolInternals(pool);
  const ino = ip.inode(f);
  t.equal(ip.fileSize(ino), 4 << 20);
  t.same(ip.lookup(ino, 5 * B), { state: 'hole', offset: 5 * B, length: 2 ** 44 - 5 * B });
  await withOperation('fault', async () => {
    const h = await ip.rangeLock(ino).acquireShared(0, 4 << 20);
    try {
      await t.rejects(ip.ensureWritten(ino, 4 << 20, B), { code: 'EINVAL' }, 'past EOF');
      await t.rejects(ip.ensureWritten(ino, 0, 0), { code: 'EINVAL' });
      // N concurrent "faults" on one hole page, each storing its byte once it has the page
      // (each fault is its own lock-validator operation, nested in the one holding the range lock)
      const stores = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => withOperation(`fault${i}`, async () => {
        const ex = await ip.ensureWritten(ino, 10 * B, B);
        t.equal(ex.length, 1);
        storage.view(ex[0]!.deviceOffset + i, 1)[0] = 0x41 + i;
        return ex[0]!.deviceOffset;
      })));
      t.equal(new Set(stores).size, 1, 'one block for every racer');
      t.equal(storage.view(stores[0]!, 8).toString('latin1'), 'ABCDEFGH', 'no racer zeroed another one\'s store');
      // a whole aligned chunk with preferAligned: one 2 MiB aligned run, zeroed
      const big = await ip.ensureWritten(ino, 2 << 20, 2 << 20, { preferAligned: true, sync: true });
      t.same(big.map((e) => [e.offset, e.length, e.deviceOffset % (2 << 20)]), [[2 << 20, 2 << 20, 0]]);
      t.ok(storage.view(big[0]!.deviceOffset, 2 << 20).every((x) => x === 0));
      t.equal(ip.lookup(ino, 3 << 20).state, 'written');
    } finally { h.release(); }
  });
  // sync: the record is durable: a crash now keeps the block written
  const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }));
  const ip2 = poolInternals(p2);
  t.equal(ip2.lookup(ip2.inode(await p2.openFile('f')), 3 << 20).state, 'written');
  await p2.close();
  await pool.close();
});

t.test('invalidation hook: called with the range locked exclusive, before any block is freed', async (t) => {
  const { pool } = memPool();
  const ip = poolInternals(pool);
  const calls: string[] = [];
  ip.setInvalidator(async (file, offset, length) => {
    // a shared lock on the range must be refused while the hook runs
    t.equal(file.rangeLock.tryAcquire(offset, Math.min(offset + 1, 2 ** 53 - 1), 'shared'), null);
    calls.push(`${file.name} ${offset} ${length === 2 ** 53 - 1 - offset ? 'END' : length} blocks=${file.extents.blocks}`);
    await new Promise((r) => setImmediate(r));
  });
  const f = await pool.openFile('f', { create: true });
  await f.write(Buffer.alloc(8 * B, 1), 0);
  await f.punchHole(B, 2 * B);
  await f.zeroRange(4 * B, B);
  await f.truncate(6 * B);
  await f.truncate(7 * B); // growing: no invalidation
  const g = await pool.openFile('g', { create: true });
  await g.write(Buffer.alloc(B), 0);
  await pool.rename('g', 'f');
  await pool.unlink('f');
  t.same(calls, [
    'f 4096 8192 blocks=8',
    'f 16384 4096 blocks=6',
    'f 24576 END blocks=6',
    'f 0 END blocks=4', // rename g -> f: the replaced f
    'f 0 END blocks=1', // unlink f (the old g)
  ]);
  ip.setInvalidator(null);
  await pool.close();
});

t.test('a failing invalidation hook leaves the file unchanged and no lock held', async (t) => {
  const { pool } = memPool();
  const ip = poolInternals(pool);
  const f = await pool.openFile('f', { create: true });
  await f.write(Buffer.alloc(4 * B, 1), 0);
  ip.setInvalidator(async () => { throw Object.assign(new Error('revoke failed'), { code: 'EIO' }); });
  await t.rejects(f.truncate(0), { code: 'EIO' });
  await t.rejects(f.punchHole(0, B), { code: 'EIO' });
  t.equal((await f.stat()).allocated, 4 * B);
  ip.setInvalidator(null);
  await f.truncate(0); // the range lock was released: this does not hang
  t.equal((await f.stat()).size, 0);
  t.same(lockdep.violations(), []);
  await pool.close();
});

t.test('concurrent operations on several files keep the pool consistent', async (t) => {
  const { pool } = memPool(32 << 20);
  const files = await Promise.all(['a', 'b', 'c', 'd'].map((n) => pool.openFile(n, { create: true })));
  await Promise.all(files.map(async (f, i) => {
    for (let k = 0; k < 60; k++) {
      const off = ((k * 7919 + i * 104729) % 512) * B;
      switch (k % 6) {
        case 0: await f.write(Buffer.alloc(3 * B, i + 1), off); break;
        case 1: await f.fallocate(off, 5 * B); break;
        case 2: await f.punchHole(off, 2 * B); break;
        case 3: await f.zeroRange(off + 10, 3 * B); break;
        case 4: await f.truncate(off + 123); break;
        case 5: await f.read(Buffer.alloc(4 * B), off); break;
      }
    }
  }));
  // same file, disjoint ranges, from many callers at once
  const z = await pool.openFile('z', { create: true });
  await Promise.all(Array.from({ length: 32 }, (_, i) => z.write(Buffer.alloc(100, i + 1), i * 1000)));
  const all = Buffer.alloc(32 * 1000);
  await z.read(all, 0);
  for (let i = 0; i < 32; i++) t.equal(all[i * 1000 + 50], i + 1);
  t.same(coreOf(pool).checkState(), []);
  await pool.close();
});

t.test('PoolFs.createOn refuses to format over a pool unless forced', async (t) => {
  const s = new MemoryStorage(8 << 20);
  PoolFs.createOn(s);
  t.throws(() => PoolFs.createOn(s), { code: 'EEXIST' });
  const p = PoolFs.createOn(s, { force: true });
  t.same(await p.list(), []);
  await p.close();
});
