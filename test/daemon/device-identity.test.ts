// A daemon client maps ranges of its own descriptor of the device, so it must have
// the daemon's device, not a same-named file (issue 9 item 2): daxmapd hands out an
// absolute path, and the client proves through its descriptor (pool UUID, st_dev/
// st_ino) that it is the daemon's device before any mapping.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, startClient, PAGE, tryMapAndStore } from './helpers';
import { PoolFs as LocalPool } from '../../dist/pool/pool-fs';
import { openDevice } from '../../dist/device/device';
import { identityMismatch, openVerifiedDevice, parseIdentity, readIdentity, type DeviceIdentity } from '../../dist/pool/identity';

const SIZE = 64 << 20;
let n = 0;
function shmDir(t: Test): string {
  const dir = `/dev/shm/daxmap-idtest-${process.pid}-${n++}`;
  fs.mkdirSync(dir);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function mkfs(device: string): Promise<void> {
  const p = await LocalPool.create(device, { size: SIZE });
  await p.close();
}

function identityOf(device: string): DeviceIdentity {
  const d = openDevice(device, { view: false });
  try {
    return readIdentity(d);
  } finally {
    d.close();
  }
}

t.test('a daemon started with a relative --device: a client in another cwd with a same-named decoy maps the daemon\'s device', async (t) => {
  const daemonDir = shmDir(t);
  const clientDir = shmDir(t);
  // The decoy: a pool of the same size under the same relative name, in the client's cwd.
  await mkfs(path.join(clientDir, 'rel.pool'));
  const decoyBefore = fs.readFileSync(path.join(clientDir, 'rel.pool'));
  const d = await startDaemon({ device: 'rel.pool', cwd: daemonDir, size: '64M' });
  const c = await startClient(d.socket, { cwd: clientDir });
  const other = await startClient(d.socket);
  t.teardown(async () => {
    await c.kill();
    await other.kill();
    await d.stop('SIGTERM', true);
  });
  t.ok(fs.existsSync(path.join(daemonDir, 'rel.pool')), 'the daemon made its pool in its own cwd');
  await c.call('open', { name: 'f', create: true });
  await c.call('truncate', { name: 'f', size: 4 * PAGE });
  await c.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
  await c.call('store', { id: 1, offset: 10, text: 'stored through the mapping' });
  await c.call('flush', { id: 1 });
  // Through the daemon (file.read in another process): the daemon's pool has it.
  await other.call('open', { name: 'f' });
  t.equal(await other.call('read', { name: 'f', offset: 10, length: 26 }), 'stored through the mapping', 'the store reached the daemon\'s device');
  t.ok(fs.readFileSync(path.join(clientDir, 'rel.pool')).equals(decoyBefore), 'the decoy in the client\'s cwd was never written');
});

t.test('the path the client opens names another file than the daemon\'s device: map() refuses with a coded error, never maps it', async (t) => {
  const dir = shmDir(t);
  const device = path.join(dir, 'real.pool');
  const d = await startDaemon({ device, size: '64M' });
  t.teardown(() => d.stop('SIGTERM', true).then(() => undefined));
  const real = path.join(dir, 'real.pool.moved');
  // The daemon keeps its descriptor; its path now names something else.
  fs.renameSync(device, real);

  const tryMap = (what: string): Promise<{ code: string; message: string } | null> => tryMapAndStore(d.socket, PAGE, what);

  // Another pool at the path: a different UUID.
  await mkfs(device);
  const other = await tryMap('into the other pool');
  t.equal(other?.code, 'EXDEV', 'another pool: EXDEV');
  t.match(other?.message, device, 'the message names the path');
  t.match(other?.message, /another pool/);
  fs.rmSync(device);

  // A copy of the daemon's own image: same UUID, another file.
  fs.copyFileSync(real, device);
  const copy = await tryMap('into the copy');
  t.equal(copy?.code, 'EXDEV', 'a copy of the image: EXDEV');
  t.match(copy?.message, /copy of the same pool image/);
  t.notOk(fs.readFileSync(device).includes('into the copy'), 'nothing was stored into the copy');
  fs.rmSync(device);

  // Nothing at the path (as from another mount namespace): ENOENT naming it.
  const none = await tryMap('nowhere');
  t.equal(none?.code, 'ENOENT', 'no file at the path: ENOENT');
  t.match(none?.message, device);

  // The real device back at its path: mapping works again.
  fs.renameSync(real, device);
  t.equal(await tryMap('home'), null, 'the daemon\'s own device maps');
});

t.test('openVerifiedDevice: the check itself, through the descriptor it returns', async (t) => {
  const dir = shmDir(t);
  const a = path.join(dir, 'a.pool');
  const b = path.join(dir, 'b.pool');
  const copy = path.join(dir, 'a-copy.pool');
  const zeros = path.join(dir, 'zeros.pool');
  await mkfs(a);
  await mkfs(b);
  fs.copyFileSync(a, copy);
  fs.writeFileSync(zeros, Buffer.alloc(SIZE));
  const theirs = identityOf(a);
  t.match(theirs.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'the pool UUID read through the descriptor');
  const st = fs.statSync(a, { bigint: true });
  t.equal(theirs.dev, st.dev.toString(), 'st_dev of the descriptor');
  t.equal(theirs.ino, st.ino.toString(), 'st_ino of the descriptor');
  t.not(identityOf(b).uuid, theirs.uuid, 'two pools have two UUIDs');

  const ok = openVerifiedDevice(a, theirs);
  t.equal(ok.path, a, 'the same device is accepted');
  ok.close();

  const thrown = (fn: () => unknown): any => {
    try {
      fn();
    } catch (e) {
      return e;
    }
    return null;
  };
  const names = (e: any, ...paths: string[]): boolean => typeof e?.message === 'string' && paths.every((p) => e.message.includes(`'${p}'`));
  const eb = thrown(() => openVerifiedDevice(b, theirs, a));
  t.equal(eb?.code, 'EXDEV', 'another pool: EXDEV');
  t.ok(names(eb, b, a), 'naming both paths');
  t.match(eb?.message, /another pool/);
  const ec = thrown(() => openVerifiedDevice(copy, theirs, a));
  t.equal(ec?.code, 'EXDEV', 'same UUID, another st_dev/st_ino (a copy of the image): EXDEV');
  t.ok(names(ec, copy, a), 'naming both paths');
  t.match(ec?.message, /copy of the same pool image/);
  const ez = thrown(() => openVerifiedDevice(zeros, theirs, a));
  t.equal(ez?.code, 'EXDEV', 'not a pool at all: EXDEV');
  t.match(ez?.message, /not a daxmap pool/);
  const missing = path.join(dir, 'missing.pool');
  const en = thrown(() => openVerifiedDevice(missing, theirs));
  t.equal(en?.code, 'ENOENT', 'a path this process cannot see: ENOENT');
  t.ok(names(en, missing), 'naming it');

  // The comparison's other cases.
  t.equal(identityMismatch(theirs, theirs), null);
  t.match(identityMismatch({ ...theirs, charDevice: true }, { ...theirs, charDevice: true, rdev: '1' }), /another device/, 'device-dax: compared by st_rdev');
  t.equal(identityMismatch({ ...theirs, charDevice: true, ino: '1' }, { ...theirs, charDevice: true }), null, 'device-dax: the node\'s inode does not matter');
  t.match(identityMismatch(theirs, { ...theirs, charDevice: true }), /a file, daxmapd's is a character device/);
  t.same(parseIdentity(JSON.parse(JSON.stringify(theirs))), theirs, 'identity survives JSON');
  for (const bad of [null, 1, {}, { ...theirs, dev: 5 }, { ...theirs, ino: '-1' }, { ...theirs, uuid: 3 }, { ...theirs, charDevice: 'no' }]) {
    t.equal(parseIdentity(bad), null, `refused: ${JSON.stringify(bad)}`);
  }
});
