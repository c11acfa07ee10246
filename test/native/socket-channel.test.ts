// Socket channels against real userfaultfd: a fake daemon in a child process
// (fixtures/socket-daemon.js) answers this process's faults over a UNIX socket,
// installing from devices this process opened.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { TrappedRegion } from '../../dist/native/region';
import { agentStats } from '../../dist/native/engine';
import { Op, EV_WRITE } from '../../dist/native/frames';
import { SocketFaultChannel } from '../../dist/native/socket-channel';
import type { DaxmapError } from '../../dist/errors';
import { tempDevice } from './helpers';
import { FakeDaemon, waitFor } from './socket-helpers';

const PAGE = 4096;

// One daemon serves the file's tests (a fresh connection each: its state starts
// over); the test that kills its daemon starts its own.
let shared: FakeDaemon;
t.before(async () => {
  shared = await FakeDaemon.start();
});
t.teardown(() => shared.stop());

function writeFrom(fd: number, b: Buffer, off: number): Promise<NodeJS.ErrnoException | null> {
  return new Promise((res) => fs.write(fd, b, off, PAGE, 0, (e) => res(e)));
}

t.test('HELLO both ways: the daemon echoes the session, the client learns its pid', async (t) => {
  const d = shared;
  const session = 0xfeedfacecafebeefn;
  const ch = SocketFaultChannel.connect(d.path, { session });
  t.teardown(() => ch.close());
  await waitFor(() => ch.info().state === 'open', 'the handshake');
  const info = ch.info();
  t.equal(info.peerPid, d.pid, 'the daemon\'s pid came in its HELLO');
  t.equal(info.session, session);
  t.equal(info.reason, '');
  const rep = await d.report(session);
  t.same(rep.hello, { pid: process.pid, session: session.toString(), version: 1 }, 'the daemon read the client\'s HELLO');
  t.equal(ch.closed, false);
  t.equal(ch.reason, undefined);
  ch.unref();
  ch.ref();
  t.pass('ref and unref');
});

t.test('the main thread faults; the answer comes from the other process', async (t) => {
  const d = shared;
  const { dev, cleanup } = tempDevice('tmpfs', 64 * PAGE);
  t.teardown(cleanup);
  dev.view(PAGE, 11).write('from device');
  const ch = SocketFaultChannel.connect(d.path, { session: 1n });
  const r = new TrappedRegion(16 * PAGE);
  // The daemon names the device this process opened, by this process's id.
  await d.rule(r.id, { mode: 'install', device: dev.deviceId, populate: true });
  r.bind(ch);
  const b = r.buffer;
  // Synchronous: this thread is blocked in the kernel until the daemon's answer runs.
  t.equal(b.toString('utf8', PAGE, PAGE + 11), 'from device', 'a read fault installs the device page');
  b.write('stored', 5 * PAGE);
  t.equal(dev.view(5 * PAGE, 6).toString(), 'stored', 'a store lands in the device');
  // The client sends an answer's result after it woke the faulting thread, on the
  // channel's socket, so the daemon may answer this report before it has read the
  // last result (seen once under load): ask again until every result is in.
  let rep = await d.report(1n);
  while (rep.log.some((l) => l[5] === null)) rep = await d.report(1n);
  t.same(rep.log.map((l) => [l[0], l[1], l[2] & EV_WRITE, l[4], l[5]]), [
    [r.id, PAGE, 0, Op.Install, 0],
    [r.id, 5 * PAGE, EV_WRITE, Op.Install, 0],
  ], 'one event per first touch, each answered by an install whose result came back');
  t.equal(rep.tagMismatch, 0, 'results echo the answers\' tags, in order');
  const info = ch.info();
  t.equal(info.eventsSent, 2);
  t.equal(info.answers, 2);
  t.equal(info.live, 0, 'nothing left outstanding');
  r.close();
  ch.close();
});

t.test('zero page, copy and poison answers travel too; the write after a zero page traps again', async (t) => {
  const d = shared;
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  t.teardown(cleanup);
  dev.view(2 * PAGE, PAGE).fill(0x33);
  const ch = SocketFaultChannel.connect(d.path, { session: 2n });
  t.teardown(() => ch.close());
  const zr = new TrappedRegion(8 * PAGE);
  const cr = new TrappedRegion(8 * PAGE);
  await d.rule(zr.id, { mode: 'zero-then-install', device: dev.deviceId, populate: true });
  await d.rule(cr.id, { mode: 'copy', payloadByte: 0x5a });
  zr.bind(ch);
  cr.bind(ch);
  const zb = zr.buffer;
  t.equal(zb[2 * PAGE + 5], 0, 'the read sees the zero page');
  zb[2 * PAGE + 5] = 9;
  t.equal(dev.view(2 * PAGE + 5, 1)[0], 9, 'the write-protect fault went to the daemon and was answered by an install');
  t.equal(zb[2 * PAGE + 6], 0x33);
  t.equal(cr.buffer[100], 0x5a, 'a copy answer with a payload');
  // Poison, seen from a system call (EFAULT) so this process survives.
  const pr = new TrappedRegion(4 * PAGE);
  pr.bind(ch); // no rule: the fake daemon poisons
  const out = `/dev/shm/daxmap-test-sockp-${process.pid}`;
  const fd = fs.openSync(out, 'w');
  t.teardown(() => fs.rmSync(out, { force: true }));
  t.equal((await writeFrom(fd, pr.buffer, 0))?.code, 'EFAULT', 'a poison answer: EFAULT in a system call');
  fs.closeSync(fd);
  const rep = await d.until((x) => x.log.every((l) => l[5] !== null), 'every result to come back', 2n);
  t.same(rep.log.map((l) => l[5]), rep.log.map(() => 0), 'every answer succeeded');
  for (const r of [zr, cr, pr]) r.close();
});

t.test('two threads fault one page at once: one event, both proceed', async (t) => {
  const d = shared;
  const { dev, cleanup } = tempDevice('tmpfs', 64 * PAGE);
  const srcPath = `/dev/shm/daxmap-test-socksrc-${process.pid}`;
  fs.writeFileSync(srcPath, Buffer.alloc(PAGE, 0x61));
  t.teardown(async () => {
    cleanup();
    fs.rmSync(srcPath, { force: true });
  });
  const ch = SocketFaultChannel.connect(d.path, { session: 3n });
  t.teardown(() => ch.close());
  const ROUNDS = 16;
  const r = new TrappedRegion(ROUNDS * PAGE);
  // A delayed answer: the second thread's fault arrives while the first is out at the daemon.
  await d.rule(r.id, { mode: 'install', device: dev.deviceId, populate: true, delayMs: 20 });
  r.bind(ch);
  const b = r.buffer;
  const fd = fs.openSync(srcPath, 'r');
  const before = agentStats().merged;
  for (let i = 0; i < ROUNDS; i++) {
    const read = new Promise<number>((res, rej) => fs.read(fd, b, i * PAGE, 100, 0, (e, n) => (e ? rej(e) : res(n))));
    b[i * PAGE + 2000] = 0x7a; // this thread, same page
    t.equal(await read, 100);
  }
  fs.closeSync(fd);
  let good = 0;
  for (let i = 0; i < ROUNDS; i++) if (b[i * PAGE] === 0x61 && b[i * PAGE + 2000] === 0x7a) good++;
  t.equal(good, ROUNDS, 'both threads\' stores are in every page');
  const rep = await d.report(3n);
  const perPage = new Map<number, number>();
  for (const l of rep.log) if (l[4] !== Op.Wake) perPage.set(l[1], (perPage.get(l[1]) ?? 0) + 1);
  t.equal([...perPage.values()].filter((n) => n === 1).length, ROUNDS, 'every page got exactly one page answer');
  const merged = rep.log.filter((l) => l[3] > 1).length + (agentStats().merged - before);
  t.ok(merged > 0, `simultaneous faults on one page were merged (${merged} times)`);
  r.close();
});

t.test('a revoke sent by the daemon: result returned, the next touch faults again', async (t) => {
  const d = shared;
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  t.teardown(cleanup);
  dev.view(0, PAGE).fill(0x11);
  dev.view(8 * PAGE, PAGE).fill(0x22);
  const ch = SocketFaultChannel.connect(d.path, { session: 4n });
  t.teardown(() => ch.close());
  const r = new TrappedRegion(4 * PAGE);
  await d.rule(r.id, { mode: 'install', device: dev.deviceId, populate: true });
  r.bind(ch);
  const b = r.buffer;
  t.equal(b[10], 0x11);
  // Executed on the channel's I/O thread, not the agent's reader (revoke waits for the reader).
  const res = await d.answer([
    { op: Op.Revoke, region: r.id, offset: 0, length: PAGE, tag: 1001 },
    { op: Op.Wake, region: 999999, offset: 0, length: PAGE, tag: 1002 },
  ]);
  t.same(res, [{ tag: 1001, result: 0 }, { tag: 1002, result: -6 }], 'results in order, tags echoed, -ENXIO for a bad region');
  await d.forget(r.id);
  await d.rule(r.id, { mode: 'install', device: dev.deviceId, devBase: 8 * PAGE, populate: true });
  const events = (await d.report(4n)).events;
  t.equal(b[10], 0x22, 'the next touch faulted again and sees the new answer');
  t.equal((await d.report(4n)).events, events + 1);
  b[11] = 0x44;
  t.equal(dev.view(8 * PAGE + 11, 1)[0], 0x44, 'a store after revoke goes to the new device page');
  t.equal(dev.view(11, 1)[0], 0x11, 'the revoked page is untouched');
  r.close();
});

t.test('the daemon killed while a thread is blocked in a kernel-mode fault: EFAULT, nothing hangs', async (t) => {
  const d = await FakeDaemon.start();
  const out = `/dev/shm/daxmap-test-sockkill-${process.pid}`;
  t.teardown(async () => {
    await d.stop();
    fs.rmSync(out, { force: true });
  });
  let died: DaxmapError | undefined;
  const ch = SocketFaultChannel.connect(d.path, { session: 5n, onClose: (e) => (died = e) });
  t.teardown(() => ch.close());
  const r = new TrappedRegion(8 * PAGE);
  await d.rule(r.id, { mode: 'ignore' });
  r.bind(ch);
  const fd = fs.openSync(out, 'w');
  const write = writeFrom(fd, r.buffer, 0); // a libuv thread blocks in write(2) on the fault
  await d.until((rep) => rep.events === 1, 'the event to reach the daemon', 5n);
  t.equal(ch.info().live, 1, 'the event is outstanding');
  const poisonedBefore = agentStats().poisoned;
  await d.kill('SIGKILL');
  t.equal((await write)?.code, 'EFAULT', 'the blocked write(2) fails with EFAULT');
  await waitFor(() => died !== undefined, 'the death callback');
  t.equal(died?.code, 'ECLOSED', 'the JS side learns the channel died');
  t.match(died?.message, /ECONNRESET: the daemon closed the connection/);
  t.equal(ch.closed, true);
  t.match(ch.reason, /^ECONNRESET/);
  t.equal(ch.info().state, 'closed');
  t.equal((await writeFrom(fd, r.buffer, 3 * PAGE))?.code, 'EFAULT', 'a later fault of the region: EFAULT too');
  t.ok(agentStats().poisoned >= poisonedBefore + 2, 'both were poisoned by the agent');
  fs.closeSync(fd);
  r.close();
});

t.test('close from JS: BYE, waiting faults fail, later faults fail', async (t) => {
  const d = shared;
  const out = `/dev/shm/daxmap-test-sockclose-${process.pid}`;
  t.teardown(() => fs.rmSync(out, { force: true }));
  let called = false;
  const ch = SocketFaultChannel.connect(d.path, { session: 6n, onClose: () => (called = true) });
  const r = new TrappedRegion(8 * PAGE);
  await d.rule(r.id, { mode: 'ignore' });
  r.bind(ch);
  const fd = fs.openSync(out, 'w');
  const write = writeFrom(fd, r.buffer, 0);
  await d.until((rep) => rep.events === 1, 'the event to reach the daemon', 6n);
  ch.close();
  t.equal((await write)?.code, 'EFAULT', 'the waiting fault is released with EFAULT');
  const rep = await d.until((x) => x.closed, 'the connection to close', 6n);
  t.equal(rep.bye, true, 'the daemon got BYE before EOF');
  t.equal((await writeFrom(fd, r.buffer, PAGE))?.code, 'EFAULT', 'later faults of the region fail');
  t.equal(ch.closed, true);
  t.throws(() => ch.info(), { code: 'ECLOSED' });
  ch.close();
  t.pass('close is idempotent');
  // The I/O thread reports every stop, the owner's close included, to the channel's
  // JS side (which keeps the reason and calls onClose only for a death): once the
  // reason is here, onClose would have been called by now.
  await waitFor(() => ch.reason !== undefined, 'the I/O thread to report the close');
  t.match(ch.reason, /^ECLOSED: .*closed by its owner/, 'it reported the owner\'s close');
  t.equal(called, false, 'onClose is not called for the owner\'s own close');
  fs.closeSync(fd);
  r.close();
});

t.test('argument checks and connect errors', async (t) => {
  t.throws(() => new SocketFaultChannel(-1, { session: 0n }), { code: 'EBADF' });
  t.throws(() => new SocketFaultChannel(0.5, { session: 0n }), { code: 'EBADF' });
  t.throws(() => SocketFaultChannel.connect('/tmp/x.sock', { session: -1n }), { code: 'EINVAL' });
  t.throws(() => SocketFaultChannel.connect('/tmp/x.sock', { session: 1n << 64n }), { code: 'EINVAL' });
  t.throws(() => SocketFaultChannel.connect('/tmp/x.sock', { session: 5 as unknown as bigint }), { code: 'EINVAL' });
  t.throws(() => SocketFaultChannel.connect('', { session: 0n }), { code: 'EINVAL' });
  t.throws(() => SocketFaultChannel.connect('/tmp/' + 'x'.repeat(200), { session: 0n }), { code: 'EINVAL' });
  t.throws(() => SocketFaultChannel.connect(`/tmp/daxmap-test-none-${process.pid}.sock`, { session: 0n }), { code: 'ENOENT' });
  const file = `/dev/shm/daxmap-test-notsock-${process.pid}`;
  fs.writeFileSync(file, 'x');
  const fd = fs.openSync(file, 'r');
  t.throws(() => new SocketFaultChannel(fd, { session: 0n }), { code: 'ENOTSOCK' }, 'a regular file is not a socket');
  fs.closeSync(fd);
  fs.rmSync(file);
  t.throws(() => new SocketFaultChannel(1 << 30, { session: 0n }), { code: 'EBADF' }, 'a closed descriptor');
  const server = net.createServer();
  await new Promise<void>((res) => server.listen(`/tmp/daxmap-test-listen-${process.pid}.sock`, res));
  const lfd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  t.throws(() => new SocketFaultChannel(lfd, { session: 0n }), { code: 'ENOTCONN' }, 'a listening socket is not connected');
  await new Promise((res) => server.close(res));
});

t.test('a worker that exits with its socket channel open: the channel says BYE and stops', async (t) => {
  const d = shared;
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { SocketFaultChannel } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/native/socket-channel'))});
    const ch = SocketFaultChannel.connect(workerData, { session: 7n, ref: false });
    const iv = setInterval(() => {
      if (ch.info().state === 'open') { clearInterval(iv); parentPort.postMessage(ch.id); }
    }, 5);
  `;
  const w = new Worker(src, { eval: true, execArgv: [], workerData: d.path });
  const exit = new Promise<number>((res) => w.once('exit', res));
  await new Promise((res, rej) => {
    w.once('message', res);
    w.once('error', rej);
  });
  t.equal(await exit, 0, 'with ref: false the open channel does not keep the worker alive');
  const rep = await d.until((x) => x.closed, 'the connection to close', 7n);
  t.equal(rep.bye, true, 'environment teardown closed the channel (BYE)');
});

t.test('over a descriptor the caller connected: the caller closing its own does not end the channel', async (t) => {
  const d = shared;
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  t.teardown(cleanup);
  const sock = net.connect(d.path);
  await new Promise<void>((res, rej) => sock.once('connect', res).once('error', rej));
  sock.pause(); // nothing arrives before the channel's HELLO; Node must not read after it
  const fd = (sock as unknown as { _handle: { fd: number } })._handle.fd;
  const ch = new SocketFaultChannel(fd, { session: 8n });
  t.teardown(() => ch.close());
  sock.destroy();
  await new Promise((res) => sock.once('close', res));
  const r = new TrappedRegion(4 * PAGE);
  dev.view(0, 3).write('dup');
  await d.rule(r.id, { mode: 'install', device: dev.deviceId });
  r.bind(ch);
  t.equal(r.buffer.toString('utf8', 0, 3), 'dup', 'answered over the duplicate');
  t.equal(ch.info().state, 'open');
  r.close();
});
