// Corrupted images: flipped bits in the superblocks, the checkpoint and the log,
// truncated and foreign devices. Every case gives a clear EBADF or a clean replay of
// the intact prefix; never a crash, a hang or an inconsistent pool.
import t from 'tap';
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { fsckStorage } from '../../dist/pool/fsck.js';
import { rng, stamp, B } from './helpers.ts';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const SIZE = 8 << 20;

/** A pool image with a checkpoint and a log of a few hundred records (crash image: not closed). */
async function image(): Promise<{ img: Buffer[]; g: ReturnType<typeof coreOf>['geometry']; logUsed: number }> {
  const s = new MemoryStorage(SIZE, { trackPersistence: true });
  const pool = PoolFs.createOn(s);
  const r = rng(3);
  for (let i = 0; i < 4; i++) {
    const f = await pool.openFile(`f${i}`, { create: true });
    await f.write(stamp(i, 0, 20000), 0);
  }
  await pool.sync();
  coreOf(pool).txn.checkpoint();
  for (let op = 0; op < 300; op++) {
    const f = await pool.openFile(`f${r.int(6)}`, { create: true });
    const off = r.int(200000);
    if (r.chance(0.5)) await f.write(stamp(op, off, 1 + r.int(9000)), off);
    // eslint-disable-next-line no-dupe-else-if -- each r.chance() is a new draw
    else if (r.chance(0.5)) await f.punchHole(off, 1 + r.int(20000));
    else await f.fallocate(off, 1 + r.int(30000), { keepSize: r.chance(0.5) });
  }
  await pool.sync();
  const core = coreOf(pool);
  return { img: s.crashImage(), g: core.geometry, logUsed: core.txn.log.used };
}

function flip(img: Buffer[], byte: number, bit: number): Buffer[] {
  const out = img.map((b) => Buffer.from(b));
  out[0]![byte]! ^= 1 << bit;
  return out;
}

/** Open must either fail with EBADF or give a sound pool; returns which. */
async function openOutcome(img: Buffer[]): Promise<'ebadf' | 'ok'> {
  let pool: PoolFs;
  try {
    pool = PoolFs.openOn(new MemoryStorage(SIZE, { from: img }));
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code !== 'EBADF') throw new Error(`open threw ${code}: ${(e as Error).message}`, { cause: e });
    return 'ebadf';
  }
  const problems = coreOf(pool).checkState();
  if (problems.length) throw new Error(`opened an inconsistent pool: ${problems[0]}`);
  for (const n of await pool.list()) {
    const f = await pool.openFile(n);
    const st = await f.stat();
    const b = Buffer.alloc(st.size);
    await f.read(b, 0);
  }
  // still usable
  const f = await pool.openFile('after', { create: true });
  await f.write(Buffer.from('ok'), 0);
  await pool.close();
  return 'ok';
}

t.test('flipped bits in one superblock copy: the other copy takes over', async (t) => {
  const { img } = await image();
  const r = rng(9);
  let ok = 0;
  for (let i = 0; i < 60; i++) {
    const byte = r.int(160);
    const res = await openOutcome(flip(img, byte, r.int(8)));
    if (res === 'ok') ok++;
  }
  t.equal(ok, 60, 'every single-copy flip recovers from the backup superblock');
  // the same flip in copy 1
  t.equal(await openOutcome(flip(img, B + 40, 3)), 'ok');
});

t.test('flipped bits in both superblock copies: EBADF with a clear message', async (t) => {
  const { img } = await image();
  const both = flip(flip(img, 50, 1), B + 50, 1);
  t.equal(await openOutcome(both), 'ebadf');
  t.throws(() => PoolFs.openOn(new MemoryStorage(SIZE, { from: both })), { code: 'EBADF', message: /bad superblock/ });
  const rep = fsckStorage(new MemoryStorage(SIZE, { from: both }));
  t.equal(rep.clean, false);
  t.match(rep.errors[0], /superblock/);
});

t.test('flipped bits in the checkpoint in force: EBADF, fsck says where', async (t) => {
  const { img, g } = await image();
  const probe = coreOf(PoolFs.openOn(new MemoryStorage(SIZE, { from: img })));
  const slot = (g.ckptStart + (probe.sb.ckptGen % 2) * g.ckptBlocks) * B;
  const bytes = 64 + probe.openInfo.ckptFiles * 48 + probe.openInfo.ckptExtents * 24;
  const r = rng(4);
  for (let i = 0; i < 20; i++) {
    t.equal(await openOutcome(flip(img, slot + r.int(bytes), r.int(8))), 'ebadf');
  }
  // the other slot holds an older generation: damage there changes nothing
  t.equal(await openOutcome(flip(img, (g.ckptStart + ((probe.sb.ckptGen + 1) % 2) * g.ckptBlocks) * B + 10, 1)), 'ok');
  const rep = fsckStorage(new MemoryStorage(SIZE, { from: flip(img, slot + 100, 2) }));
  t.equal(rep.clean, false);
  t.match(rep.errors.join('\n'), /checkpoint generation \d+ body checksum mismatch/);
});

t.test('flipped bits in the log: a clean replay of the intact prefix', async (t) => {
  const { img, g, logUsed } = await image();
  const r = rng(5);
  const counts = { ok: 0, ebadf: 0 };
  let shorter = 0;
  for (let i = 0; i < 80; i++) {
    const off = g.logStart * B + r.int(logUsed);
    const damaged = flip(img, off, r.int(8));
    counts[await openOutcome(damaged)]++;
    const rep = fsckStorage(new MemoryStorage(SIZE, { from: damaged }));
    if (!rep.clean) t.fail(`fsck after a log flip at ${off}: ${rep.errors[0]}`);
    if (rep.summary && rep.summary.logBytes < logUsed) shorter++;
  }
  t.equal(counts.ok, 80, 'every log flip replays a prefix');
  t.equal(shorter, 80, 'and the replay stopped at the damage');
});

t.test('truncated, foreign, empty and tiny devices', async (t) => {
  const { img } = await image();
  const half = new MemoryStorage(SIZE / 2, { from: [img[0]!.subarray(0, SIZE / 2)] });
  t.throws(() => PoolFs.openOn(half), { code: 'EBADF', message: /truncated/ });
  const foreign = new MemoryStorage(1 << 20, { from: [Buffer.from(Array.from({ length: 1 << 20 }, (_, i) => (i * 7919) & 0xff))] });
  t.throws(() => PoolFs.openOn(foreign), { code: 'EBADF', message: /not a daxmap pool/ });
  t.throws(() => PoolFs.openOn(new MemoryStorage(SIZE)), { code: 'EBADF', message: /not a daxmap pool/ });
  t.throws(() => PoolFs.openOn(new MemoryStorage(4096)), { code: 'EBADF', message: /too small/ });
  t.equal(fsckStorage(new MemoryStorage(SIZE)).clean, false);
});

t.test('random garbage over the whole metadata area behind a valid superblock', async (t) => {
  const { img, g } = await image();
  const r = rng(6);
  for (let i = 0; i < 20; i++) {
    const d = img.map((b) => Buffer.from(b));
    const start = 2 * B + r.int((g.dataStart - 2) * B - 4096);
    for (let k = 0; k < 4096; k++) d[0]![start + k] = r.int(256);
    await openOutcome(d); // throws on anything but EBADF or a sound pool
  }
  t.pass('no crash, no hang');
});

t.test('a valid-checksum log record naming a block owned twice is refused', async (t) => {
  const s = new MemoryStorage(SIZE, { trackPersistence: true });
  const pool = PoolFs.createOn(s);
  const a = await pool.openFile('a', { create: true });
  const b = await pool.openFile('b', { create: true });
  await a.write(Buffer.alloc(B, 1), 0);
  await b.write(Buffer.alloc(B, 2), 0);
  await pool.sync();
  const core = coreOf(pool);
  const devA = core.lookup(core.state.names.get('a')!, 0).deviceOffset! / B;
  // forge a well-formed record that maps a's block into b
  core.txn.log.append([{ t: 5, id: core.state.names.get('b')!.id, fb: 1, len: 1, dev: devA, state: 2 } as never]);
  core.txn.log.persist();
  t.throws(() => PoolFs.openOn(new MemoryStorage(SIZE, { from: s.crashImage() })), { code: 'EBADF', message: /owned by file/ });
  const rep = fsckStorage(new MemoryStorage(SIZE, { from: s.crashImage() }));
  t.match(rep.errors[0], /device block \d+ mapped by file \d+ \('b'\) is already owned by file \d+ \('a'\)/);
});
