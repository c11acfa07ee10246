// Node conventions of the embedded API: `await using` for Pool, PoolFile and Mapping;
// Pool's 'close' and 'error' events (a clean close, the service worker dying, with
// and without an 'error' listener); errors that keep code, errno, syscall, path and
// cause across the worker; the application's own logger; openFile's create,
// exclusive and mode; the stat() fields.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import pino from 'pino';
import { poolPath, PAGE } from '../fault/helpers';
import { held, until } from '../wait';
import { Pool, isDaxError, probeUffd, reportSigbus, type DaxmapError, type ErrorCode } from '../../dist/index';
import { Worker } from 'node:worker_threads';
import { errorInfo, rebuildError } from '../../dist/protocol/errors';

function tmpPool(t: Test): string {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  return p;
}


t.test('await using closes a Pool, closes a PoolFile and unmaps a Mapping at the end of the scope', async (t) => {
  const p = tmpPool(t);
  let pool: Pool;
  let kept: Buffer;
  {
    await using pl = await Pool.create(p, { size: 16 << 20 });
    pool = pl;
    let file;
    {
      await using f = await pl.openFile('a', { create: true });
      file = f;
      await f.truncate(PAGE);
      {
        await using m = await f.map();
        m.buffer.write('scoped');
        kept = m.buffer;
        t.equal(m.mapped, true);
      }
      t.equal(kept.length, 0, 'the mapping was unmapped at the end of its scope (its buffer detached)');
      t.equal((await f.stat()).size, PAGE, 'the file is still open');
    }
    await t.rejects(file.stat(), { code: 'EBADF' }, 'the file was closed at the end of its scope');
    t.equal(pl.closed, false);
  }
  t.equal(pool.closed, true, 'the pool was closed at the end of its scope');
  const again = await Pool.open(p);
  const f = await again.openFile('a');
  const b = Buffer.alloc(6);
  await f.read(b, 0);
  t.equal(b.toString(), 'scoped', 'what was stored is in the pool');
  await again.close();
  t.equal(typeof Symbol.asyncDispose, 'symbol');
  t.equal(typeof (again as unknown as Record<symbol, unknown>)[Symbol.asyncDispose], 'function');
});

t.test("'close' once after close(), with no reason", async (t) => {
  const pool = await Pool.create(tmpPool(t), { size: 16 << 20 });
  const seen: unknown[] = [];
  pool.on('close', (reason) => seen.push(reason));
  pool.on('error', (err) => seen.push(['error', err]));
  await pool.close();
  await pool.close();
  t.same(seen, [undefined], "one 'close', no reason, no 'error'");
});

t.test("the service worker dying: 'error' (with a listener) then 'close' with the reason; calls reject ECLOSED", async (t) => {
  const pool = await Pool.create(tmpPool(t), { size: 16 << 20 });
  const f = await pool.openFile('a', { create: true });
  await f.truncate(PAGE);
  const m = await f.map();
  const events: [string, DaxmapError | undefined][] = [];
  pool.on('error', (err) => events.push(['error', err]));
  const closed = new Promise<DaxmapError | undefined>((res) => pool.once('close', (r) => {
    events.push(['close', r]);
    res(r);
  }));
  await pool.request('testExit', [{ crash: true }]);
  const reason = await held(closed);
  t.same(events.map((e) => e[0]), ['error', 'close'], "'error' first, then 'close'");
  t.equal(reason?.code, 'ECLOSED');
  t.match(reason?.message, /exited/, 'the reason names the death');
  t.equal(events[0]![1], reason, 'both carry the same error');
  t.equal(m.mapped, false, 'the mapping was detached');
  await t.rejects(f.stat(), { code: 'ECLOSED' });
  await t.rejects(pool.close(), { code: 'ECLOSED' });
});

t.test("the service dying with no 'error' listener is no uncaught exception: 'close' tells", async (t) => {
  const pool = await Pool.create(tmpPool(t), { size: 16 << 20 });
  const closed = new Promise<DaxmapError | undefined>((res) => pool.once('close', res));
  await pool.request('testExit', [{ crash: false }]);
  t.equal((await held(closed))?.code, 'ECLOSED');
  await t.rejects(pool.list(), { code: 'ECLOSED' });
  await pool.close().catch(() => {});
});

t.test('errors keep code, errno, syscall, path and cause across the worker', async (t) => {
  const missing = `/dev/shm/daxmap-missing-${process.pid}/x.pool`;
  const err = await Pool.open(missing).then(() => null, (e: DaxmapError) => e);
  t.equal(err?.code, 'ENOENT');
  t.equal(err?.path, missing, 'path');
  const cause = err?.cause as DaxmapError | undefined;
  t.ok(cause instanceof Error, 'the cause is an Error');
  t.equal(cause?.code, 'ENOENT', 'its code');
  t.equal(cause?.errno, -2, 'its errno (negative, as Node\'s)');

  const pool = await Pool.create(tmpPool(t), { size: 16 << 20 });
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.from('x'), 0);
  await pool.request('testFailPersist', [{ code: 'EIO' }]);
  const e = await f.fsync().then(() => null, (x: DaxmapError) => x);
  t.equal(e?.code, 'EIO');
  t.equal(e?.errno, -5, 'errno');
  t.equal(e?.syscall, 'msync', 'syscall');
  t.equal(e?.path, pool.path, 'path');
  t.equal((e?.cause as Error | undefined)?.message, 'testFailPersist', 'cause');
  await pool.close().catch(() => {});
});

t.test('an error without a code travels as EIO, itself the cause; causes travel a few deep', async (t) => {
  const plain = rebuildError(errorInfo(new TypeError('a bug')));
  t.equal(plain.code, 'EIO');
  t.equal((plain.cause as Error).message, 'a bug');
  t.equal((plain.cause as DaxmapError).code, undefined, 'the cause had no code and gets none');
  let deep: Error = new Error('root');
  for (let i = 0; i < 10; i++) deep = Object.assign(new Error(`level ${i}`, { cause: deep }), { code: 'EIO' });
  let r: unknown = rebuildError(errorInfo(deep));
  let depth = 0;
  while (r instanceof Error && r.cause !== undefined) {
    r = r.cause;
    depth++;
  }
  t.ok(depth >= 3 && depth <= 5, `a chain of ${depth} causes survives (bounded)`);
  const full = rebuildError(JSON.parse(JSON.stringify(errorInfo(Object.assign(new Error('EACCES: x'), { code: 'EACCES', errno: -13, syscall: 'open', path: '/p' })))));
  t.match(full, { code: 'EACCES', errno: -13, syscall: 'open', path: '/p', message: 'EACCES: x' }, 'JSON (the socket) keeps every field');
});

t.test('openFile: create, exclusive and mode do what the docs say; stat() has the documented fields', async (t) => {
  const pool = await Pool.create(tmpPool(t), { size: 16 << 20 });
  t.teardown(() => pool.close());
  await t.rejects(pool.openFile('none'), { code: 'ENOENT' }, 'without create: ENOENT');
  const a = await pool.openFile('a', { create: true, exclusive: true, mode: 0o600 });
  await t.rejects(pool.openFile('a', { create: true, exclusive: true }), { code: 'EEXIST' }, 'a second exclusive create: EEXIST');
  const again = await pool.openFile('a', { create: true });
  t.equal(again.name, 'a', 'create without exclusive opens the existing file');
  const st = await a.stat();
  t.equal(st.mode, 0o600, 'mode');
  t.match(st, { name: 'a', size: 0, allocated: 0, extents: [], uid: process.getuid!(), gid: process.getgid!() });
  t.ok(Math.abs(st.mtimeMs - Date.now()) < 60000, 'mtimeMs is a time of now');
  const dflt = await pool.openFile('b', { create: true });
  t.equal((await dflt.stat()).mode, 0o644, 'the default mode');
  await t.rejects(pool.openFile('c', { create: true, mode: 0o1000 }), { code: 'EINVAL' }, 'mode past 0o777');
  await t.rejects(pool.openFile('c', { create: true, mode: -1 }), { code: 'EINVAL' });
});

t.test("the application's logger: the worker's lines reach it, and the Pool's own", async (t) => {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  const app = pino({ level: 'debug' }, sink);
  const pool = await Pool.create(tmpPool(t), { size: 16 << 20, logger: app });
  await held(until(() => lines.some((l) => l.msg === 'pool opened' && l.layer === 'pool'), "the service's 'pool opened' at debug"));
  const opened = lines.find((l) => l.msg === 'pool opened')!;
  t.equal(opened.level, 20, 'at its level (debug)');
  t.equal(opened.path, pool.path, 'with its fields');
  const closed = new Promise((res) => pool.once('close', res));
  await pool.request('testExit', [{ crash: false }]);
  await held(closed);
  t.ok(lines.some((l) => l.level === 40 && l.layer === 'client' && /service is gone/.test(String(l.msg))), "the Pool's own warning went to it");
  await pool.close().catch(() => {});

  const quiet = await Pool.create(tmpPool(t), { size: 16 << 20, logger: 'silent' });
  await quiet.close();
  for (const bad of ['loud', 5, {}, { info: () => {} }]) {
    await t.rejects(Pool.create(tmpPool(t), { logger: bad as never }), { code: 'EINVAL', message: /logger/ }, `logger ${JSON.stringify(bad)}`);
  }
  await t.rejects(Pool.open(tmpPool(t), { loger: 'warn' } as never), { code: 'EINVAL' }, 'a misspelt option');
});

t.test('pino-pretty is not a runtime dependency: without it, pretty output falls back to JSON lines', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  t.equal(pkg.dependencies['pino-pretty'], undefined, 'not in dependencies');
  // A process where pino-pretty cannot be found, as in an application that did not install it.
  const script = `
    const M = require('node:module');
    const resolve = M._resolveFilename;
    M._resolveFilename = function (req, ...rest) {
      if (req === 'pino-pretty') throw Object.assign(new Error('not installed'), { code: 'MODULE_NOT_FOUND' });
      return resolve.call(this, req, ...rest);
    };
    require(${JSON.stringify(path.join(__dirname, '..', '..', 'dist', 'log.js'))}).configureLogger({ pretty: true, fd: 1 }).warn('plain');`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.match(JSON.parse(r.stdout.trim()), { msg: 'plain', level: 40 }, 'a JSON line');
});

t.test('the small accessors and functions of the root do what docs/api.md says', async (t) => {
  const pool = await Pool.open(await (async () => {
    const p = tmpPool(t);
    await (await Pool.create(p, { size: 16 << 20 })).close();
    return p;
  })(), { logger: 'warn' });
  t.teardown(() => pool.close());
  t.match(pool.path, /\.pool$/, 'pool.path');
  t.equal(pool.closed, false, 'pool.closed');
  const f = await pool.openFile('acc', { create: true });
  t.equal(f.pool, pool, 'file.pool');
  t.equal(f.name, 'acc', 'file.name');
  await f.fallocate(0, 8 * PAGE, { keepSize: true });
  t.equal((await f.stat()).size, 0, 'fallocate with keepSize keeps the size');
  await f.fallocate(0, 2 * PAGE);
  t.equal((await f.stat()).size, 2 * PAGE, 'fallocate extends it');
  await f.zeroRange(0, 16 * PAGE, { keepSize: true });
  t.equal((await f.stat()).size, 2 * PAGE, 'zeroRange with keepSize keeps it');
  await f.zeroRange(0, 4 * PAGE);
  t.equal((await f.stat()).size, 4 * PAGE, 'zeroRange extends it');
  const m = await f.map({ offset: PAGE, length: 2 * PAGE, private: true });
  t.equal(m.file, f, 'm.file');
  t.equal(m.offset, PAGE, 'm.offset');
  t.equal(m.length, 2 * PAGE, 'm.length');
  t.equal(m.private, true, 'm.private');
  t.equal(m.sync, false, 'm.sync');
  t.equal(m.readOnly, false, 'm.readOnly');
  t.equal(m.arrayBuffer.byteLength, 2 * PAGE, 'm.arrayBuffer is whole pages');
  const odd = await f.map({ length: 10 });
  t.equal(odd.buffer.length, 10, 'm.buffer is the length asked');
  t.equal(odd.arrayBuffer.byteLength, PAGE, 'm.arrayBuffer is rounded up to whole pages');
  await f.close();
  t.equal(m.mapped, false, 'file.close() unmapped its mappings');
  t.equal(odd.mapped, false);
  const info = probeUffd();
  t.equal(typeof info.features, 'bigint', 'probeUffd() reports the features');
  reportSigbus(false);
  t.pass('reportSigbus() switches the report');
  const code: ErrorCode = 'ECLOSED';
  const e = await f.stat().then(() => null, (x: unknown) => x);
  t.equal(isDaxError(e), true, 'isDaxError');
  t.equal(isDaxError(e, 'EBADF'), true, 'isDaxError with a code');
  t.equal(isDaxError(e, code), false);
  t.equal(isDaxError(new Error('plain')), false);
});

t.test("Pool.attach takes { logger } too; an attached Pool emits 'close' (no 'error') when its owner closes the pool", async (t) => {
  const pool = await Pool.create(tmpPool(t), { size: 16 << 20 });
  await pool.openFile('shared', { create: true });
  const s = pool.share();
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { Pool } = require(${JSON.stringify(path.join(__dirname, '..', '..', 'dist', 'index.js'))});
    (async () => {
      const bad = await Pool.attach(workerData, { logger: 'noisy' }).then(() => 'resolved', (e) => e.code);
      const p = await Pool.attach(workerData, { logger: 'error' });
      const seen = [];
      // An idle Pool holds no thread alive: this one waits for the notice.
      const keep = setInterval(() => {}, 1000);
      p.on('error', (e) => seen.push('error ' + e.code));
      p.on('close', (r) => {
        clearInterval(keep);
        seen.push('close ' + (r && r.code));
        parentPort.postMessage({ seen, message: r && r.message });
      });
      parentPort.postMessage({ bad, list: await p.list() });
    })().catch((e) => parentPort.postMessage({ error: String(e) }));`;
  const w = new Worker(code, { eval: true, workerData: s, transferList: s.transferList });
  t.teardown(() => w.terminate());
  const messages: unknown[] = [];
  const next = (): Promise<unknown> => new Promise((res) => w.once('message', res));
  messages.push(await next());
  t.same(messages[0], { bad: 'EINVAL', list: ['shared'] }, 'a bad logger is EINVAL; a level is taken');
  const closed = next();
  await pool.close();
  t.match(await held(closed), { seen: ['close ECLOSED'], message: /owner closed it/ }, "'close' with the reason, no 'error'");
});
