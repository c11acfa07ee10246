// Every public async method of Pool, PoolFile and Mapping, given bad arguments,
// returns a promise that rejects with a daxmap Error carrying a code — never a
// synchronous throw, never a V8 TypeError — embedded and through daxmapd alike.
import t from 'tap';
import fs from 'node:fs';
import type { Test } from 'tap';
import { Pool, PAGE, HUGE, poolPath } from '../fault/helpers';
import type { PoolFile, Mapping } from '../../dist/client/pool';
import { startDaemon } from '../daemon/helpers';

type Call = () => unknown;

/** A daxmap error: an Error with an E-code whose message starts with it. */
function isOurs(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  return e instanceof Error && typeof code === 'string' && /^E[A-Z]+$/.test(code) && e.message.startsWith(`${code}: `);
}

/** Calls `fn` and checks it returned a promise that rejected with `code`. */
async function rejects(t: Test, what: string, fn: Call, code: string): Promise<void> {
  let p: unknown;
  try {
    p = fn();
  } catch (e) {
    t.fail(`${what}: threw synchronously (${(e as Error)?.constructor?.name}: ${(e as Error)?.message})`);
    return;
  }
  if (!(p instanceof Promise)) {
    t.fail(`${what}: returned ${String(p)}, not a promise`);
    return;
  }
  try {
    await p;
    t.fail(`${what}: resolved`);
  } catch (e) {
    t.ok(isOurs(e) && (e as { code: string }).code === code,
      `${what}: ${code} (got ${(e as Error)?.constructor?.name} ${(e as { code?: string }).code}: ${(e as Error)?.message})`);
  }
}

function detached(): Uint8Array {
  const ab = new ArrayBuffer(16);
  const view = new Uint8Array(ab);
  structuredClone(ab, { transfer: [ab] });
  return view;
}

/** The bad-argument table for one open pool: [what, call, code]. */
function table(pool: Pool, f: PoolFile, m: Mapping, stale: Buffer): [string, Call, string][] {
  const any = (x: unknown): never => x as never;
  const rows: [string, Call, string][] = [
    ['openFile(123)', () => pool.openFile(any(123)), 'EINVAL'],
    ["openFile('')", () => pool.openFile(''), 'EINVAL'],
    ["openFile('a/b')", () => pool.openFile('a/b'), 'EINVAL'],
    ['openFile(256 bytes)', () => pool.openFile('x'.repeat(256)), 'EINVAL'],
    ['openFile(a lone surrogate)', () => pool.openFile('\ud800', { create: true }), 'EINVAL'],
    ['unlink(a lone surrogate)', () => pool.unlink('a\udc00'), 'EINVAL'],
    ["rename('a', a lone surrogate)", () => pool.rename('a', 'x\ud83d'), 'EINVAL'],
    ["openFile('a', null)", () => pool.openFile('a', any(null)), 'EINVAL'],
    ["openFile('a', 'create')", () => pool.openFile('a', any('create')), 'EINVAL'],
    ["openFile('a', { create: 1 })", () => pool.openFile('a', any({ create: 1 })), 'EINVAL'],
    ["openFile('a', { creat: true })", () => pool.openFile('a', any({ creat: true })), 'EINVAL'],
    ["openFile('n', { create: true, mode: 0o1000 })", () => pool.openFile('n', { create: true, mode: 0o1000 }), 'EINVAL'],
    ["openFile('nope')", () => pool.openFile('nope'), 'ENOENT'],
    ["openFile('a', { create, exclusive }) of an existing file", () => pool.openFile('a', { create: true, exclusive: true }), 'EEXIST'],
    ['unlink(null)', () => pool.unlink(any(null)), 'EINVAL'],
    ["unlink('nope')", () => pool.unlink('nope'), 'ENOENT'],
    ["rename('a', 5)", () => pool.rename('a', any(5)), 'EINVAL'],
    ["rename(5, 'a')", () => pool.rename(any(5), 'a'), 'EINVAL'],
    ["rename('nope', 'b')", () => pool.rename('nope', 'b'), 'ENOENT'],
    ['truncate(-1)', () => f.truncate(-1), 'EINVAL'],
    ['truncate(1.5)', () => f.truncate(1.5), 'EINVAL'],
    ["truncate('1')", () => f.truncate(any('1')), 'EINVAL'],
    ['truncate(NaN)', () => f.truncate(NaN), 'EINVAL'],
    ['truncate()', () => (f.truncate as unknown as Call)(), 'EINVAL'],
    ['truncate(2^44 + 1)', () => f.truncate(2 ** 44 + 1), 'EINVAL'],
    ['fallocate(-1, 1)', () => f.fallocate(-1, 1), 'EINVAL'],
    ['fallocate(0, 0)', () => f.fallocate(0, 0), 'EINVAL'],
    ['fallocate(0, 1, null)', () => f.fallocate(0, 1, any(null)), 'EINVAL'],
    ["fallocate(0, 1, { keepSize: 'yes' })", () => f.fallocate(0, 1, any({ keepSize: 'yes' })), 'EINVAL'],
    ['punchHole(0, 0)', () => f.punchHole(0, 0), 'EINVAL'],
    ['punchHole(1n, 1)', () => f.punchHole(any(1n), 1), 'EINVAL'],
    ['zeroRange(0, -1)', () => f.zeroRange(0, -1), 'EINVAL'],
    ['zeroRange(0, 1, { keep: true })', () => f.zeroRange(0, 1, any({ keep: true })), 'EINVAL'],
    ['write(null, 0)', () => f.write(any(null), 0), 'EINVAL'],
    ["write('text', 0)", () => f.write(any('text'), 0), 'EINVAL'],
    ['write([1, 2], 0)', () => f.write(any([1, 2]), 0), 'EINVAL'],
    ['write(detached, 0)', () => f.write(detached(), 0), 'EINVAL'],
    ['write(a mapping\'s buffer kept after unmap, 0)', () => f.write(stale, 0), 'EINVAL'],
    ['write(buf, -1)', () => f.write(Buffer.alloc(1), -1), 'EINVAL'],
    ['read(null, 0)', () => f.read(any(null), 0), 'EINVAL'],
    ['read(detached, 0)', () => f.read(detached(), 0), 'EINVAL'],
    ['read(a mapping\'s buffer kept after unmap, 0)', () => f.read(stale, 0), 'EINVAL'],
    ["read(buf, '0')", () => f.read(Buffer.alloc(1), any('0')), 'EINVAL'],
    ['map(null)', () => f.map(any(null)), 'EINVAL'],
    ['map(5)', () => f.map(any(5)), 'EINVAL'],
    ['map({ offset: 100 })', () => f.map({ offset: 100 }), 'EINVAL'],
    ['map({ offset: -4096 })', () => f.map({ offset: -4096 }), 'EINVAL'],
    ['map({ length: 0 })', () => f.map({ length: 0 }), 'EINVAL'],
    ["map({ length: '4096' })", () => f.map(any({ length: '4096' })), 'EINVAL'],
    ["map({ private: 'yes' })", () => f.map(any({ private: 'yes' })), 'EINVAL'],
    ['map({ privat: true })', () => f.map(any({ privat: true })), 'EINVAL'],
    ['map({ length: 16 TiB + 4096 })', () => f.map({ length: 2 ** 44 + PAGE }), 'EINVAL'],
    ["map({ readOnly: 'yes' })", () => f.map(any({ readOnly: 'yes' })), 'EINVAL'],
    ['map({ offset: 2 MiB }) past EOF without a length', () => f.map({ offset: 2 * HUGE }), 'EINVAL'],
    ['flush(-1)', () => m.flush(-1), 'EINVAL'],
    ['flush(0, -1)', () => m.flush(0, -1), 'EINVAL'],
    ["flush('0')", () => m.flush(any('0')), 'EINVAL'],
    ['flush(0, length + 1)', () => m.flush(0, m.length + 1), 'EINVAL'],
  ];
  return rows;
}

/** After close: every method of the closed pool, handle and mapping. */
function closedTable(pool: Pool, f: PoolFile, m: Mapping): [string, Call, string][] {
  return [
    ['pool.openFile', () => pool.openFile('a'), 'ECLOSED'],
    ['pool.unlink', () => pool.unlink('a'), 'ECLOSED'],
    ['pool.rename', () => pool.rename('a', 'b'), 'ECLOSED'],
    ['pool.list', () => pool.list(), 'ECLOSED'],
    ['pool.statfs', () => pool.statfs(), 'ECLOSED'],
    ['pool.stats', () => pool.stats(), 'ECLOSED'],
    ['pool.sync', () => pool.sync(), 'ECLOSED'],
    ['pool.request', () => pool.request('list'), 'ECLOSED'],
    ['file.stat', () => f.stat(), 'ECLOSED'],
    ['file.truncate', () => f.truncate(0), 'ECLOSED'],
    ['file.fallocate', () => f.fallocate(0, 1), 'ECLOSED'],
    ['file.punchHole', () => f.punchHole(0, 1), 'ECLOSED'],
    ['file.zeroRange', () => f.zeroRange(0, 1), 'ECLOSED'],
    ['file.write', () => f.write(Buffer.alloc(1), 0), 'ECLOSED'],
    ['file.read', () => f.read(Buffer.alloc(1), 0), 'ECLOSED'],
    ['file.fsync', () => f.fsync(), 'ECLOSED'],
    ['file.map', () => f.map({ length: PAGE }), 'ECLOSED'],
    ['mapping.flush', () => m.flush(), 'ECLOSED'],
    ['mapping.view', async () => m.view(0, 1), 'ECLOSED'],
    ['mapping.arrayBuffer', async () => m.arrayBuffer, 'ECLOSED'],
    ['mapping.buffer', async () => m.buffer, 'ECLOSED'],
  ];
}

async function exercise(t: Test, pool: Pool): Promise<void> {
  const f = await pool.openFile('a', { create: true });
  await f.truncate(HUGE);
  const m = await f.map();
  const gone = await f.map();
  const stale = gone.buffer;
  await gone.unmap();
  for (const [what, fn, code] of table(pool, f, m, stale)) await rejects(t, what, fn, code);
  t.same(await pool.list(), ['a'], 'no bad call created a file');
  t.equal((await f.stat()).size, HUGE, 'no bad call changed the file');
  // The options that are accepted do what they say.
  const g = await pool.openFile('g', { create: true, exclusive: true, mode: 0o600 });
  t.equal(((await g.stat()) as { mode?: number }).mode, 0o600, 'openFile mode');
  await g.close();
  await pool.sync();
  t.pass('pool.sync() resolves');
  // The handle's methods once it is closed: EBADF; the pool's once it is closed: ECLOSED.
  const h = await pool.openFile('a');
  await h.close();
  for (const [what, fn] of [['stat', () => h.stat()], ['truncate', () => h.truncate(0)], ['write', () => h.write(Buffer.alloc(1), 0)], ['map', () => h.map({ length: PAGE })]] as [string, Call][]) {
    await rejects(t, `closed handle: ${what}`, fn, 'EBADF');
  }
  await pool.close();
  for (const [what, fn, code] of closedTable(pool, f, m)) await rejects(t, `closed pool: ${what}`, fn, code);
  t.throws(() => pool.share(), { code: 'ECLOSED' }, 'share() of a closed pool (synchronous, as it returns a value)');
}

t.test('embedded pool: bad arguments and closed objects reject with coded errors', async (t) => {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const any = (x: unknown): never => x as never;
  for (const [what, fn, code] of [
    ['create(123)', () => Pool.create(any(123)), 'EINVAL'],
    ["create('')", () => Pool.create(''), 'EINVAL'],
    ['create(path with NUL)', () => Pool.create('/dev/shm/x\0y'), 'EINVAL'],
    ['create(p, null)', () => Pool.create(p, any(null)), 'EINVAL'],
    ['create(p, 5)', () => Pool.create(p, any(5)), 'EINVAL'],
    ['create(p, { size: -1 })', () => Pool.create(p, { size: -1 }), 'EINVAL'],
    ["create(p, { size: '1G' })", () => Pool.create(p, any({ size: '1G' })), 'EINVAL'],
    ["create(p, { force: 'yes' })", () => Pool.create(p, any({ force: 'yes' })), 'EINVAL'],
    ['create(p, { sise: 1 })', () => Pool.create(p, any({ sise: 1 })), 'EINVAL'],
    ['open()', () => (Pool.open as unknown as Call)(), 'EINVAL'],
    ['open(a missing device)', () => Pool.open(`/dev/shm/daxmap-missing-${process.pid}`), 'ENOENT'],
    ['attach(null)', () => Pool.attach(any(null)), 'EINVAL'],
    ['attach({})', () => Pool.attach(any({})), 'EINVAL'],
    ['attach({ kind, port: 1 })', () => Pool.attach(any({ kind: 'daxmap.shared-pool', port: 1 })), 'EINVAL'],
    ['connect(123)', () => Pool.connect(any(123)), 'EINVAL'],
  ] as [string, Call, string][]) await rejects(t, `Pool.${what}`, fn, code);
  t.notOk(fs.existsSync(p), 'no bad create made a device');
  await exercise(t, await Pool.create(p, { size: 16 << 20 }));
});

t.test('a pool served by daxmapd: the same table', async (t) => {
  const d = await startDaemon({ size: '16M' });
  t.teardown(() => d.stop());
  await exercise(t, await Pool.connect(d.socket));
});
