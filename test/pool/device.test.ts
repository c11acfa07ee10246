// Pools on real device files (tmpfs under /dev/shm and a regular file on disk):
// create/open errors, the one-owner rule (EBUSY from this thread, another thread
// and another process), and data surviving close/open.
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Pool } from '../../dist/index.js';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const dist = resolve(__dirname, '../../dist/index.js');
const diskDir = mkdtempSync(join(tmpdir(), 'daxmap-pool-'));
t.teardown(() => rmSync(diskDir, { recursive: true, force: true }));

const places = {
  tmpfs: () => `/dev/shm/daxmap-test-${process.pid}-${Math.random().toString(36).slice(2)}`,
  disk: () => join(diskDir, `pool-${Math.random().toString(36).slice(2)}`),
};

for (const [kind, mk] of Object.entries(places)) {
  t.test(`${kind}: create, write, close, open, read`, async (t) => {
    const path = mk();
    t.teardown(() => rmSync(path, { force: true }));
    const pool = await Pool.create(path, { size: 16 << 20 });
    const f = await pool.openFile('hello', { create: true });
    await f.write(Buffer.from('world'), 4090);
    await f.fsync();
    await t.rejects(Pool.create(path, { size: 16 << 20 }), { code: 'EBUSY' });
    await pool.close();
    await t.rejects(Pool.create(path), { code: 'EEXIST' });
    await t.rejects(Pool.create(path, { size: 8 << 20, force: true }), { code: 'EINVAL', message: /exists with/ });
    const p2 = await Pool.open(path);
    const b = Buffer.alloc(5);
    await (await p2.openFile('hello')).read(b, 4090);
    t.equal(b.toString(), 'world');
    const fs = await p2.statfs();
    t.ok(fs.size > 8 << 20 && fs.free < fs.size);
    await p2.close();
    const p3 = await Pool.create(path, { force: true });
    t.same(await p3.list(), [], 'force formats over the old pool');
    await p3.close();
  });

  t.test(`${kind}: one owner: EBUSY in this thread, another thread and another process`, async (t) => {
    const path = mk();
    t.teardown(() => rmSync(path, { force: true }));
    const pool = await Pool.create(path, { size: 8 << 20 });
    const e = await Pool.open(path).catch((x: unknown) => x as Error & { code: string });
    t.equal((e as { code: string }).code, 'EBUSY');
    t.match((e as Error).message, /daxmapd/);
    const fromWorker = await new Promise<string>((res, rej) => {
      const w = new Worker(`const { Pool } = require(${JSON.stringify(dist)}); const { parentPort } = require('node:worker_threads');
        Pool.open(${JSON.stringify(path)}).then(() => parentPort.postMessage('opened'), (e) => parentPort.postMessage(e.code));`, { eval: true, execArgv: [] });
      w.once('message', (m) => { res(String(m)); void w.terminate(); });
      w.once('error', rej);
    });
    t.equal(fromWorker, 'EBUSY', 'another thread of this process');
    const child = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(dist)}).Pool.open(${JSON.stringify(path)}).then(() => console.log('opened'), (e) => console.log(e.code))`], { encoding: 'utf8' });
    t.equal(child.stdout.trim(), 'EBUSY', 'another process');
    await pool.close();
    const child2 = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(dist)}).Pool.open(${JSON.stringify(path)}).then(async (p) => { await p.close(); console.log('opened') }, (e) => console.log(e.code))`], { encoding: 'utf8' });
    t.equal(child2.stdout.trim(), 'opened', 'free again after close');
  });
}

t.test('open: ENOENT, EBADF for foreign and empty devices, EISDIR for a directory', async (t) => {
  await t.rejects(Pool.open(join(diskDir, 'missing')), { code: 'ENOENT' });
  const foreign = join(diskDir, 'foreign');
  writeFileSync(foreign, Buffer.alloc(1 << 20, 0x5a));
  await t.rejects(Pool.open(foreign), { code: 'EBADF', message: /not a daxmap pool/ });
  const empty = join(diskDir, 'empty');
  writeFileSync(empty, '');
  await t.rejects(Pool.open(empty), { code: 'EBADF' });
  // A directory is not read at all: its own code, not EBADF (the device is not a sound pool).
  await t.rejects(Pool.open(diskDir), { code: 'EISDIR' });
  await t.rejects(Pool.open(''), { code: 'EINVAL' });
  await t.rejects(Pool.create(join(diskDir, 'bad'), { size: 1000 }), { code: 'EINVAL' });
  await t.rejects(Pool.create(join(diskDir, 'small'), { size: 1 << 20 }), { code: 'EINVAL' });
  t.equal(existsSync(join(diskDir, 'missing')), false, 'open never creates');
  t.equal(existsSync(join(diskDir, 'small')), false, 'a failed create leaves no file behind');
});

t.test('the package root works from require() too', async (t) => {
  const r = spawnSync(process.execPath, ['-e', `const d = require(${JSON.stringify(resolve(__dirname, '../..'))}); console.log(typeof d.Pool.create, typeof d.PoolFile)`], { encoding: 'utf8' });
  t.equal(r.stdout.trim(), 'function function');
});
