// The file operations of a pool's filesystem: create/open, unlink, rename, read,
// write, truncate, fallocate, punch hole, zero range, fsync and sync, and the
// entry points of the fault policy (lookup, ensureWritten). PoolCore ties together
// the in-memory state (state.ts), the transactions over it (txn.ts) and the file
// data on the device (blocks.ts); open() gets all three from replay (replay.ts).
//
// Lock order (docs/locking.md): file range lock -> [fault policy entry lock] ->
// alloc -> log. Destructive operations take the range exclusive, call the
// invalidation hook, and only then free or zero blocks. Blocks that become
// reachable as written are zeroed or fully overwritten, and that is persisted,
// before the record that exposes them is appended (docs/pool-format.md, ordering
// rule 1).

import { daxError } from '../errors';
import type { Storage } from '../device/storage';
import { RANGE_END, type LockHandle } from '../lock/index';
import { logger } from '../log';
import type { Run } from './allocator';
import { BlockIo } from './blocks';
import { checkState } from './check';
import { BLOCK_SIZE, GROUP_BLOCKS, MAX_FILE_SIZE, readSuperblock, writeSuperblocks, type Geometry, type Superblock } from './format';
import { RecType, STATE_UNWRITTEN, STATE_WRITTEN, type ExtentStateCode, type LogRecord } from './log';
import { replay, type OpenInfo } from './replay';
import { FsState, allWritten, goalFor, lastExtentEnd, segments, validateName, type ExtentState, type Inode } from './state';
import { Reserve, type ReserveStats } from './reserve';
import { Zeroer } from './zeroer';
import { Journal } from './txn';

const B = BLOCK_SIZE;
const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);
const log = logger('pool');

export type { ExtentState, Inode, OpenInfo, ReserveStats };
export { validateName };

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

export interface ExtentInfo {
  offset: number;
  length: number;
  state: 'written' | 'unwritten';
}

/** Called with the file's range lock held exclusive over [offset, offset+length) before blocks are freed or zeroed. */
export type Invalidator = (file: Inode, offset: number, length: number) => Promise<void>;

function checkOffset(what: string, v: unknown, max = MAX_FILE_SIZE): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) {
    throw daxError('EINVAL', `${what} must be an integer in [0, ${max}], got ${String(v)}`);
  }
  return v;
}

export class PoolCore {
  readonly geometry: Geometry;
  readonly blocks: BlockIo;
  invalidator: Invalidator = async () => {};
  /**
   * Write faults of non-sync mappings record new blocks unwritten and convert them
   * later (materialiseDeferred). On for disk-file pools, where persisting a block
   * is an msync that writes to the disk; off on tmpfs (no I/O to save) and devdax.
   */
  deferConversion: boolean;
  /** Queued conversions that call onBacklog (a writeback soon): runs, blocks. */
  writebackRuns = 16384;
  writebackBlocks = 262144;
  onBacklog: () => void = () => {};

  private constructor(
    readonly storage: Storage,
    readonly state: FsState,
    readonly txn: Journal,
    readonly openInfo: OpenInfo,
  ) {
    this.geometry = state.geometry;
    this.blocks = new BlockIo(storage);
    this.deferConversion = storage.kind === 'file';
    this.unit = (storage.align ?? B) > B ? GROUP_BLOCKS : 1;
    this.zeroer = new Zeroer(storage, state, txn, this.unit > 1, 0);
    this.reserve = new Reserve(storage, state, txn, this.unit === 1, this.zeroer);
  }

  /**
   * The background zeroer of free space (zeroer.ts; docs/pool.md, "Clean free
   * space"). Off (target 0) until PoolFs sets its target, so a read-only open
   * (fsck) never zeroes.
   */
  readonly zeroer: Zeroer;

  /** The reserve of pre-zeroed blocks (reserve.ts; docs/pool.md, "Reserve"). */
  readonly reserve: Reserve;

  /**
   * The allocation unit for data, in blocks: a whole aligned 2 MiB chunk on a 2 MiB-
   * granular device (docs/pool.md, "2 MiB-granular devices"), else one block.
   */
  readonly unit: number;

  /** [fb0, fb1) rounded out to whole allocation units. */
  private unitRange(fb0: number, fb1: number): [number, number] {
    return [Math.floor(fb0 / this.unit) * this.unit, Math.ceil(fb1 / this.unit) * this.unit];
  }

  /**
   * The block where written blocks of `f` must end: its EOF block, or on a 2 MiB-
   * granular device the end of the unit holding EOF (that unit is mapped whole, its
   * bytes past EOF read as zeros: docs/pool.md, "2 MiB-granular devices").
   */
  writtenLimit(f: Inode, size = f.size): number {
    return this.unitRange(0, Math.ceil(size / B))[1];
  }

  /**
   * Before the size grows from f.size to newSize: zero, durably, the bytes of written
   * blocks that become part of the file (ordering rule 4). That is the partial EOF
   * block's tail; on a 2 MiB-granular device every byte from EOF to the new size or
   * the EOF unit's end, whichever comes first, as stores through a mapping may have
   * reached the device there (they are not part of the file).
   */
  private zeroForGrowth(f: Inode, newSize: number): void {
    if (this.unit === 1) this.blocks.zeroEofTail(f);
    else this.blocks.zeroWritten(f, f.size, Math.min(newSize, this.writtenLimit(f) * B));
  }

  /** Open a formatted storage: superblock, checkpoint, log replay. Throws EBADF for anything not a sound pool. */
  static open(storage: Storage, opts: { readOnly?: boolean; progress?: (done: number, total: number) => void } = {}): PoolCore {
    const { sb, stale } = readSuperblock(storage);
    const r = replay(storage, sb, opts.progress);
    const core = new PoolCore(storage, r.state, new Journal(storage, r.state, r.log, sb), r.info);
    // a copy that is damaged or one checkpoint behind (a crash between the two writes) is rewritten
    if (stale && !opts.readOnly) writeSuperblocks(storage, core.sb);
    // blocks still reserved were never exposed: free them (held back until the next checkpoint)
    const left = r.state.reserved.size;
    if (left > 0 && !opts.readOnly) {
      core.reserve.unreserve([...r.state.reserved]);
      log.info({ path: storage.path, blocks: left }, 'freed the reserved blocks a crash left');
    }
    if (log.isLevelEnabled('debug')) {
      const e = r.info.replay;
      log.debug({ path: storage.path, generation: sb.ckptGen, files: r.state.files.size, records: e.records, logBytes: e.tail, stop: e.stop }, 'pool opened');
    }
    return core;
  }

  /** The superblock in force (a checkpoint replaces it). */
  get sb(): Superblock {
    return this.txn.sb;
  }

  get closed(): boolean {
    return this.txn.closed;
  }

  /** After the final sync: refuse every further operation and release the device. */
  release(): void {
    this.txn.closed = true;
    this.storage.close();
  }

  checkOpen(): void {
    this.txn.checkOpen();
  }

  checkLive(f: Inode): void {
    this.checkOpen();
    if (!f.live) throw daxError('ENOENT', `file '${f.name}' was unlinked`);
  }

  /** Consistency of the live state (fsck and tests); see check.ts. */
  checkState(progress?: (done: number, total: number) => void): string[] {
    return checkState(this.state, progress, this.unit);
  }

  /**
   * Allocate holes and convert unwritten blocks in [fb0, fb1) to written, filling
   * them with `data` (at file offset dataOff) or zeros, persisting those blocks, then
   * recording them. Caller holds alloc + log; returns the records (not yet committed).
   */
  private materialise(f: Inode, fb0: number, fb1: number, data: Uint8Array | null, dataOff: number, aligned: boolean, resident = false): LogRecord[] {
    const { recs, written, taken } = this.fill(f, fb0, fb1, data, dataOff, aligned, STATE_WRITTEN, resident);
    // zero before expose (docs/pool-format.md, ordering rule 1): the zeroes (and data)
    // are durable before the records that expose them (blocks taken clean hold
    // durable zeros already: only the data written into them is persisted)
    try {
      this.blocks.persistRuns(written);
    } catch (e) {
      this.unmarkAll(taken);
      throw e;
    }
    return recs;
  }

  /**
   * The deferred form of materialise (docs/pool.md, "Durability"): holes get blocks
   * recorded as UNWRITTEN, and those and the unwritten blocks of [fb0, fb1) are zeroed
   * in memory only, committed, then made written in memory alone and queued for
   * conversion. A crash before the conversion is logged leaves them unwritten: they
   * read as zeros, never as old bytes. Caller holds alloc + log.
   */
  private materialiseDeferred(f: Inode, fb0: number, fb1: number, aligned: boolean, resident: boolean): void {
    const { recs, fresh } = this.fill(f, fb0, fb1, null, 0, aligned, STATE_UNWRITTEN, resident);
    this.commitDeferred(f, recs, fresh);
  }

  /**
   * Commit `recs` (which record `fresh` unwritten, or leave it unwritten), then make
   * `fresh` written in memory alone and queue its conversion. Caller holds alloc + log.
   */
  private commitDeferred(f: Inode, recs: LogRecord[], fresh: (Run & { fb: number })[]): void {
    this.txn.commit(recs);
    for (const r of fresh) {
      this.state.apply({ t: RecType.Map, id: f.id, fb: r.fb, len: r.len, dev: r.start, state: STATE_WRITTEN }, false);
      this.txn.unconverted.add(f, r.fb, r.start, r.len);
    }
    const q = this.txn.unconverted;
    if (q.runs >= this.writebackRuns || q.blocks >= this.writebackBlocks) this.onBacklog();
  }

  /**
   * Allocate the holes of [fb0, fb1) and fill them and its unwritten blocks with `data`
   * (at file offset dataOff) or zeros, in memory. Returns the records for the newly
   * allocated blocks (in `holeState`) and, with WRITTEN, for the unwritten ones, and
   * every block filled, and the device blocks written (to persist: blocks taken from
   * clean free space are not zeroed again, only their data is written). Caller holds
   * alloc + log. `resident`: zeros are written, not punched (BlockIo.fillBlocks).
   */
  private fill(f: Inode, fb0: number, fb1: number, data: Uint8Array | null, dataOff: number, aligned: boolean, holeState: ExtentStateCode, resident = false): { recs: LogRecord[]; fresh: (Run & { fb: number })[]; taken: Run[]; written: Run[] } {
    // On a 2 MiB-granular device whole units are allocated; the unit holding EOF (or
    // the end of the range being written, which may extend it) is written whole, as it
    // is mapped whole; its blocks beyond are recorded unwritten (no written block lies
    // past the EOF unit).
    const eof = this.writtenLimit(f, Math.max(fb1 * B, f.size));
    if (this.unit > 1) {
      [fb0, fb1] = this.unitRange(fb0, fb1);
      aligned = true;
    }
    const segs = segments(f, fb0, fb1);
    let holes = 0;
    for (const s of segs) if (s.state === 'hole') holes += s.len;
    this.txn.ensureSpace(holes);
    const recs: LogRecord[] = [];
    const fresh: (Run & { fb: number })[] = [];
    const taken: Run[] = [];
    const written: Run[] = [];
    try {
      for (const s of segs) {
        if (s.state === 'written') continue;
        if (s.state === 'unwritten') {
          const len = Math.min(s.len, eof - s.fb);
          if (len <= 0) continue;
          this.blocks.fillBlocks(s.dev, s.fb, len, data, dataOff, resident);
          fresh.push({ start: s.dev, len, fb: s.fb });
          written.push({ start: s.dev, len });
          if (holeState === STATE_WRITTEN) recs.push({ t: RecType.Map, id: f.id, fb: s.fb, len, dev: s.dev, state: STATE_WRITTEN });
          continue;
        }
        const clean: Run[] = [];
        const pieces = this.txn.allocate(s.fb, s.len, goalFor(f, s.fb) ?? lastDev(recs), aligned, clean);
        clean.sort((a, b) => a.start - b.start);
        for (const p of pieces) {
          taken.push({ start: p.dev, len: p.len });
          const len = Math.max(0, Math.min(p.len, eof - p.fb));
          if (len > 0) {
            this.fillNew(p.dev, p.fb, len, data, dataOff, resident, clean, written);
            fresh.push({ start: p.dev, len, fb: p.fb });
            recs.push({ t: RecType.Map, id: f.id, fb: p.fb, len, dev: p.dev, state: holeState });
          }
          if (len < p.len) recs.push({ t: RecType.Map, id: f.id, fb: p.fb + len, len: p.len - len, dev: p.dev + len, state: STATE_UNWRITTEN });
        }
      }
    } catch (e) {
      this.unmarkAll(taken);
      throw e;
    }
    return { recs, fresh, taken, written };
  }

  /**
   * Fill newly allocated device blocks [dev, dev+n) (file blocks from fb): those taken
   * clean get only their data, the others their data and zeros (BlockIo.fillBlocks).
   * The blocks written go to `written`; the zeroer's counts learn what was skipped.
   */
  private fillNew(dev: number, fb: number, n: number, data: Uint8Array | null, dataOff: number, resident: boolean, clean: Run[], written: Run[]): void {
    const counts = this.zeroer.counts;
    let d = dev;
    const part = (to: number, isClean: boolean): void => {
      if (to <= d) return;
      const r = this.blocks.fillBlocks(d, fb + (d - dev), to - d, data, dataOff, resident, isClean);
      if (r.written) written.push(r.written);
      if (isClean) counts.cleanTaken += to - d;
      else counts.zeroedOnPath += Math.ceil(r.zeroBytes / B);
      d = to;
    };
    for (const c of clean) {
      if (c.start + c.len <= d) continue;
      if (c.start >= dev + n) break;
      part(Math.max(d, c.start), false);
      part(Math.min(dev + n, c.start + c.len), true);
    }
    part(dev + n, false);
  }

  private unmarkAll(taken: Run[]): void {
    for (const t of taken) this.state.alloc.unmark(t.start, t.len);
  }

  // ---- file operations (PoolFs / PoolFsFile calls land here) ----

  async createOrOpen(name: string, create: boolean, opts: { mode?: number; uid?: number; gid?: number; exclusive?: boolean }): Promise<Inode> {
    this.checkOpen();
    validateName(name);
    const existing = this.state.names.get(name);
    if (existing) {
      if (opts.exclusive) throw daxError('EEXIST', `file '${name}' exists`);
      return existing;
    }
    if (!create) throw daxError('ENOENT', `no file '${name}' in pool '${this.storage.path}'`);
    const mode = opts.mode ?? 0o644;
    checkOffset('mode', mode, 0o7777);
    return this.txn.locked(() => {
      const again = this.state.names.get(name);
      if (again) {
        if (opts.exclusive) throw daxError('EEXIST', `file '${name}' exists`);
        return again;
      }
      if (this.state.files.size >= this.geometry.maxFiles) throw daxError('ENOSPC', `pool '${this.storage.path}' holds its maximum of ${this.geometry.maxFiles} files`);
      const id = this.state.nextFileId;
      this.txn.commit([{ t: RecType.Create, id, name, mode, uid: opts.uid ?? process.getuid?.() ?? 0, gid: opts.gid ?? process.getgid?.() ?? 0, mtimeMs: Date.now() }]);
      return this.state.files.get(id)!;
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
      if (end > f.size || !allWritten(f, fb0, fb1)) {
        await this.txn.locked(() => {
          this.checkLive(f);
          const extending = end > f.size;
          if (extending) this.zeroForGrowth(f, end);
          // blocks written before this call take their bytes after the new ones are recorded
          const old = segments(f, fb0, fb1).filter((s) => s.state === 'written');
          const recs = this.materialise(f, fb0, fb1, data, offset, len >= GROUP_BLOCKS * B);
          if (extending) recs.push({ t: RecType.SetSize, id: f.id, size: end, mtimeMs: Date.now() });
          this.txn.commit(recs);
          for (const s of old) this.blocks.copyToWritten(f, data, offset, s);
        });
      } else {
        for (const s of segments(f, Math.floor(offset / B), Math.ceil(end / B))) this.blocks.copyToWritten(f, data, offset, s);
      }
      f.mtimeMs = Date.now();
      f.mtimeDirty = true;
      return len;
    } finally {
      h.release();
    }
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
        if (e.state === STATE_WRITTEN) this.blocks.copyOut(e.dev * B + (s - e.fb * B), into, s - offset, t - s);
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
      await this.txn.locked(() => {
        this.checkLive(f);
        const recs: LogRecord[] = [];
        if (size < f.size) {
          const keep = Math.ceil(size / B);
          const last = lastExtentEnd(f);
          // whole units only: the EOF unit's blocks past EOF stay allocated, unwritten
          const unitEnd = Math.min(last, this.unitRange(keep, keep)[1]);
          recs.push(...this.unwrite(f, keep, unitEnd));
          if (last > unitEnd) recs.push({ t: RecType.Unmap, id: f.id, fb: unitEnd, len: last - unitEnd });
          this.blocks.zeroTailBeyond(f, size);
        } else if (size > f.size) {
          this.zeroForGrowth(f, size);
        }
        recs.push({ t: RecType.SetSize, id: f.id, size, mtimeMs: Date.now() });
        this.txn.commit(recs);
      });
    } finally {
      h.release();
    }
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
      await this.txn.locked(() => {
        this.checkLive(f);
        // whole allocation units (one block, or 2 MiB on a 2 MiB-granular device)
        const [fb0, fb1] = this.unitRange(Math.floor(offset / B), Math.ceil(end / B));
        const segs = segments(f, fb0, fb1);
        let holes = 0;
        for (const s of segs) if (s.state === 'hole') holes += s.len;
        this.txn.ensureSpace(holes);
        const recs: LogRecord[] = [];
        for (const s of segs) {
          if (s.state !== 'hole') continue;
          // unwritten blocks read as zeros: no zeroing now, it happens at conversion
          // clean blocks last: nothing is zeroed now, so clean ones would be wasted here
          for (const p of this.txn.allocate(s.fb, s.len, goalFor(f, s.fb) ?? lastDev(recs), s.len >= GROUP_BLOCKS || this.unit > 1, undefined, 'avoid')) {
            recs.push({ t: RecType.Map, id: f.id, fb: p.fb, len: p.len, dev: p.dev, state: STATE_UNWRITTEN });
          }
        }
        if (!keepSize && end > f.size) {
          this.zeroForGrowth(f, end);
          recs.push({ t: RecType.SetSize, id: f.id, size: end, mtimeMs: Date.now() });
        }
        this.txn.commit(recs);
      });
    } finally {
      h.release();
    }
  }

  /** Shared by punchHole and zeroRange: partial head/tail blocks zeroed in place; returns the whole-block range. */
  private edges(f: Inode, offset: number, end: number): [number, number] {
    const a = Math.ceil(offset / B);
    const b = Math.floor(end / B);
    if (a > b) {
      this.blocks.zeroPartial(f, offset, end); // inside one block
      return [a, a];
    }
    this.blocks.zeroPartial(f, offset, a * B);
    this.blocks.zeroPartial(f, b * B, end);
    return [a, b];
  }

  /**
   * Records making the written blocks of [fb0, fb1) unwritten: they read as zeros and
   * are zeroed again before any reuse as written.
   */
  private unwrite(f: Inode, fb0: number, fb1: number): LogRecord[] {
    const recs: LogRecord[] = [];
    if (fb1 <= fb0) return recs;
    for (const s of segments(f, fb0, fb1)) {
      if (s.state === 'written') recs.push({ t: RecType.Map, id: f.id, fb: s.fb, len: s.len, dev: s.dev, state: STATE_UNWRITTEN });
    }
    return recs;
  }

  /** `touch`: the file's mtime changes (not for trimZeros: no byte of the file does). */
  private async destructive(f: Inode, offset: number, length: number, what: string, body: () => void, touch = true): Promise<void> {
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
      await this.txn.locked(() => {
        this.checkLive(f);
        body();
      });
      if (touch) {
        f.mtimeMs = Date.now();
        f.mtimeDirty = true;
      }
    } finally {
      h.release();
    }
  }

  punchHole(f: Inode, offset: number, length: number): Promise<void> {
    return this.destructive(f, offset, length, 'punchHole', () => {
      const [a, b] = this.edges(f, offset, offset + length);
      // whole units are freed; the blocks of a unit punched in part become unwritten
      // (they read as zeros) and the unit stays whole
      const ua = this.unitRange(a, a)[1];
      const ub = Math.max(ua, Math.floor(b / this.unit) * this.unit);
      const recs = this.unwrite(f, a, Math.min(b, ua));
      if (ub > ua && f.extents.overlapping(ua, ub).length > 0) recs.push({ t: RecType.Unmap, id: f.id, fb: ua, len: ub - ua });
      recs.push(...this.unwrite(f, Math.max(ub, a), b));
      if (recs.length > 0) this.txn.commit(recs);
    });
  }

  /**
   * The blocks of [offset, offset+length) (whole blocks inside it) that hold nothing
   * but zeros become holes; the rest stay. For the pages a reserve window's upgrade
   * recorded as written without knowing which were stored to (docs/fault-policy.md,
   * "Reserve windows"), once their mapping is gone. Like punchHole: the range lock
   * exclusive and the invalidator first (no mapping has them installed, no store can
   * land while they are read), then one transaction. Returns the blocks freed.
   */
  async trimZeros(f: Inode, offset: number, length: number): Promise<number> {
    if (this.unit > 1) return 0; // whole units only there; never given windows
    // A first look without the locks: most often every page was stored to, and then
    // no mapping of the file need be revoked. The look under the locks decides.
    if (this.zeroRuns(f, offset, length).length === 0) return 0;
    let freed = 0;
    await this.destructive(f, offset, length, 'trimZeros', () => {
      const runs = this.zeroRuns(f, offset, length);
      for (const r of runs) freed += r.len;
      if (runs.length > 0) this.txn.commit(runs.map((r): LogRecord => ({ t: RecType.Unmap, id: f.id, fb: r.start, len: r.len })));
    }, false);
    return freed;
  }

  /** The runs of file blocks of [offset, offset+length) (whole blocks) whose device bytes are all zeros. */
  private zeroRuns(f: Inode, offset: number, length: number): Run[] {
    const out: Run[] = [];
    for (const s of segments(f, Math.ceil(offset / B), Math.floor((offset + length) / B))) {
      if (s.state === 'hole') continue;
      let from = -1;
      for (let i = 0; i <= s.len; i++) {
        // the device's bytes, whatever the state: a deferred conversion's data is there
        const zero = i < s.len && this.storage.view((s.dev + i) * B, B).equals(ZERO_BLOCK);
        if (zero && from < 0) from = i;
        if (!zero && from >= 0) {
          out.push({ start: s.fb + from, len: i - from });
          from = -1;
        }
      }
    }
    return out;
  }

  zeroRange(f: Inode, offset: number, length: number, keepSize: boolean): Promise<void> {
    return this.destructive(f, offset, length, 'zeroRange', () => {
      const end = offset + length;
      const extending = !keepSize && end > f.size;
      if (extending) this.zeroForGrowth(f, end);
      const [a, b] = this.edges(f, offset, end);
      const recs = this.unwrite(f, a, b);
      if (extending) recs.push({ t: RecType.SetSize, id: f.id, size: end, mtimeMs: Date.now() });
      this.txn.commit(recs);
    });
  }

  /** Lock a file's whole range exclusive, re-checking that `name` still names it; null if the name is gone. */
  private async lockNamed(name: string): Promise<{ f: Inode; h: LockHandle } | null> {
    for (;;) {
      const f = this.state.names.get(name);
      if (!f) return null;
      const h = await f.rangeLock.acquireExclusive(0, RANGE_END);
      if (this.state.names.get(name) === f && f.live) return { f, h };
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
      await this.txn.locked(() => {
        this.checkLive(got.f);
        this.txn.commit([{ t: RecType.Unlink, id: got.f.id }]);
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
      const src = this.state.names.get(from);
      if (!src) throw daxError('ENOENT', `no file '${from}' in pool '${this.storage.path}'`);
      if (from === to) return;
      const dst = this.state.names.get(to);
      let h: LockHandle | null = null;
      if (dst) {
        h = await dst.rangeLock.acquireExclusive(0, RANGE_END);
        if (this.state.names.get(to) !== dst || !dst.live) { h.release(); continue; }
        await this.invalidator(dst, 0, RANGE_END);
      }
      try {
        const done = await this.txn.locked(() => {
          const s = this.state.names.get(from);
          const d = this.state.names.get(to);
          if (s !== src || d !== dst) return false; // the namespace moved while we waited: start over
          this.txn.commit([{ t: RecType.Rename, id: src.id, replaced: dst ? dst.id : 0, name: to }]);
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
    this.blocks.flushDirty(f);
    if (this.txn.unconverted.has(f)) await this.txn.locked(() => this.txn.convert([f]));
    // Stores made through mappings are not tracked: every written block of the file
    // is persisted (msync writes back only the pages that are dirty).
    this.persistWritten(f, 0, f.size);
    let lsn: number;
    const l = await this.txn.logLock.acquire();
    try {
      this.checkOpen();
      if (f.mtimeDirty && f.live) {
        f.mtimeDirty = false;
        this.txn.commit([{ t: RecType.SetAttr, id: f.id, mode: f.mode, uid: f.uid, gid: f.gid, mtimeMs: f.mtimeMs }]);
      }
      lsn = this.txn.log.endLsn;
    } finally {
      l.release();
    }
    // every record so far durable, in a persist shared with concurrent fsyncs and sync faults
    await this.txn.durable(lsn);
  }

  /** Flush everything: all files' data, pending attributes, and a checkpoint when the log holds records. */
  async sync(checkpoint: boolean): Promise<void> {
    await this.txn.locked(() => {
      for (const f of this.state.files.values()) this.blocks.flushDirty(f);
      this.txn.convert(null);
      // Stores made through mappings are not tracked: every file's written blocks.
      for (const f of this.state.files.values()) this.persistWritten(f, 0, f.size);
      if (checkpoint && this.txn.log.used > 0) this.txn.checkpoint();
      else this.txn.log.persist();
    });
  }

  /** The periodic writeback: every queued conversion made durable (data, then the log). */
  async writeback(): Promise<void> {
    if (this.txn.unconverted.empty) return;
    await this.txn.locked(() => {
      this.txn.convert(null);
      this.txn.log.persist();
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

  async ensureWritten(f: Inode, offset: number, length: number, opts: { sync?: boolean; preferAligned?: boolean; resident?: boolean }): Promise<DeviceExtent[]> {
    checkOffset('offset', offset);
    checkOffset('length', length);
    if (length === 0) throw daxError('EINVAL', 'ensureWritten length must be positive');
    this.checkLive(f);
    const fb0 = Math.floor(offset / B);
    const fb1 = Math.ceil((offset + length) / B);
    if (fb1 > this.writtenLimit(f)) {
      throw daxError('EINVAL', `ensureWritten [${offset}, +${length}) passes EOF of '${f.name}' (${f.size} bytes)`);
    }
    const sync = opts.sync === true;
    if (!allWritten(f, fb0, fb1) || (sync && (this.txn.log.dirty || this.txn.unconverted.has(f)))) {
      const lsn = await this.txn.locked(() => {
        this.checkLive(f);
        if (fb1 > this.writtenLimit(f)) throw daxError('EINVAL', `ensureWritten range passes EOF of '${f.name}'`);
        // a concurrent caller may have done it while we waited: materialise only touches what is still not written
        const aligned = opts.preferAligned === true;
        const resident = opts.resident === true;
        if (this.deferConversion && !sync) this.materialiseDeferred(f, fb0, fb1, aligned, resident);
        else this.txn.commit(this.materialise(f, fb0, fb1, null, 0, aligned, resident));
        return this.syncPoint(f, sync);
      });
      // MAP_SYNC: the metadata reaching the block is durable before the wake
      if (sync) await this.txn.durable(lsn);
    }
    return this.deviceExtents(f, fb0, fb1);
  }

  // ---- the reserve of pre-zeroed blocks (reserve.ts; docs/pool.md, "Reserve") ----

  /**
   * Hand out up to n pre-zeroed 4 KiB blocks, recorded in the log as reserved: their
   * device byte offsets. Served from the stock (refilled in the background); fewer
   * when the pool is short, ENOSPC only when none is left, EAGAIN when the reserve
   * is at its limit (Reserve.limit) with every block handed out. EOPNOTSUPP on a
   * 2 MiB-granular device. Every block handed out must come back through adoptReserved or
   * returnReserve.
   */
  async takeReserve(n: number): Promise<number[]> {
    return (await this.reserve.take(n)).map((d) => d * B);
  }

  /**
   * Up to n runs of 2 MiB of pre-zeroed contiguous blocks for reserve windows,
   * recorded reserved like takeReserve's: the device byte offsets of their first
   * blocks; fewer (none) when fewer whole 2 MiB groups are free. Their blocks come
   * back like takeReserve's, each through adoptReserved or returnReserve.
   */
  async takeReserveRuns(n: number): Promise<number[]> {
    if (!Number.isSafeInteger(n) || n <= 0) throw daxError('EINVAL', `takeReserveRuns count must be a positive integer, got ${String(n)}`);
    return (await this.reserve.takeRuns(n)).map((d) => d * B);
  }

  /**
   * Promise up to n free blocks to a staged range (docs/pool.md, "Promised space"):
   * nobody else may allocate them until they are given back, so the copies of what
   * was stored there always find blocks. Leaves a sixteenth of the pool (at least
   * 1,024 blocks) to everything else. The number promised.
   */
  promiseBlocks(n: number): number {
    const a = this.state.alloc;
    return a.promise(n, Math.max(1024, Math.floor(a.capacity / 16)));
  }

  /** Give back n promised blocks. */
  releasePromise(n: number): void {
    this.state.alloc.unpromise(n);
  }

  /**
   * Blocks handed out and not used (or not reported) come back: they may hold stores,
   * so they are zeroed again before they are handed out again.
   */
  returnReserve(devs: number[]): void {
    this.reserve.returnBlocks(devs.map((d) => checkReservedOffset(d)));
  }

  /**
   * Staged pages into the file (docs/fault-policy.md, "Staged ranges"): each run
   * `{ fb, data }` (a file block, then whole blocks of bytes) that is still a hole
   * inside EOF gets new blocks holding its bytes, as write() gives them, all in one
   * transaction; `promised` blocks are given back first, under the same locks, so the
   * room they kept is there for these. Runs that are no longer holes are skipped. The
   * blocks written. Caller holds the file's range lock over the runs.
   */
  async writeStaged(f: Inode, runs: { fb: number; data: Uint8Array }[], promised: number): Promise<number> {
    this.checkOpen();
    let given = false;
    return this.txn.locked(() => {
      if (!given && promised > 0) this.state.alloc.unpromise(promised);
      given = true; // locked() may run this again (after zeroing it waited for)
      if (this.unit > 1 || !f.live) return 0; // never staged there; or the file is gone
      const eof = Math.floor(f.size / B);
      const ok = runs.filter((r) => {
        const end = r.fb + r.data.length / B;
        if (end > eof) return false;
        for (let b = r.fb; b < end; b++) if (f.extents.find(b)) return false;
        return true;
      });
      let n = 0;
      for (const r of ok) n += r.data.length / B;
      if (n === 0) return 0;
      this.txn.ensureSpace(n);
      // One allocation for all of them (the pages are scattered: one each cost a scan of
      // the groups), dirty blocks first: every byte of each is written below, so clean
      // ones are left to what needs zeros.
      const got = this.state.alloc.take(n, { clean: 'avoid' });
      const recs: LogRecord[] = [];
      const written: Run[] = [];
      let gi = 0;
      let goff = 0;
      for (const r of ok) {
        const nb = r.data.length / B;
        for (let done = 0; done < nb;) {
          const g = got[gi]!;
          const len = Math.min(nb - done, g.len - goff);
          const dev = g.start + goff;
          // whole blocks of data: no zeros to write
          written.push(this.blocks.fillBlocks(dev, r.fb + done, len, r.data, r.fb * B).written!);
          recs.push({ t: RecType.Map, id: f.id, fb: r.fb + done, len, dev, state: STATE_WRITTEN });
          done += len;
          goff += len;
          if (goff === g.len) {
            gi++;
            goff = 0;
          }
        }
      }
      // the data durable before the records that expose it (ordering rule 1)
      try {
        this.blocks.persistRuns(written);
      } catch (e) {
        this.unmarkAll(got);
        throw e;
      }
      this.txn.commit(recs);
      return n;
    });
  }

  /**
   * In one transaction, make each reserved block `dev` (device byte offset) file f's
   * block `fb` (file block number): written on a pool that does not defer
   * conversions; on one that does (a disk-file pool), recorded unwritten, written in
   * memory and queued for conversion like a write fault's block (deferred.ts), so a
   * crash before the data is flushed reads zeros. With `sync`, recorded written and
   * the log persisted before it returns (the file's queued conversions too).
   *
   * A pair whose file block is no longer a hole, lies past the EOF block, or is named
   * twice, and every pair of an unlinked file, is refused: its block goes back to the
   * reserve (to be zeroed again) and the caller revokes that page; with `keepRefused`
   * the block stays handed out instead, for the caller to give back (returnReserve)
   * once it has revoked the page, so no refill can zero it while it is still mapped.
   * EINVAL (nothing changed) when a dev is not a reserved block handed out. Caller
   * holds the range lock over the file blocks.
   */
  async adoptReserved(f: Inode, pairs: ReservedPair[], opts: { sync?: boolean; keepRefused?: boolean } = {}): Promise<AdoptResult> {
    if (!Array.isArray(pairs)) throw daxError('EINVAL', 'adoptReserved pairs must be an array');
    const devs = pairs.map((p) => {
      checkOffset('file block', p.fb, MAX_FILE_SIZE / B - 1);
      return checkReservedOffset(p.dev);
    });
    this.checkOpen();
    const sync = opts.sync === true;
    // In file order: a block named twice is next to its twin, and the runs follow.
    const sorted = pairs.slice().sort((a, b) => a.fb - b.fb);
    const { result, lsn } = await this.txn.locked(() => {
      const reserve = this.reserve;
      reserve.takeOut(devs, 'adoptReserved');
      try {
        const eof = Math.ceil(f.size / B);
        const adopted: ReservedPair[] = [];
        const refused: ReservedPair[] = [];
        for (let i = 0; i < sorted.length; i++) {
          const p = sorted[i]!;
          if (!f.live || p.fb >= eof || (i > 0 && sorted[i - 1]!.fb === p.fb) || f.extents.find(p.fb)) refused.push(p);
          else adopted.push(p);
        }
        const fresh = fileRuns(adopted);
        if (fresh.length > 0) {
          const defer = this.deferConversion && !sync;
          // zero before expose holds: the zeros were persisted before the block was handed out
          const recs: LogRecord[] = fresh.map((r) => ({ t: RecType.Map, id: f.id, fb: r.fb, len: r.len, dev: r.start, state: defer ? STATE_UNWRITTEN : STATE_WRITTEN }));
          if (defer) this.commitDeferred(f, recs, fresh);
          else this.txn.commit(recs);
        }
        const lsn = this.syncPoint(f, sync && fresh.length > 0);
        // the adopted blocks left `out` for good; the refused ones go back to it, or to be zeroed again
        const back = refused.map((p) => p.dev / B);
        if (opts.keepRefused === true) for (const d of back) reserve.out.add(d);
        else reserve.toDirty(back);
        reserve.counts.adopted += adopted.length;
        reserve.counts.refused += refused.length;
        return { result: { adopted, refused }, lsn };
      } catch (e) {
        // failed (an I/O error): the blocks not adopted are handed out still
        for (const d of devs) if (this.state.reserved.has(d)) reserve.out.add(d);
        throw e;
      }
    });
    if (sync) await this.txn.durable(lsn);
    return result;
  }

  /**
   * For a sync caller (MAP_SYNC), under alloc + log: the file's queued conversions
   * are logged (their data made durable first), and the LSN the log must be durable
   * to before the caller returns (Journal.durable, outside the locks: a group commit).
   * 0 (nothing to wait for) when not sync.
   */
  private syncPoint(f: Inode, sync: boolean): number {
    if (!sync) return 0;
    this.txn.convert([f]);
    return this.txn.log.endLsn;
  }

  /**
   * The runs of blocks of [start, end) (bytes) that have a block, written or unwritten,
   * in order, adjacent ones merged, clipped to the range: one pass over the extent
   * map; the gaps between them are holes. Caller holds the range lock over it.
   */
  mappedRuns(f: Inode, start: number, end: number): [number, number][] {
    const out: [number, number][] = [];
    for (const e of f.extents.overlapping(Math.floor(start / B), Math.ceil(end / B))) {
      const a = Math.max(start, e.fb * B);
      const b = Math.min(end, (e.fb + e.len) * B);
      const last = out[out.length - 1];
      if (last && last[1] === a) last[1] = b;
      else out.push([a, b]);
    }
    return out;
  }

  /**
   * Persist the device blocks behind the written blocks of [start, end): stores
   * through mappings are not tracked, so Mapping.flush names its range. Caller holds
   * the range lock over it.
   */
  persistWritten(f: Inode, start: number, end: number): void {
    if (end <= start) return;
    const runs: Run[] = [];
    for (const s of segments(f, Math.floor(start / B), Math.ceil(end / B))) if (s.state === 'written') runs.push({ start: s.dev, len: s.len });
    this.blocks.persistRuns(runs);
  }

  deviceExtents(f: Inode, fb0: number, fb1: number): DeviceExtent[] {
    const out: DeviceExtent[] = [];
    for (const s of segments(f, fb0, fb1)) {
      if (s.state !== 'written') throw daxError('EIO', `file '${f.name}' block ${s.fb} is ${s.state} after ensureWritten`);
      out.push({ offset: s.fb * B, length: s.len * B, deviceOffset: s.dev * B });
    }
    return out;
  }

  statFile(f: Inode): { size: number; allocated: number; extents: ExtentInfo[] } {
    const extents: ExtentInfo[] = [];
    for (const e of f.extents.all()) {
      const state = e.state === STATE_WRITTEN ? 'written' : 'unwritten';
      const p = extents[extents.length - 1];
      if (p && p.state === state && p.offset + p.length === e.fb * B) p.length += e.len * B;
      else extents.push({ offset: e.fb * B, length: e.len * B, state });
    }
    return { size: f.size, allocated: f.extents.blocks * B, extents };
  }

  /**
   * The stock of the reserve (and its blocks given back) counts as free: an
   * allocation takes it back when it needs it. `reserved` is every reserved block,
   * those handed out included.
   */
  statfs(): { size: number; free: number; blockSize: number; reserved: number; clean: CleanSpace } {
    const a = this.state.alloc;
    const r = this.reserve;
    const z = this.zeroer.stats();
    return {
      size: a.capacity * B, free: (a.free + a.pendingCount + a.zeroing + r.clean.length + r.dirty.length + r.zeroing) * B, blockSize: B, reserved: this.state.reserved.size * B,
      clean: {
        cleanFree: z.clean * B, zeroing: z.zeroing * B, target: z.target * B, zeroedAhead: z.zeroedAhead * B, zeroedOnPath: z.zeroedOnPath * B,
        cleanTaken: z.cleanTaken * B, jobs: z.jobs, busyMs: z.busyMs, checkpoints: z.checkpoints,
      },
    };
  }
}

/** Clean free space (zeroer.ts), in bytes: statfs().clean, `daxmap stat`. */
export interface CleanSpace {
  /** Free bytes known to hold durable zeros (allocations take them without zeroing). */
  cleanFree: number;
  /** Free bytes being zeroed now. */
  zeroing: number;
  /** What the zeroer aims at (0: off). */
  target: number;
  /** Bytes zeroed in the background since open. */
  zeroedAhead: number;
  /** Bytes allocations zeroed on their own path, and bytes they took clean. */
  zeroedOnPath: number;
  cleanTaken: number;
  /** Zeroing jobs since open and their wall time (ms, off the pool's thread), checkpoints taken to release freed blocks. */
  jobs: number;
  busyMs: number;
  checkpoints: number;
}

/** A reserved block (device byte offset) for a file block (number), as adoptReserved takes them. */
export interface ReservedPair {
  fb: number;
  dev: number;
}

export interface AdoptResult {
  /** Pairs now the file's blocks, in file block order. */
  adopted: ReservedPair[];
  /** Pairs not adopted (block not a hole, past EOF, named twice, file unlinked): their blocks went back to the reserve. */
  refused: ReservedPair[];
}

/** A device byte offset of a 4 KiB block, as a block number (EINVAL otherwise). */
function checkReservedOffset(dev: unknown): number {
  const d = checkOffset('reserved device offset', dev, Number.MAX_SAFE_INTEGER);
  if (d % B !== 0) throw daxError('EINVAL', `reserved device offset ${d} is not 4 KiB aligned`);
  return d / B;
}

/** Pairs (file block -> device byte offset) as runs contiguous in both, in file order. */
/** Pairs in file order, as runs contiguous in both file and device. */
function fileRuns(pairs: ReservedPair[]): (Run & { fb: number })[] {
  const out: (Run & { fb: number })[] = [];
  for (const p of pairs) {
    const last = out[out.length - 1];
    const d = p.dev / B;
    if (last && last.fb + last.len === p.fb && last.start + last.len === d) last.len++;
    else out.push({ fb: p.fb, start: d, len: 1 });
  }
  return out;
}

function lastDev(recs: LogRecord[]): number | undefined {
  const r = recs[recs.length - 1];
  return r && r.t === RecType.Map ? r.dev + r.len : undefined;
}
