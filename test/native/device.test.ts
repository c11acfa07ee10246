// The device layer: open/create, kind detection, exclusive locking, views that alias
// the file, persistence, and errors. No userfaultfd needed.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openDevice } from '../../dist/device/device';
import { CHUNK_SIZE } from '../../dist/device/storage';
import { runChild } from './helpers';

const PAGE = 4096;
let n = 0;
function tmpPath(where: 'tmpfs' | 'disk'): string {
  const dir = where === 'tmpfs' ? '/dev/shm' : os.tmpdir();
  return path.join(dir, `daxmap-dev-test-${process.pid}-${n++}`);
}

for (const where of ['tmpfs', 'disk'] as const) {
  t.test(`create and map a ${where} device`, async (t) => {
    const p = tmpPath(where);
    t.teardown(() => fs.rmSync(p, { force: true }));
    const d = openDevice(p, { create: true, size: 64 * PAGE });
    t.equal(d.kind, where === 'tmpfs' ? 'tmpfs' : 'file');
    t.equal(d.size, 64 * PAGE);
    t.equal(d.align, PAGE);
    t.equal(fs.statSync(p).size, 64 * PAGE, 'the file was created at the size');
    if (where === 'disk') t.ok(fs.statSync(p).blocks * 512 >= 64 * PAGE, 'a disk device has its blocks reserved');
    const v = d.view(5 * PAGE, PAGE);
    v.write('aliases the file');
    d.persist(5 * PAGE, PAGE);
    d.persistAll();
    const fd = fs.openSync(p, 'r');
    const check = Buffer.alloc(16);
    fs.readSync(fd, check, 0, 16, 5 * PAGE);
    fs.closeSync(fd);
    t.equal(check.toString(), 'aliases the file', 'a store through the view is in the file');
    fs.writeFileSync(p, Buffer.from('written by fs'), { flag: 'r+' });
    t.equal(d.view(0, 13).toString(), 'written by fs', 'a write to the file is visible through the view');
    t.throws(() => d.view(63 * PAGE, 2 * PAGE), RangeError, 'a view past the end is refused');
    t.throws(() => d.persist(-1, 10), { code: 'EINVAL' });
    d.close();
    t.throws(() => v.fill(0), TypeError, 'views are detached at close');
    t.throws(() => d.view(0, 1), { code: 'ECLOSED' });
    d.close();
    // Reopen: the contents are durable across close.
    const d2 = openDevice(p);
    t.equal(d2.view(5 * PAGE, 16).toString(), 'aliases the file');
    d2.close();
  });
}

for (const where of ['tmpfs', 'disk'] as const) {
  t.test(`zero() makes whole pages read as zeros without touching them [${where}]`, async (t) => {
    const p = tmpPath(where);
    t.teardown(() => fs.rmSync(p, { force: true }));
    const d = openDevice(p, { create: true, size: 64 * PAGE });
    d.view(0, 64 * PAGE).fill(0x5a);
    d.persistAll();
    const blocksBefore = fs.statSync(p).blocks;
    d.zero(8 * PAGE, 16 * PAGE);
    d.persist(8 * PAGE, 16 * PAGE);
    // (Before reading it back: a read through a shared tmpfs mapping allocates pages again.)
    if (where === 'tmpfs') t.ok(fs.statSync(p).blocks < blocksBefore, 'tmpfs: the zeroed pages were freed');
    else t.equal(fs.statSync(p).blocks, blocksBefore, 'disk: the blocks stay allocated (no ENOSPC later)');
    const v = d.view(0, 64 * PAGE);
    t.ok(v.subarray(8 * PAGE, 24 * PAGE).every((x) => x === 0), 'the range reads zero through the view');
    t.equal(v[8 * PAGE - 1], 0x5a, 'the byte before is untouched');
    t.equal(v[24 * PAGE], 0x5a, 'the byte after is untouched');
    const onDisk = fs.readFileSync(p);
    t.ok(onDisk.subarray(8 * PAGE, 24 * PAGE).every((x) => x === 0), 'and through the file');
    t.throws(() => d.zero(100, PAGE), { code: 'EINVAL' }, 'unaligned ranges are refused');
    t.throws(() => d.zero(63 * PAGE, 2 * PAGE), { code: 'EINVAL' });
    d.close();
  });
}

t.test('views never cross a 1 GiB chunk', async (t) => {
  const p = tmpPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const d = openDevice(p, { create: true, size: CHUNK_SIZE + 16 * PAGE });
  d.view(CHUNK_SIZE, PAGE).write('second chunk');
  t.equal(d.view(CHUNK_SIZE, 12).toString(), 'second chunk');
  t.throws(() => d.view(CHUNK_SIZE - PAGE, 2 * PAGE), RangeError);
  d.close();
});

t.test('exclusive: a second holder gets EBUSY, in this process and in another', async (t) => {
  const p = tmpPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const d = openDevice(p, { create: true, size: 16 * PAGE, exclusive: true });
  t.throws(() => openDevice(p, { exclusive: true }), { code: 'EBUSY' }, 'same process, second open');
  const child = await runChild('lock-child.js', [p]);
  const out = JSON.parse(child.stdout);
  t.equal(out.code, 'EBUSY', 'another process');
  t.match(out.message, /another daxmap service holds it/);
  d.close();
  const again = JSON.parse((await runChild('lock-child.js', [p])).stdout);
  t.equal(again.ok, true, 'after close the lock is free');
});

t.test('errors name the device and the cause', async (t) => {
  const missing = tmpPath('tmpfs');
  t.throws(() => openDevice(missing), { code: 'ENOENT', message: new RegExp(missing) });
  t.throws(() => openDevice(missing, { create: true, size: 1000 }), { code: 'EINVAL' });
  t.throws(() => openDevice(missing, { create: true }), { code: 'EINVAL' });
  t.notOk(fs.existsSync(missing), 'a refused create leaves no file behind');
  t.throws(() => openDevice('/dev/null'), { code: 'ENODEV', message: /not device-dax/ });
  t.throws(() => openDevice(os.tmpdir()), { code: 'EISDIR' });
  t.throws(() => openDevice(''), { code: 'EINVAL' });
  t.throws(() => openDevice('a\0b'), { code: 'EINVAL' });
  // An existing empty file is sized by create (a fresh pool file made by the operator).
  const empty = tmpPath('tmpfs');
  fs.writeFileSync(empty, '');
  t.teardown(() => fs.rmSync(empty, { force: true }));
  const d = openDevice(empty, { create: true, size: 8 * PAGE });
  t.equal(d.size, 8 * PAGE);
  d.close();
  // An existing non-empty file keeps its size (rounded down to pages).
  const odd = tmpPath('tmpfs');
  fs.writeFileSync(odd, Buffer.alloc(3 * PAGE + 100));
  t.teardown(() => fs.rmSync(odd, { force: true }));
  const d2 = openDevice(odd, { create: true, size: 64 * PAGE });
  t.equal(d2.size, 3 * PAGE);
  d2.close();
});
