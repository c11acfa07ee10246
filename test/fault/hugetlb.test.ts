// Pools on the device-DAX stand-in: a file on hugetlbfs, 2 MiB-granular like
// /dev/dax (docs/native.md, "2 MiB-granular devices"). Skipped, with the reason,
// where huge pages cannot be reserved or hugetlbfs cannot be mounted.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { hugetlb } from '../hugetlb';
import { checkLockdep, kernelTouch, HUGE, Pool } from './helpers';
import { openDevice } from '../../dist/device/device';
import { main as cli } from '../../dist/cli/main';
import { startDaemon } from '../daemon/helpers';
import { fsckErrors } from '../fsck';

t.test('hugetlbfs stand-in', async (t) => {
  const h = await hugetlb(t, 96);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }

  /** A 64 MiB pool in a new file of the stand-in, removed after the test. */
  const newPool = async (t: Test): Promise<{ p: string; pool: Pool }> => {
    const p = h.file();
    t.teardown(() => fs.rmSync(p, { force: true }));
    return { p, pool: await Pool.create(p, { size: 64 << 20 }) };
  };

  t.test('the device layer sees a 2 MiB-granular device; sizes must be whole huge pages', async (t) => {
    const p = h.file('dev');
    t.throws(() => openDevice(p, { create: true, size: HUGE + 4096 }), { code: 'EINVAL', message: /multiple of 2097152 on hugetlbfs/ });
    t.notOk(fs.existsSync(p), 'the refused file is removed');
    const d = openDevice(p, { create: true, size: 4 * HUGE });
    t.teardown(() => { d.close(); fs.rmSync(p, { force: true }); });
    t.equal(d.kind, 'hugetlbfs');
    t.equal(d.align, HUGE);
    t.equal(d.size, 4 * HUGE);
    t.ok(d.mapSync, 'persistence by cache flush + fence (hugetlbfs has no writeback to msync)');
    d.view(HUGE, 8).fill(7);
    d.persist(HUGE, 8);
    d.zero(HUGE, 4096);
    t.equal(d.view(HUGE, 1)[0], 0, 'zero works on a 4 KiB range inside a huge page');
  });

  t.test('a pool: shared stores read back, truncate revokes, fsck clean after close', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('a', { create: true });
    await f.truncate(4 * HUGE);
    const m = await f.map();
    for (let i = 0; i < 4; i++) m.buffer.fill(0x10 + i, i * HUGE, (i + 1) * HUGE);
    await m.flush();
    const b = Buffer.alloc(4 * HUGE);
    await f.read(b, 0);
    t.ok([0, 1, 2, 3].every((i) => b[i * HUGE] === 0x10 + i && b[(i + 1) * HUGE - 1] === 0x10 + i), 'read(2)-path sees every store');
    const st = await pool.stats();
    t.ok(st.pmd >= 4, `the windows were answered whole at 2 MiB (pmd ${st.pmd})`);
    const before = st.revokes;
    await f.truncate(2 * HUGE);
    t.ok((await pool.stats()).revokes > before, 'truncate revoked the mapping');
    t.equal(await kernelTouch(m.buffer, 3 * HUGE), 'EFAULT', 'past EOF: SIGBUS');
    t.equal(m.buffer[HUGE + 5], 0x11, 'below EOF intact');
    await m.unmap();
    await checkLockdep(t, pool);
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
    const again = await Pool.open(p);
    const g = await again.openFile('a');
    const r = Buffer.alloc(1);
    await g.read(r, HUGE + 7);
    t.equal(r[0], 0x11, 'the stores survive close/open');
    await again.close();
  });

  t.test('a child SIGKILLed mid-stores leaves a pool fsck passes', async (t) => {
    const p = h.file();
    t.teardown(() => fs.rmSync(p, { force: true }));
    await (await Pool.create(p, { size: 64 << 20 })).close();
    const script = `
      const { Pool } = require(${JSON.stringify(require.resolve('../../dist/client/pool'))});
      (async () => {
        const pool = await Pool.open(process.argv[1]);
        const f = await pool.openFile('k', { create: true });
        await f.truncate(8 * ${HUGE});
        const m = await f.map();
        for (let i = 0; ; i++) {
          m.buffer[(i * 4099) % m.buffer.length] = i & 255;
          if (i === 100000) process.stdout.write('storing\\n');
          if (i % 1000000 === 0) await new Promise((r) => setImmediate(r));
        }
      })().catch((e) => { console.error(e); process.exit(3); });`;
    const child = spawn(process.execPath, ['-e', script, p], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_c, s) => res(s)));
    await new Promise<void>((res) => child.stdout.on('data', () => res()));
    child.kill('SIGKILL');
    t.equal(await exited, 'SIGKILL', 'killed mid-stores');
    t.same(fsckErrors(p), [], 'fsck clean after the kill');
  });

  t.test('daxmap mkfs and stat say the granularity', async (t) => {
    const p = h.file();
    t.teardown(() => fs.rmSync(p, { force: true }));
    const run = async (...a: string[]) => {
      let out = '';
      let err = '';
      const code = await cli(a, { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s), isTTY: false } });
      return { code, out, err };
    };
    const bad = await run('mkfs', p, '--size', '33M');
    t.equal(bad.code, 2, 'a size that is not whole huge pages is refused');
    t.match(bad.err, /EINVAL.*multiple of 2097152 on hugetlbfs/);
    const m = await run('mkfs', p, '--size', '32M');
    t.equal(m.code, 0, m.err);
    t.match(m.out, /formatted .*: 32M hugetlbfs device \(2M granular\)/);
    const st = JSON.parse((await run('stat', p, '--json')).out);
    t.equal(st.kind, 'hugetlbfs');
    t.equal(st.granularity, HUGE);
    t.same(fsckErrors(p), []);
  });

  t.test('daxmapd --device on hugetlbfs: says its granularity, serves a client', async (t) => {
    const p = h.file();
    const d = await startDaemon({ device: p, size: '64M' });
    t.teardown(() => d.stop());
    t.ok(d.log.some((l) => l.includes('pool device: hugetlbfs, 2097152-byte granular')), 'the log names kind and granularity');
    const pool = await Pool.connect(d.socket);
    const f = await pool.openFile('a', { create: true });
    await f.truncate(2 * HUGE);
    const m = await f.map();
    m.buffer.fill(0x5a);
    await m.flush();
    const b = Buffer.alloc(2);
    await f.read(b, 2 * HUGE - 2);
    t.same([...b], [0x5a, 0x5a], 'a client\'s stores reach the daemon\'s pool');
    await m.unmap();
    await pool.close();
    t.same((await d.stop('SIGTERM', true)).code, 0);
    t.same(fsckErrors(p), [], 'fsck clean after the daemon stopped');
    fs.rmSync(p, { force: true });
  });

  t.test('faultAround false: shared faults still take whole 2 MiB windows (no SIGBUS)', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('a', { create: true });
    await f.write(Buffer.from('head'), 0); // a 4 KiB write() allocates a whole 2 MiB unit
    await f.truncate(4 * HUGE);
    const m = await f.map({ faultAround: false });
    t.equal(await kernelTouch(m.buffer, 3 * HUGE + 8192), null, 'a read of a hole: no SIGBUS');
    t.equal(m.buffer.toString('utf8', 0, 4), 'head', 'the block write() filled reads through the mapping');
    for (const off of [5, HUGE + 4096 * 17, 3 * HUGE + 4096 * 300]) m.buffer[off] = 0x77;
    await m.flush();
    const b = Buffer.alloc(1);
    for (const off of [5, HUGE + 4096 * 17, 3 * HUGE + 4096 * 300]) {
      await f.read(b, off);
      t.equal(b[0], 0x77, `the store at ${off} reached the file`);
    }
    const st = await pool.stats();
    t.equal(st.sigbus, 0, 'no SIGBUS');
    await m.unmap();
    await checkLockdep(t, pool);
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });

  t.test('private mapping: reads copy from the device, stores stay private', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('a', { create: true });
    await f.write(Buffer.alloc(2 * HUGE, 0x31), 0);
    for (const faultAround of [true, false]) {
      const m = await f.map({ private: true, faultAround });
      t.equal(m.buffer[HUGE + 3], 0x31, `faultAround ${faultAround}: reads the file`);
      m.buffer[HUGE + 3] = 0x99;
      t.equal(m.buffer[HUGE + 3], 0x99);
      const b = Buffer.alloc(1);
      await f.read(b, HUGE + 3);
      t.equal(b[0], 0x31, 'the file is unchanged');
      await m.unmap();
    }
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });

  t.test('punch hole of a 2 MiB unit: revoked, reads zeros, freed; a small file takes a whole unit', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('a', { create: true });
    await f.truncate(4 * HUGE);
    const m = await f.map();
    m.buffer.fill(0xa5);
    await m.flush();
    t.equal((await f.stat()).allocated, 4 * HUGE);
    await f.punchHole(HUGE, HUGE);
    t.equal((await f.stat()).allocated, 3 * HUGE, 'the unit was freed');
    t.ok(m.buffer.subarray(HUGE, 2 * HUGE).every((x) => x === 0), 'the punched unit reads zeros');
    t.equal(m.buffer[2 * HUGE], 0xa5, 'the next unit is intact');
    await m.unmap();
    const before = (await pool.statfs()).free;
    const g = await pool.openFile('small', { create: true });
    await g.write(Buffer.from('x'), 0);
    const gs = await g.stat();
    t.equal(gs.allocated, HUGE, 'a 1-byte file holds a whole 2 MiB unit');
    t.same(gs.extents, [{ offset: 0, length: HUGE, state: 'written' }], 'written whole: the unit holding EOF maps whole');
    t.equal(before - (await pool.statfs()).free, HUGE, 'but its unit takes 2 MiB of the pool');
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });

  t.test('punch and zero range inside a unit keep it whole: the window is revoked whole and maps again', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('a', { create: true });
    await f.truncate(4 * HUGE);
    const m = await f.map({ faultAround: false });
    m.buffer.fill(0xa5);
    await m.flush();
    const revokes = (await pool.stats()).revokes;
    await f.punchHole(HUGE + 3 * 4096, 2 * 4096);
    await f.zeroRange(2 * HUGE + 100, 5000, { keepSize: true });
    t.ok((await pool.stats()).revokes > revokes, 'revoked (no EIO from a partial revoke of a 2 MiB window)');
    t.equal((await f.stat()).allocated, 4 * HUGE, 'no block freed: the units stay whole');
    t.equal(await kernelTouch(m.buffer, HUGE + 3 * 4096), null, 'the punched window faults again (no SIGBUS)');
    t.ok(m.buffer.subarray(HUGE + 3 * 4096, HUGE + 5 * 4096).every((x) => x === 0), 'the punched range reads zeros');
    t.equal(m.buffer[HUGE + 3 * 4096 - 1], 0xa5, 'and its neighbours keep their bytes');
    t.equal(m.buffer[HUGE + 5 * 4096], 0xa5);
    t.ok(m.buffer.subarray(2 * HUGE + 100, 2 * HUGE + 5100).every((x) => x === 0), 'the zeroed range reads zeros');
    t.equal(m.buffer[2 * HUGE + 99], 0xa5);
    t.equal(m.buffer[2 * HUGE + 5100], 0xa5);
    m.buffer[HUGE + 3 * 4096] = 1;
    await m.flush();
    await f.punchHole(HUGE, 2 * HUGE);
    t.equal((await f.stat()).allocated, 2 * HUGE, 'a punch of whole units frees them');
    t.equal(m.buffer[HUGE + 3 * 4096], 0, 'and they read zeros');
    await f.truncate(HUGE);
    t.equal((await f.stat()).allocated, HUGE, 'truncate to a unit boundary frees the units past it');
    t.equal(m.buffer[HUGE - 1], 0xa5, 'below EOF intact');
    t.equal(await kernelTouch(m.buffer, HUGE), 'EFAULT', 'past EOF: SIGBUS');
    await m.unmap();
    await f.truncate(4096 + 10);
    const st = await f.stat();
    t.same(st.extents, [{ offset: 0, length: 8192, state: 'written' }, { offset: 8192, length: HUGE - 8192, state: 'unwritten' }],
      'truncate inside a unit keeps it whole, unwritten past the EOF block');
    await checkLockdep(t, pool);
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });
});
