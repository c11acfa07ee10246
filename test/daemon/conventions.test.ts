// Node conventions through daxmapd: 'close' and 'error' when the daemon is
// SIGKILLed; errors keep code, errno, syscall, path and cause across the socket;
// `await using` of a connected Pool; openFile's exclusive and mode.
import t from 'tap';
import { Writable } from 'node:stream';
import pino from 'pino';
import { startDaemon, PAGE } from './helpers';
import { Pool, type DaxmapError } from '../../dist/index';
import { held } from '../wait';


t.test("daxmapd SIGKILLed: the Pool emits 'error' then 'close', detaches its mappings, rejects with ECLOSED", async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.stop());
  const lines: { level: number; msg: string }[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  const pool = await Pool.connect(d.socket, { logger: pino({ level: 'info' }, sink), timeoutMs: 20000 });
  const f = await pool.openFile('a', { create: true });
  await f.truncate(PAGE);
  const m = await f.map();
  m.buffer.write('before');
  const events: string[] = [];
  pool.on('error', (err) => events.push(`error ${err.code}`));
  const closed = new Promise<DaxmapError | undefined>((res) => pool.once('close', (r) => {
    events.push('close');
    res(r);
  }));
  d.proc.kill('SIGKILL');
  const reason = await held(closed);
  t.equal(reason?.code, 'ECLOSED');
  t.match(reason?.message, /daxmapd/, 'the reason names the daemon');
  t.same(events, ['error ECLOSED', 'close'], "'error' then 'close', once each");
  t.equal(m.mapped, false, 'the mapping is detached');
  t.equal(pool.closed, true);
  await t.rejects(f.stat(), { code: 'ECLOSED' });
  await pool.close();
  t.same(events, ['error ECLOSED', 'close'], "close() after that emits nothing more");
  t.ok(lines.some((l) => l.level === 40 && /service is gone/.test(l.msg)), "the application's logger (Pool.connect's logger option) was told");
});

t.test('errors keep code, errno, syscall, path and cause across the socket', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.stop());
  const pool = await Pool.connect(d.socket);
  t.teardown(() => pool.close());
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.from('x'), 0);
  await pool.request('testFailPersist', [{ code: 'EIO' }]);
  const e = await f.fsync().then(() => null, (x: DaxmapError) => x);
  t.equal(e?.code, 'EIO');
  t.equal(e?.errno, -5, 'errno');
  t.equal(e?.syscall, 'msync', 'syscall');
  t.equal(e?.path, d.device, 'path');
  t.ok(e?.cause instanceof Error, 'the cause is an Error');
  t.equal((e?.cause as Error).message, 'testFailPersist', 'cause');
  const missing = await pool.openFile('none').then(() => null, (x: DaxmapError) => x);
  t.equal(missing?.code, 'ENOENT', 'a plain coded error still comes back with its code');
});

t.test('await using a connected Pool; openFile exclusive and mode through daxmapd', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.stop());
  let kept: Pool;
  {
    await using pool = await Pool.connect(d.socket);
    kept = pool;
    await using f = await pool.openFile('m', { create: true, exclusive: true, mode: 0o600 });
    t.equal((await f.stat()).mode, 0o600, 'mode');
    await t.rejects(pool.openFile('m', { create: true, exclusive: true }), { code: 'EEXIST' }, 'exclusive');
  }
  t.equal(kept.closed, true, 'closed at the end of the scope');
  t.equal(d.proc.exitCode, null, 'daxmapd is still running');
});
