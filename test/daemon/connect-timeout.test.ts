// Pool.connect() is bounded (issue 9 item 5): a server that accepts and never
// answers used to leave it pending forever. Now `timeoutMs` (default 10 s) rejects
// it with ETIMEDOUT, an AbortSignal aborts it, and the event loop runs meanwhile.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { Pool } from '../../dist/index';
import { startDaemon, tmpName } from './helpers';

/** A server that accepts and never says a word. */
async function silentServer(t: Test): Promise<{ path: string; closed: Promise<void> }> {
  const sockPath = tmpName('sock');
  const held: net.Socket[] = [];
  let onClosed!: () => void;
  const closed = new Promise<void>((r) => (onClosed = r));
  const srv = net.createServer((s) => {
    held.push(s);
    s.on('error', () => {});
    s.resume(); // read (and drop) what the client sends, so its hang-up is seen
    s.on('close', onClosed);
  });
  await new Promise<void>((r) => srv.listen(sockPath, r));
  t.teardown(() => {
    for (const s of held) s.destroy();
    srv.close();
    fs.rmSync(sockPath, { force: true });
  });
  return { path: sockPath, closed };
}

/** Rejects if `p` is still pending after `ms` (the bug: connect never settled). */
function settlesWithin<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  const guard = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`still pending after ${ms} ms`)), ms)));
  return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}

t.test('a server that accepts and never answers: ETIMEDOUT after timeoutMs, timers firing meanwhile, the connection dropped', async (t) => {
  const s = await silentServer(t);
  let ticks = 0;
  const iv = setInterval(() => ticks++, 10);
  t.teardown(() => clearInterval(iv));
  const t0 = performance.now();
  const err = await settlesWithin(Pool.connect(s.path, { timeoutMs: 300 }).then(() => null, (e: unknown) => e as { code?: string; message: string }), 8000);
  const ms = performance.now() - t0;
  t.equal(err?.code, 'ETIMEDOUT');
  t.match(err?.message, s.path, 'the message names the socket');
  t.match(err?.message, /hello/, 'and the step that got no answer');
  // After timeoutMs, and well before the default 10 s (generous: timers run late on a loaded machine).
  t.ok(ms >= 290 && ms < 8000, `rejected after ${ms.toFixed(0)} ms`);
  t.ok(ticks >= 5, `the event loop ran meanwhile (${ticks} ticks)`);
  await s.closed;
  t.pass('the half-made connection was closed');
});

t.test('an AbortSignal aborts Pool.connect with an AbortError', async (t) => {
  const s = await silentServer(t);
  const ac = new AbortController();
  const p = Pool.connect(s.path, { signal: ac.signal });
  setTimeout(() => ac.abort(), 50);
  const t0 = performance.now();
  const err = await settlesWithin(p.then(() => null, (e: unknown) => e as { code?: string; name: string }), 8000);
  t.equal(err?.name, 'AbortError');
  t.equal(err?.code, 'ABORT_ERR');
  // An ignored abort would end in ETIMEDOUT after the default 10 s, not an AbortError.
  t.ok(performance.now() - t0 < 9000, 'before the default timeout (10 s)');
  await s.closed;
  t.pass('the half-made connection was closed');
  await t.rejects(Pool.connect(s.path, { signal: AbortSignal.abort() }), { name: 'AbortError', code: 'ABORT_ERR' }, 'an aborted signal rejects at once');
});

t.test('a daemon whose listen backlog is full: ETIMEDOUT, not a blocked event loop', async (t) => {
  const sockPath = tmpName('sock');
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'native', 'fixtures', 'stuck-listener.js'), sockPath], { stdio: ['pipe', 'pipe', 'inherit'] });
  const fillers: net.Socket[] = [];
  t.teardown(() => {
    for (const f of fillers) f.destroy();
    child.kill('SIGKILL');
    fs.rmSync(sockPath, { force: true });
  });
  await new Promise<void>((res, rej) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && res());
    child.once('exit', (c) => rej(new Error(`listener exited ${c}`)));
  });
  for (;;) {
    const f = net.connect(sockPath);
    const e = await new Promise<NodeJS.ErrnoException | null>((res) => {
      f.once('connect', () => res(null));
      f.once('error', res);
    });
    if (e) {
      f.destroy();
      t.equal(e.code, 'EAGAIN', 'the backlog is full');
      break;
    }
    fillers.push(f);
    if (fillers.length > 64) throw new Error('the backlog never filled');
  }
  let ticks = 0;
  const iv = setInterval(() => ticks++, 10);
  t.teardown(() => clearInterval(iv));
  const err = await settlesWithin(Pool.connect(sockPath, { timeoutMs: 300 }).then(() => null, (e: unknown) => e as { code?: string }), 8000);
  t.equal(err?.code, 'ETIMEDOUT');
  t.ok(ticks >= 5, `the event loop ran meanwhile (${ticks} ticks)`);
});

t.test('Pool.connect checks its options; a live daemon connects within a short limit', async (t) => {
  for (const timeoutMs of [0, -1, NaN, '5' as unknown as number]) {
    await t.rejects(Pool.connect('/tmp/x.sock', { timeoutMs }), { code: 'EINVAL' }, `timeoutMs ${String(timeoutMs)}`);
  }
  // The message shows the value as the other argument checks do (it said "[object Object]").
  await t.rejects(Pool.connect('/tmp/x.sock', { timeoutMs: {} as unknown as number }), { code: 'EINVAL', message: /, got an object \(Object\)$/ }, 'timeoutMs {}');
  await t.rejects(Pool.connect('/tmp/x.sock', { timeoutMs: '5' as unknown as number }), { code: 'EINVAL', message: /, got '5'$/ }, "timeoutMs '5'");
  await t.rejects(Pool.connect('/tmp/x.sock', { signal: 'no' as unknown as AbortSignal }), { code: 'EINVAL' }, 'signal');
  await t.rejects(Pool.connect('/tmp/x.sock', null as unknown as object), { code: 'EINVAL' }, 'options not an object');
  const d = await startDaemon();
  t.teardown(() => d.stop().then(() => undefined));
  const ac = new AbortController();
  const pool = await Pool.connect(d.socket, { timeoutMs: 10_000, signal: ac.signal });
  ac.abort(); // after connect: no effect on the pool
  const f = await pool.openFile('x', { create: true });
  await f.truncate(4096);
  const m = await f.map();
  m.buffer.write('ok', 0);
  t.equal(m.buffer.toString('latin1', 0, 2), 'ok', 'the pool works, mappings included');
  await pool.close();
});
