// The EOF unit of a pool on a 2 MiB-granular device (docs/pool.md, "2 MiB-granular
// devices"), on a memory storage that models the granularity: the unit holding EOF is
// written whole (it is mapped whole), bytes past EOF in it are zeroed before they
// become part of the file (extension) and read as zeros after a shrink, the check
// accepts written blocks up to the EOF unit's end and not one further, and with no
// whole free unit left allocation fails with ENOSPC.
import t from 'tap';
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, coreOf, inodeOf } from '../../dist/pool/pool-fs.js';
import { checkState } from '../../dist/pool/check.js';
import { RecType } from '../../dist/pool/log.js';
import { B } from './helpers';

const HUGE = 2 << 20;
const UNIT = HUGE / B;

function granularPool(size = 64 << 20, align = HUGE): { pool: PoolFs; storage: MemoryStorage } {
  const storage = new MemoryStorage(size, { trackPersistence: true, align });
  return { pool: PoolFs.createOn(storage, {}), storage };
}

/** A store through a mapping of the file's EOF unit, past EOF: straight into the device block behind it. */
function storePastEof(pool: PoolFs, file: Parameters<typeof inodeOf>[0], off: number, byte: number): void {
  const ino = inodeOf(file);
  const x = coreOf(pool).lookup(ino, off);
  if (x.state !== 'written') throw new Error(`block at ${off} is ${x.state}`);
  coreOf(pool).storage.view(x.deviceOffset! + (off - x.offset), 1)[0] = byte;
}

async function readAt(file: { read(b: Buffer, off: number): Promise<number> }, off: number, len: number): Promise<Buffer> {
  const b = Buffer.alloc(len, 0xee);
  const n = await file.read(b, off);
  return b.subarray(0, n);
}

t.test('a file smaller than a unit: its whole unit is written, fsck-clean', async (t) => {
  const { pool } = granularPool();
  const f = await pool.openFile('small', { create: true });
  await f.write(Buffer.from('hello'), 100);
  t.same((await f.stat()).extents, [{ offset: 0, length: HUGE, state: 'written' }], 'the EOF unit is written whole (it maps whole)');
  t.same(coreOf(pool).checkState(), []);
  const g = await pool.openFile('sized', { create: true });
  await g.truncate(HUGE + 10);
  await g.write(Buffer.from('x'), HUGE);
  t.same((await g.stat()).extents, [{ offset: HUGE, length: HUGE, state: 'written' }], 'a write into the EOF unit writes it whole');
  t.same(coreOf(pool).checkState(), []);
  await pool.close();
});

t.test('stores past EOF in the EOF unit are not part of the file: zeroed when the file grows over them', async (t) => {
  const { pool, storage } = granularPool();
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.alloc(100, 0x41), 0);
  for (const off of [100, 5000, 9000, 30000, HUGE - 1]) storePastEof(pool, f, off, 0x99);
  t.same([...await readAt(f, 0, 200)].slice(99, 101), [0x41], 'read stops at EOF');
  await f.truncate(8192); // grow by truncate
  t.ok((await readAt(f, 100, 8092)).every((x) => x === 0), 'truncate up: the bytes now inside EOF read zeros, not the stores');
  await f.write(Buffer.from('z'), 20000); // grow by an extending write
  const mid = await readAt(f, 8192, 20000 - 8192);
  t.ok(mid.every((x) => x === 0), 'an extending write: the gap it makes reads zeros');
  await f.fallocate(20001, 20000); // grow by fallocate
  t.ok((await readAt(f, 20001, 20000)).every((x) => x === 0), 'fallocate past EOF: zeros');
  storePastEof(pool, f, 50000, 0x77);
  await f.zeroRange(45000, 10000); // grow by zero range
  t.ok((await readAt(f, 40001, 15000)).every((x) => x === 0), 'zero range past EOF: zeros');
  await f.fsync();
  storePastEof(pool, f, HUGE - 1, 0x66);
  await f.truncate(HUGE);
  // the zeros are durable before the size that exposes them: a crash now shows them too
  const again = PoolFs.openOn(new MemoryStorage(storage.size, { from: storage.crashImage(), align: HUGE }));
  const g = await again.openFile('a');
  const size = (await g.stat()).size;
  t.ok(size >= 55000, `the size survived (${size})`);
  const after = await readAt(g, 0, size);
  t.equal(after[20000], 0x7a, 'the written byte survived');
  after[20000] = 0;
  t.ok(after.subarray(100).every((x) => x === 0), 'after a crash: zeros past the first EOF, never the stores');
  t.same(coreOf(again).checkState(), [], 'and the check is clean');
  await pool.close();
});

t.test('shrink inside a unit: the bytes past the new EOF read zeros, also after growing again', async (t) => {
  const { pool } = granularPool();
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.alloc(HUGE + HUGE / 2, 0xa5), 0);
  await f.truncate(HUGE + 1000);
  const st = await f.stat();
  t.equal(st.allocated, 2 * HUGE, 'the EOF unit stays whole');
  await f.truncate(2 * HUGE);
  const b = await readAt(f, HUGE, HUGE);
  t.ok(b.subarray(0, 1000).every((x) => x === 0xa5), 'below the shrink point intact');
  t.ok(b.subarray(1000).every((x) => x === 0), 'past it: zeros, never the old bytes');
  const x = coreOf(pool).lookup(inodeOf(f), HUGE + 5 * B);
  t.not(x.state, 'hole', 'the unit is still allocated');
  t.same(coreOf(pool).checkState(), []);
  await pool.close();
});

t.test('the check accepts written blocks up to the EOF unit and nothing further', async (t) => {
  const { pool } = granularPool();
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.alloc(3 * HUGE, 1), 0);
  const core = coreOf(pool);
  // shrink the size in memory alone, as damaged metadata would: the units stay written
  core.state.apply({ t: RecType.SetSize, id: inodeOf(f).id, size: HUGE + 100, mtimeMs: 0 }, false);
  t.same(core.checkState(), [`file 'a': written file blocks [0, +${3 * UNIT}) past the end of its EOF unit, block ${2 * UNIT}`],
    'a written unit past the EOF unit is reported');
  core.state.apply({ t: RecType.SetSize, id: inodeOf(f).id, size: 2 * HUGE + 100, mtimeMs: 0 }, false);
  t.same(core.checkState(), [], 'the EOF unit written up to its end is accepted');
  t.match(checkState(core.state, undefined, 1), [/past its EOF block 1025/], 'on a 4 KiB-granular pool the same state is not');
  core.state.apply({ t: RecType.SetSize, id: inodeOf(f).id, size: 3 * HUGE, mtimeMs: 0 }, false);
  await pool.close();
});

t.test('no whole free unit left: allocation fails with ENOSPC, nothing leaks', async (t) => {
  const { pool } = granularPool(32 << 20);
  const fill = await pool.openFile('fill', { create: true });
  let off = 0;
  for (;;) {
    try {
      await fill.fallocate(off, HUGE);
    } catch (e) {
      t.equal((e as { code?: string }).code, 'ENOSPC', 'fallocate stops at ENOSPC');
      break;
    }
    off += HUGE;
  }
  t.ok(off >= 2 * HUGE, `${off / HUGE} units were free`);
  const f = await pool.openFile('a', { create: true });
  await t.rejects(f.write(Buffer.from('x'), 0), { code: 'ENOSPC' }, 'file.write of a new unit: ENOSPC');
  await f.truncate(HUGE);
  await t.rejects(coreOf(pool).ensureWritten(inodeOf(f), 0, B, { sync: false }), { code: 'ENOSPC' }, 'the write fault\'s allocation: ENOSPC (no 4 KiB fallback)');
  t.equal((await f.stat()).allocated, 0, 'nothing allocated by the failures');
  t.same(coreOf(pool).checkState(), []);
  await fill.punchHole(0, HUGE);
  await f.write(Buffer.from('x'), 0);
  t.equal((await f.stat()).allocated, HUGE, 'a freed unit is taken by the next write');
  await pool.close();
});
