// { readOnly: true }: the mapping is PROT_READ. Loads see the file (its data, holes,
// later writes and punches); a store is SIGSEGV, as on a kernel mapping without
// PROT_WRITE (in a child, for a written page, a hole, a revoked page and an untouched
// one, embedded and through daxmapd); a system call writing into it gets EFAULT.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { forBackings, runChild, poolPath, PAGE, type Ctx } from '../fault/helpers';
import { startDaemon } from '../daemon/helpers';
import type { Test } from 'tap';

// runChild() runs scripts of test/fault/fixtures: this one is ours.
const CHILD = path.relative(path.join(__dirname, '..', 'fault', 'fixtures'), path.join(__dirname, 'fixtures', 'readonly-child.js'));
const CASES = ['written', 'hole', 'revoked', 'untouched'];

/** A read(2) of a scratch file into `buf`: the kernel stores into it. Resolves to the error code, or null. */
function kernelStore(buf: Buffer): string | null {
  const scratch = `/dev/shm/daxmap-ro-${process.pid}`;
  fs.writeFileSync(scratch, 'kernel');
  const fd = fs.openSync(scratch, 'r');
  try {
    fs.readSync(fd, buf, 0, 6, 0);
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? 'E?';
  } finally {
    fs.closeSync(fd);
    fs.rmSync(scratch, { force: true });
  }
}

forBackings(t, 'a read-only mapping sees the file and refuses stores', async (t: Test, { pool }: Ctx) => {
  const f = await pool.openFile('a', { create: true });
  await f.truncate(4 << 20);
  await f.write(Buffer.from('file data'), 0);
  const ro = await f.map({ readOnly: true, sync: true });
  t.equal(ro.readOnly, true);
  t.equal(ro.sync, true, 'sync is accepted (and has no effect, as MAP_SYNC on a read-only mapping)');
  t.equal(ro.buffer.toString('latin1', 0, 9), 'file data', 'a written page reads the file');
  t.equal(ro.buffer[3 << 20], 0, 'a hole reads zeros');
  t.equal(kernelStore(ro.view(PAGE, PAGE)), 'EFAULT', 'read(2) into a read-only mapping: EFAULT');
  t.equal(kernelStore(ro.view(0, PAGE)), 'EFAULT', 'also into an installed page');
  const rw = await f.map();
  rw.buffer.write('shared store', 3 << 20, 'latin1');
  t.equal(ro.buffer.toString('latin1', 3 << 20, (3 << 20) + 12), 'shared store', 'a store through a writable mapping is seen');
  await f.write(Buffer.from('late'), 100);
  t.equal(ro.buffer.toString('latin1', 100, 104), 'late', 'file.write is seen');
  await f.punchHole(0, PAGE);
  t.equal(ro.buffer[0], 0, 'a punch is seen');
  t.equal(kernelStore(ro.view(0, PAGE)), 'EFAULT', 'the revoked page is still read-only');
  await t.rejects(f.map({ readOnly: 1 as never }), { code: 'EINVAL' }, 'readOnly must be a boolean');
  const st = await f.stat();
  t.equal(st.allocated > 0, true);
  await ro.unmap();
  await rw.unmap();
});

for (const which of CASES) {
  t.test(`a store into a read-only mapping is SIGSEGV (${which} page, embedded)`, async (t) => {
    const p = poolPath('tmpfs');
    t.teardown(() => fs.rmSync(p, { force: true }));
    const r = await runChild(CHILD, ['embedded', p, which]);
    t.equal(r.signal, 'SIGSEGV', `the child died of SIGSEGV (${JSON.stringify(r)})`);
    t.match(r.stdout, /storing\n$/, 'it got to the store and no further');
  });
}

t.test('a store into a read-only mapping is SIGSEGV through daxmapd', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.stop());
  for (const which of CASES) {
    const r = await runChild(CHILD, ['socket', d.socket, which]);
    t.equal(r.signal, 'SIGSEGV', `${which}: the child died of SIGSEGV (${JSON.stringify(r)})`);
    t.match(r.stdout, /storing\n$/, `${which}: it got to the store and no further`);
  }
  t.equal(d.proc.exitCode, null, 'daxmapd is still running');
});
