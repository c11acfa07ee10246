// Stale data: a file full of a pattern is made durable, then freed (unlink,
// truncate, punch hole, zero range, rename over it); other files then create,
// extend, fallocate and partly write into the reused blocks. The pattern must never
// show through a read, a later mapping (ensureWritten + the device view), or a crash.
import t from 'tap';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, PoolFsFile, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals } from '../../dist/pool/internal.js';
import { withOperation } from '../../dist/lock/index.js';
import { memPool, B, readAll } from './helpers.ts';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const PAT = Buffer.from('<<STALE-SECRET>>');

function pattern(len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += PAT.length) PAT.copy(b, i);
  return b;
}

type Freer = (pool: PoolFs, f: PoolFsFile) => Promise<void>;
const freers: Record<string, Freer> = {
  unlink: async (pool) => { await pool.unlink('secret'); },
  truncate: async (_p, f) => { await f.truncate(100); },
  punch: async (_p, f) => { await f.punchHole(0, 5 << 20); },
  'rename over': async (pool) => { await (await pool.openFile('other', { create: true })).write(Buffer.from('x'), 0); await pool.rename('other', 'secret'); },
};

for (const [how, free] of Object.entries(freers)) {
  t.test(`pattern freed by ${how} never reappears`, async (t) => {
    const { pool, storage } = memPool(8 << 20, { trackPersistence: true });
    const free0 = (await pool.statfs()).free;
    const sec = await pool.openFile('secret', { create: true });
    await sec.write(pattern(4 << 20), 0);
    await sec.fsync();
    await free(pool, sec);
    // others now need more than what was never used: the freed blocks must be reused
    const a = await pool.openFile('a', { create: true });
    const b = await pool.openFile('b', { create: true });
    const c = await pool.openFile('c', { create: true });
    const ip = poolInternals(pool);
    await a.truncate(1 << 20); // extend: reads zeros, no blocks
    await a.write(Buffer.from('tiny'), 70000); // partial write into a new block
    await b.fallocate(0, 2 << 20); // unwritten: reads zeros
    await c.write(Buffer.from('head'), 3); // partial block
    await c.fallocate(B, (free0 >> 1) - 8 * B, { keepSize: false });
    // a later mapping: ensureWritten converts the unwritten blocks; the device bytes must be zeros
    const cf = ip.inode(c);
    const exts = await withOperation('test.map', async () => {
      const h = await cf.rangeLock.acquireShared(0, 2 << 20);
      try { return await ip.ensureWritten(cf, 0, 2 << 20, { preferAligned: true }); } finally { h.release(); }
    });
    for (const e of exts) {
      for (let o = 0; o < e.length; o += 1 << 20) {
        const v = storage.view(e.deviceOffset + o, Math.min(1 << 20, e.length - o));
        if (v.indexOf(PAT) >= 0) t.fail(`pattern visible through a mapping of c at ${e.offset + o}`);
      }
    }
    const reused = coreOf(pool).txn.checkpoints;
    t.ok(reused >= 1, 'allocation pressure made the freed blocks reusable (checkpoint)');
    for (const f of [a, b, c]) t.equal((await readAll(f)).indexOf(PAT), -1, `no pattern in ${f.name}`);
    if (how === 'punch') {
      const s = await readAll(sec);
      t.equal(s.indexOf(PAT), -1, 'the punched range of the file itself reads zeros');
    } else if (how === 'truncate') {
      await sec.truncate(4 << 20);
      const s = await readAll(sec);
      t.equal(s.subarray(100).indexOf(PAT.subarray(0, 4)), -1, 'extending again shows zeros past the old EOF');
    } else {
      await t.rejects(sec.stat(), { code: 'ENOENT' }, 'the old handle sees the file is gone');
    }
    t.same(coreOf(pool).checkState(), []);
    // and after a crash with nothing closed
    const p2 = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage() }));
    for (const n of ['a', 'b', 'c']) {
      const f = await p2.openFile(n);
      t.equal((await readAll(f)).indexOf(PAT), -1, `no pattern in ${n} after a crash`);
    }
    await p2.close();
    await pool.close();
  });
}

t.test('unwritten -> written conversion zeroes the block, even when it held old data of the same file', async (t) => {
  const { pool, storage } = memPool(8 << 20);
  const f = await pool.openFile('f', { create: true });
  await f.write(pattern(64 * B), 0);
  await f.zeroRange(0, 64 * B); // written -> unwritten, data still on the device
  const st = await f.stat();
  t.same(st.extents.map((e) => e.state), ['unwritten']);
  await f.write(Buffer.from('Z'), 5 * B + 7); // converts block 5 only
  const back = await readAll(f);
  t.equal(back.indexOf(PAT), -1);
  t.equal(back[5 * B + 7], 'Z'.charCodeAt(0));
  const ip = poolInternals(pool);
  const ino = ip.inode(f);
  const lk = ip.lookup(ino, 5 * B);
  t.equal(lk.state, 'written');
  const v = storage.view(lk.deviceOffset!, B);
  t.equal(v.indexOf(PAT.subarray(0, 8)), -1, 'the converted device block holds no old bytes');
  await pool.close();
});

// A fault's 2 MiB window is zeroed by writing zeros (ensureWritten({ resident }):
// docs/faults.md, "The 2 MiB window"), not by punching or FALLOC_FL_ZERO_RANGE: over
// blocks a freed secret left, in a tmpfs and a disk-file pool, nothing of it shows.
for (const [kind, dir] of [['tmpfs', '/dev/shm'], ['disk-file', tmpdir()]] as const) {
  t.test(`pattern freed, then reused by resident zeroing of whole windows, never reappears (${kind} pool)`, async (t) => {
    const path = join(dir, `daxmap-stale-resident-${process.pid}`);
    t.teardown(() => rmSync(path, { force: true }));
    const pool = await PoolFs.create(path, { size: 16 << 20 });
    t.teardown(() => pool.close());
    const sec = await pool.openFile('secret', { create: true });
    await sec.write(pattern(8 << 20), 0);
    await sec.fsync();
    await sec.close();
    await pool.unlink('secret');
    const ip = poolInternals(pool);
    const f = await pool.openFile('w', { create: true });
    await f.truncate(12 << 20); // more than was never used: the secret's blocks are reused
    const ino = ip.inode(f);
    const exts = await withOperation('test.map', async () => {
      const h = await ip.rangeLock(ino).acquireShared(0, 12 << 20);
      try {
        const out = [];
        for (let off = 0; off < 12 << 20; off += 2 << 20) out.push(...(await ip.ensureWritten(ino, off, 2 << 20, { preferAligned: true, resident: true })));
        return out;
      } finally { h.release(); }
    });
    let shown = 0;
    for (const e of exts) if (ip.storage.view(e.deviceOffset, e.length).indexOf(PAT) >= 0) shown++;
    t.equal(shown, 0, 'no window\'s device bytes show the pattern');
    t.ok((await readAll(f)).every((x) => x === 0), 'the file reads zeros');
    await f.close();
  });
}
