// The client's lifecycle: close() that fails, a service worker that dies, and
// buffers kept past the life of their mapping.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { Pool, PAGE, HUGE, forBackings, poolPath, type ChildResult } from '../fault/helpers';

function child(args: string[], timeoutMs = 60000): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'death-child.js'), ...args], {
      env: { ...process.env, DAXMAP_SIGBUS_REPORT: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('error', reject);
    c.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

t.test('close() rejects when the service\'s final flush fails, and still releases the device', async (t) => {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const pool = await Pool.create(p, { size: 16 << 20 });
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.from('kept'), 0);
  await pool.request('testFailPersist', [{ code: 'EIO' }]);
  const first = pool.close();
  await t.rejects(first, { code: 'EIO', message: /persist .* failed/ }, 'close() rejects with the flush error');
  t.equal(pool.closed, true);
  t.equal(pool.close(), first, 'close() again is the same (rejected) promise');
  await t.rejects(pool.close(), { code: 'EIO' });
  const again = await Pool.open(p);
  const g = await again.openFile('a');
  const b = Buffer.alloc(4);
  await g.read(b, 0);
  t.equal(b.toString(), 'kept', 'the device was released; the log replays what was done');
  await again.close();
});

for (const how of ['exit', 'crash'] as const) {
  t.test(`the service worker dies (${how === 'exit' ? 'process.exit' : 'an uncaught exception'}): the Pool knows, every call rejects ECLOSED, no unhandled rejection`, async (t) => {
    const p = poolPath('tmpfs');
    t.teardown(() => fs.rmSync(p, { force: true }));
    const r = await child([p, 'notice', how]);
    t.equal(r.code, 0, `the child ran to its end${r.code === 0 ? '' : ` (${r.stdout}${r.stderr})`}`);
    const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
    if (!line) {
      t.fail('no report');
      return;
    }
    const rep = JSON.parse(line);
    t.equal(rep.death, 'ECLOSED', 'the request the service died on rejects ECLOSED');
    t.equal(rep.closed, true, 'pool.closed');
    t.equal(rep.mapped, false, 'the mapping was detached');
    t.equal(rep.buffer, 'ECLOSED', 'mapping.buffer throws ECLOSED');
    t.same([rep.load, rep.store], ['ECLOSED', 'ECLOSED'], 'the checked load() and store() throw ECLOSED');
    t.same([rep.keptLength, rep.keptRead], [0, 'undefined'], 'a Buffer kept from before reads nothing (documented)');
    t.same(rep.inflight, ['ok', 'ok', 'ok', 'ok', 'ok'], 'calls in flight at the death resolved or rejected ECLOSED');
    for (const [k, v] of Object.entries(rep.after)) t.equal(v, 'ECLOSED', `${k} after the death`);
    t.equal(rep.share, 'ECLOSED', 'share() throws ECLOSED');
    t.equal(rep.unmap, 'resolved', 'unmap() of the detached mapping resolves');
    t.equal(rep.fileClose, 'resolved', 'file.close() resolves');
    t.equal(rep.close, 'ECLOSED', 'pool.close() rejects: the pool was not closed cleanly');
    t.equal(rep.reopened, 'a', 'the device was released: the pool opens again, its file there');
  });

  t.test(`the service worker dies (${how}), killed from a thread that attached: both Pools know`, async (t) => {
    const p = poolPath('tmpfs');
    t.teardown(() => fs.rmSync(p, { force: true }));
    const r = await child([p, 'attached', how]);
    t.equal(r.code, 0, `the child ran to its end${r.code === 0 ? "" : ` (${r.stdout}${r.stderr})`}`);
    const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
    t.same(line ? JSON.parse(line) : r.stdout, {
      worker: { death: 'ECLOSED', closed: true, mapped: false, keptLength: 0, stat: 'ECLOSED', close: 'resolved' },
      stat: 'ECLOSED', closed: true, mapped: false, close: 'ECLOSED',
    }, 'the attached Pool: closed, mapping detached, calls ECLOSED, its close() resolves (it owns nothing); the owner: the same, its close() rejects');
  });

  t.test(`the service worker dies (${how}) while the main thread touches a mapping: SIGBUS, no hang`, async (t) => {
    const p = poolPath('tmpfs');
    t.teardown(() => fs.rmSync(p, { force: true }));
    const r = await child([p, 'touch', how]);
    t.match(r.stdout, /^touching$/m, 'the child was touching when the service died');
    t.equal(r.signal, 'SIGBUS', `the touch after the death was SIGBUS (code ${r.code}, ${r.signal}: ${r.stdout}${r.stderr})`);
    t.match(r.stderr, /daxmap: SIGBUS at 0x/, 'reported by DAXMAP_SIGBUS_REPORT');
  });
}

forBackings(t, 'the checked accessors load() and store(), and what a kept Buffer does after unmap()', async (t, { pool }) => {
  const f = await pool.openFile('a', { create: true });
  await f.truncate(HUGE);
  const m = await f.map();
  m.store(Buffer.from('hello'), PAGE - 2);
  t.equal(m.load(PAGE - 2, 5).toString(), 'hello', 'store then load, across a page boundary');
  t.equal(m.buffer.toString('latin1', PAGE - 2, PAGE + 3), 'hello', 'the same bytes through the buffer');
  const b = Buffer.alloc(5);
  await f.read(b, PAGE - 2);
  t.equal(b.toString(), 'hello', 'and in the file');
  const copy = m.load(0, 4);
  copy[0] = 9;
  t.equal(m.buffer[0], 0, 'load() returns a copy');
  t.equal(m.load(HUGE, 0).length, 0, 'an empty load at the end');
  for (const [what, fn] of [
    ['load(-1, 1)', () => m.load(-1, 1)],
    ['load(0, HUGE + 1)', () => m.load(0, HUGE + 1)],
    ['load(HUGE, 1)', () => m.load(HUGE, 1)],
    ["load('0', 1)", () => m.load('0' as never, 1)],
    ['store(data, HUGE - 1) of 2 bytes', () => m.store(Buffer.alloc(2), HUGE - 1)],
    ['store(data, -1)', () => m.store(Buffer.alloc(1), -1)],
    ["store('text', 0)", () => m.store('text' as never, 0)],
  ] as [string, () => unknown][]) t.throws(fn, { code: 'EINVAL' }, what);
  const kept = m.buffer;
  await m.unmap();
  kept[0] = 42;
  t.equal(kept[0], undefined, 'a Buffer kept from before unmap() reads undefined and dropped the store (no error: documented)');
  t.equal(kept.length, 0);
  t.throws(() => m.load(0, 1), { code: 'ECLOSED', message: /unmapped/ }, 'load() after unmap()');
  t.throws(() => m.store(Buffer.from('x'), 0), { code: 'ECLOSED' }, 'store() after unmap()');
  t.throws(() => m.buffer, { code: 'ECLOSED' }, 'buffer after unmap()');
  const n = await f.map();
  t.equal(n.buffer[0], 0, 'the dropped store never reached the file');
  await pool.close();
  t.throws(() => n.load(0, 1), { code: 'ECLOSED', message: /pool .* is closed/ }, 'load() once the pool is closed');
});

t.test('a service worker that cannot start: a coded error (EIO), not the runtime\'s', async (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const wt = require('node:worker_threads') as { Worker: unknown };
  const Real = wt.Worker as new (...a: unknown[]) => import('node:worker_threads').Worker;
  t.teardown(() => { wt.Worker = Real; });
  const p = poolPath('tmpfs');
  wt.Worker = function Broken(): never {
    throw Object.assign(new Error('no threads today'), { code: 'ERR_WORKER_INIT_FAILED' });
  };
  await t.rejects(Pool.create(p, { size: 16 << 20 }), { code: 'EIO', message: /could not start: no threads today/ }, 'the constructor throws');
  // A worker whose script fails to load: it emits 'error', then exits.
  wt.Worker = function Failing(_file: unknown, opts: Record<string, unknown>) {
    return new Real('throw new Error("the service module failed to load")', { ...opts, eval: true });
  };
  await t.rejects(Pool.create(p, { size: 16 << 20 }), { code: 'EIO', message: /could not start: the service module failed to load/ }, 'the worker fails');
  t.notOk(fs.existsSync(p), 'no device was made');
});
