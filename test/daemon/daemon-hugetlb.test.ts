// daxmapd on the device-DAX stand-in: its --device a file on hugetlbfs, 2 MiB-granular
// like /dev/dax (docs/pool.md, "2 MiB-granular devices"; test/hugetlb.ts). Two client
// processes mapping and faulting at once, a client SIGKILLed in a fault, and the
// device identity check (device-identity.test.ts) with the daemon's device there.
// Every file is a whole number of 2 MiB units (a shared fault in a last unit that
// EOF cuts is not answered whole yet: docs/pool.md, "Not done yet"). Skipped, with
// the reason, where huge pages cannot be reserved or hugetlbfs cannot be mounted.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { hugetlb, type Hugetlb } from '../hugetlb';
import { startDaemon, startClient, HUGE, type Client, type DaemonProc, tryMapAndStore } from './helpers';
import { until } from '../wait';
import { openDevice } from '../../dist/device/device';
import { PoolFs as LocalPool } from '../../dist/pool/pool-fs';
import { Pool } from '../../dist/index';
import { fsckErrors } from '../fsck';

const SIZE = 32 << 20;

async function mkfs(device: string): Promise<void> {
  await (await LocalPool.create(device, { size: SIZE })).close();
}

/** A daemon on a new pool file of the stand-in and `n` clients, all stopped at teardown (clients first). */
async function daemonOn(t: Test, h: Hugetlb, n: number): Promise<{ d: DaemonProc; clients: Client[] }> {
  const d = await startDaemon({ device: h.file(), size: `${SIZE >> 20}M` });
  const clients: Client[] = [];
  t.teardown(async () => {
    for (const c of clients) await c.kill();
    await d.stop();
  });
  // Said before 'daxmapd listening' (it came after it, so a supervisor waiting for that could miss it).
  const said = d.log.findIndex((l) => l.includes('pool device: hugetlbfs, 2097152-byte granular'));
  t.ok(said >= 0 && said < d.log.findIndex((l) => l.includes('daxmapd listening')), 'before it listens, the daemon says its device is the 2 MiB-granular stand-in');
  for (let i = 0; i < n; i++) clients.push(await startClient(d.socket));
  return { d, clients };
}

/** Stop the daemon cleanly (exit 0) and fsck its device. */
async function stopClean(t: Test, d: DaemonProc): Promise<void> {
  t.same(await d.stop('SIGTERM', true), { code: 0, signal: null }, 'daxmapd exits 0');
  t.same(fsckErrors(d.device), [], 'fsck clean');
  fs.rmSync(d.device, { force: true });
}

t.test('daxmapd on the hugetlbfs stand-in', async (t) => {
  const h = await hugetlb(t, 4 * (SIZE / HUGE) + 8);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }

  t.test('two clients fault distinct files at once; each reads the other\'s stores', async (t) => {
    const { d, clients: [a, b] } = await daemonOn(t, h, 2);
    for (const [c, name] of [[a!, 'a'], [b!, 'b']] as const) {
      await c.call('open', { name, create: true });
      await c.call('truncate', { name, size: 4 * HUGE });
      await c.call('map', { name, id: 1 });
    }
    // Both processes take first write faults at the same time, every window a new unit.
    await Promise.all([
      a!.call('fill', { id: 1, offset: 0, length: 4 * HUGE, byte: 0x61 }),
      b!.call('fill', { id: 1, offset: 0, length: 4 * HUGE, byte: 0x62 }),
    ]);
    await a!.call('open', { name: 'b' });
    await b!.call('open', { name: 'a' });
    await a!.call('map', { name: 'b', id: 2 });
    await b!.call('map', { name: 'a', id: 2, opts: { faultAround: false } });
    t.equal(await a!.call('load', { id: 2, offset: 3 * HUGE + 9, length: 3 }), 'bbb', 'A sees B\'s stores through its mapping');
    t.equal(await b!.call('load', { id: 2, offset: HUGE - 1, length: 2 }), 'aa', 'B sees A\'s (faultAround off: still whole windows)');
    t.equal(await a!.call('read', { name: 'b', offset: 2 * HUGE - 2, length: 4 }), 'bbbb', 'file.read in A sees B\'s stores');
    t.equal(await b!.call('read', { name: 'a', offset: 0, length: 4 }), 'aaaa', 'file.read in B sees A\'s');
    const s = await a!.call<{ sigbus: number; pmd: number }>('stats');
    t.equal(s.sigbus, 0, 'no fault failed');
    t.ok(s.pmd >= 8, `the windows were answered whole (pmd ${s.pmd})`);
    await a!.call('close');
    await b!.call('close');
    await stopClean(t, d);
  });

  t.test('two clients race first touches of the same windows of one file: one zeroed unit each, every store kept', async (t) => {
    const { d, clients: [a, b] } = await daemonOn(t, h, 2);
    await a!.call('open', { name: 'f', create: true });
    await a!.call('truncate', { name: 'f', size: 6 * HUGE });
    await b!.call('open', { name: 'f' });
    await a!.call('map', { name: 'f', id: 1 });
    await b!.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
    const offs = (k: number): number[] => [0, 1, 2, 3, 4, 5].map((w) => w * HUGE + k);
    await Promise.all([
      a!.call('storeAt', { id: 1, offsets: offs(4096 * 7 + 1), text: 'A' }),
      b!.call('storeAt', { id: 1, offsets: offs(4096 * 300 + 2), text: 'B' }),
    ]);
    const both = [0, 1, 2, 3, 4, 5].flatMap((w) => [w * HUGE + 4096 * 7 + 1, w * HUGE + 4096 * 300 + 2]);
    t.same(await a!.call('nonzero', { id: 1, offset: 0, length: 6 * HUGE }), both, 'A sees both processes\' stores, every other byte zero');
    t.same(await b!.call('nonzero', { id: 1, offset: 0, length: 6 * HUGE }), both, 'and so does B');
    for (const w of [0, 5]) {
      t.equal(await a!.call('read', { name: 'f', offset: w * HUGE + 4096 * 300 + 2, length: 1 }), 'B', `file.read: B's store in window ${w}`);
      t.equal(await b!.call('read', { name: 'f', offset: w * HUGE + 4096 * 7 + 1, length: 1 }), 'A', `file.read: A's store in window ${w}`);
    }
    t.equal((await a!.call<{ sigbus: number }>('stats')).sigbus, 0, 'no fault failed');
    await a!.call('close');
    await b!.call('close');
    await stopClean(t, d);
  });

  t.test('a client SIGKILLed in a fault: the other client waiting on the same window gets its page, the daemon serves on', async (t) => {
    const { d, clients } = await daemonOn(t, h, 2);
    const [a, b] = clients as [Client, Client];
    await a.call('open', { name: 'f', create: true });
    await a.call('truncate', { name: 'f', size: 4 * HUGE });
    await b.call('open', { name: 'f' });
    await a.call('map', { name: 'f', id: 1 });
    await b.call('map', { name: 'f', id: 1 });
    const watcher = await Pool.connect(d.socket);
    t.teardown(() => (watcher.closed ? undefined : watcher.close()));
    const f0 = (await watcher.stats()).faults;
    // Every fault now takes 5 s inside the policy, its locks held (time to kill A in it).
    await watcher.request('testInject', [{ where: 'any', delayMs: 5000 }]);
    const aTouch = a.send('ktouch', { id: 1, offset: HUGE + 4096 });
    void aTouch.catch(() => {});
    await until(async () => (await watcher.stats()).faults > f0, 'A\'s fault to reach the daemon');
    const bTouch = b.call<string | null>('ktouch', { id: 1, offset: HUGE + 8192 });
    await until(async () => (await watcher.stats()).faults > f0 + 1, 'B\'s fault on the same window to reach the daemon');
    await a.kill('SIGKILL');
    await watcher.request('testInject', [{ where: null }]);
    t.equal(await bTouch, null, 'B\'s fault was answered with a page, not SIGBUS');
    t.same(await b.call('nonzero', { id: 1, offset: HUGE, length: HUGE }), [], 'a zeroed unit');
    await b.call('store', { id: 1, offset: HUGE + 5, text: 'after' });
    // A third client maps and faults: the daemon serves on.
    const c = await startClient(d.socket);
    clients.push(c);
    await c.call('open', { name: 'f' });
    await c.call('map', { name: 'f', id: 1 });
    t.equal(await c.call('load', { id: 1, offset: HUGE + 5, length: 5 }), 'after', 'a new client sees B\'s store');
    await c.call('fill', { id: 1, offset: 3 * HUGE, length: HUGE, byte: 0x63 });
    t.equal(await b.call('read', { name: 'f', offset: 4 * HUGE - 1, length: 1 }), 'c', 'and B reads its stores');
    t.equal((await watcher.stats()).sigbus, 0, 'no fault failed');
    await watcher.close();
    await b.call('close');
    await c.call('close');
    await stopClean(t, d);
  });

  t.test('device identity: a decoy, the path swapped (EXDEV), the path gone (ENOENT)', async (t) => {
    // A daemon started with a relative --device in its own directory of the stand-in;
    // a decoy pool under the same name in the client's.
    const daemonDir = h.file('daemon');
    const clientDir = h.file('client');
    fs.mkdirSync(daemonDir);
    fs.mkdirSync(clientDir);
    t.teardown(() => {
      fs.rmSync(daemonDir, { recursive: true, force: true });
      fs.rmSync(clientDir, { recursive: true, force: true });
    });
    await mkfs(path.join(clientDir, 'rel.pool'));
    const decoyBefore = fs.readFileSync(path.join(clientDir, 'rel.pool'));
    const d = await startDaemon({ device: 'rel.pool', cwd: daemonDir, size: `${SIZE >> 20}M` });
    t.teardown(() => d.stop('SIGTERM', true).then(() => undefined));
    t.ok(d.log.some((l) => l.includes('pool device: hugetlbfs')), 'the daemon\'s device is on the stand-in');
    const c = await startClient(d.socket, { cwd: clientDir });
    const other = await startClient(d.socket);
    t.teardown(async () => {
      await c.kill();
      await other.kill();
    });
    await c.call('open', { name: 'f', create: true });
    await c.call('truncate', { name: 'f', size: HUGE });
    await c.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
    await c.call('store', { id: 1, offset: 10, text: 'stored through the mapping' });
    await c.call('flush', { id: 1 });
    await other.call('open', { name: 'f' });
    t.equal(await other.call('read', { name: 'f', offset: 10, length: 26 }), 'stored through the mapping', 'the store reached the daemon\'s device');
    t.ok(fs.readFileSync(path.join(clientDir, 'rel.pool')).equals(decoyBefore), 'the decoy in the client\'s cwd was never written');
    await c.kill();
    await other.kill();

    // The daemon keeps its descriptor; its path now names something else.
    const device = path.join(daemonDir, 'rel.pool');
    const real = `${device}.moved`;
    fs.renameSync(device, real);
    const tryMap = (what: string): Promise<{ code: string; message: string } | null> => tryMapAndStore(d.socket, HUGE, what);
    await mkfs(device);
    const another = await tryMap('into the other pool');
    t.equal(another?.code, 'EXDEV', 'another pool at the path: EXDEV');
    t.match(another?.message, /another pool/);
    fs.rmSync(device);
    // A copy of the daemon's own image (hugetlbfs has no write(2): copied through a mapping).
    const img = fs.readFileSync(real);
    const cp = openDevice(device, { create: true, size: img.length });
    cp.view(0, img.length).set(img);
    cp.persistAll();
    cp.close();
    const copy = await tryMap('into the copy');
    t.equal(copy?.code, 'EXDEV', 'a copy of the image: EXDEV');
    t.match(copy?.message, /copy of the same pool image/);
    t.notOk(fs.readFileSync(device).includes('into the copy'), 'nothing was stored into the copy');
    fs.rmSync(device);
    const none = await tryMap('nowhere');
    t.equal(none?.code, 'ENOENT', 'no file at the path: ENOENT');
    t.match(none?.message, device);
    fs.renameSync(real, device);
    t.equal(await tryMap('home'), null, 'the daemon\'s own device maps again');
    t.same(await d.stop('SIGTERM', true), { code: 0, signal: null }, 'daxmapd exits 0');
    t.same(fsckErrors(device), [], 'fsck clean');
  });
});
