// The native fault engine against real userfaultfd: a handler on a worker thread
// answers faults raised by other threads, with every kind of answer.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { TrappedRegion } from '../../dist/native/region';
import { agentStats, configureAgent, execute } from '../../dist/native/engine';
import { AnswerBatch, Op, A_WRITABLE, A_ADOPT, EV_WP, EV_WRITE } from '../../dist/native/frames';
import { FIXTURES, Handler, runChild, tempDevice } from './helpers';

const PAGE = 4096;

async function waitFor(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

t.test('a handler on a worker thread answers the main thread', async (t) => {
  const h = await Handler.start();
  const { dev, cleanup } = tempDevice('tmpfs', 64 * PAGE);
  t.teardown(async () => {
    await h.stop();
    cleanup();
  });
  dev.view(PAGE, 11).write('from device');
  const r = new TrappedRegion(16 * PAGE);
  await h.rule(r.id, { mode: 'install', device: dev.deviceId, populate: true });
  r.bind(h.ref);
  const b = r.buffer;
  t.equal(b.toString('utf8', PAGE, PAGE + 11), 'from device', 'a read fault installs the device page');
  b.write('through the mapping', 3 * PAGE);
  t.equal(dev.view(3 * PAGE, 19).toString(), 'through the mapping', 'a store lands in the device, no copy');
  dev.view(3 * PAGE, 4).write('FROM');
  t.equal(b.toString('utf8', 3 * PAGE, 3 * PAGE + 4), 'FROM', 'a device store is visible through the mapping at once');
  const rep = await h.report();
  t.same(rep.log.map((l) => [l[1], l[2] & EV_WRITE, l[4], l[5]]), [
    [PAGE, 0, Op.Install, 0],
    [3 * PAGE, EV_WRITE, Op.Install, 0],
  ], 'one event per first touch, each answered by an install');
  r.close();
});

t.test('several worker threads fault at once', async (t) => {
  const h = await Handler.start();
  const { dev, cleanup } = tempDevice('tmpfs', 4 * 64 * PAGE);
  t.teardown(async () => {
    await h.stop();
    cleanup();
  });
  const N = 4;
  const pages = 64;
  const workers = Array.from({ length: N }, (_, i) =>
    new Worker(path.join(FIXTURES, 'toucher-worker.js'), { execArgv: [], workerData: { channel: h.channel, pages, stamp: i * 17 } }));
  const regions = await Promise.all(workers.map((w) => new Promise<number>((res) => w.once('message', (m) => res(m.id)))));
  for (let i = 0; i < N; i++) await h.rule(regions[i]!, { mode: 'install', device: dev.deviceId, devBase: i * pages * PAGE, populate: true });
  const done = workers.map((w) => new Promise<any>((res) => w.once('message', res)));
  for (const w of workers) w.postMessage('go');
  const results = await Promise.all(done);
  for (let i = 0; i < N; i++) {
    t.equal(results[i].ok, pages, `worker ${i} saw every store`);
    t.equal(dev.view(i * pages * PAGE + 5 * PAGE + 7, 1)[0], (i * 17 + 5) & 0xff, `worker ${i}'s stores reached its device range`);
  }
  await Promise.all(workers.map((w) => w.terminate()));
});

t.test('two threads fault the same page at once: both proceed, one answer', async (t) => {
  const h = await Handler.start();
  const { dev, cleanup } = tempDevice('tmpfs', 256 * PAGE);
  const srcPath = `/dev/shm/daxmap-test-src-${process.pid}`;
  fs.writeFileSync(srcPath, Buffer.alloc(PAGE, 0x61));
  t.teardown(async () => {
    await h.stop();
    cleanup();
    fs.rmSync(srcPath, { force: true });
  });
  const ROUNDS = 64;
  const r = new TrappedRegion(ROUNDS * PAGE);
  // The handler answers after a short delay, so the second thread's fault arrives
  // while the first one is still being handled.
  await h.rule(r.id, { mode: 'install', device: dev.deviceId, populate: true, delayMs: 10 });
  r.bind(h.ref);
  const b = r.buffer;
  const fd = fs.openSync(srcPath, 'r');
  const before = agentStats();
  for (let i = 0; i < ROUNDS; i++) {
    // Thread 1: a libuv pool thread reads into the page (a kernel-mode write fault).
    const read = new Promise<number>((res, rej) => fs.read(fd, b, i * PAGE, 100, 0, (e, n) => (e ? rej(e) : res(n))));
    // Thread 2: this thread stores into the same page.
    b[i * PAGE + 2000] = 0x7a;
    t.equal(await read, 100);
  }
  fs.closeSync(fd);
  let good = 0;
  for (let i = 0; i < ROUNDS; i++) if (b[i * PAGE] === 0x61 && b[i * PAGE + 99] === 0x61 && b[i * PAGE + 2000] === 0x7a) good++;
  t.equal(good, ROUNDS, 'both threads\' stores are in every page');
  const rep = await h.report();
  const installs = new Map(rep.answersPerPage);
  let once = 0;
  for (let i = 0; i < ROUNDS; i++) if (installs.get(`${r.id}:${i * PAGE}`) === 1) once++;
  t.equal(once, ROUNDS, 'every page was given exactly one page answer');
  const after = agentStats();
  const merged = rep.log.filter((l) => l[3] > 1).length + (after.merged - before.merged);
  t.ok(merged > 0, `simultaneous faults on one page were merged (${merged} times)`);
  r.close();
});

// A populated window's pages take stores with no fault at all: on tmpfs the install
// populates for reading (docs/faults.md, "Populating a window"), which relies on the
// kernel mapping a shared tmpfs page writable on a read fault; on a regular file it
// populates for writing (its mapping tracks writes).
for (const kind of ['tmpfs', 'disk'] as const) {
  t.test(`${kind}: stores into a populated 2 MiB window take no page fault`, async (t) => {
    const WIN = 2 << 20;
    const h = await Handler.start();
    const { dev, cleanup } = tempDevice(kind, WIN);
    t.teardown(async () => {
      await h.stop();
      cleanup();
    });
    dev.view(0, WIN).fill(0); // resident zeros, as a window taken from clean space
    const r = new TrappedRegion(WIN);
    await h.rule(r.id, { mode: 'install', device: dev.deviceId, window: WIN, populate: true });
    r.bind(h.ref);
    const b = r.buffer;
    b[0] = 1; // the window's fault
    const before = process.resourceUsage().minorPageFault;
    for (let off = PAGE; off < WIN; off += PAGE) b[off] = off / PAGE & 0xff;
    const faults = process.resourceUsage().minorPageFault - before;
    // Another thread of the process may fault meanwhile (a handful); a window whose
    // pages were left read-only or unmapped would fault once per page (511).
    t.ok(faults < 64, `511 stores took ${faults} page faults in the process`);
    t.equal(dev.view(5 * PAGE, 1)[0], 5, 'the stores reached the device');
    const rep = await h.report();
    t.equal(rep.log.length, 1, 'one trap for the whole window');
    r.close();
  });
}

// A trapped 2 MiB window of a 4 KiB device is mapped in two calls (native/region.cc,
// MapFixed: the page table the trap allocated is kept; docs/faults.md, "The slow first
// pass"). The pieces must merge back: one VMA a window or fewer (the window budget
// counts one), every page the device's own.
for (const kind of ['tmpfs', 'disk'] as const) {
  t.test(`${kind}: windows installed from the trap are whole VMAs of the device`, async (t) => {
    const WIN = 2 << 20;
    const N = 3;
    const h = await Handler.start();
    const { dev, path: devPath, cleanup } = tempDevice(kind, N * WIN);
    t.teardown(async () => {
      await h.stop();
      cleanup();
    });
    for (let p = 0; p < (N * WIN) / PAGE; p++) dev.view(p * PAGE, 4).writeUInt32LE(p + 1);
    const r = new TrappedRegion(N * WIN);
    await h.rule(r.id, { mode: 'install', device: dev.deviceId, window: WIN, populate: true });
    r.bind(h.ref);
    const b = r.buffer;
    // The first window trapped in its second half, the others in their first.
    const order = [WIN / 2 + PAGE, WIN + 5 * PAGE, 2 * WIN];
    for (const off of order) t.equal(b.readUInt32LE(off), off / PAGE + 1);
    t.equal((await h.report()).log.length, N, 'one trap a window');
    let bad = 0;
    for (let p = 0; p < (N * WIN) / PAGE; p++) if (b.readUInt32LE(p * PAGE) !== p + 1) bad++;
    t.equal(bad, 0, 'every page is the device page at its offset');
    const lo = r.address;
    const hi = lo + BigInt(N * WIN);
    const vmas = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(l);
      return m !== null && BigInt(`0x${m[1]}`) < hi && BigInt(`0x${m[2]}`) > lo;
    });
    const ofDev = vmas.filter((l) => l.endsWith(devPath));
    t.ok(ofDev.length >= 1 && ofDev.length <= N, `the device's windows are ${ofDev.length} VMA(s) (at most ${N}): ${vmas.length} in the region`);
    t.equal(vmas.length, ofDev.length, 'nothing else is left in the region');
    r.close();
  });
}

t.test('zero page, then a write traps again as a write-protect fault', async (t) => {
  const h = await Handler.start();
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  t.teardown(async () => {
    await h.stop();
    cleanup();
  });
  dev.view(2 * PAGE, PAGE).fill(0x33);
  const r = new TrappedRegion(16 * PAGE);
  await h.rule(r.id, { mode: 'zero-then-install', device: dev.deviceId, populate: true });
  r.bind(h.ref);
  const b = r.buffer;
  t.equal(b[2 * PAGE + 5], 0, 'the read sees the zero page, not the device');
  t.equal(b[5 * PAGE], 0);
  b[2 * PAGE + 5] = 9;
  t.equal(dev.view(2 * PAGE + 5, 1)[0], 9, 'the write was trapped and answered by an install');
  t.equal(b[2 * PAGE + 6], 0x33, 'the installed page is the device page');
  const rep = await h.report();
  const ev = rep.log.filter((l) => l[1] === 2 * PAGE);
  t.equal(ev.length, 2, 'two events for the page: the read, then the write');
  t.equal(ev[0]![2] & (EV_WRITE | EV_WP), 0, 'first a read fault');
  t.equal(ev[1]![2] & (EV_WRITE | EV_WP), EV_WRITE | EV_WP, 'then a write-protect fault');
  r.close();
});

t.test('a thread that faults again the moment it is woken is answered again', async (t) => {
  // Regression: an answer used to wake its waiters before retiring the page's live
  // event, so the woken thread's next fault (a write after a zero-page read) could
  // be merged into the retired event and never answered.
  const devPath = `/dev/shm/daxmap-test-rtw-${process.pid}`;
  t.teardown(() => fs.rmSync(devPath, { force: true }));
  const res = await runChild('read-then-write-child.js', ['2000', devPath], { timeoutMs: 60000 });
  t.equal(res.signal, null, 'the child was not killed');
  t.match(res.stdout, /^done 0 2000$/m, 'every read saw zero, every write landed');
});

t.test('poison: the faulting access dies of SIGBUS at that address', async (t) => {
  const res = await runChild('sigbus-child.js', ['3', 'poison']);
  t.equal(res.signal, 'SIGBUS', 'the child died of SIGBUS');
  const touched = /touching (0x[0-9a-f]+)/.exec(res.stdout)?.[1];
  const at = /daxmap: SIGBUS at (0x[0-9a-f]+)/.exec(res.stderr)?.[1];
  t.ok(touched, 'the child said where it would touch');
  t.equal(at, touched, 'the SIGBUS reports the touched address');
  t.notMatch(res.stdout, /survived/);
});

t.test('a handler that throws: its unanswered events get SIGBUS, not a hang', async (t) => {
  const res = await runChild('sigbus-child.js', ['1', 'throw']);
  t.equal(res.signal, 'SIGBUS');
});

t.test('revoke: the next touch faults again and sees the new answer', async (t) => {
  const h = await Handler.start();
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  t.teardown(async () => {
    await h.stop();
    cleanup();
  });
  dev.view(0, PAGE).fill(0x11);
  dev.view(8 * PAGE, PAGE).fill(0x22);
  const r = new TrappedRegion(4 * PAGE);
  await h.rule(r.id, { mode: 'install', device: dev.deviceId, devBase: 0, populate: true });
  r.bind(h.ref);
  const b = r.buffer;
  t.equal(b[10], 0x11);
  const res = await h.execute([{ op: Op.Revoke, region: r.id, offset: 0, length: PAGE }]);
  t.same(res, [0], 'revoke succeeded');
  await h.forget(r.id);
  await h.rule(r.id, { mode: 'install', device: dev.deviceId, devBase: 8 * PAGE, populate: true });
  const events = (await h.report()).log.length;
  t.equal(b[10], 0x22, 'the next touch sees the new answer');
  t.equal((await h.report()).log.length, events + 1, 'the touch after revoke faulted again');
  // A store after revoke goes to the new device page, never to anonymous memory.
  b[11] = 0x44;
  t.equal(dev.view(8 * PAGE + 11, 1)[0], 0x44);
  t.equal(dev.view(11, 1)[0], 0x11, 'the revoked device page is untouched');
  r.close();
});

t.test('kernel-mode faults: write(2) from and read(2) into untouched pages', async (t) => {
  const h = await Handler.start();
  const { dev, cleanup } = tempDevice('disk', 16 * PAGE);
  const filePath = `/dev/shm/daxmap-test-kio-${process.pid}`;
  t.teardown(async () => {
    await h.stop();
    cleanup();
    fs.rmSync(filePath, { force: true });
  });
  dev.view(0, PAGE).fill(0x41);
  const r = new TrappedRegion(8 * PAGE);
  await h.rule(r.id, { mode: 'install', device: dev.deviceId, populate: false });
  r.bind(h.ref);
  const b = r.buffer;
  const fd = fs.openSync(filePath, 'w+');
  t.equal(fs.writeSync(fd, b, 0, PAGE, 0), PAGE, 'writeSync from an untouched page completes');
  const check = Buffer.alloc(PAGE);
  fs.readSync(fd, check, 0, PAGE, 0);
  t.ok(check.every((x) => x === 0x41), 'it wrote the device contents');
  fs.writeSync(fd, Buffer.alloc(PAGE, 0x42), 0, PAGE, PAGE);
  t.equal(fs.readSync(fd, b, 4 * PAGE, PAGE, PAGE), PAGE, 'readSync into an untouched page completes');
  t.ok(dev.view(4 * PAGE, PAGE).every((x) => x === 0x42), 'the data went into the device');
  fs.closeSync(fd);
  r.close();
});

t.test('a closed region: JS access throws, nothing reaches memory', async (t) => {
  const h = await Handler.start();
  t.teardown(() => h.stop());
  const r = new TrappedRegion(4 * PAGE);
  await h.rule(r.id, { mode: 'copy', payloadByte: 0x5a });
  r.bind(h.ref);
  const b = r.buffer;
  t.equal(b[0], 0x5a);
  r.close();
  t.throws(() => b.fill(1), TypeError, 'a method on the stale Buffer throws TypeError');
  t.throws(() => b.readUInt8(0), 'a read method throws');
  t.equal(b.length, 0, 'the stale Buffer is empty');
  t.equal(b[0], undefined, 'indexing reads nothing');
  t.throws(() => r.buffer, { code: 'ECLOSED' });
  t.throws(() => r.bind(null), { code: 'ECLOSED' });
  r.close();
  t.pass('close is idempotent');
});

t.test('a fault still waiting when its region closes is released (EFAULT)', async (t) => {
  const h = await Handler.start();
  const out = `/dev/shm/daxmap-test-close-${process.pid}`;
  t.teardown(async () => {
    await h.stop();
    fs.rmSync(out, { force: true });
  });
  const r = new TrappedRegion(4 * PAGE);
  await h.rule(r.id, { mode: 'ignore' });
  r.bind(h.ref);
  const fd = fs.openSync(out, 'w');
  const before = agentStats().delivered;
  const write = new Promise<NodeJS.ErrnoException | null>((res) => fs.write(fd, r.buffer, 0, PAGE, 0, (e) => res(e)));
  await waitFor(() => agentStats().delivered > before, 'the fault to reach the handler');
  r.close();
  const err = await write;
  t.equal(err?.code, 'EFAULT', 'the blocked write(2) fails with EFAULT instead of hanging');
  fs.closeSync(fd);
});

t.test('a handler that goes away: its waiting faults are answered with SIGBUS', async (t) => {
  const h = await Handler.start();
  const out = `/dev/shm/daxmap-test-orphan-${process.pid}`;
  t.teardown(() => fs.rmSync(out, { force: true }));
  const r = new TrappedRegion(4 * PAGE);
  await h.rule(r.id, { mode: 'ignore' });
  r.bind(h.ref);
  const fd = fs.openSync(out, 'w');
  const before = agentStats().delivered;
  const write = new Promise<NodeJS.ErrnoException | null>((res) => fs.write(fd, r.buffer, 0, PAGE, 0, (e) => res(e)));
  await waitFor(() => agentStats().delivered > before, 'the fault to reach the handler');
  await h.stop();
  t.equal((await write)?.code, 'EFAULT', 'poisoned: the kernel-mode access fails instead of hanging');
  // Later faults of a region whose channel is gone are poisoned too.
  const write2 = new Promise<NodeJS.ErrnoException | null>((res) => fs.write(fd, r.buffer, PAGE, PAGE, 0, (e) => res(e)));
  t.equal((await write2)?.code, 'EFAULT');
  fs.closeSync(fd);
  r.close();
});

t.test('the watchdog answers a fault nobody answers', async (t) => {
  const h = await Handler.start();
  const out = `/dev/shm/daxmap-test-wd-${process.pid}`;
  t.teardown(async () => {
    configureAgent({ faultTimeoutMs: 30000 });
    await h.stop();
    fs.rmSync(out, { force: true });
  });
  configureAgent({ faultTimeoutMs: 300 });
  t.equal(agentStats().faultTimeoutMs, 300);
  const r = new TrappedRegion(4 * PAGE);
  await h.rule(r.id, { mode: 'ignore' });
  r.bind(h.ref);
  const fd = fs.openSync(out, 'w');
  const before = agentStats().timeouts;
  const t0 = Date.now();
  const err = await new Promise<NodeJS.ErrnoException | null>((res) => fs.write(fd, r.buffer, 0, PAGE, 0, (e) => res(e)));
  t.equal(err?.code, 'EFAULT');
  t.ok(Date.now() - t0 >= 250, 'not before the timeout');
  t.equal(agentStats().timeouts, before + 1);
  t.throws(() => configureAgent({ faultTimeoutMs: -1 }), { code: 'EINVAL' });
  fs.closeSync(fd);
  r.close();
});

t.test('direct table: the agent answers without the handler', async (t) => {
  const { dev, cleanup } = tempDevice('tmpfs', 8 << 20);
  t.teardown(cleanup);
  dev.view(3 << 20, 4).write('deep');
  const r = new TrappedRegion(8 << 20);
  r.setDirect(0, 8 << 20, dev.deviceId, 0, { writable: true, populate: true, window: 2 << 20 });
  const before = agentStats();
  const b = r.buffer;
  t.equal(b.toString('utf8', 3 << 20, (3 << 20) + 4), 'deep');
  for (let off = 2 << 20; off < 4 << 20; off += PAGE) b[off] = 1;
  const after = agentStats();
  t.equal(after.direct - before.direct, 1, 'one 2 MiB window answered the whole chunk');
  t.equal(after.delivered - before.delivered, 0, 'nothing reached a handler');
  r.clearDirect(0, 8 << 20);
  t.throws(() => r.setDirect(0, 3000, dev.deviceId, 0), { code: 'EINVAL' });
  t.throws(() => r.setDirect(0, PAGE, dev.deviceId, 0, { window: 8192 }), { code: 'EINVAL' });
  r.close();
});

t.test('answers: EEXIST is skipped, bad answers are refused, adopt copies private pages', async (t) => {
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  t.teardown(cleanup);
  const r = new TrappedRegion(8 * PAGE);
  const batch = new AnswerBatch();
  // Answers may run without any fault pending (the agent does not need one).
  batch.add({ op: Op.Zero, region: r.id, offset: 0, length: 2 * PAGE });
  batch.add({ op: Op.Zero, region: r.id, offset: 0, length: 2 * PAGE });
  batch.add({ op: Op.Copy, region: r.id, offset: 2 * PAGE, length: PAGE, payload: Buffer.alloc(PAGE, 0x77) });
  batch.add({ op: Op.Copy, region: r.id, offset: 2 * PAGE, length: PAGE, payload: Buffer.alloc(PAGE, 0x78) });
  batch.add({ op: Op.Install, region: r.id, offset: 3 * PAGE, length: PAGE, device: 999999, devOffset: 0 });
  batch.add({ op: Op.Install, region: r.id, offset: 3 * PAGE, length: PAGE, device: dev.deviceId, devOffset: 64 * PAGE });
  batch.add({ op: Op.Wake, region: 999999, offset: 0, length: PAGE });
  batch.add({ op: Op.Copy, region: r.id, offset: 4 * PAGE, length: PAGE, payload: Buffer.alloc(16) });
  const res = Array.from(execute(batch));
  t.same(res.slice(0, 4), [0, 0, 0, 0], 'a second zero or copy of a present page succeeds (EEXIST skipped)');
  t.equal(res[4], -19, 'unknown device: -ENODEV');
  t.equal(res[5], -22, 'device range out of bounds: -EINVAL');
  t.equal(res[6], -6, 'unknown region: -ENXIO');
  t.equal(res[7], -22, 'short payload: -EINVAL');
  const b = r.buffer;
  t.equal(b[2 * PAGE], 0x77, 'the first copy stands');
  // Adopt: the private page's bytes are carried into the device before it is mapped.
  batch.reset();
  batch.add({ op: Op.Install, flags: A_WRITABLE | A_ADOPT, region: r.id, offset: 2 * PAGE, length: PAGE, device: dev.deviceId, devOffset: 5 * PAGE });
  t.same(Array.from(execute(batch)), [0]);
  t.equal(dev.view(5 * PAGE, 1)[0], 0x77, 'adopted into the device');
  b[2 * PAGE + 1] = 0x01;
  t.equal(dev.view(5 * PAGE + 1, 1)[0], 0x01, 'and now mapped from it');
  r.close();
});

t.test('vm.max_map_count: an install fails with ENOMEM promptly; headroom or closing recovers', async (t) => {
  const res = await runChild('mapcount-child.js', [`/dev/shm/daxmap-test-mapcount-${process.pid}`], {
    timeoutMs: 120000,
    // At the limit V8 itself cannot map memory: no optimising compiler in this child.
    nodeArgs: ['--jitless'],
  });
  t.equal(res.code, 0, res.stderr);
  const out = JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}');
  t.equal(out.failure, -12, 'the failing install reports -ENOMEM');
  t.ok(out.installed > out.limit / 4 && out.installed < out.limit, `failed near the limit (${out.installed} of ${out.limit})`);
  t.ok(out.failMs < 20000, 'reaching the limit took no retry loop');
  t.equal(out.revoke, 0, 'with a little headroom back, a revoke works (the policy keeps that headroom)');
  t.same(out.after, [0, 0], 'after closing the region, install and revoke work again');
});

t.test('the addon loads in several workers at once, each with its own state', async (t) => {
  const src = `
    const { parentPort } = require('node:worker_threads');
    const { TrappedRegion } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/native/region'))});
    const { openDevice } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/device/device'))});
    const p = '/dev/shm/daxmap-test-w-' + process.pid + '-' + require('node:worker_threads').threadId;
    const dev = openDevice(p, { create: true, size: 1 << 20 });
    const r = new TrappedRegion(1 << 20);
    r.setDirect(0, 1 << 20, dev.deviceId, 0, { writable: true, populate: true });
    const b = r.buffer;
    for (let i = 0; i < (1 << 20); i += 4096) b[i] = 3;
    let sum = 0; for (let i = 0; i < (1 << 20); i += 4096) sum += dev.view(i, 1)[0];
    require('node:fs').rmSync(p);
    parentPort.postMessage(sum);
    // regions and devices left open are released at worker teardown
  `;
  const ws = Array.from({ length: 4 }, () => new Worker(src, { eval: true, execArgv: [] }));
  const exits = ws.map((w) => new Promise((res) => w.once('exit', res)));
  const sums = await Promise.all(ws.map((w) => new Promise((res, rej) => { w.once('message', res); w.once('error', rej); })));
  t.same(sums, [768, 768, 768, 768]);
  t.same(await Promise.all(exits), [0, 0, 0, 0], 'each worker exits cleanly with its region and device left open');
});
