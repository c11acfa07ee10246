// The in-memory filesystem of a pool: the namespace, every file's extent map and
// the block allocator, and apply(): the one function that turns a log record into
// a change of that state. Replay (replay.ts) and run time (txn.ts) both go through
// apply(), so what is replayed is what ran. Nothing here touches the device.

import { checkName } from '../util/check';
import { RangeLock } from '../lock/index';
import { BlockAllocator, type Run } from './allocator';
import { ExtentMap } from './extents';
import { BLOCK_SIZE, MAX_FILE_SIZE, type Geometry } from './format';
import { RecType, STATE_WRITTEN, type LogRecord } from './log';

const B = BLOCK_SIZE;
export const MAX_FILE_BLOCKS = MAX_FILE_SIZE / B;

/** A file as the pool and the fault policy see it (internal; its handle is a PoolFsFile). */
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

/** A run of file blocks of one state; `dev` is its first device block (-1 for a hole). */
export interface Segment {
  fb: number;
  len: number;
  state: ExtentState;
  dev: number;
}

/** A record that verifies but cannot be applied (replay turns it into EBADF). */
export class ReplayError extends Error {}

export function corrupt(msg: string): never {
  throw new ReplayError(msg);
}

/** The one file-name rule (lib/util/check.ts), also checked on replay. */
export const validateName = checkName;

export class FsState {
  readonly files = new Map<number, Inode>();
  readonly names = new Map<string, Inode>();
  readonly alloc: BlockAllocator;
  /**
   * Device blocks in the reserve of pre-zeroed blocks (docs/pool.md, "Reserve"):
   * marked used in the allocator, owned by no file, never exposed; a `map` of one
   * adopts it into the file, `unreserve` frees it.
   */
  readonly reserved = new Set<number>();
  nextFileId = 1;

  constructor(readonly geometry: Geometry) {
    this.alloc = new BlockAllocator(geometry.dataStart, geometry.dataEnd);
  }

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
  apply(r: LogRecord, replay: boolean): void {
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
          this.takeNew(f, r.dev, r.len, replay);
          return;
        }
        // blocks that stay (a state change) vs blocks that left the file
        const kept: Run[] = [];
        for (const p of removed) {
          if (p.dev - p.fb === r.dev - r.fb) kept.push({ start: p.dev, len: p.len });
          else this.alloc.freeLater(p.dev, p.len);
        }
        let d = r.dev;
        for (const k of kept) {
          if (k.start > d) this.takeNew(f, d, k.start - d, replay);
          d = k.start + k.len;
        }
        if (d < r.dev + r.len) this.takeNew(f, d, r.dev + r.len - d, replay);
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
      case RecType.Reserve: {
        this.checkReserveRun(r.dev, r.len, 'reserve');
        for (let d = r.dev; d < r.dev + r.len; d++) if (this.reserved.has(d)) corrupt(`reserve of device block ${d}, which is reserved already`);
        if (replay) {
          const clash = this.alloc.markUsed(r.dev, r.len);
          if (clash >= 0) corrupt(`reserve of device block ${clash}, which is already owned by ${this.ownerOf(clash, null)}`);
        }
        for (let d = r.dev; d < r.dev + r.len; d++) this.reserved.add(d);
        return;
      }
      case RecType.Unreserve: {
        this.checkReserveRun(r.dev, r.len, 'unreserve');
        for (let d = r.dev; d < r.dev + r.len; d++) if (!this.reserved.has(d)) corrupt(`unreserve of device block ${d}, which is not reserved`);
        for (let d = r.dev; d < r.dev + r.len; d++) this.reserved.delete(d);
        // held back until the next checkpoint, like every block freed in an epoch
        this.alloc.freeLater(r.dev, r.len);
        return;
      }
    }
  }

  private checkReserveRun(dev: number, len: number, what: string): void {
    if (!this.alloc.inData(dev, len)) corrupt(`${what} of device blocks [${dev}, +${len}) outside the data area [${this.geometry.dataStart}, ${this.geometry.dataEnd})`);
  }

  /**
   * Device blocks [dev, dev+len) newly mapped by file f. Reserved ones leave the
   * reserve (an adoption: they are already marked used); in replay the others are
   * claimed from the free blocks. At run time the caller has taken them already.
   */
  private takeNew(f: Inode, dev: number, len: number, replay: boolean): void {
    if (this.reserved.size === 0) {
      if (replay) this.claim(f, dev, len);
      return;
    }
    let from = dev;
    for (let d = dev; d <= dev + len; d++) {
      if (d < dev + len && !this.reserved.has(d)) continue;
      if (d > from && replay) this.claim(f, from, d - from);
      if (d < dev + len) this.reserved.delete(d);
      from = d + 1;
    }
  }

  /** The reserved device blocks as sorted runs. */
  reservedRuns(): Run[] {
    return toRuns([...this.reserved]);
  }

  private ownerOf(dev: number, not: Inode | null): string {
    for (const o of this.files.values()) {
      if (o === not) continue;
      for (const e of o.extents.all()) if (e.dev <= dev && dev < e.dev + e.len) return `file ${o.id} ('${o.name}')`;
    }
    return 'a block freed earlier in this log epoch';
  }

  private claim(f: Inode, dev: number, len: number): void {
    const clash = this.alloc.markUsed(dev, len);
    if (clash >= 0) corrupt(`device block ${clash} mapped by file ${f.id} ('${f.name}') is already owned by ${this.ownerOf(clash, f)}`);
  }

  private drop(f: Inode): void {
    for (const e of f.extents.clear(0, MAX_FILE_BLOCKS)) this.alloc.freeLater(e.dev, e.len);
    this.files.delete(f.id);
    if (this.names.get(f.name) === f) this.names.delete(f.name);
    f.live = false;
    f.size = 0;
    f.dirty = [];
  }
}

/** Device block numbers as sorted runs of consecutive blocks. */
export function toRuns(blocks: number[]): Run[] {
  blocks.sort((a, b) => a - b);
  const out: Run[] = [];
  for (const d of blocks) {
    const last = out[out.length - 1];
    if (last && last.start + last.len === d) last.len++;
    else out.push({ start: d, len: 1 });
  }
  return out;
}

// ---- queries on one file's extent map ----

/** Segments of [fb0, fb1): holes, unwritten and written runs, clipped. */
export function segments(f: Inode, fb0: number, fb1: number): Segment[] {
  const out: Segment[] = [];
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

/** True when every block of [fb0, fb1) is written. */
export function allWritten(f: Inode, fb0: number, fb1: number): boolean {
  let cur = fb0;
  for (const e of f.extents.overlapping(fb0, fb1)) {
    if (e.fb > cur || e.state !== STATE_WRITTEN) return false;
    cur = e.fb + e.len;
  }
  return cur >= fb1;
}

/** The device block right after the one backing file block fb-1 (a placement goal), if it is mapped. */
export function goalFor(f: Inode, fb: number): number | undefined {
  if (fb === 0) return undefined;
  const e = f.extents.find(fb - 1);
  return e ? e.dev + (fb - 1 - e.fb) + 1 : undefined;
}

export function lastExtentEnd(f: Inode): number {
  const e = f.extents.last();
  return e ? e.fb + e.len : 0;
}
