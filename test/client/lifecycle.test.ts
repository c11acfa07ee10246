// The client's lifecycle: close() that fails, a service worker that dies, and
// buffers kept past the life of their mapping.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { Pool, poolPath, type ChildResult } from '../fault/helpers';

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
