// The power-failure scenario, run by powerfail*.test.ts: one file per kind, so that
// each has tap's whole timeout and they run side by side.
//
// Power failure: a storage that, at random persist() calls, snapshots what would
// survive a power cut right then (optionally tearing the persist in flight). Every
// snapshot must recover: open cleanly, pass the consistency check, keep every
// fsync'ed file byte for byte, and never show a freed file's pattern elsewhere.
// The deferred scenarios add write faults (ensureWritten and stores through the
// device, as a mapping makes them) with deferred conversion on (docs/pool.md,
// "Durability"), and pool.sync(): the cuts then also fall inside conversions.
// The granular scenario runs the same on a storage that is 2 MiB-granular like the
// device-DAX stand-in (`align`: whole 2 MiB allocation units, docs/pool.md, "2 MiB-
// granular devices"), write faults included, conversion not deferred (as there).
import type { Test } from 'tap';
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, PoolFsFile, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals } from '../../dist/pool/internal.js';
import { fsckStorage } from '../../dist/pool/fsck.js';
import { withOperation } from '../../dist/lock/index.js';
import { rng, stamp, B, readAll } from './helpers.ts';

export const HUGE = 2 << 20;
const SECRET = Buffer.from('SECRET-PATTERN!!');

interface Snap { img: Buffer[]; expect: Map<string, Buffer>; label: string }

class CrashingStorage extends MemoryStorage {
  snaps: Snap[] = [];
  armed = false;
  constructor(size: number, align: number, private readonly r: ReturnType<typeof rng>, private readonly p: number, public expectNow: () => Map<string, Buffer>, public label = '') {
    super(size, { trackPersistence: true, align });
  }
  override persist(offset: number, length: number): void {
    super.persist(offset, length);
    if (this.armed && this.r.chance(this.p)) {
      const tear = this.r.chance(0.5) ? this.r.next() : undefined;
      this.snaps.push({ img: this.crashImage(tear), expect: this.expectNow(), label: `${this.label} persist(${offset}, ${length})${tear === undefined ? '' : ` torn at ${tear.toFixed(2)}`}` });
    }
  }
}

/**
 * A write fault over [off, off+data.length) and the stores of a mapping there.
 * fsync and sync make them durable, into blocks written before the fault as into
 * those the fault made (converted with their data).
 */
async function faultStore(pool: PoolFs, f: PoolFsFile, off: number, data: Buffer): Promise<void> {
  const ip = poolInternals(pool);
  const ino = ip.inode(f);
  return withOperation('test.fault', async () => {
    const h = await ino.rangeLock.acquireShared(off, off + data.length);
    try {
      for (const e of await ip.ensureWritten(ino, off, data.length)) {
        const s = Math.max(off, e.offset);
        const t = Math.min(off + data.length, e.offset + e.length);
        if (t > s) ip.storage.view(e.deviceOffset + (s - e.offset), t - s).set(data.subarray(s - off, t - off));
      }
    } finally {
      h.release();
    }
  });
}

async function verify(snap: Snap, size: number, align: number): Promise<string | null> {
  const s = new MemoryStorage(size, { from: snap.img, align });
  let pool: PoolFs;
  try {
    pool = PoolFs.openOn(s);
  } catch (e) {
    return `recovery failed: ${(e as Error).message}`;
  }
  const problems = coreOf(pool).checkState();
  if (problems.length) return `inconsistent after recovery: ${problems.slice(0, 3).join('; ')}`;
  for (const name of await pool.list()) {
    const f = await pool.openFile(name);
    const data = await readAll(f);
    const want = snap.expect.get(name);
    if (want && !want.equals(data)) {
      let i = 0;
      while (i < data.length && data[i] === want[i]) i++;
      return `fsync'ed file '${name}' differs after recovery (${data.length} bytes, expected ${want.length}) first at ${i}: ${data[i]} not ${want[i]}; extents ${JSON.stringify((await f.stat()).extents)}`;
    }
    if (name !== 'secret' && data.indexOf(SECRET) >= 0) return `stale data: the freed pattern appears in '${name}'`;
  }
  for (const [name] of snap.expect) if (!(await pool.list()).includes(name)) return `fsync'ed file '${name}' is gone`;
  await pool.close();
  const report = fsckStorage(new MemoryStorage(size, { from: snap.img, align }));
  if (!report.clean) return `fsck after recovery: ${report.errors.slice(0, 3).join('; ')}`;
  return null;
}

/**
 * `faults`: write faults, Mapping.flush and pool.sync among the operations; `defer`:
 * their conversions deferred; `align`: the storage's granularity (and `size`).
 */
export async function scenario(t: Test, seed: number, ops: number, opts: { faults?: boolean; defer?: boolean; align?: number; size?: number } = {}): Promise<void> {
  const { faults = false, defer = false, align = B, size = 8 << 20 } = opts;
  const r = rng(seed);
  const durable = new Map<string, Buffer>(); // name -> content at its last fsync, while untouched since
  const storage = new CrashingStorage(size, align, r, 0.4, () => new Map(durable));
  const pool = PoolFs.createOn(storage, { logBytes: 64 * 1024, deferConversion: defer, writebackMs: 3600_000 });
  t.equal(coreOf(pool).unit, align / B, `allocation unit ${align} bytes`);
  const names = ['a', 'b', 'c', 'd'];
  const files = new Map<string, PoolFsFile>();
  const open = async (n: string): Promise<PoolFsFile> => {
    let f = files.get(n);
    if (!f) { f = await pool.openFile(n, { create: true }); files.set(n, f); }
    return f;
  };
  // the secret: written, made durable, then freed three ways
  const sec = await pool.openFile('secret', { create: true });
  const pat = Buffer.alloc(1536 * 1024);
  for (let i = 0; i < pat.length; i += SECRET.length) SECRET.copy(pat, i);
  await sec.write(pat, 0);
  await sec.fsync();
  storage.armed = true;
  let checked = 0;
  const log: string[] = [];
  const drain = async (): Promise<void> => {
    for (const snap of storage.snaps) {
      const err = await verify(snap, size, align);
      checked++;
      if (err) throw new Error(`seed ${seed}, crash at ${snap.label}: ${err}\n${log.slice(-15).join('\n')}`);
    }
    storage.snaps = [];
  };
  await sec.punchHole(4 * B, 64 * B);
  await drain();
  await sec.truncate(512 * 1024);
  await drain();
  for (let op = 1; op <= ops; op++) {
    const n = r.pick(names);
    const f = await open(n);
    const off = r.int(768 * 1024);
    const len = 1 + r.int(r.chance(0.2) ? 300 * 1024 : 3 * B);
    const kinds = ['write', 'write', 'write', 'fallocate', 'truncate', 'punch', 'zero', 'fsync', 'fsync', 'unlink'] as const;
    const kind = r.pick(faults ? [...kinds, 'fault', 'fault', 'fault', 'fault', 'sync'] as const : kinds);
    storage.label = `op ${op} (${kind} ${n} ${off}+${len})`;
    log.push(storage.label);
    if (op === Math.floor(ops / 3)) { await pool.unlink('secret'); }
    if (kind !== 'fsync' && kind !== 'sync') durable.delete(n);
    try {
      switch (kind) {
        case 'write': await f.write(stamp(op, off, len), off); break;
        case 'fallocate': await f.fallocate(off, len, { keepSize: r.chance(0.5) }); break;
        case 'truncate': await f.truncate(r.int(900 * 1024)); break;
        case 'punch': await f.punchHole(off, len); break;
        case 'zero': await f.zeroRange(off, len, { keepSize: r.chance(0.5) }); break;
        case 'unlink': files.delete(n); await pool.unlink(n); break;
        case 'fault': {
          const size = (await f.stat()).size;
          if (size > 0) {
            const o = r.int(size);
            const l = Math.min(len, size - o);
            await faultStore(pool, f, o, stamp(op, o, l));
          }
          break;
        }
        case 'sync': {
          // pool.sync() makes what file calls, write faults and stores through mappings did durable
          const contents = new Map<string, Buffer>();
          for (const [name, h] of files) contents.set(name, await readAll(h));
          await pool.sync();
          for (const [name, c] of contents) durable.set(name, c);
          break;
        }
        case 'fsync': {
          const content = await readAll(f);
          if (faults && r.chance(0.5)) {
            // Mapping.flush over the whole file first (its written blocks), then fsync
            const ino = poolInternals(pool).inode(f);
            await withOperation('test.flush', async () => {
              const h = await ino.rangeLock.acquireShared(0, Math.max(1, ino.size));
              try { poolInternals(pool).persistWritten(ino, 0, ino.size); } finally { h.release(); }
            });
          }
          await f.fsync();
          durable.set(n, content);
          break;
        }
      }
    } catch (e) {
      if ((e as { code?: string }).code !== 'ENOSPC') throw e;
    }
    await drain();
  }
  storage.armed = false;
  await pool.close();
  t.ok(checked > 60, `${checked} crash points recovered cleanly`);
}

