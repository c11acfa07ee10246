// daxmapd with several client processes: coherence, cross-process revocation,
// clients that die, a daemon that stops with faults in flight, the socket file.
import t from 'tap';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { startDaemon, startClient, DAEMON, PAGE, HUGE, tmpName } from './helpers';
import { until } from '../wait';
import { Pool } from '../../dist/index';
import { fsckErrors } from '../fsck';

t.test('two processes mapping one file see each other\'s stores at once', async (t) => {
  const d = await startDaemon();
  const a = await startClient(d.socket);
  const b = await startClient(d.socket);
  t.teardown(async () => {
    await a.kill();
    await b.kill();
    await d.stop();
  });
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size: 4 * HUGE });
  await b.call('open', { name: 'f' });
  await a.call('map', { name: 'f', id: 1 });
  await b.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
  await a.call('store', { id: 1, offset: 100, text: 'from process A' });
  t.equal(await b.call('load', { id: 1, offset: 100, length: 14 }), 'from process A', 'B sees A\'s store');
  await b.call('store', { id: 1, offset: 3 * HUGE + 5, text: 'from B' });
  t.equal(await a.call('load', { id: 1, offset: 3 * HUGE + 5, length: 6 }), 'from B', 'A sees B\'s');
  await b.call('write', { name: 'f', offset: HUGE, text: 'by file.write' });
  t.equal(await a.call('load', { id: 1, offset: HUGE, length: 13 }), 'by file.write', 'file.write in B is visible through A\'s mapping');
  t.equal(await b.call('read', { name: 'f', offset: 100, length: 14 }), 'from process A', 'and file.read in B sees A\'s store');
  const s = await a.call<any>('stats');
  t.ok(s.faults >= 3, 'faults were counted');
  await a.call('close');
  await b.call('close');
  const r = await d.stop();
  t.same(r, { code: 0, signal: null }, 'daxmapd exits 0 on SIGTERM');
});

t.test('a private mapping in a client copies the file through the client\'s own descriptor; punch keeps its stores', async (t) => {
  const d = await startDaemon();
  const a = await startClient(d.socket);
  const b = await startClient(d.socket);
  t.teardown(async () => {
    await a.kill();
    await b.kill();
    await d.stop();
  });
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size: 2 * HUGE });
  await a.call('map', { name: 'f', id: 1 });
  await a.call('fill', { id: 1, offset: 0, length: 2 * HUGE, byte: 0x41 });
  await b.call('open', { name: 'f' });
  await b.call('map', { name: 'f', id: 1, opts: { private: true } });
  await b.call('map', { name: 'f', id: 2, opts: { private: true, faultAround: false } });
  t.equal(await b.call('load', { id: 1, offset: HUGE + 7, length: 3 }), 'AAA', 'a 2 MiB copy of written data');
  t.equal(await b.call('load', { id: 2, offset: 5 * PAGE, length: 3 }), 'AAA', 'a 4 KiB copy');
  await b.call('store', { id: 2, offset: 6 * PAGE + 1, text: 'mine' });
  t.equal(await b.call('load', { id: 2, offset: 6 * PAGE, length: 6 }), 'AmineA', 'a store into a fresh copy');
  await a.call('punch', { name: 'f', offset: 5 * PAGE, length: 2 * PAGE });
  t.equal(await b.call('load', { id: 2, offset: 6 * PAGE + 1, length: 4 }), 'mine', 'punch keeps the private store');
  t.equal(await b.call('load', { id: 2, offset: 5 * PAGE, length: 1 }), '\0', 'a page only read shows the hole');
  t.equal(await a.call('read', { name: 'f', offset: 6 * PAGE + 1, length: 1 }), '\0', 'the file never saw the private store');
  const s = await b.call<any>('stats');
  t.equal(s.sigbus, 0, 'no fault failed');
});

t.test('truncate in one process revokes the range in every other process first', async (t) => {
  const d = await startDaemon();
  const a = await startClient(d.socket);
  const b = await startClient(d.socket);
  t.teardown(async () => {
    await a.kill();
    await b.kill();
    await d.stop();
  });
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size: 4 * HUGE });
  await b.call('open', { name: 'f' });
  await b.call('map', { name: 'f', id: 1 });
  await b.call('fill', { id: 1, offset: 0, length: 4 * HUGE, byte: 0x5a });
  await a.call('truncate', { name: 'f', size: HUGE });
  // As soon as A's truncate returned, B's pages past EOF are gone.
  t.equal(await b.call('ktouch', { id: 1, offset: 2 * HUGE }), 'EFAULT', 'B gets SIGBUS past the new EOF');
  t.equal(await b.call('load', { id: 1, offset: 10, length: 1 }), 'Z', 'below EOF B keeps its data');
  // Reuse the freed blocks in A: B must never see them.
  await a.call('open', { name: 'g', create: true });
  await a.call('truncate', { name: 'g', size: 3 * HUGE });
  await a.call('map', { name: 'g', id: 2 });
  await a.call('fill', { id: 2, offset: 0, length: 3 * HUGE, byte: 0x33 });
  t.equal(await b.call('ktouch', { id: 1, offset: 3 * HUGE }), 'EFAULT');
  await a.call('truncate', { name: 'f', size: 4 * HUGE });
  t.equal(await b.call('load', { id: 1, offset: 3 * HUGE, length: 1 }), '\0', 'after growing back: zeros, never the other file\'s bytes');
});

t.test('a client killed while others wait on it: the daemon lets go of everything it held', async (t) => {
  const d = await startDaemon();
  const a = await startClient(d.socket);
  const b = await startClient(d.socket);
  t.teardown(async () => {
    await a.kill();
    await b.kill();
    await d.stop();
  });
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size: 4 * HUGE });
  // g: blocks of A's that nobody maps, for a truncate with nothing to revoke.
  await a.call('open', { name: 'g', create: true });
  await a.call('write', { name: 'g', offset: 0, text: 'g'.repeat(4 * PAGE) });
  await b.call('open', { name: 'f' });
  await b.call('map', { name: 'f', id: 1 });
  await b.call('fill', { id: 1, offset: 0, length: 4 * HUGE, byte: 1 });
  // B's threads are woken before its agent sends the daemon the RESULTS of those
  // faults, and the daemon holds their locks until then: wait until every fault is
  // complete (its latency recorded), so that B's pages are all that can hold A up.
  type Stats = { faults: number; revokes: number; latencyUs: { count: number } };
  let st: Stats | undefined;
  await until(async () => {
    st = await a.call<Stats>('stats');
    return st.faults > 0 && st.latencyUs.count === st.faults;
  }, 'B\'s faults to complete', { detail: () => st });
  // B stops answering: A's truncate must wait for B to give its pages back...
  b.proc.kill('SIGSTOP');
  // kill(2) returns before the process has stopped: wait until it has.
  await until(() => /^\d+ \(.*\) T /.test(fs.readFileSync(`/proc/${b.pid}/stat`, 'utf8')), 'client B to stop');
  const revokes0 = st!.revokes;
  let settled = false;
  const truncating = a.call('truncate', { name: 'f', size: 0 }).finally(() => (settled = true));
  // The daemon counts a revoke as it sends it: then B's pages are all that holds the
  // truncate up. A truncate that has nothing to revoke, asked for after that, gets
  // through the same daemon and pool: had f's not waited for B, it would be done first.
  await until(async () => (st = await a.call<Stats>('stats')).revokes > revokes0, 'the daemon to send B the revoke', { detail: () => st });
  await a.call('truncate', { name: 'g', size: 0 });
  t.equal(settled, false, 'the truncate waits for the stopped client to revoke', { daemonLog: d.log.slice(-8) });
  // ...until B dies: then nothing of B's holds it any more.
  await b.kill('SIGKILL');
  await truncating;
  t.pass('the truncate completed once the client died');
  // Another client goes on working; the freed blocks are free.
  const c = await startClient(d.socket);
  await c.call('open', { name: 'f' });
  await c.call('truncate', { name: 'f', size: HUGE });
  await c.call('map', { name: 'f', id: 1 });
  await c.call('store', { id: 1, offset: 0, text: 'after' });
  t.equal(await a.call('read', { name: 'f', offset: 0, length: 5 }), 'after');
  await c.call('close');
  await a.call('close');
  await c.kill();
  t.same(await d.stop('SIGTERM', true), { code: 0, signal: null });
  t.same(fsckErrors(d.device), [], 'fsck clean');
  fs.rmSync(d.device, { force: true });
});

t.test('a client killed with mappings live leaves a clean pool, no leaked blocks', async (t) => {
  const device = `/dev/shm/daxmap-dtest-leak-${process.pid}.pool`;
  t.teardown(() => fs.rmSync(device, { force: true }));
  const d = await startDaemon({ device });
  const a = await startClient(d.socket);
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size: 8 * HUGE });
  await a.call('map', { name: 'f', id: 1 });
  await a.call('fill', { id: 1, offset: 0, length: 8 * HUGE, byte: 7 });
  await a.call('map', { name: 'f', id: 2, opts: { private: true } });
  await a.call('store', { id: 2, offset: 0, text: 'private' });
  const free0 = await (async () => {
    const b = await startClient(d.socket);
    const s = await b.call<any>('request', { op: 'statfs' });
    await b.kill();
    return s.free;
  })();
  await a.kill('SIGKILL');
  const b = await startClient(d.socket);
  await b.call('open', { name: 'f' });
  t.equal(await b.call('read', { name: 'f', offset: HUGE, length: 1 }), '\x07', 'the killed client\'s stores are in the file');
  await b.call('request', { op: 'unlink', args: ['f'] });
  const s = await b.call<any>('request', { op: 'statfs' });
  t.equal(s.free, free0 + 8 * HUGE, 'every block of the file came back: nothing leaked');
  await b.kill();
  const r = await d.stop('SIGTERM', true);
  t.same(r, { code: 0, signal: null });
  t.same(fsckErrors(device), [], 'fsck clean');
});

t.test('SIGTERM with faults in flight: every client thread is answered, the daemon exits 0', async (t) => {
  const d = await startDaemon();
  const a = await startClient(d.socket);
  t.teardown(async () => {
    await a.kill();
    await d.stop();
  });
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size: 16 * HUGE });
  await a.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
  // Make faults slow (each waits 3 s inside the policy, its locks held), then have a
  // kernel-mode touch wait in one.
  await a.call('request', { op: 'testInject', args: [{ where: 'any', delayMs: 3000 }] });
  // The client runs the touches one after the other; one that starts only after it
  // learnt the daemon is gone finds the mapping detached (ECLOSED), as documented.
  const touches = [0, 1, 2, 3].map((i) => a.call('ktouch', { id: 1, offset: i * HUGE + PAGE }).then((x) => x, (e: Error & { code?: string }) => e.code ?? String(e)));
  let firstDone = false;
  void touches[0]!.then(() => (firstDone = true));
  // Stop the daemon once the first touch has reached it (a fault counted), not before.
  const watcher = await Pool.connect(d.socket);
  await until(async () => (await watcher.stats()).faults >= 1, 'the first touch to reach the daemon');
  await watcher.close();
  t.notOk(firstDone, 'the first touch is still waiting in its fault when SIGTERM comes');
  const r = await d.stop('SIGTERM');
  t.same(r, { code: 0, signal: null }, 'daxmapd exited 0');
  const results = await Promise.all(touches);
  t.ok(results[0] === null || results[0] === 'EFAULT', `the touch the daemon had got a page or SIGBUS (${String(results[0])})`);
  for (const x of results.slice(1)) t.ok(x === null || x === 'EFAULT' || x === 'ECLOSED', `a later touch got a page or SIGBUS, or found the mapping detached (${String(x)})`);
  // The client learns the daemon is gone from its control connection, in its own
  // time: once a call fails with ECLOSED, its mappings are detached too.
  let last: unknown;
  await until(() => a.call('read', { name: 'f', offset: 0, length: 1 }).then((v) => ((last = v), false), (e: { code?: string }) => ((last = e.code), e.code === 'ECLOSED')), 'a call to fail with ECLOSED', { detail: () => last });
  await t.rejects(a.call('ktouch', { id: 1, offset: 9 * HUGE }), { code: 'ECLOSED' }, 'the mapping was detached, nothing hangs');
  await t.rejects(a.call('read', { name: 'f', offset: 0, length: 1 }), { code: 'ECLOSED' });
});

t.test('the socket file: a stale one is replaced, a live one is not stolen', async (t) => {
  const socket = tmpName('sock');
  // A stale socket: its daemon was killed outright.
  const d1 = await startDaemon({ socket });
  d1.proc.kill('SIGKILL');
  await d1.exited;
  t.ok(fs.existsSync(socket), 'the killed daemon left its socket file');
  const d2 = await startDaemon({ socket });
  t.pass('a new daemon replaced the stale socket');
  const second = spawnSync(process.execPath, [DAEMON, '--socket', socket, '--device', `/dev/shm/daxmap-dtest-other-${process.pid}.pool`, '--size', '16M'], { encoding: 'utf8', timeout: 20000 });
  t.equal(second.status, 1, 'a second daemon on a live socket refuses to start');
  t.match(second.stdout + second.stderr, /already serving/);
  const c = await startClient(socket);
  t.ok(c.pid, 'the first daemon still serves');
  await c.kill();
  t.same(await d2.stop(), { code: 0, signal: null });
  fs.rmSync(d1.device, { force: true });
  fs.rmSync(`/dev/shm/daxmap-dtest-other-${process.pid}.pool`, { force: true });
  const mode = spawnSync(process.execPath, [DAEMON, '--help'], { encoding: 'utf8' });
  t.match(mode.stdout, /--socket PATH/, '--help documents the options');
  const bad = spawnSync(process.execPath, [DAEMON, '--bogus'], { encoding: 'utf8' });
  t.equal(bad.status, 2);
  t.match(bad.stderr, /unknown option/);
});
