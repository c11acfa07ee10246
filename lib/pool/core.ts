// The filesystem inside a pool: open/replay, the file operations, checkpointing.
// Every metadata change is applied in memory and appended to the log in one
// synchronous step while holding the allocator lock then the log lock, so a
// checkpoint (taken under the same locks) always sees whole transactions. Blocks
// that become reachable as written are zeroed or fully overwritten, and that is
// persisted, before the record that exposes them is appended (rule 3).
//
// Lock order (docs/locking.md): file range lock -> [fault policy entry lock] ->
// alloc -> log. Destructive operations take the range exclusive, call the
// invalidation hook, and only then free or zero blocks.

import { randomBytes } from 'node:crypto';
import { daxError } from '../errors';
import { CHUNK_SIZE, type Storage } from '../device/storage';
import { Mutex, RangeLock, RANGE_END, type LockHandle } from '../lock/index';
import { logger } from '../log';
import { BlockAllocator, type Run } from './allocator';
import { ExtentMap, type Extent } from './extents';
import {
  BLOCK_SIZE, GROUP_BLOCKS, MAX_FILE_SIZE, checkGeometry, computeGeometry, decodeSuperblock,
  encodeSuperblock, newUuid, readCheckpoint, writeCheckpoint, type Checkpoint, type FormatOptions, type Geometry,
  type Superblock,
} from './format';
import { fillBytes, readBytes, writeBytes } from './io';
import { checkName as validateName } from '../util/check';
import {
  MetaLog, RecType, STATE_UNWRITTEN, STATE_WRITTEN, recordName, scanLog, type ExtentStateCode, type LogRecord,
  type ReplayEnd,
} from './log';

const B = BLOCK_SIZE;
const log = logger('pool');
const MAX_FILE_BLOCKS = MAX_FILE_SIZE / B;

/** A file as the pool and the fault policy see it (internal; the public handle is PoolFile). */
export interface Inode {
  readonly id: number;
  name: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
  readonly extents: ExtentMap;
  /** Byte-range reader/writer lock, class 'range': the outermost lock of every file operation and fault. */
  readonly rangeLock: RangeLock;
  /** False once unlinked or replaced by a rename; operations on it then fail with ENOENT. */
  live: boolean;
  /** Device block runs written by overwrites since the last fsync. */
  dirty: Run[];
  mtimeDirty: boolean;
}

export type ExtentState = 'hole' | 'unwritten' | 'written';

export interface LookupResult {
  state: ExtentState;
  /** File byte offset where this extent (or, for a hole, the queried block) starts. */
  offset: number;
  /** Bytes to the extent's end (for a hole: to the next extent, or the file-size limit). */
  length: number;
  /** Device byte offset of `offset`, for unwritten and written extents. */
  deviceOffset?: number;
}

export interface DeviceExtent {
  /** File byte offset (block aligned). */
  offset: number;
  length: number;
  /** Device byte offset; with fault-around, aligned 2 MiB runs have deviceOffset % 2 MiB === offset % 2 MiB. */
  deviceOffset: number;
}

/** Called with the file's range lock held exclusive over [offset, offset+length) before blocks are freed or zeroed. */
export type Invalidator = (file: Inode, offset: number, length: number) => Promise<void>;

export interface OpenInfo {
  sb: Superblock;
  replay: ReplayEnd;
  ckptFiles: number;
  ckptExtents: number;
  ckptUsedBlocks: number;
}

class ReplayError extends Error {}

function corrupt(msg: string): never {
  throw new ReplayError(msg);
}

function checkOffset(what: string, v: unknown, max = MAX_FILE_SIZE): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) {
    throw daxError('EINVAL', `${what} must be an integer in [0, ${max}], got ${String(v)}`);
  }
  return v;
}

/** Format `storage` as an empty pool. */
export function formatStorage(storage: Storage, opts: FormatOptions = {}): Superblock {
  const g = computeGeometry(storage.size, opts);
  const seed = randomBytes(4).readUInt32LE(0);
  const ckpt: Checkpoint = { gen: 1, logSeed: seed, nextFileId: 1, usedBlocks: 0, files: [] };
  // an empty first log record: the log reads as cleanly ended
  fillBytes(storage, g.logStart * B, 64);
  storage.persist(g.logStart * B, 64);
  const crc = writeCheckpoint(storage, g, ckpt);
  const sb: Superblock = { version: 1, uuid: newUuid(), geometry: g, createdMs: Date.now(), ckptGen: 1, ckptCrc: crc };
  writeSuperblocks(storage, sb);
  return sb;
}

function writeSuperblocks(storage: Storage, sb: Superblock): void {
  for (const copy of [0, 1]) {
    writeBytes(storage, copy * B, encodeSuperblock(sb, copy));
    storage.persist(copy * B, B);
  }
}

/** Read the superblock copies: the valid one with the newest checkpoint, or a clear EBADF. */
export function readSuperblock(storage: Storage): { sb: Superblock; stale: boolean; notes: string[] } {
  if (storage.size < 2 * B) throw daxError('EBADF', `'${storage.path}' (${storage.size} bytes) is too small to be a daxmap pool`);
  const r0 = decodeSuperblock(readBytes(storage, 0, B, true), storage.size);
  const r1 = decodeSuperblock(readBytes(storage, B, B, true), storage.size);
  const notes: string[] = [];
  if (!r0.ok) notes.push(`superblock copy 0: ${r0.detail}`);
  if (!r1.ok) notes.push(`superblock copy 1: ${r1.detail}`);
  if (!r0.ok && !r1.ok) {
    if (r0.reason === 'no-magic' && r1.reason === 'no-magic') throw daxError('EBADF', `'${storage.path}' is not a daxmap pool (no superblock)`);
    throw daxError('EBADF', `'${storage.path}': bad superblock (${notes.join('; ')})`);
  }
  if (r0.ok && r1.ok) {
    const a = r0.sb.geometry;
    const b = r1.sb.geometry;
    if (r0.sb.uuid !== r1.sb.uuid || JSON.stringify(a) !== JSON.stringify(b)) {
      throw daxError('EBADF', `'${storage.path}': the two superblock copies describe different pools`);
    }
    const sb = r0.sb.ckptGen >= r1.sb.ckptGen ? r0.sb : r1.sb;
    return { sb, stale: r0.sb.ckptGen !== r1.sb.ckptGen, notes };
  }
  return { sb: r0.ok ? r0.sb : (r1 as { ok: true; sb: Superblock }).sb, stale: true, notes };
}

export class PoolCore {
  readonly storage: Storage;
  readonly geometry: Geometry;
  sb: Superblock;
  readonly files = new Map<number, Inode>();
  readonly names = new Map<string, Inode>();
  readonly alloc: BlockAllocator;
  log!: MetaLog;
  nextFileId = 1;
  /** Class 'alloc': block allocation, extent maps, the namespace. */
  readonly allocLock = new Mutex('alloc');
  /** Class 'log': the metadata log and checkpoints. */
  readonly logLock = new Mutex('log');
  invalidator: Invalidator = async () => {};
  closed = false;
  openInfo!: OpenInfo;
  checkpoints = 0;
  private constructor(storage: Storage, sb: Superblock) {
    this.storage = storage;
    this.sb = sb;
    this.geometry = sb.geometry;
    this.alloc = new BlockAllocator(this.geometry.dataStart, this.geometry.dataEnd);
  }

  /** Open a formatted storage: superblock, checkpoint, log replay. Throws EBADF for anything not a sound pool. */
  static open(storage: Storage, opts: { readOnly?: boolean; progress?: (done: number, total: number) => void } = {}): PoolCore {
    const { sb, stale } = readSuperblock(storage);
    const core = new PoolCore(storage, sb);
    try {
      core.load(opts.progress);
    } catch (e) {
      if (e instanceof ReplayError) throw daxError('EBADF', `'${storage.path}': damaged pool metadata: ${e.message} (run daxmap fsck)`, { cause: e });
      if (e instanceof RangeError || e instanceof TypeError) throw daxError('EBADF', `'${storage.path}': unreadable pool metadata: ${e.message}`, { cause: e });
      throw e;
    }
    // a copy that is damaged or one checkpoint behind (a crash between the two writes) is rewritten
    if (stale && !opts.readOnly) writeSuperblocks(storage, core.sb);
    if (log.isLevelEnabled('debug')) {
      const r = core.openInfo.replay;
      log.debug({ path: storage.path, generation: sb.ckptGen, files: core.files.size, records: r.records, logBytes: r.tail, stop: r.stop }, 'pool opened');
    }
    return core;
  }

  private load(progress?: (done: number, total: number) => void): void {
    const g = this.geometry;
    const problem = checkGeometry(g, this.storage.size);
    if (problem) corrupt(problem);
    const r = readCheckpoint(this.storage, g, this.sb.ckptGen, this.sb.ckptCrc);
    if (!r.ok) corrupt(r.detail);
    const c = r.ckpt;
    this.nextFileId = c.nextFileId;
    let used = 0;
    let extents = 0;
    for (const f of c.files) {
      this.apply({ t: RecType.Create, id: f.id, mode: f.mode, uid: f.uid, gid: f.gid, mtimeMs: f.mtimeMs, name: f.name }, true);
      const e = f.extents;
      for (let k = 0; k < e.length; k += 4) {
        const state = e[k + 3]!;
        if (state !== STATE_UNWRITTEN && state !== STATE_WRITTEN) corrupt(`checkpoint: file ${f.id} extent with state ${state}`);
        this.apply({ t: RecType.Map, id: f.id, fb: e[k]!, dev: e[k + 1]!, len: e[k + 2]!, state }, true);
        used += e[k + 2]!;
        extents++;
      }
      this.apply({ t: RecType.SetSize, id: f.id, size: f.size, mtimeMs: f.mtimeMs }, true);
    }
    if (used !== c.usedBlocks) corrupt(`checkpoint says ${c.usedBlocks} blocks used, its extents hold ${used}`);
    if (c.nextFileId <= Math.max(0, ...[...this.files.keys()])) corrupt(`checkpoint next file id ${c.nextFileId} is not above every file id`);
    const area = readBytes(this.storage, g.logStart * B, g.logBlocks * B);
    const end = scanLog(area, c.logSeed, (txn, off) => {
      try {
        for (const rec of txn) this.apply(rec, true);
      } catch (e) {
        if (e instanceof ReplayError) corrupt(`log transaction at log offset ${off} (${txn.map((x) => recordName(x.t)).join('+')}): ${e.message}`);
        throw e;
      }
    }, progress);
    this.log = new MetaLog(this.storage, g.logStart * B, g.logBlocks * B, end.tail, end.chain, true);
    this.openInfo = { sb: this.sb, replay: end, ckptFiles: c.files.length, ckptExtents: extents, ckptUsedBlocks: c.usedBlocks };
  }

  // ---- applying records (replay and run time share this) ----

  private must(id: number): Inode {
    const f = this.files.get(id);
    if (!f) corrupt(`record names file id ${id}, which does not exist`);
    return f;
  }

  /**
   * Apply one record to the in-memory state. In replay the allocator learns of
   * newly mapped blocks here and every impossibility is a ReplayError; at run time
   * the caller has already taken the blocks.
   */
  private apply(r: LogRecord, replay: boolean): void {
    switch (r.t) {
      case RecType.Session:
        return;
      case RecType.Create: {
        if (this.files.has(r.id)) corrupt(`create of file id ${r.id}, which exists`);
        if (this.names.has(r.name)) corrupt(`create of '${r.name}', which exists`);
        if (r.id === 0) corrupt('create of file id 0');
        try { validateName(r.name); } catch { corrupt(`create with an invalid name`); }
        if (this.files.size >= this.geometry.maxFiles) corrupt(`more than ${this.geometry.maxFiles} files`);
        const f: Inode = {
          id: r.id, name: r.name, size: 0, mode: r.mode, uid: r.uid, gid: r.gid, mtimeMs: r.mtimeMs,
          extents: new ExtentMap(), rangeLock: new RangeLock('range', `range:${r.name}`), live: true, dirty: [], mtimeDirty: false,
        };
        this.files.set(r.id, f);
        this.names.set(r.name, f);
        if (r.id >= this.nextFileId) this.nextFileId = r.id + 1;
        return;
      }
      case RecType.Unlink: {
        const f = this.must(r.id);
        this.drop(f);
        return;
      }
      case RecType.Rename: {
        const f = this.must(r.id);
        try { validateName(r.name); } catch { corrupt(`rename to an invalid name`); }
        const existing = this.names.get(r.name);
        if (r.replaced !== 0) {
          const victim = this.must(r.replaced);
          if (existing !== victim || victim === f) corrupt(`rename of ${r.id} replaces ${r.replaced}, which is not '${r.name}'`);
          this.drop(victim);
        } else if (existing && existing !== f) {
          corrupt(`rename of ${r.id} onto existing '${r.name}' without replacing it`);
        }
        this.names.delete(f.name);
        f.name = r.name;
        this.names.set(r.name, f);
        return;
      }
      case RecType.Map: {
        const f = this.must(r.id);
        if (!(r.len > 0) || r.fb + r.len > MAX_FILE_BLOCKS) corrupt(`map of file blocks [${r.fb}, +${r.len}) out of range`);
        if (!this.alloc.inData(r.dev, r.len)) corrupt(`map to device blocks [${r.dev}, +${r.len}) outside the data area [${this.geometry.dataStart}, ${this.geometry.dataEnd})`);
        const removed = f.extents.set(r.fb, r.len, r.dev, r.state);
        if (removed.length === 0) {
          if (replay) this.claim(f, r.dev, r.len);
          return;
        }
        // blocks that stay (a state change) vs blocks that left the file
        const kept: Run[] = [];
        for (const p of removed) {
          if (p.dev - p.fb === r.dev - r.fb) kept.push({ start: p.dev, len: p.len });
          else this.alloc.freeLater(p.dev, p.len);
        }
        if (replay) {
          let d = r.dev;
          for (const k of kept) {
            if (k.start > d) this.claim(f, d, k.start - d);
            d = k.start + k.len;
          }
          if (d < r.dev + r.len) this.claim(f, d, r.dev + r.len - d);
        }
        return;
      }
      case RecType.Unmap: {
        const f = this.must(r.id);
        if (!(r.len > 0) || r.fb + r.len > MAX_FILE_BLOCKS) corrupt(`unmap of file blocks [${r.fb}, +${r.len}) out of range`);
        for (const p of f.extents.clear(r.fb, r.fb + r.len)) this.alloc.freeLater(p.dev, p.len);
        return;
      }
      case RecType.SetSize: {
        const f = this.must(r.id);
        if (r.size > MAX_FILE_SIZE) corrupt(`size ${r.size} of file ${r.id} above the limit`);
        f.size = r.size;
        f.mtimeMs = r.mtimeMs;
        return;
      }
      case RecType.SetAttr: {
        const f = this.must(r.id);
        f.mode = r.mode;
        f.uid = r.uid;
        f.gid = r.gid;
        f.mtimeMs = r.mtimeMs;
        return;
      }
    }
  }

  private claim(f: Inode, dev: number, len: number): void {
    const clash = this.alloc.markUsed(dev, len);
    if (clash >= 0) {
      let owner = 'a block freed earlier in this log epoch';
      for (const o of this.files.values()) {
        if (o === f) continue;
        for (const e of o.extents.all()) if (e.dev <= clash && clash < e.dev + e.len) owner = `file ${o.id} ('${o.name}')`;
      }
      corrupt(`device block ${clash} mapped by file ${f.id} ('${f.name}') is already owned by ${owner}`);
    }
  }

  private drop(f: Inode): void {
    for (const e of f.extents.clear(0, MAX_FILE_BLOCKS)) this.alloc.freeLater(e.dev, e.len);
    this.files.delete(f.id);
    if (this.names.get(f.name) === f) this.names.delete(f.name);
    f.live = false;
    f.size = 0;
    f.dirty = [];
  }

  // ---- run-time transaction plumbing ----

  /** Take alloc then log (the tail of the lock order) and run `fn` synchronously under both. */
  async locked<T>(fn: () => T): Promise<T> {
    const a = await this.allocLock.acquire();
    try {
      const l = await this.logLock.acquire();
      try {
        this.checkOpen();
        return fn();
      } finally {
        l.release();
      }
    } finally {
      a.release();
    }
  }

  /** Apply a transaction in memory and append it (caller holds alloc + log). */
  private run(recs: LogRecord[]): void {
    if (recs.length === 0) return;
    for (const r of recs) this.apply(r, false);
    if (this.log.fits(recs)) this.log.append(recs);
    else this.checkpoint(); // the checkpoint already contains this transaction
  }

  /** Make `n` blocks allocatable or throw ENOSPC, before anything is changed (caller holds alloc + log). */
  private ensureSpace(n: number): void {
    if (n <= this.alloc.free) return;
    if (n <= this.alloc.free + this.alloc.pendingCount) this.checkpoint();
    if (n > this.alloc.free) {
      throw daxError('ENOSPC', `pool '${this.storage.path}' has ${this.alloc.free * B} bytes free, ${n * B} needed`);
    }
  }

  /** Write the whole state as a new checkpoint, point the superblocks at it, restart the log (caller holds log). */
  checkpoint(): void {
    const gen = this.sb.ckptGen + 1;
    const seed = randomBytes(4).readUInt32LE(0);
    const files = [...this.files.values()].sort((a, b) => a.id - b.id).map((f) => {
      const ex: number[] = [];
      for (const e of f.extents.all()) ex.push(e.fb, e.dev, e.len, e.state);
      return { id: f.id, name: f.name, mode: f.mode, uid: f.uid, gid: f.gid, mtimeMs: f.mtimeMs, size: f.size, extents: ex };
    });
    let used = 0;
    for (const f of this.files.values()) used += f.extents.blocks;
    const crc = writeCheckpoint(this.storage, this.geometry, { gen, logSeed: seed, nextFileId: this.nextFileId, usedBlocks: used, files });
    this.sb = { ...this.sb, ckptGen: gen, ckptCrc: crc };
    writeSuperblocks(this.storage, this.sb);
    this.log.reset(seed);
    const released = this.alloc.pendingCount;
    this.alloc.releasePending();
    for (const f of this.files.values()) f.mtimeDirty = false;
    this.checkpoints++;
    if (log.isLevelEnabled('debug')) log.debug({ path: this.storage.path, generation: gen, files: files.length, usedBlocks: used, released }, 'checkpoint');
  }

  checkOpen(): void {
    if (this.closed) throw daxError('EBADF', `pool '${this.storage.path}' is closed`);
  }

  checkLive(f: Inode): void {
    this.checkOpen();
    if (!f.live) throw daxError('ENOENT', `file '${f.name}' was unlinked`);
  }

  // ---- device byte access ----

  private devCopyIn(dev: number, src: Uint8Array, srcStart: number, len: number): void {
    writeBytes(this.storage, dev, src, srcStart, len);
  }

  private devCopyOut(dev: number, dst: Uint8Array, dstStart: number, len: number): void {
    for (let done = 0; done < len;) {
      const off = dev + done;
      const n = Math.min(CHUNK_SIZE - (off % CHUNK_SIZE), len - done);
      dst.set(this.storage.view(off, n), dstStart + done);
      done += n;
    }
  }

  private persistRuns(runs: Run[]): void {
    runs.sort((a, b) => a.start - b.start);
    let cur: Run | null = null;
    for (const r of runs) {
      if (cur && cur.start + cur.len >= r.start) cur.len = Math.max(cur.len, r.start + r.len - cur.start);
      else { if (cur) this.storage.persist(cur.start * B, cur.len * B); cur = { ...r }; }
    }
    if (cur) this.storage.persist(cur.start * B, cur.len * B);
  }

  private markDirty(f: Inode, dev: number, len: number): void {
    const last = f.dirty[f.dirty.length - 1];
    if (last && last.start + last.len === dev) last.len += len;
    else if (!last || last.start !== dev || last.len < len) f.dirty.push({ start: dev, len });
    if (f.dirty.length > 4096) this.flushDirty(f);
  }

  flushDirty(f: Inode): void {
    const d = f.dirty;
    f.dirty = [];
    this.persistRuns(d);
  }

  /**
   * Fill device blocks [dev, dev+n) that back file blocks [fb, fb+n): the bytes of
   * `data` (at file offset `dataOff`) where they overlap, zeros everywhere else.
   */
  private fillBlocks(dev: number, fb: number, n: number, data: Uint8Array | null, dataOff: number): void {
    const lo = fb * B;
    const hi = (fb + n) * B;
    const s = data ? Math.max(lo, Math.min(hi, dataOff)) : hi;
    const t = data ? Math.max(s, Math.min(hi, dataOff + data.length)) : hi;
    if (s > lo) fillBytes(this.storage, dev * B, s - lo);
    if (t > s) this.devCopyIn(dev * B + (s - lo), data!, s - dataOff, t - s);
    if (hi > t) fillBytes(this.storage, dev * B + (t - lo), hi - t);
  }

  /** Segments of [fb0, fb1): holes, unwritten and written runs, clipped. */
  segments(f: Inode, fb0: number, fb1: number): { fb: number; len: number; state: ExtentState; dev: number }[] {
    const out: { fb: number; len: number; state: ExtentState; dev: number }[] = [];
    let cur = fb0;
    for (const e of f.extents.overlapping(fb0, fb1)) {
      if (e.fb > cur) out.push({ fb: cur, len: e.fb - cur, state: 'hole', dev: -1 });
      const s = Math.max(cur, e.fb);
      const t = Math.min(fb1, e.fb + e.len);
      out.push({ fb: s, len: t - s, state: e.state === STATE_WRITTEN ? 'written' : 'unwritten', dev: e.dev + (s - e.fb) });
      cur = t;
    }
    if (cur < fb1) out.push({ fb: cur, len: fb1 - cur, state: 'hole', dev: -1 });
    return out;
  }

  private allWritten(f: Inode, fb0: number, fb1: number): boolean {
    let cur = fb0;
    for (const e of f.extents.overlapping(fb0, fb1)) {
      if (e.fb > cur || e.state !== STATE_WRITTEN) return false;
      cur = e.fb + e.len;
    }
    return cur >= fb1;
  }

  /**
   * Allocate blocks for the hole [fb, fb+len): whole 2 MiB groups for whole aligned
   * file chunks (when `aligned`), the blocks after `goal` when free, and a
   * congruent phase in fresh groups. Returns file-ordered pieces, already marked.
   */
  private allocHole(fb: number, len: number, goal: number | undefined, aligned: boolean): { fb: number; dev: number; len: number }[] {
    const out: { fb: number; dev: number; len: number }[] = [];
    let cur = fb;
    let g = goal;
    const takeSome = (n: number, opts: { goal?: number; wholeGroups?: boolean; congruent?: number }): void => {
      for (const r of this.alloc.take(n, opts)) {
        out.push({ fb: cur, dev: r.start, len: r.len });
        cur += r.len;
        g = r.start + r.len;
      }
    };
    let left = len;
    if (aligned) {
      const head = Math.min(left, (GROUP_BLOCKS - (cur % GROUP_BLOCKS)) % GROUP_BLOCKS);
      if (head > 0) { takeSome(head, { goal: g, congruent: cur % GROUP_BLOCKS }); left -= head; }
      const whole = Math.floor(left / GROUP_BLOCKS) * GROUP_BLOCKS;
      if (whole > 0) {
        const goalAligned = g !== undefined && (g - this.geometry.dataStart) % GROUP_BLOCKS === 0 ? g : undefined;
        takeSome(whole, { goal: goalAligned, wholeGroups: true, congruent: 0 });
        left -= whole;
      }
    }
    if (left > 0) takeSome(left, { goal: g, congruent: cur % GROUP_BLOCKS });
    return out;
  }

  private goalFor(f: Inode, fb: number): number | undefined {
    if (fb === 0) return undefined;
    const e = f.extents.find(fb - 1);
    return e ? e.dev + (fb - 1 - e.fb) + 1 : undefined;
  }

  /** Before the size grows past a partial EOF block: zero its tail, durably, so no old bytes reappear. */
  private zeroEofTail(f: Inode): void {
    if (f.size % B === 0) return;
    const fb = Math.floor(f.size / B);
    const e = f.extents.find(fb);
    if (!e || e.state !== STATE_WRITTEN) return;
    const dev = (e.dev + fb - e.fb) * B;
    fillBytes(this.storage, dev + (f.size % B), B - (f.size % B));
    this.storage.persist(dev, B);
  }

  /**
   * Allocate holes and convert unwritten blocks in [fb0, fb1) to written, filling
   * them with `data` (at file offset dataOff) or zeros, persisting those blocks, then
   * recording them. Caller holds alloc + log; returns the records (not yet run).
   */
  private materialise(f: Inode, fb0: number, fb1: number, data: Uint8Array | null, dataOff: number, aligned: boolean): LogRecord[] {
    const segs = this.segments(f, fb0, fb1);
    let holes = 0;
    for (const s of segs) if (s.state === 'hole') holes += s.len;
    this.ensureSpace(holes);
    const recs: LogRecord[] = [];
    const fresh: Run[] = [];
    const taken: Run[] = [];
    try {
      for (const s of segs) {
        if (s.state === 'written') continue;
        if (s.state === 'unwritten') {
          this.fillBlocks(s.dev, s.fb, s.len, data, dataOff);
          fresh.push({ start: s.dev, len: s.len });
          recs.push({ t: RecType.Map, id: f.id, fb: s.fb, len: s.len, dev: s.dev, state: STATE_WRITTEN });
          continue;
        }
        const pieces = this.allocHole(s.fb, s.len, this.goalFor(f, s.fb) ?? lastDev(recs), aligned);
        for (const p of pieces) {
          taken.push({ start: p.dev, len: p.len });
          this.fillBlocks(p.dev, p.fb, p.len, data, dataOff);
          fresh.push({ start: p.dev, len: p.len });
          recs.push({ t: RecType.Map, id: f.id, fb: p.fb, len: p.len, dev: p.dev, state: STATE_WRITTEN });
        }
      }
      // rule 3: the zeroes (and data) are durable before the records that expose them
      this.persistRuns(fresh);
    } catch (e) {
      for (const t of taken) this.alloc.unmark(t.start, t.len);
      throw e;
    }
    return recs;
  }

  // ---- file operations (public API calls land here) ----

  async createOrOpen(name: string, create: boolean, opts: { mode?: number; uid?: number; gid?: number; exclusive?: boolean }): Promise<Inode> {
    this.checkOpen();
    validateName(name);
    const existing = this.names.get(name);
    if (existing) {
      if (opts.exclusive) throw daxError('EEXIST', `file '${name}' exists`);
      return existing;
    }
    if (!create) throw daxError('ENOENT', `no file '${name}' in pool '${this.storage.path}'`);
    const mode = opts.mode ?? 0o644;
    checkOffset('mode', mode, 0o7777);
    return this.locked(() => {
      const again = this.names.get(name);
      if (again) {
        if (opts.exclusive) throw daxError('EEXIST', `file '${name}' exists`);
        return again;
      }
      if (this.files.size >= this.geometry.maxFiles) throw daxError('ENOSPC', `pool '${this.storage.path}' holds its maximum of ${this.geometry.maxFiles} files`);
      const id = this.nextFileId;
      this.run([{ t: RecType.Create, id, name, mode, uid: opts.uid ?? process.getuid?.() ?? 0, gid: opts.gid ?? process.getgid?.() ?? 0, mtimeMs: Date.now() }]);
      return this.files.get(id)!;
    });
  }

  async write(f: Inode, data: Uint8Array, offset: number): Promise<number> {
    checkOffset('offset', offset);
    if (!(data instanceof Uint8Array)) throw daxError('EINVAL', 'data must be a Buffer or Uint8Array');
    const len = data.length;
    const end = offset + len;
    if (end > MAX_FILE_SIZE) throw daxError('EINVAL', `write of ${len} bytes at ${offset} passes the file size limit ${MAX_FILE_SIZE}`);
    this.checkLive(f);
    if (len === 0) return 0;
    const h = await f.rangeLock.acquireShared(offset, end);
    try {
      this.checkLive(f);
      const fb0 = Math.floor(offset / B);
      const fb1 = Math.ceil(end / B);
      if (end > f.size || !this.allWritten(f, fb0, fb1)) {
        await this.locked(() => {
          this.checkLive(f);
          const extending = end > f.size;
          if (extending) this.zeroEofTail(f);
          // blocks written before this call take their bytes after the new ones are recorded
          const old = this.segments(f, fb0, fb1).filter((s) => s.state === 'written');
          const recs = this.materialise(f, fb0, fb1, data, offset, len >= GROUP_BLOCKS * B);
          if (extending) recs.push({ t: RecType.SetSize, id: f.id, size: end, mtimeMs: Date.now() });
          this.run(recs);
          for (const s of old) this.copyToWritten(f, data, offset, s);
        });
      } else {
        for (const s of this.segments(f, Math.floor(offset / B), Math.ceil(end / B))) this.copyToWritten(f, data, offset, s);
      }
      f.mtimeMs = Date.now();
      f.mtimeDirty = true;
      return len;
    } finally {
      h.release();
    }
  }

  /** Copy the part of `data` (at file offset `offset`) that falls in a written segment; durable at fsync. */
  private copyToWritten(f: Inode, data: Uint8Array, offset: number, seg: { fb: number; len: number; dev: number; state: ExtentState }): void {
    if (seg.state !== 'written') throw daxError('EIO', `internal: copy into ${seg.state} block ${seg.fb} of '${f.name}'`);
    const s = Math.max(offset, seg.fb * B);
    const t = Math.min(offset + data.length, (seg.fb + seg.len) * B);
    if (t <= s) return;
    const dev = seg.dev * B + (s - seg.fb * B);
    this.devCopyIn(dev, data, s - offset, t - s);
    const d0 = Math.floor(dev / B);
    this.markDirty(f, d0, Math.ceil((dev + t - s) / B) - d0);
  }

  async read(f: Inode, into: Uint8Array, offset: number): Promise<number> {
    checkOffset('offset', offset);
    if (!(into instanceof Uint8Array)) throw daxError('EINVAL', 'read target must be a Buffer or Uint8Array');
    this.checkLive(f);
    if (into.length === 0) return 0;
    const h = await f.rangeLock.acquireShared(offset, Math.min(RANGE_END, offset + into.length));
    try {
      this.checkLive(f);
      if (offset >= f.size) return 0;
      const n = Math.min(into.length, f.size - offset);
      const end = offset + n;
      let pos = offset;
      for (const e of f.extents.overlapping(Math.floor(offset / B), Math.ceil(end / B))) {
        const s = Math.max(pos, e.fb * B);
        if (s > pos) into.fill(0, pos - offset, s - offset);
        const t = Math.min(end, (e.fb + e.len) * B);
        if (e.state === STATE_WRITTEN) this.devCopyOut(e.dev * B + (s - e.fb * B), into, s - offset, t - s);
        else into.fill(0, s - offset, t - offset);
        pos = t;
      }
      if (pos < end) into.fill(0, pos - offset, n);
      return n;
    } finally {
      h.release();
    }
  }

  async truncate(f: Inode, size: number): Promise<void> {
    checkOffset('size', size);
    this.checkLive(f);
    let h: LockHandle;
    for (;;) {
      const start = Math.min(size, f.size);
      h = await f.rangeLock.acquireExclusive(start, RANGE_END);
      if (Math.min(size, f.size) >= start) break;
      h.release(); // the file shrank while we waited: lock from the new, lower start
    }
    try {
      this.checkLive(f);
      if (size < f.size) await this.invalidator(f, size, RANGE_END - size);
      await this.locked(() => {
        this.checkLive(f);
        const recs: LogRecord[] = [];
        if (size < f.size) {
          const keep = Math.ceil(size / B);
          const last = lastExtentEnd(f.extents);
          if (last > keep) recs.push({ t: RecType.Unmap, id: f.id, fb: keep, len: last - keep });
          this.zeroTailBeyond(f, size);
        } else if (size > f.size) {
          this.zeroEofTail(f);
        }
        recs.push({ t: RecType.SetSize, id: f.id, size, mtimeMs: Date.now() });
        this.run(recs);
      });
    } finally {
      h.release();
    }
  }

  /** After a shrink to `size`: zero the rest of the new EOF block (mappings see zeros past EOF, like the kernel). */
  private zeroTailBeyond(f: Inode, size: number): void {
    if (size % B === 0) return;
    const fb = Math.floor(size / B);
    const e = f.extents.find(fb);
    if (!e || e.state !== STATE_WRITTEN) return;
    const dev = (e.dev + fb - e.fb) * B;
    fillBytes(this.storage, dev + (size % B), B - (size % B));
    this.markDirty(f, e.dev + fb - e.fb, 1);
  }

  async fallocate(f: Inode, offset: number, length: number, keepSize: boolean): Promise<void> {
    checkOffset('offset', offset);
    checkOffset('length', length);
    if (length === 0) throw daxError('EINVAL', 'fallocate length must be positive');
    const end = offset + length;
    if (end > MAX_FILE_SIZE) throw daxError('EINVAL', `fallocate range passes the file size limit ${MAX_FILE_SIZE}`);
    this.checkLive(f);
    const h = await f.rangeLock.acquireShared(offset, end);
    try {
      await this.locked(() => {
        this.checkLive(f);
        const fb0 = Math.floor(offset / B);
        const fb1 = Math.ceil(end / B);
        const segs = this.segments(f, fb0, fb1);
        let holes = 0;
        for (const s of segs) if (s.state === 'hole') holes += s.len;
        this.ensureSpace(holes);
        const recs: LogRecord[] = [];
        for (const s of segs) {
          if (s.state !== 'hole') continue;
          // unwritten blocks read as zeros: no zeroing now, it happens at conversion
          for (const p of this.allocHole(s.fb, s.len, this.goalFor(f, s.fb) ?? lastDev(recs), s.len >= GROUP_BLOCKS)) {
            recs.push({ t: RecType.Map, id: f.id, fb: p.fb, len: p.len, dev: p.dev, state: STATE_UNWRITTEN });
          }
        }
        if (!keepSize && end > f.size) {
          this.zeroEofTail(f);
          recs.push({ t: RecType.SetSize, id: f.id, size: end, mtimeMs: Date.now() });
        }
        this.run(recs);
      });
    } finally {
      h.release();
    }
  }

  /** Zero the bytes [s, t) inside one block if it is written (an in-place data change, durable at fsync). */
  private zeroPartial(f: Inode, s: number, t: number): void {
    if (t <= s) return;
    const fb = Math.floor(s / B);
    const e = f.extents.find(fb);
    if (!e || e.state !== STATE_WRITTEN) return;
    const dev = e.dev + fb - e.fb;
    fillBytes(this.storage, dev * B + (s - fb * B), t - s);
    this.markDirty(f, dev, 1);
  }

  /** Shared by punchHole and zeroRange: partial head/tail blocks zeroed in place; returns the whole-block range. */
  private edges(f: Inode, offset: number, end: number): [number, number] {
    const a = Math.ceil(offset / B);
    const b = Math.floor(end / B);
    if (a > b) {
      this.zeroPartial(f, offset, end); // inside one block
      return [a, a];
    }
    this.zeroPartial(f, offset, a * B);
    this.zeroPartial(f, b * B, end);
    return [a, b];
  }

  private async destructive(f: Inode, offset: number, length: number, what: string, body: () => void): Promise<void> {
    checkOffset('offset', offset);
    checkOffset('length', length);
    if (length === 0) throw daxError('EINVAL', `${what} length must be positive`);
    const end = offset + length;
    if (end > MAX_FILE_SIZE) throw daxError('EINVAL', `${what} range passes the file size limit ${MAX_FILE_SIZE}`);
    this.checkLive(f);
    const h = await f.rangeLock.acquireExclusive(offset, end);
    try {
      this.checkLive(f);
      await this.invalidator(f, offset, length);
      await this.locked(() => {
        this.checkLive(f);
        body();
      });
      f.mtimeMs = Date.now();
      f.mtimeDirty = true;
    } finally {
      h.release();
    }
  }

  punchHole(f: Inode, offset: number, length: number): Promise<void> {
    return this.destructive(f, offset, length, 'punchHole', () => {
      const [a, b] = this.edges(f, offset, offset + length);
      if (b > a && f.extents.overlapping(a, b).length > 0) this.run([{ t: RecType.Unmap, id: f.id, fb: a, len: b - a }]);
    });
  }

  zeroRange(f: Inode, offset: number, length: number, keepSize: boolean): Promise<void> {
    return this.destructive(f, offset, length, 'zeroRange', () => {
      const end = offset + length;
      const extending = !keepSize && end > f.size;
      if (extending) this.zeroEofTail(f);
      const [a, b] = this.edges(f, offset, end);
      const recs: LogRecord[] = [];
      // written whole blocks become unwritten: they read as zeros and are zeroed again before any reuse as written
      for (const s of this.segments(f, a, b)) {
        if (s.state === 'written') recs.push({ t: RecType.Map, id: f.id, fb: s.fb, len: s.len, dev: s.dev, state: STATE_UNWRITTEN });
      }
      if (extending) recs.push({ t: RecType.SetSize, id: f.id, size: end, mtimeMs: Date.now() });
      this.run(recs);
    });
  }

  /** Lock a file's whole range exclusive, re-checking that `name` still names it; null if the name is gone. */
  private async lockNamed(name: string): Promise<{ f: Inode; h: LockHandle } | null> {
    for (;;) {
      const f = this.names.get(name);
      if (!f) return null;
      const h = await f.rangeLock.acquireExclusive(0, RANGE_END);
      if (this.names.get(name) === f && f.live) return { f, h };
      h.release();
    }
  }

  async unlink(name: string): Promise<void> {
    validateName(name);
    this.checkOpen();
    const got = await this.lockNamed(name);
    if (!got) throw daxError('ENOENT', `no file '${name}' in pool '${this.storage.path}'`);
    try {
      await this.invalidator(got.f, 0, RANGE_END);
      await this.locked(() => {
        this.checkLive(got.f);
        this.run([{ t: RecType.Unlink, id: got.f.id }]);
      });
    } finally {
      got.h.release();
    }
  }

  async rename(from: string, to: string): Promise<void> {
    validateName(from);
    validateName(to);
    this.checkOpen();
    for (;;) {
      const src = this.names.get(from);
      if (!src) throw daxError('ENOENT', `no file '${from}' in pool '${this.storage.path}'`);
      if (from === to) return;
      const dst = this.names.get(to);
      let h: LockHandle | null = null;
      if (dst) {
        h = await dst.rangeLock.acquireExclusive(0, RANGE_END);
        if (this.names.get(to) !== dst || !dst.live) { h.release(); continue; }
        await this.invalidator(dst, 0, RANGE_END);
      }
      try {
        const done = await this.locked(() => {
          const s = this.names.get(from);
          const d = this.names.get(to);
          if (s !== src || d !== dst) return false; // the namespace moved while we waited: start over
          this.run([{ t: RecType.Rename, id: src.id, replaced: dst ? dst.id : 0, name: to }]);
          return true;
        });
        if (done) return;
      } finally {
        h?.release();
      }
    }
  }

  async fsync(f: Inode): Promise<void> {
    this.checkLive(f);
    this.flushDirty(f);
    const l = await this.logLock.acquire();
    try {
      this.checkOpen();
      if (f.mtimeDirty && f.live) {
        f.mtimeDirty = false;
        this.run([{ t: RecType.SetAttr, id: f.id, mode: f.mode, uid: f.uid, gid: f.gid, mtimeMs: f.mtimeMs }]);
      }
      this.log.persist();
    } finally {
      l.release();
    }
  }

  /** Flush everything: all files' data, pending attributes, and a checkpoint when the log holds records. */
  async sync(checkpoint: boolean): Promise<void> {
    await this.locked(() => {
      for (const f of this.files.values()) this.flushDirty(f);
      if (checkpoint && this.log.used > 0) this.checkpoint();
      else this.log.persist();
    });
  }

  // ---- internal API for the fault policy ----

  lookup(f: Inode, offset: number): LookupResult {
    checkOffset('offset', offset);
    const fb = Math.floor(offset / B);
    const e = f.extents.find(fb);
    if (!e) {
      const n = f.extents.next(fb);
      const end = n ? n.fb * B : MAX_FILE_SIZE;
      return { state: 'hole', offset: fb * B, length: end - fb * B };
    }
    return { state: e.state === STATE_WRITTEN ? 'written' : 'unwritten', offset: e.fb * B, length: e.len * B, deviceOffset: e.dev * B };
  }

  async ensureWritten(f: Inode, offset: number, length: number, opts: { sync?: boolean; preferAligned?: boolean }): Promise<DeviceExtent[]> {
    checkOffset('offset', offset);
    checkOffset('length', length);
    if (length === 0) throw daxError('EINVAL', 'ensureWritten length must be positive');
    this.checkLive(f);
    const fb0 = Math.floor(offset / B);
    const fb1 = Math.ceil((offset + length) / B);
    if (fb1 * B > Math.ceil(f.size / B) * B) {
      throw daxError('EINVAL', `ensureWritten [${offset}, +${length}) passes EOF of '${f.name}' (${f.size} bytes)`);
    }
    if (!this.allWritten(f, fb0, fb1) || (opts.sync && this.log.dirty)) {
      await this.locked(() => {
        this.checkLive(f);
        if (fb1 * B > Math.ceil(f.size / B) * B) throw daxError('EINVAL', `ensureWritten range passes EOF of '${f.name}'`);
        // a concurrent caller may have done it while we waited: materialise only touches what is still not written
        this.run(this.materialise(f, fb0, fb1, null, 0, opts.preferAligned === true));
        if (opts.sync) this.log.persist();
      });
    }
    return this.deviceExtents(f, fb0, fb1);
  }

  deviceExtents(f: Inode, fb0: number, fb1: number): DeviceExtent[] {
    const out: DeviceExtent[] = [];
    for (const s of this.segments(f, fb0, fb1)) {
      if (s.state !== 'written') throw daxError('EIO', `file '${f.name}' block ${s.fb} is ${s.state} after ensureWritten`);
      out.push({ offset: s.fb * B, length: s.len * B, deviceOffset: s.dev * B });
    }
    return out;
  }

  statFile(f: Inode): { size: number; allocated: number; extents: { offset: number; length: number; state: 'written' | 'unwritten' }[] } {
    const extents: { offset: number; length: number; state: 'written' | 'unwritten' }[] = [];
    for (const e of f.extents.all()) {
      const state = e.state === STATE_WRITTEN ? 'written' : 'unwritten';
      const p = extents[extents.length - 1];
      if (p && p.state === state && p.offset + p.length === e.fb * B) p.length += e.len * B;
      else extents.push({ offset: e.fb * B, length: e.len * B, state });
    }
    return { size: f.size, allocated: f.extents.blocks * B, extents };
  }

  statfs(): { size: number; free: number; blockSize: number } {
    return { size: this.alloc.capacity * B, free: (this.alloc.free + this.alloc.pendingCount) * B, blockSize: B };
  }

  /**
   * Consistency of the live state (fsck and tests): extent maps well formed, every
   * block owned at most once and inside the data area, the allocator bitmap equal
   * to the extents plus the blocks pending reuse, sizes sane, no written block past EOF.
   */
  checkState(progress?: (done: number, total: number) => void): string[] {
    const problems: string[] = [];
    const add = (p: string): void => { if (problems.length < 200) problems.push(p); };
    const g = this.geometry;
    const n = g.dataEnd - g.dataStart;
    const seen = new Uint32Array(Math.ceil(n / 32));
    const isSeen = (d: number): boolean => (seen[(d - g.dataStart) >>> 5]! & (1 << ((d - g.dataStart) & 31))) !== 0;
    const setSeen = (d: number): void => { seen[(d - g.dataStart) >>> 5]! |= 1 << ((d - g.dataStart) & 31); };
    const ownerOf = (d: number, not: Inode): string => {
      for (const o of this.files.values()) {
        if (o === not) continue;
        for (const e of o.extents.overlapping(0, MAX_FILE_BLOCKS)) if (e.dev <= d && d < e.dev + e.len) return `'${o.name}'`;
      }
      return 'the same file twice';
    };
    let used = 0;
    let done = 0;
    const total = this.alloc.used + this.alloc.pendingCount + n;
    for (const f of this.files.values()) {
      const bad = f.extents.check();
      if (bad) add(`file '${f.name}': ${bad}`);
      if (f.size > MAX_FILE_SIZE) add(`file '${f.name}': size ${f.size} above the limit`);
      if (this.names.get(f.name) !== f) add(`file id ${f.id} not reachable by its name '${f.name}'`);
      const limit = Math.ceil(f.size / B);
      for (const e of f.extents.all()) {
        if (e.dev < g.dataStart || e.dev + e.len > g.dataEnd) {
          add(`file '${f.name}': file blocks [${e.fb}, +${e.len}) map to device blocks [${e.dev}, +${e.len}) outside the data area [${g.dataStart}, ${g.dataEnd})`);
          continue;
        }
        if (e.state === STATE_WRITTEN && e.fb + e.len > limit) add(`file '${f.name}': written file blocks [${e.fb}, +${e.len}) past its EOF block ${limit}`);
        for (let d = e.dev; d < e.dev + e.len; d++) {
          if (isSeen(d)) add(`device block ${d} owned twice: by '${f.name}' and by ${ownerOf(d, f)}`);
          setSeen(d);
          if (!this.alloc.isUsed(d)) add(`device block ${d} of '${f.name}' is marked free in the allocator`);
        }
        used += e.len;
        done += e.len;
        if (progress && (done & 0xffff) < e.len) progress(done, total);
      }
    }
    for (const r of this.alloc.pendingRuns()) for (let d = r.start; d < r.start + r.len; d++) {
      if (isSeen(d)) add(`device block ${d} is both pending reuse and owned by a file`);
      setSeen(d);
    }
    for (const r of this.alloc.usedRuns()) for (let d = r.start; d < r.start + r.len; d++) {
      if (!isSeen(d)) add(`device block ${d} is marked used in the allocator but no file owns it (leaked)`);
    }
    progress?.(total, total);
    for (const c of this.alloc.checkCounters()) add(c);
    if (used !== this.alloc.used) add(`extents hold ${used} blocks, the allocator counts ${this.alloc.used} in use`);
    if (this.names.size !== this.files.size) add(`${this.names.size} names for ${this.files.size} files`);
    if (this.files.size > g.maxFiles) add(`${this.files.size} files, above the limit of ${g.maxFiles}`);
    return problems;
  }
}

function lastDev(recs: LogRecord[]): number | undefined {
  const r = recs[recs.length - 1];
  return r && r.t === RecType.Map ? r.dev + r.len : undefined;
}

function lastExtentEnd(m: ExtentMap): number {
  const e = m.last();
  return e ? e.fb + e.len : 0;
}

export type { Extent, ExtentStateCode };
