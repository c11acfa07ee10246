// Power cuts with the reserve in use (docs/pool.md, "Reserve"): blocks taken into
// the reserve (zeroed, logged reserved), stored into as a mapping would, adopted into
// files in batches, given back, with checkpoints, fsyncs, punches and unlinks in
// between, on pools with and without deferred conversion. A cut is taken at random
// persist() calls (some torn, the log's included: a torn batch) and at fixed points
// (right after a take, right after an adoption is logged). Every cut must pass fsck,
// open with no block left reserved, keep every fsync'ed file byte for byte, and
// show in no file a freed file's bytes or the stores of a block never adopted.
import t, { type Test } from 'tap';
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, PoolFsFile, coreOf } from '../../dist/pool/pool-fs.js';
import { poolInternals } from '../../dist/pool/internal.js';
import { fsckStorage } from '../../dist/pool/fsck.js';
import { withOperation } from '../../dist/lock/index.js';
import { rng, stamp, B, readAll } from './helpers.ts';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const SIZE = 8 << 20;
const FILE_BLOCKS = 48;
const FREED = Buffer.from('<FREED-FILE-PAT>');
const UNUSED = Buffer.from('<NEVER-ADOPTED!>');

interface Cut { img: Buffer[]; durable: Map<string, Buffer>; where: string }

/** Keeps the image a power cut would leave at chosen persist() calls, and on demand. */
class CutStorage extends MemoryStorage {
  cuts: Cut[] = [];
  where = '';
  chance = 0;
  expect = new Map<string, Buffer>();
  constructor(size: number, private readonly dice: ReturnType<typeof rng>) {
    super(size, { trackPersistence: true });
  }
  cut(where: string, tear?: number): void {
    this.cuts.push({ img: this.crashImage(tear), durable: new Map(this.expect), where });
  }
  override persist(offset: number, length: number): void {
    super.persist(offset, length);
    if (this.chance > 0 && this.dice.chance(this.chance)) {
      const tear = this.dice.chance(0.4) ? this.dice.next() : undefined;
      this.cut(`${this.where}: persist(${offset}, ${length})${tear === undefined ? '' : `, torn at ${tear.toFixed(2)}`}`, tear);
    }
  }
}

const filled = (pat: Buffer, len: number): Buffer => {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += pat.length) pat.copy(b, i);
  return b;
};

/** What a cut leaves, checked; returns a problem or null, and whether blocks were reserved in it. */
async function check(cut: Cut): Promise<{ problem: string | null; reserved: number }> {
  const rep = fsckStorage(new MemoryStorage(SIZE, { from: cut.img }));
  if (!rep.clean) return { problem: `fsck: ${rep.errors.slice(0, 3).join('; ')}`, reserved: 0 };
  const reserved = rep.summary!.reservedBlocks;
  const pool = PoolFs.openOn(new MemoryStorage(SIZE, { from: cut.img }));
  try {
    const core = coreOf(pool);
    if (core.state.reserved.size !== 0) return { problem: `${core.state.reserved.size} blocks still reserved after open`, reserved };
    const bad = core.checkState();
    if (bad.length > 0) return { problem: `state: ${bad.slice(0, 3).join('; ')}`, reserved };
    const names = new Set(await pool.list());
    for (const name of cut.durable.keys()) {
      if (!names.has(name)) return { problem: `fsync'ed file ${name} is gone`, reserved };
    }
    for (const name of names) {
      const f = await pool.openFile(name);
      const data = await readAll(f);
      if (data.indexOf(FREED) >= 0) return { problem: `${name} shows a freed file's bytes`, reserved };
      if (data.indexOf(UNUSED) >= 0) return { problem: `${name} shows the stores of a block never adopted`, reserved };
      const want = cut.durable.get(name);
      if (want && !want.equals(data)) return { problem: `fsync'ed file ${name} differs`, reserved };
    }
    return { problem: null, reserved };
  } finally {
    await pool.close();
  }
}

/** adoptReserved under the file's range lock, as the fault policy calls it. */
async function adopt(pool: PoolFs, f: PoolFsFile, pairs: { fb: number; dev: number }[]): Promise<{ refused: { fb: number; dev: number }[] }> {
  const ip = poolInternals(pool);
  const ino = ip.inode(f);
  return withOperation('test.adopt', async () => {
    const h = await ino.rangeLock.acquireShared(0, FILE_BLOCKS * 2 * B);
    try {
      return await ip.adoptReserved(ino, pairs);
    } finally {
      h.release();
    }
  });
}

async function scenario(t: Test, seed: number, ops: number, deferConversion: boolean): Promise<void> {
  const r = rng(seed);
  const storage = new CutStorage(SIZE, rng(seed * 7 + 1));
  const pool = PoolFs.createOn(storage, { logBytes: 64 * 1024, deferConversion, writebackMs: 3600_000 });
  const core = coreOf(pool);
  const ip = poolInternals(pool);
  // small numbers so that refills, checkpoints (a 64 KiB log) and reuse of freed blocks come often
  core.reserve.target = 48;
  core.reserve.lowWater = 16;
  core.reserve.batch = 16;
  // a file's bytes, durable, then freed: its blocks are free after the checkpoint
  const old = await pool.openFile('old', { create: true });
  await old.write(filled(FREED, 2 << 20), 0);
  await old.fsync();
  await old.close();
  await pool.unlink('old');
  await core.txn.locked(() => core.txn.checkpoint());

  const files = new Map<string, PoolFsFile>();
  const open = async (n: string): Promise<PoolFsFile> => {
    let f = files.get(n);
    if (!f) {
      f = await pool.openFile(n, { create: true });
      files.set(n, f);
      if ((await f.stat()).size === 0) await f.truncate(FILE_BLOCKS * B);
    }
    return f;
  };
  const out: number[] = []; // handed out, to be adopted or returned
  const doomed: number[] = []; // handed out, stored into, to be returned
  let checked = 0;
  let withReserved = 0;
  const trail: string[] = [];
  const drain = async (): Promise<void> => {
    for (let c = storage.cuts.shift(); c; c = storage.cuts.shift()) {
      const res = await check(c);
      checked++;
      if (res.reserved > 0) withReserved++;
      if (res.problem) throw new Error(`seed ${seed}, cut at ${c.where}: ${res.problem}\n${trail.slice(-12).join('\n')}`);
    }
  };
  storage.chance = 0.15;
  for (let op = 1; op <= ops; op++) {
    const n = r.pick(['a', 'b', 'c']);
    const kind = r.pick(['take', 'take', 'adopt', 'adopt', 'adopt', 'return', 'fsync', 'fsync', 'punch', 'truncate', 'unlink', 'checkpoint', 'sync'] as const);
    storage.where = `op ${op} ${kind} ${n}`;
    trail.push(storage.where);
    if (kind !== 'fsync' && kind !== 'sync' && kind !== 'take' && kind !== 'return' && kind !== 'checkpoint') storage.expect.delete(n);
    switch (kind) {
      case 'take': {
        const got = await ip.takeReserve(1 + r.int(10));
        for (const d of got) {
          if (!Buffer.from(ip.storage.view(d, B)).every((x) => x === 0)) throw new Error(`seed ${seed} op ${op}: block ${d} handed out not zeroed`);
          if (r.chance(0.3)) {
            ip.storage.view(d, B).set(filled(UNUSED, B));
            doomed.push(d);
          } else {
            out.push(d);
          }
        }
        storage.cut(`right after take, op ${op}`);
        break;
      }
      case 'adopt': {
        const f = await open(n);
        const k = Math.min(out.length, 1 + r.int(8));
        const pairs = out.splice(0, k).map((dev) => {
          const fb = r.int(FILE_BLOCKS + 4); // a few past EOF
          ip.storage.view(dev, B).set(stamp(op, fb * B, B));
          return { fb, dev };
        });
        if (pairs.length === 0) break;
        // a refused block goes back to the reserve: its stores are zeroed before it is handed out again
        await adopt(pool, f, pairs);
        await core.txn.locked(() => core.txn.log.persist());
        storage.cut(`right after an adoption is logged, op ${op}`);
        break;
      }
      case 'return': {
        // a target that moves: returned blocks beyond it are unreserved (freed), not kept
        core.reserve.target = 8 + r.int(48);
        const back = [...doomed.splice(0), ...out.splice(0, r.int(3))];
        if (back.length > 0) ip.returnReserve(back);
        break;
      }
      case 'fsync': {
        const f = await open(n);
        const data = await readAll(f);
        await f.fsync();
        storage.expect.set(n, data);
        break;
      }
      case 'sync': {
        const all = new Map<string, Buffer>();
        for (const [name, f] of files) all.set(name, await readAll(f));
        await pool.sync();
        for (const [name, data] of all) storage.expect.set(name, data);
        break;
      }
      case 'punch': {
        const f = await open(n);
        await f.punchHole(r.int(FILE_BLOCKS) * B, (1 + r.int(8)) * B);
        break;
      }
      case 'truncate': {
        const f = await open(n);
        await f.truncate(r.int(FILE_BLOCKS) * B);
        await f.truncate(FILE_BLOCKS * B);
        break;
      }
      case 'unlink':
        if (files.has(n)) {
          files.delete(n);
          await pool.unlink(n);
        }
        break;
      case 'checkpoint':
        await core.txn.locked(() => core.txn.checkpoint());
        break;
    }
    await drain();
  }
  storage.chance = 0;
  ip.returnReserve([...out, ...doomed]);
  await core.reserve.settled();
  await drain();
  await pool.close();
  t.ok(checked > 60, `${checked} cuts recovered cleanly`);
  t.ok(withReserved > 10, `${withReserved} of them with blocks reserved on the medium`);
  t.ok(core.reserve.counts.adopted > 20, `${core.reserve.counts.adopted} blocks adopted, ${core.reserve.counts.refused} refused`);
}

for (const [seed, deferConversion] of [[11, false], [12, false], [21, true], [22, true]] as const) {
  t.test(`power cuts with the reserve in use, ${deferConversion ? 'deferred conversion (disk-file pool)' : 'written at adoption (tmpfs, devdax)'}, seed ${seed}`, async (t) => {
    await scenario(t, seed, 160, deferConversion);
  });
}
