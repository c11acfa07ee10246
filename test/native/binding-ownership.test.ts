// Ownership in the native bindings: every binding that acts on a region by id (or
// takes a channel's events) checks that the calling environment owns it; another
// thread gets EPERM and nothing happens.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { native } from '../../dist/native/addon';
import { TrappedRegion } from '../../dist/native/region';
import { A_WRITABLE } from '../../dist/native/frames';
import { FIXTURES, Handler, tempDevice } from './helpers';

const PAGE = 4096;
// The addon with its argument types switched off: these tests pass what TS would refuse.
const raw = native() as unknown as Record<string, (...args: unknown[]) => any>;

interface Reply { ok: boolean; value?: unknown; code?: string; name?: string; message?: string }

/** A worker thread that calls the addon on request: another environment. */
async function foreign(): Promise<{ call: (fn: string, ...args: unknown[]) => Promise<Reply>; stop: () => Promise<number> }> {
  const w = new Worker(path.join(FIXTURES, 'foreign-worker.js'), { execArgv: [] });
  await new Promise((res, rej) => {
    w.once('message', res);
    w.once('error', rej);
  });
  let seq = 0;
  const waiting = new Map<number, (r: Reply) => void>();
  w.on('message', (m: Reply & { seq: number }) => {
    waiting.get(m.seq)?.(m);
    waiting.delete(m.seq);
  });
  return {
    call: (fn, ...args) => new Promise((res) => {
      waiting.set(++seq, res);
      w.postMessage({ seq, fn, args });
    }),
    stop: () => w.terminate(),
  };
}

/** What a system call reading `length` bytes of `buf` from `offset` sees: the bytes, or the error code. */
function readBySyscall(buf: Buffer, offset: number, length: number, scratch: string): { bytes?: Buffer; code?: string } {
  const fd = fs.openSync(scratch, 'w+');
  try {
    fs.writeSync(fd, buf, offset, length, 0);
    const out = Buffer.alloc(length);
    fs.readSync(fd, out, 0, length, 0);
    return { bytes: out };
  } catch (e) {
    return { code: (e as NodeJS.ErrnoException).code };
  } finally {
    fs.closeSync(fd);
  }
}

function uniform(b: Buffer | undefined, byte: number): boolean {
  return b !== undefined && b.every((x) => x === byte);
}

t.test('region and channel bindings refuse another thread\'s region or channel with EPERM, and do nothing', async (t) => {
  const h = await Handler.start();
  t.teardown(() => h.stop());
  const { dev, cleanup } = tempDevice('tmpfs', 4 * PAGE);
  t.teardown(cleanup);
  dev.view(PAGE, PAGE).fill(0x4d);

  // This thread's region: bound to the handler (which answers with copies of 0x5a),
  // with a direct range of its own over page 1 (the device's 0x4d page).
  const r = new TrappedRegion(4 * PAGE);
  t.teardown(() => r.close());
  r.bind(h.ref);
  await h.rule(r.id, { mode: 'copy', payloadByte: 0x5a });
  r.setDirect(PAGE, PAGE, dev.deviceId, PAGE, { writable: true });

  const f = await foreign();
  t.teardown(() => f.stop());
  const foreignDevPath = path.join('/dev/shm', `daxmap-test-foreign-${process.pid}-${Date.now()}.dev`);
  t.teardown(() => fs.rmSync(foreignDevPath, { force: true }));
  const opened = await f.call('openDevice', foreignDevPath, 4 * PAGE, 0x46);
  t.ok(opened.ok, 'the other thread opened a device of its own');
  const fdev = opened.value as number;

  const refused = async (what: string, fn: string, ...args: unknown[]): Promise<void> => {
    const got = await f.call(fn, ...args);
    t.same({ ok: got.ok, code: got.code }, { ok: false, code: 'EPERM' }, `${what} from another thread: EPERM`);
  };
  await refused('set a direct range on the region', 'regionSetDirect', r.id, 0, PAGE, fdev, 0, A_WRITABLE, PAGE);
  await refused('clear the region\'s direct range', 'regionClearDirect', r.id, PAGE, PAGE);
  await refused('unbind the region', 'regionBind', r.id, 0);
  await refused('take the handler\'s channel events', 'channelTake', h.channel, '$buffer');
  await refused('abandon events of the handler\'s channel', 'channelAbandon', h.channel, '$buffer', 0);
  await refused('export the region as a Buffer', 'regionBuffer', r.id);
  await refused('close the region', 'regionClose', r.id);

  // None of them acted. A system call reads the pages, so a page that has lost
  // its handler fails with EFAULT rather than killing this process with SIGBUS.
  const scratch = path.join('/dev/shm', `daxmap-test-scratch-${process.pid}-${Date.now()}`);
  t.teardown(() => fs.rmSync(scratch, { force: true }));
  const p0 = readBySyscall(r.buffer, 0, PAGE, scratch);
  t.ok(uniform(p0.bytes, 0x5a), `page 0 answered by this thread's handler, not the other thread's direct range (${p0.code ?? p0.bytes?.[0]})`);
  const p1 = readBySyscall(r.buffer, PAGE, PAGE, scratch);
  t.ok(uniform(p1.bytes, 0x4d), `page 1 still comes from this thread's direct range (${p1.code ?? p1.bytes?.[0]})`);
  const p2 = readBySyscall(r.buffer, 2 * PAGE, PAGE, scratch);
  t.ok(uniform(p2.bytes, 0x5a), `the region is still bound to its handler (${p2.code ?? p2.bytes?.[0]})`);

  t.ok((await f.call('closeDevice')).ok);
});

t.test('a closed region is nobody\'s: EPERM from its own thread too', async (t) => {
  const r = new TrappedRegion(PAGE);
  const id = r.id;
  r.close();
  for (const [fn, args] of [['regionBind', [id, 0]], ['regionClearDirect', [id, 0, PAGE]], ['regionSetDirect', [id, 0, PAGE, 1, 0, 0, PAGE]]] as const) {
    t.throws(() => raw[fn](...args), { code: 'EPERM' }, fn);
  }
});
