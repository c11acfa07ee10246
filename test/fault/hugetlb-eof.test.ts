// The last unit of a file on the device-DAX stand-in (hugetlbfs, 2 MiB-granular:
// docs/pool.md, "2 MiB-granular devices"): a shared mapping maps the unit holding EOF
// whole, so a file smaller than 2 MiB faults without SIGBUS; bytes past EOF in that
// unit read zeros and stores there are not part of the file; past the unit, SIGBUS.
// With no whole free unit left, a write fault ends in SIGBUS and file.write in ENOSPC.
// Skipped, with the reason, where huge pages cannot be reserved.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { hugetlb } from '../hugetlb';
import { checkLockdep, kernelTouch, HUGE, PAGE, Pool } from './helpers';
import { startDaemon } from '../daemon/helpers';
import { fsckErrors } from '../fsck';

const POOL = require.resolve('../../dist/client/pool');

/** Run a script in a child node; resolves with its exit signal/code and output. */
function child(script: string, args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-e', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.on('error', reject);
    c.on('exit', (code, signal) => resolve({ code, signal, out, err }));
  });
}

t.test('hugetlbfs stand-in: the EOF unit', async (t) => {
  const h = await hugetlb(t, 40);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }

  const newPool = async (t: Test, size = 32 << 20): Promise<{ p: string; pool: Pool }> => {
    const p = h.file();
    t.teardown(() => fs.rmSync(p, { force: true }));
    return { p, pool: await Pool.create(p, { size }) };
  };

  t.test('a file smaller than 2 MiB: shared faults map its unit whole, no SIGBUS', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('small', { create: true });
    await f.write(Buffer.from('hello, unit'), 0);
    for (const faultAround of [true, false]) {
      const m = await f.map({ faultAround });
      t.equal(m.buffer.length, 11, 'the buffer is the file');
      t.equal(m.buffer.toString().toLowerCase(), 'hello, unit', `faultAround ${faultAround}: reads the file`);
      m.buffer[0] = 0x48;
      await m.flush();
      await m.unmap();
    }
    const b = Buffer.alloc(11);
    await f.read(b, 0);
    t.equal(b.toString(), 'Hello, unit', 'the store reached the file');
    // a hole: a read maps zeros, a write allocates the unit
    const g = await pool.openFile('hole', { create: true });
    await g.truncate(5000);
    const m = await g.map();
    t.equal(m.buffer[4999], 0, 'a hole reads zeros');
    m.buffer[4999] = 7;
    await m.flush();
    const c = Buffer.alloc(1);
    await g.read(c, 4999);
    t.equal(c[0], 7, 'a write fault in the EOF unit allocates it and maps it');
    await m.unmap();
    const st = await pool.stats();
    t.equal(st.sigbus, 0, 'no SIGBUS');
    t.ok(st.decided >= 2, `the written EOF unit was decided whole at map() (decided ${st.decided})`);
    t.ok(st.pmd >= 1, `the hole's window answered whole (pmd ${st.pmd})`);
    await checkLockdep(t, pool);
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });

  t.test('past EOF inside the last unit: zeros, stores not part of the file, zeroed when it grows', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('a', { create: true });
    await f.write(Buffer.alloc(100, 0x41), 0);
    const m = await f.map({ length: 2 * HUGE });
    t.equal(m.buffer[99], 0x41);
    t.equal(m.buffer[100], 0, 'the rest of the EOF page reads zeros');
    t.equal(await kernelTouch(m.buffer, 8 * PAGE), null, 'a load past the EOF page, inside the unit: no SIGBUS');
    t.equal(m.buffer[HUGE - 1], 0, 'it reads zeros');
    m.buffer[5000] = 0x99; // a store past EOF
    await m.flush();
    const b = Buffer.alloc(200, 0xee);
    t.equal(await f.read(b, 0), 100, 'read stops at EOF');
    t.equal((await f.stat()).size, 100, 'the size is unchanged');
    await f.truncate(8192);
    t.equal(m.buffer[5000], 0, 'grown over it: the store is gone (zeroed), in the mapping');
    const c = Buffer.alloc(8192);
    await f.read(c, 0);
    t.ok(c.subarray(100).every((x) => x === 0), 'and in the file');
    t.equal(await kernelTouch(m.buffer, HUGE), 'EFAULT', 'past the last unit: SIGBUS');
    await f.truncate(HUGE + 10);
    t.equal(await kernelTouch(m.buffer, HUGE + 3 * PAGE), null, 'grown into the next unit: it maps');
    t.equal(m.buffer[HUGE + 3 * PAGE], 0);
    await m.unmap();
    await checkLockdep(t, pool);
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean (written blocks past EOF inside the EOF unit are allowed)');
  });

  t.test('shrink inside a unit with the unit mapped: the bytes past the new EOF read zeros, before and after growing', async (t) => {
    const { p, pool } = await newPool(t);
    const f = await pool.openFile('a', { create: true });
    await f.truncate(HUGE + HUGE / 2);
    const m = await f.map({ length: 2 * HUGE });
    m.buffer.fill(0xa5, 0, HUGE + HUGE / 2);
    await m.flush();
    await f.truncate(HUGE + 1000);
    t.equal(m.buffer[HUGE + 999], 0xa5, 'below the new EOF intact');
    t.ok(m.buffer.subarray(HUGE + 1000, 2 * HUGE).every((x) => x === 0), 'past it, in the same unit: zeros');
    await f.truncate(2 * HUGE);
    t.ok(m.buffer.subarray(HUGE + 1000, 2 * HUGE).every((x) => x === 0), 'grown again: still zeros, never the old bytes');
    const b = Buffer.alloc(HUGE - 1000);
    await f.read(b, HUGE + 1000);
    t.ok(b.every((x) => x === 0), 'read(2) path too');
    t.equal((await pool.stats()).sigbus, 0, 'no SIGBUS');
    await m.unmap();
    await checkLockdep(t, pool);
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });

  t.test('a daxmapd client maps a small file too (its region is whole units: the granularity of its own device)', async (t) => {
    const p = h.file();
    const d = await startDaemon({ device: p, size: '32M' });
    t.teardown(async () => { await d.stop(); fs.rmSync(p, { force: true }); });
    const pool = await Pool.connect(d.socket);
    const f = await pool.openFile('small', { create: true });
    await f.write(Buffer.from('daemon'), 0);
    const m = await f.map({ length: 3 * PAGE });
    t.equal(m.buffer.toString('latin1', 0, 6), 'daemon', 'reads the file');
    t.equal(await kernelTouch(m.buffer, 2 * PAGE), null, 'past EOF in the unit: no SIGBUS');
    m.buffer[1] = 0x41;
    await m.flush();
    const b = Buffer.alloc(6);
    await f.read(b, 0);
    t.equal(b.toString('latin1'), 'dAemon', 'a store reached the file');
    await m.unmap();
    await pool.close();
    t.same((await d.stop('SIGTERM', true)).code, 0);
    t.same(fsckErrors(p), [], 'fsck clean');
  });

  t.test('a child: loads past EOF inside the last unit read zeros, a load past the unit is SIGBUS', async (t) => {
    const p = h.file();
    t.teardown(() => fs.rmSync(p, { force: true }));
    await (await Pool.create(p, { size: 32 << 20 })).close();
    const script = `
      const { Pool } = require(${JSON.stringify(POOL)});
      (async () => {
        const pool = await Pool.open(process.argv[1]);
        const f = await pool.openFile('c', { create: true });
        await f.write(Buffer.from('tiny'), 0);
        const m = await f.map({ length: 4 * ${HUGE} });
        let sum = 0;
        for (let off = 4; off < ${HUGE}; off += 4096) sum += m.buffer[off];
        process.stdout.write('inside ' + m.buffer.toString('latin1', 0, 4) + ' ' + sum + '\\n');
        sum += m.buffer[${HUGE} + 4096];
        process.stdout.write('survived ' + sum + '\\n');
      })().catch((e) => { console.error(e); process.exit(3); });`;
    const r = await child(script, [p]);
    t.equal(r.out, 'inside tiny 0\n', 'the whole last unit reads: the file, then zeros');
    t.equal(r.signal, 'SIGBUS', `the load past the unit: SIGBUS (${r.err.slice(0, 300)})`);
    t.same(fsckErrors(p), [], 'fsck clean after the child died');
  });

  t.test('no whole free 2 MiB unit: file.write rejects with ENOSPC, a write fault ends in SIGBUS (not a hang)', async (t) => {
    const p = h.file();
    t.teardown(() => fs.rmSync(p, { force: true }));
    await (await Pool.create(p, { size: 32 << 20 })).close();
    const script = `
      const { Pool } = require(${JSON.stringify(POOL)});
      (async () => {
        const pool = await Pool.open(process.argv[1]);
        const fill = await pool.openFile('fill', { create: true });
        for (let off = 0; ; off += ${HUGE}) {
          try { await fill.fallocate(off, ${HUGE}); } catch (e) { if (e.code !== 'ENOSPC') throw e; break; }
        }
        const f = await pool.openFile('w', { create: true });
        try { await f.write(Buffer.from('x'), 0); process.stdout.write('write succeeded\\n'); }
        catch (e) { process.stdout.write('write ' + e.code + '\\n'); }
        await f.truncate(${HUGE});
        const m = await f.map();
        process.stdout.write('read ' + m.buffer[10] + '\\n');
        m.buffer[10] = 1;
        process.stdout.write('survived\\n');
      })().catch((e) => { console.error(e); process.exit(3); });`;
    const r = await child(script, [p]);
    t.equal(r.out, 'write ENOSPC\nread 0\n', 'file.write: ENOSPC; a read of the hole maps zeros');
    t.equal(r.signal, 'SIGBUS', `the store: SIGBUS (${r.err.slice(0, 300)})`);
    t.same(fsckErrors(p), [], 'fsck clean after the child died');
  });
});
