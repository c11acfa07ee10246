// Mappings over the life of a pool: closing with live mappings (in this thread and
// in another), MAP_SYNC semantics across a crash, a full pool, the window budget,
// and bad arguments.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { forBackings, kernelTouch, runChild, poolPath, Pool, PAGE, HUGE, DIST, checkLockdep } from './helpers';
import { until } from '../wait';
import { fsckErrors } from '../fsck';

forBackings(t, 'pool.close() with live mappings: detached here, revoked and detached in other threads', async (t, { pool }) => {
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.alloc(HUGE, 1), 0);
  const m = await f.map();
  const untouched = await f.map({ faultAround: false });
  t.equal(m.buffer[5], 1);
  const shared = pool.share();
  const w = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    const { Pool } = require(${JSON.stringify(path.join(DIST, 'index.js'))});
    (async () => {
      const pool = await Pool.attach(workerData);
      const f = await pool.openFile('a');
      const m = await f.map();
      const b = m.buffer;
      const first = b[7];
      parentPort.postMessage({ first });
      // Wait for the owner to close the pool, then look.
      const t0 = Date.now();
      while (b.byteLength !== 0 && Date.now() - t0 < 60000) await new Promise((r) => setTimeout(r, 10));
      let err = null;
      try { await f.stat(); } catch (e) { err = e.code; }
      parentPort.postMessage({ detached: b.byteLength === 0, closed: pool.closed, err });
    })().catch((e) => parentPort.postMessage({ error: e.message }));
  `, { eval: true, execArgv: [], workerData: shared, transferList: shared.transferList });
  const first = await new Promise<any>((res) => w.once('message', res));
  t.equal(first.first, 1, 'the worker mapped the file');
  const stale = m.buffer;
  const report = new Promise<any>((res) => w.once('message', res));
  await pool.close();
  t.throws(() => stale.fill(0), TypeError, 'this thread\'s buffer is detached');
  t.throws(() => m.buffer, { code: 'ECLOSED' });
  t.throws(() => untouched.buffer, { code: 'ECLOSED' });
  const later = await report;
  t.same(later, { detached: true, closed: true, err: 'ECLOSED' }, 'the other thread\'s mapping was detached and its pool closed');
  await w.terminate();
  await t.rejects(pool.openFile('a'), { code: 'ECLOSED' });
}, { hugetlb: true });

forBackings(t, 'file.close() with live mappings unmaps them first', async (t, { pool }) => {
  const f = await pool.openFile('a', { create: true });
  await f.truncate(HUGE);
  const m = await f.map();
  m.buffer[1] = 2;
  const b = m.buffer;
  await f.close();
  t.notOk(m.mapped);
  t.equal(b.byteLength, 0, 'detached');
  await t.rejects(f.stat(), { code: 'EBADF' });
  const g = await pool.openFile('a');
  const r = Buffer.alloc(2);
  await g.read(r, 0);
  t.equal(r[1], 2, 'the store is in the file');
  await g.close();
}, { hugetlb: true });

t.test('sync: true — a write fault is answered only once its block is durable (crash right after)', async (t) => {
  for (const mode of ['sync', 'nosync'] as const) {
    const p = poolPath('disk');
    t.teardown(() => fs.rmSync(p, { force: true }));
    const pool = await Pool.create(p, { size: 32 << 20 });
    await pool.close();
    const res = await runChild('sync-child.js', [p, mode]);
    t.equal(res.signal, 'SIGKILL', `${mode}: the child died before any close`);
    t.match(res.stdout, /stored/);
    const again = await Pool.open(p);
    const f = await again.openFile('s');
    const st = await f.stat();
    const written = st.extents.filter((e) => e.state === 'written').reduce((a, e) => a + e.length / PAGE, 0);
    if (mode === 'sync') {
      t.equal(written, 16, 'sync: all 16 blocks are allocated after the crash');
      const b = Buffer.alloc(64 * PAGE);
      await f.read(b, 0);
      let ok = 0;
      for (let i = 0; i < 16; i++) if (b[i * 4 * PAGE + 1] === 0x40 + i) ok++;
      t.equal(ok, 16, 'and hold the stores (tmpfs/page cache survives process death)');
    } else {
      t.ok(written <= 16, `no sync: ${written} of 16 blocks survived (not guaranteed)`);
    }
    await again.close();
    t.same(fsckErrors(p), [], `${mode}: fsck clean after the crash`);
  }
});

forBackings(t, 'a full pool: the write fault gets SIGBUS, nothing is half done, the next fault works', async (t, { pool, path: p, backing }) => {
  const f = await pool.openFile('big', { create: true });
  const st = await pool.statfs();
  await f.fallocate(0, st.free);
  const g = await pool.openFile('g', { create: true });
  await g.truncate(4 * HUGE);
  const m = await g.map();
  t.equal(m.buffer[HUGE], 0, 'reads of the hole still work');
  t.equal(await new Promise<string | null>((res) => {
    // A kernel-mode write fault (read(2) into the mapping): SIGBUS shows as EFAULT.
    const src = `/dev/shm/daxmap-enospc-${process.pid}`;
    fs.writeFileSync(src, 'x');
    const fd = fs.openSync(src, 'r');
    fs.read(fd, m.buffer, HUGE + 5, 1, 0, (e) => { fs.closeSync(fd); fs.rmSync(src); res(e ? e.code ?? '?' : null); });
  }), 'EFAULT', 'ENOSPC: the write fault was answered with SIGBUS');
  const s = await pool.stats();
  if (backing === 'hugetlbfs') {
    // a 2 MiB-granular device maps nothing smaller: no 4 KiB fallback (docs/pool.md)
    t.ok(s.sigbus >= 1 && s.fallback === 0, 'the 2 MiB window failed with no fallback');
  } else {
    t.ok(s.sigbus >= 1 && s.fallback >= 1, 'the 2 MiB window fell back to 4 KiB, which failed too');
  }
  t.equal((await g.stat()).allocated, 0, 'nothing allocated');
  await f.punchHole(0, HUGE);
  // The failed page is taken back shortly after its SIGBUS; then it faults afresh.
  let last = s;
  await until(async () => (last = await pool.stats()).recovered >= 1, 'the failed page to be taken back', { detail: () => last });
  // read(2) may fault twice on the page (it faults the buffer in and retries the
  // copy); the second fault can come after the first poison was taken back, while
  // the pool was still full, and be poisoned too. Touch it from the kernel until it
  // reads, so the store below does not meet a SIGBUS still standing.
  await until(async () => (await kernelTouch(m.buffer, HUGE)) === null, 'the page to read again');
  m.buffer[HUGE + 5] = 9;
  t.equal(m.buffer[HUGE + 5], 9, 'with space again the same page faults and works');
  await m.unmap();
  await checkLockdep(t, pool);
  await pool.close();
  t.same(fsckErrors(p), [], 'fsck clean');
}, { hugetlb: true });

forBackings(t, 'the window budget: old windows are revoked, random access never fails', async (t, { pool, backing }) => {
  // Windows installed by faults: nothing decided ahead at map() (that is decided-ranges.test.ts).
  // On a 2 MiB-granular device every window is a whole unit (4 for this file): a
  // budget of 2 makes random access evict there.
  const budget = backing === 'hugetlbfs' ? 2 : 32;
  await pool.request('configure', [{ windowBudget: budget, decided: 'off' }]);
  const f = await pool.openFile('r', { create: true });
  const pages = 2048;
  const data = Buffer.alloc(pages * PAGE);
  for (let i = 0; i < pages; i++) data.writeUInt32LE(i, i * PAGE);
  await f.write(data, 0);
  const m = await f.map({ faultAround: false });
  let seed = 12345;
  const rand = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) % pages;
  let bad = 0;
  for (let k = 0; k < 3000; k++) {
    const i = rand();
    if (m.buffer.readUInt32LE(i * PAGE) !== i) bad++;
    m.buffer[i * PAGE + 100] = 1;
  }
  t.equal(bad, 0, 'every page read right');
  const s = await pool.stats();
  t.ok(s.evictions > 0, `windows were evicted (${s.evictions})`);
  t.ok(s.installedWindows <= budget + 64, `installed windows stay near the budget (${s.installedWindows})`);
  t.equal(s.sigbus, 0);
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'eviction of whole chunks: zero pages, data and past-EOF poison all come back right', async (t, { pool, backing }) => {
  // On a 2 MiB-granular device each chunk is one window and the unit holding EOF maps
  // whole (docs/pool.md): a budget of 1 evicts there, and past EOF is past chunk 1.
  const granular = backing === 'hugetlbfs';
  const budget = granular ? 1 : 8;
  const past = granular ? 2 * HUGE + 16 * PAGE : HUGE + 16 * PAGE;
  await pool.request('configure', [{ windowBudget: budget, decided: 'off' }]);
  const f = await pool.openFile('c', { create: true });
  // Chunk 0: data in even pages, holes in odd ones; chunk 1: EOF in its middle.
  for (let p = 0; p < 64; p += 2) await f.write(Buffer.alloc(PAGE, p + 1), p * PAGE);
  await f.truncate(HUGE + 8 * PAGE);
  const m = await f.map({ faultAround: false, length: 3 * HUGE });
  const check = async (what: string): Promise<void> => {
    let bad = 0;
    for (let p = 0; p < 64; p++) if (m.buffer[p * PAGE + 9] !== (p % 2 === 0 ? p + 1 : 0)) bad++;
    t.equal(bad, 0, `${what}: data and holes read right`);
    t.equal(await kernelTouch(m.buffer, past), 'EFAULT', `${what}: past EOF is SIGBUS`);
  };
  await check('first touch');
  // Many more windows than the budget, in chunk 1 below EOF and back in chunk 0.
  for (let round = 0; round < 4; round++) {
    for (let p = 0; p < 8; p++) m.buffer[HUGE + p * PAGE] = 0x40 + p;
    await check(`round ${round}`);
  }
  const s = await pool.stats();
  t.ok(s.evictions > 0, `windows were evicted (${s.evictions})`);
  t.ok(s.installedWindows <= budget + 64, `installed windows stay near the budget (${s.installedWindows})`);
  for (let p = 0; p < 8; p++) t.equal(m.buffer[HUGE + p * PAGE], 0x40 + p, 'stores below EOF in the evicted chunk are kept');
  await f.truncate(past + HUGE - 16 * PAGE);
  t.equal(m.buffer[past], 0, 'after growing: the page past the old EOF reads zero');
  t.equal(s.sigbus, (await pool.stats()).sigbus, 'no SIGBUS below EOF');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'bad arguments to map, and a mapping after unmap', async (t, { pool, backing }) => {
  const f = await pool.openFile('a', { create: true });
  await f.truncate(HUGE);
  await t.rejects(f.map({ offset: 100 }), { code: 'EINVAL' });
  await t.rejects(f.map({ offset: -4096 }), { code: 'EINVAL' });
  await t.rejects(f.map({ length: 0 }), { code: 'EINVAL' });
  await t.rejects(f.map({ offset: 2 * HUGE }), { code: 'EINVAL' }, 'nothing to map past EOF without a length');
  let off = 4096;
  if (backing === 'hugetlbfs') {
    // a shared mapping there must start at a 2 MiB-aligned offset (docs/pool.md)
    await t.rejects(f.map({ offset: 4096, length: 3 * HUGE }), { code: 'EINVAL' });
    off = 0;
  }
  const m = await f.map({ offset: off, length: 3 * HUGE });
  t.equal(m.buffer.length, 3 * HUGE, 'a mapping may extend past EOF');
  await t.rejects(m.flush(0, 4 * HUGE), { code: 'EINVAL' });
  await m.unmap();
  await m.unmap();
  t.throws(() => m.buffer, { code: 'ECLOSED' });
  await t.rejects(m.flush(), { code: 'ECLOSED' });
  await pool.unlink('a');
  await t.rejects(f.map({ length: PAGE }), { code: 'ENOENT' });
  await f.close();
  await t.rejects(f.map({ length: PAGE }), { code: 'EBADF' });
}, { hugetlb: true });

forBackings(t, 'a thread that exits with live mappings: the service forgets them', async (t, { pool }) => {
  const f = await pool.openFile('a', { create: true });
  await f.truncate(HUGE);
  const shared = pool.share();
  const w = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    const { Pool } = require(${JSON.stringify(path.join(DIST, 'index.js'))});
    (async () => {
      const pool = await Pool.attach(workerData);
      const f = await pool.openFile('a');
      const m = await f.map();
      m.buffer[0] = 5;
      parentPort.postMessage('mapped');
      setInterval(() => {}, 1000); // stay alive until terminated
    })();
  `, { eval: true, execArgv: [], workerData: shared, transferList: shared.transferList });
  t.equal(await new Promise((res) => w.once('message', res)), 'mapped');
  const before = (await pool.stats()).installedWindows;
  await w.terminate();
  let after = before;
  for (let i = 0; i < 500 && after >= before; i++) {
    await new Promise((r) => setTimeout(r, 20));
    after = (await pool.stats()).installedWindows;
  }
  t.ok(after < before, `its windows left the budget (${before} -> ${after})`);
  const m = await f.map();
  t.equal(m.buffer[0], 5, 'its store is in the file');
  await m.unmap();
}, { hugetlb: true });

t.test('a service that dies: requests fail with ECLOSED, the mappings are detached, nothing hangs', async (t) => {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const pool = await Pool.create(p, { size: 16 << 20 });
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.alloc(PAGE, 7), 0);
  await f.truncate(HUGE);
  const m = await f.map({ faultAround: false });
  t.equal(m.buffer[1], 7, 'an installed page');
  const kept = m.buffer;
  await pool.request('testExit');
  let err: unknown;
  await until(() => f.stat().then(() => false, (e: unknown) => ((err = e), true)), 'a request to fail');
  t.match(err, { code: 'ECLOSED' }, 'requests fail once the service is gone');
  // The Pool learnt of the death: as with a dead daemon, its mappings are detached. A
  // touch before it learnt is SIGBUS, never a hang: test/client/lifecycle.test.ts.
  t.equal(m.mapped, false, 'the mapping is detached');
  t.throws(() => m.buffer, { code: 'ECLOSED' });
  t.equal(kept.length, 0, 'a Buffer kept from before is detached');
  await t.rejects(pool.close(), { code: 'ECLOSED' }, 'close(): the pool was not closed cleanly');
});

t.test('a thread that keeps only a mapping\'s Buffer keeps the mapping', async (t) => {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const res = await runChild('gc-child.js', [p]);
  t.equal(res.signal, null, res.stderr);
  t.match(res.stdout, /^ok 4094$/m, 'after garbage collection of Pool, PoolFile and Mapping, every new page still faults in');
});
