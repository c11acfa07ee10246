// The DAX fault policy against real userfaultfd: what each kind of fault becomes.
// Every test runs on a tmpfs pool and on a pool in a regular file on disk.
import t from 'tap';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import fs from 'node:fs';
import { forBackings, kernelTouch, rss, underAsan, PAGE, HUGE, DIST, Pool } from './helpers';
import { until } from '../wait';

forBackings(t, 'reading holes and unwritten extents maps the zero page, allocates nothing', async (t, { pool }) => {
  const f = await pool.openFile('holes', { create: true });
  await f.truncate(8 * HUGE);
  await f.fallocate(4 * HUGE, HUGE);
  const before = await f.stat();
  const m = await f.map();
  let sum = 0;
  for (let off = 0; off < 8 * HUGE; off += PAGE) sum += m.buffer[off]!;
  t.equal(sum, 0, 'every byte reads zero');
  const after = await f.stat();
  t.same(after.extents, before.extents, 'no extent was added or converted');
  t.equal(after.allocated, before.allocated);
  const s = await pool.stats();
  t.ok(s.zeroPage > 0 && s.hole > 0 && s.unwritten > 0, 'answered by the zero page, from holes and unwritten');
  t.equal(s.pmd, 8, 'whole 2 MiB windows: one fault per chunk');
  await m.unmap();
}, { hugetlb: true });

t.test('reading 1 GiB of holes grows RSS by less than 16 MiB', async (t) => {
  // One backing is enough for a memory figure; tmpfs is the default.
  const p = `/dev/shm/daxmap-rss-${process.pid}`;
  const pool = await Pool.create(p, { size: 16 << 20 });
  t.teardown(async () => {
    await pool.close();
    fs.rmSync(p, { force: true });
  });
  const f = await pool.openFile('sparse', { create: true });
  await f.truncate(1 << 30);
  const m = await f.map();
  const r0 = rss();
  let sum = 0;
  for (let off = 0; off < 1 << 30; off += PAGE) sum += m.buffer[off]!;
  const grew = rss() - r0;
  t.equal(sum, 0);
  if (underAsan()) {
    // Its allocator's redzones, shadow and quarantine (freed memory held back) grow
    // RSS with every native allocation the faults make: not the mapping's pages.
    t.skip(`RSS grew by ${(grew / 1048576).toFixed(2)} MiB: not a measure of the mapping under AddressSanitizer`, () => {});
  } else {
    t.ok(grew < 16 << 20, `RSS grew by ${(grew / 1048576).toFixed(2)} MiB`);
  }
  t.equal((await f.stat()).allocated, 0, 'and nothing was allocated');
  await m.unmap();
});

forBackings(t, 'a write to a hole: allocated, zeroed, written, installed', async (t, { pool, path: p, backing }) => {
  const f = await pool.openFile('w', { create: true });
  await f.truncate(3 * PAGE + 100);
  const m = await f.map({ faultAround: false });
  m.buffer[PAGE + 10] = 0x42;
  const st = await f.stat();
  if (backing === 'hugetlbfs') {
    // a 2 MiB-granular device allocates and maps whole units (docs/pool.md)
    t.same(st.extents, [{ offset: 0, length: HUGE, state: 'written' }], 'the unit holding the touched block became written, whole');
  } else {
    t.same(st.extents, [{ offset: PAGE, length: PAGE, state: 'written' }], 'exactly the touched block became written');
  }
  const back = Buffer.alloc(PAGE);
  await f.read(back, PAGE);
  t.equal(back[10], 0x42, 'file.read sees the store');
  t.equal(back.filter((x) => x !== 0).length, 1, 'the rest of the block is zero (zeroed by the pool, not stale)');
  // The same bytes are in the device itself: the page is the pool's block, no copy.
  await m.flush();
  const dev = fs.readFileSync(p);
  t.ok(dev.includes(Buffer.from([0, 0x42, 0])), 'the store is in the device file');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'a write to an unwritten extent converts it; a write after a read replaces the zero page', async (t, { pool, backing }) => {
  const f = await pool.openFile('u', { create: true });
  await f.fallocate(0, 4 * PAGE);
  const m = await f.map({ faultAround: false });
  if (backing === 'hugetlbfs') {
    // A 2 MiB-granular device converts and maps the whole unit at the first write
    // (docs/pool.md): the read after it is of the installed unit. The write after a
    // read is shown on a unit read first.
    m.buffer[5] = 1;
    t.same((await f.stat()).extents, [{ offset: 0, length: HUGE, state: 'written' }], 'the whole unit was converted');
    t.equal(m.buffer[2 * PAGE + 7], 0, 'its other blocks read zero');
    const g = await pool.openFile('u2', { create: true });
    await g.fallocate(0, 4 * PAGE);
    const m2 = await g.map({ faultAround: false });
    t.equal(m2.buffer[2 * PAGE + 7], 0, 'read of unwritten: zero');
    t.equal((await g.stat()).extents[0]!.state, 'unwritten', 'a read converts nothing');
    m2.buffer[2 * PAGE + 7] = 9;
    t.same((await g.stat()).extents, [{ offset: 0, length: HUGE, state: 'written' }], 'the read unit became written on write');
    const b = Buffer.alloc(1);
    await g.read(b, 2 * PAGE + 7);
    t.equal(b[0], 9);
    t.ok((await pool.stats()).writeProtect >= 1, 'the write after the read came as a write-protect fault');
    await m2.unmap();
    await m.unmap();
    return;
  }
  m.buffer[5] = 1;
  let st = await f.stat();
  t.same(st.extents, [{ offset: 0, length: PAGE, state: 'written' }, { offset: PAGE, length: 3 * PAGE, state: 'unwritten' }]);
  t.equal(m.buffer[2 * PAGE + 7], 0, 'read of unwritten: zero');
  m.buffer[2 * PAGE + 7] = 9;
  st = await f.stat();
  t.same(st.extents.map((e) => e.state), ['written', 'unwritten', 'written', 'unwritten'], 'the read page became written on write');
  const b = Buffer.alloc(1);
  await f.read(b, 2 * PAGE + 7);
  t.equal(b[0], 9);
  const s = await pool.stats();
  t.ok(s.writeProtect >= 1, 'the write after the read came as a write-protect fault');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'written extents are mapped directly: stores are coherent everywhere at once', async (t, { pool }) => {
  const f = await pool.openFile('c', { create: true });
  await f.write(Buffer.alloc(4 * HUGE, 0x11), 0);
  const a = await f.map();
  const b = await f.map({ faultAround: false });
  a.buffer.write('through a', 100);
  t.equal(b.buffer.toString('utf8', 100, 109), 'through a', 'visible through another mapping');
  const r = Buffer.alloc(9);
  await f.read(r, 100);
  t.equal(r.toString(), 'through a', 'visible to file.read');
  await f.write(Buffer.from('by write'), HUGE + 5);
  t.equal(a.buffer.toString('utf8', HUGE + 5, HUGE + 13), 'by write', 'file.write is visible through a mapping at once');
  t.equal(b.buffer.toString('utf8', HUGE + 5, HUGE + 13), 'by write');
  const st = await f.stat();
  t.equal(st.allocated, 4 * HUGE, 'no copy: nothing new allocated');
  // A mapping in another worker thread, on the same service.
  const shared = pool.share();
  const w = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    const { Pool } = require(${JSON.stringify(path.join(DIST, 'client/pool'))});
    (async () => {
      const pool = await Pool.attach(workerData);
      const f = await pool.openFile('c');
      const m = await f.map();
      parentPort.postMessage(m.buffer.toString('utf8', 100, 109));
      parentPort.once('message', async () => {
        m.buffer.write('from worker', ${3 * HUGE});
        await pool.close();
        parentPort.postMessage('done');
      });
    })().catch((e) => parentPort.postMessage('error ' + e.message));
  `, { eval: true, execArgv: [], workerData: shared, transferList: shared.transferList });
  const first = await new Promise((res) => w.once('message', res));
  t.equal(first, 'through a', 'the worker\'s mapping sees this thread\'s store');
  w.postMessage('go');
  t.equal(await new Promise((res) => w.once('message', res)), 'done');
  t.equal(a.buffer.toString('utf8', 3 * HUGE, 3 * HUGE + 11), 'from worker', 'and this thread sees the worker\'s');
  await w.terminate();
  await a.unmap();
  await b.unmap();
}, { hugetlb: true });

forBackings(t, 'a hole read through a mapping, then written elsewhere: the mapping sees the data', async (t, { pool }) => {
  const f = await pool.openFile('z', { create: true });
  await f.truncate(2 * HUGE);
  const reader = await f.map();
  const reader4k = await f.map({ faultAround: false });
  t.equal(reader.buffer[HUGE + 3], 0, 'a zero page (2 MiB window)');
  t.equal(reader4k.buffer[HUGE + 3], 0, 'a zero page (4 KiB)');
  await f.write(Buffer.from('by file.write'), HUGE);
  t.equal(reader.buffer.toString('utf8', HUGE, HUGE + 13), 'by file.write', 'file.write into a hole replaces the zero pages of every mapping');
  t.equal(reader4k.buffer.toString('utf8', HUGE, HUGE + 13), 'by file.write');
  t.equal(reader.buffer[5], 0);
  const writer = await f.map({ faultAround: false });
  writer.buffer[10] = 0x77; // a write fault allocates the hole the readers saw as zeros
  t.equal(reader.buffer[10], 0x77, 'a write fault in one mapping replaces the zero pages of the others');
  t.equal(reader4k.buffer[10], 0x77);
  for (const m of [reader, reader4k, writer]) await m.unmap();
}, { hugetlb: true });

forBackings(t, 'beyond EOF: SIGBUS (a system call touching it gets EFAULT)', async (t, { pool, backing }) => {
  // On a 2 MiB-granular device the unit holding EOF maps whole (docs/pool.md): there
  // "past EOF" is past that unit.
  const G = backing === 'hugetlbfs' ? HUGE : PAGE;
  const f = await pool.openFile('eof', { create: true });
  await f.truncate(G + 10);
  const m = await f.map({ length: 4 * G });
  t.equal(m.buffer[G + 100], 0, 'the page holding EOF is accessible');
  if (G > PAGE) t.equal(await kernelTouch(m.buffer, G + 8 * PAGE), null, 'so is the rest of its unit');
  t.equal(await kernelTouch(m.buffer, 2 * G), 'EFAULT', 'a page past EOF is poisoned');
  const s = await pool.stats();
  t.ok(s.beyondEof >= 1 && s.sigbus >= 1);
  // Growing the file makes the page valid again.
  await f.truncate(4 * G);
  t.equal(await kernelTouch(m.buffer, 2 * G), null, 'after truncate up the page faults normally');
  t.equal(m.buffer[2 * G + 1], 0);
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'injected failures on the 2 MiB and 4 KiB paths: SIGBUS, no lock left, the next fault completes', async (t, { pool }) => {
  const f = await pool.openFile('inj', { create: true });
  await f.truncate(4 * HUGE);
  const m = await f.map();
  for (const where of ['huge', 'page'] as const) {
    await pool.request('testInject', [{ where: 'any', code: 'EIO' }]);
    const off = where === 'huge' ? 0 : 3 * HUGE + PAGE;
    const m2 = where === 'page' ? await f.map({ faultAround: false }) : m;
    const r0 = (await pool.stats()).recovered;
    t.equal(await kernelTouch(m2.buffer, off), 'EFAULT', `the failing fault on the ${where} path answered SIGBUS`);
    await pool.request('testInject', [{ where: null }]);
    // The SIGBUS answered that access only: the page is taken back right after.
    await until(async () => (await pool.stats()).recovered > r0, `the failed page (${where}) to be taken back`);
    // write(2) may fault twice on the page (it faults the buffer in and retries the
    // copy), and the second fault can come after the first poison was taken back and
    // be poisoned too: touch it from the kernel until it reads, before a store that
    // would otherwise die of a SIGBUS still standing.
    await until(async () => (await kernelTouch(m2.buffer, off)) === null, `the page (${where}) to read again`);
    m2.buffer[off + 1] = 7;
    t.equal(m2.buffer[off + 1], 7, `the next fault on that range (${where}) completed`);
    if (m2 !== m) await m2.unmap();
  }
  const s = await pool.stats();
  t.ok(s.sigbus >= 2);
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'private mappings copy on write: the pool never changes', async (t, { pool }) => {
  const f = await pool.openFile('p', { create: true });
  await f.write(Buffer.alloc(HUGE + 2 * PAGE, 0x33), 0);
  await f.truncate(HUGE + 8 * PAGE);
  const before = await f.stat();
  const m = await f.map({ private: true });
  t.equal(m.buffer[10], 0x33, 'reads see the file');
  m.buffer[10] = 0x44;
  t.equal(m.buffer[10], 0x44, 'the write is visible in the mapping');
  m.buffer[HUGE + 5 * PAGE] = 0x55; // a hole: a private zero page, then written
  t.equal(m.buffer[HUGE + 5 * PAGE + 1], 0);
  const b = Buffer.alloc(1);
  await f.read(b, 10);
  t.equal(b[0], 0x33, 'the file did not change');
  await f.write(Buffer.from([0x66]), 20);
  t.equal(m.buffer[20], 0x33, 'a page this mapping wrote is its own copy');
  const after = await f.stat();
  t.same({ extents: after.extents, allocated: after.allocated, size: after.size }, { extents: before.extents, allocated: before.allocated, size: before.size }, 'no block allocated, no extent changed');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'sync on a private mapping is accepted and has no effect (as Linux ignores MAP_SYNC there)', async (t, { pool }) => {
  const f = await pool.openFile('ps', { create: true });
  await f.write(Buffer.alloc(PAGE, 0x21), 0);
  const m = await f.map({ private: true, sync: true });
  t.equal(m.buffer[0], 0x21);
  m.buffer[0] = 0x22;
  const b = Buffer.alloc(1);
  await f.read(b, 0);
  t.equal(b[0], 0x21, 'the file did not change');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'fault-around: 2 MiB windows where alignment, EOF and the extent allow, else 4 KiB', async (t, { pool, backing }) => {
  const f = await pool.openFile('fa', { create: true });
  await f.truncate(3 * HUGE + 10 * PAGE);
  const m = await f.map();
  let s0 = await pool.stats();
  for (let off = 0; off < HUGE; off += PAGE) m.buffer[off] = 1;
  let s1 = await pool.stats();
  t.equal(s1.faults - s0.faults, 1, 'a whole aligned chunk inside EOF: one fault');
  t.equal(s1.pmd - s0.pmd, 1);
  s0 = s1;
  for (let off = 3 * HUGE; off < 3 * HUGE + 10 * PAGE; off += PAGE) m.buffer[off] = 1;
  s1 = await pool.stats();
  if (backing === 'hugetlbfs') {
    // A 2 MiB-granular device maps the unit holding EOF whole (docs/pool.md), and
    // refuses a shared mapping whose windows could never be installed.
    t.equal(s1.pmd - s0.pmd, 1, 'the chunk holding EOF: one whole window');
    t.equal(s1.pte - s0.pte, 0);
    await t.rejects(f.map({ offset: PAGE, length: 2 * HUGE }), { code: 'EINVAL' }, 'a shared mapping at an unaligned offset is refused');
    const p = await f.map({ offset: PAGE, length: 2 * HUGE, private: true });
    t.equal(p.buffer[0], 1, 'a private one (copies) is not');
    await p.unmap();
    await m.unmap();
    return;
  }
  t.equal(s1.pte - s0.pte, 10, 'the chunk holding EOF: page by page');
  // A mapping at an offset that is not 2 MiB aligned cannot take 2 MiB windows.
  const u = await f.map({ offset: PAGE, length: 2 * HUGE });
  s0 = await pool.stats();
  for (let off = 0; off < 16 * PAGE; off += PAGE) u.buffer[off] = 2;
  s1 = await pool.stats();
  t.equal(s1.pmd - s0.pmd, 0, 'an unaligned mapping never gets a 2 MiB window');
  t.equal(m.buffer[PAGE], 2, 'and is coherent with the aligned one');
  await u.unmap();
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'statistics per file add up to the pool\'s', async (t, { pool, backing }) => {
  // On a 2 MiB-granular device the unit holding EOF maps whole, in one read fault
  // (docs/pool.md): past EOF is past that unit.
  const granular = backing === 'hugetlbfs';
  const past = granular ? HUGE + 2 * PAGE : 6 * PAGE;
  const a = await pool.openFile('a', { create: true });
  const b = await pool.openFile('b', { create: true });
  await a.truncate(HUGE);
  await b.truncate(4 * PAGE);
  const ma = await a.map();
  const mb = await b.map({ length: past + 2 * PAGE });
  ma.buffer[0] = 1;
  for (let i = 0; i < 4; i++) t.equal(mb.buffer[i * PAGE], 0);
  t.equal(await kernelTouch(mb.buffer, past), 'EFAULT');
  const total = await pool.stats();
  const per = await pool.request<{ file: string; stats: any }[]>('statsByFile');
  const byName = Object.fromEntries(per.map((x) => [x.file, x.stats]));
  t.same(Object.keys(byName).sort(), ['a', 'b']);
  t.equal(byName.a.write, 1);
  t.equal(byName.b.read, granular ? 2 : 5);
  t.equal(byName.b.sigbus, 1);
  for (const k of ['faults', 'read', 'write', 'sigbus', 'pmd', 'pte', 'hole'] as const) {
    t.equal(byName.a[k] + byName.b[k], total[k], `${k}: the files add up to the pool`);
  }
  t.equal(byName.a.latencyUs.count + byName.b.latencyUs.count, total.latencyUs.count);
  await ma.unmap();
  await mb.unmap();
}, { hugetlb: true });
