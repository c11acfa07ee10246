// The byte store a pool lives in: a device file mapped MAP_SHARED (see ./device.ts)
// or plain memory for tests. The pool writes through views and calls persist() to
// make ranges durable; nothing else may be assumed durable.

/** Views never cross a chunk boundary: a Node Buffer is limited to 4 GiB, so the
 *  device is exposed as 1 GiB chunks. Pool blocks are 4 KiB aligned and so never
 *  straddle one. */
export const CHUNK_SIZE = 1 << 30;

export type StorageKind = 'file' | 'tmpfs' | 'devdax' | 'hugetlbfs' | 'memory';

export interface Storage {
  readonly path: string;
  readonly kind: StorageKind;
  /** Usable bytes, a multiple of 4096 (of 2 MiB for devdax and hugetlbfs). */
  readonly size: number;
  /** Native device id, used by fault answers to install device ranges; 0 for memory. */
  readonly deviceId: number;
  /** True when stores reach persistence with cache flush + fence (MAP_SYNC mapping). */
  readonly mapSync: boolean;
  /** Mapping granularity: 2 MiB on devdax and hugetlbfs (docs/native.md, "2 MiB-granular devices"); 4096 when absent. */
  readonly align?: number;
  /**
   * A tmpfs mounted with huge pages (`huge=always`, `within_size`, `advise`): any page
   * maps, but an aligned 2 MiB window maps as one PMD, so the fault policy takes whole
   * windows where it can (docs/native.md, "True 2 MiB mappings").
   */
  readonly huge?: boolean;
  /** A Buffer aliasing [offset, offset+length) of the device. Must not cross a CHUNK_SIZE boundary. */
  view(offset: number, length: number): Buffer;
  /** Make [offset, offset+length) durable: msync for files, flush + fence for MAP_SYNC. */
  persist(offset: number, length: number): void;
  /**
   * Optional: persist() done off the calling thread, for a backing where persisting
   * is slow (a disk file: msync is a journal commit and a cache flush). The pool's
   * log group commit uses it (docs/pool.md, "Group commit"): commits go on while the
   * disk works, and the next persist covers them all. Absent where persist() is cheap.
   */
  persistAsync?(offset: number, length: number): Promise<void>;
  /** Make every store so far durable. */
  persistAll(): void;
  /**
   * Optional fast path: make the page-aligned [offset, offset+length) read as zeros
   * without touching memory where the backing allows (a hole punched in tmpfs, a
   * zeroed range in a regular file). Not durable until persist(). With `resident`,
   * zeros are written instead (tmpfs, regular file), so the pages are resident and
   * zero afterwards: a mapping of the range then maps them without allocating or
   * clearing them (docs/faults.md, "The 2 MiB window").
   */
  zero?(offset: number, length: number, resident?: boolean): void;
  /**
   * Optional: off the calling thread (a libuv pool thread), write zeros over each
   * page-aligned range of `zero` as `zero(…, true)` does (the pages resident and
   * zero), then persist each range of `persist`; both hold [offset, length, …]
   * pairs. Resolves once the zeros are durable. The reserve's refill zeroes its blocks
   * this way (docs/pool.md, "Reserve"), so the thread running the fault policy does
   * not spend its time allocating and clearing pages. With `background`, the work runs
   * on the process's background thread at nice 19 (the zeroer of free space: it takes
   * only CPU time no other thread wants).
   */
  zeroPersistAsync?(zero: Float64Array, persist: Float64Array, background?: boolean): Promise<void>;
  /** Unmap (views become detached) and release the device lock. Idempotent. */
  close(): void;
}

function checkRange(size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new RangeError(`storage range [${offset}, +${length}) outside device of ${size} bytes`);
  }
  if (length > 0 && Math.floor(offset / CHUNK_SIZE) !== Math.floor((offset + length - 1) / CHUNK_SIZE)) {
    throw new RangeError(`storage view [${offset}, +${length}) crosses a ${CHUNK_SIZE}-byte chunk boundary`);
  }
}

/** Split a size into chunk-sized pieces: the lengths of the Buffers that back it. */
export function chunkLengths(size: number): number[] {
  const out: number[] = [];
  for (let off = 0; off < size; off += CHUNK_SIZE) out.push(Math.min(CHUNK_SIZE, size - off));
  return out;
}

/** Resolve a view over a list of chunk Buffers. */
export function viewOf(chunks: Buffer[], size: number, offset: number, length: number): Buffer {
  checkRange(size, offset, length);
  const c = Math.floor(offset / CHUNK_SIZE);
  const base = offset - c * CHUNK_SIZE;
  const chunk = chunks[c];
  if (chunk === undefined) return Buffer.alloc(0);
  return chunk.subarray(base, base + length);
}

/**
 * Volatile storage in process memory, for tests. With `trackPersistence`, it keeps a
 * second, "durable" image that only persist() updates, so a test can simulate a power
 * failure: crashImage() returns what would survive (optionally tearing the last
 * persisted range), dropping every store not yet persisted.
 */
export class MemoryStorage implements Storage {
  readonly path: string;
  readonly kind: StorageKind = 'memory';
  readonly deviceId = 0;
  readonly mapSync = false;
  readonly size: number;
  private chunks: Buffer[];
  private durable: Buffer[] | null;
  private closed = false;
  /** The last persisted range and its previous durable bytes; crashImage() may tear it. */
  private lastPersist: { offset: number; pre: Buffer } | null = null;

  /** A mapping granularity to model (tests of the pool's 2 MiB-granular rules); none by default. */
  readonly align?: number;

  constructor(size: number, opts: { path?: string; trackPersistence?: boolean; from?: Buffer[]; align?: number } = {}) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) throw new RangeError(`memory storage size ${size} must be a positive multiple of 4096`);
    this.size = size;
    if (opts.align !== undefined) this.align = opts.align;
    this.path = opts.path ?? ':memory:';
    this.chunks = opts.from ? opts.from.map((b) => Buffer.from(b)) : chunkLengths(size).map((l) => Buffer.alloc(l));
    this.durable = opts.trackPersistence ? this.chunks.map((b) => Buffer.from(b)) : null;
  }

  view(offset: number, length: number): Buffer {
    if (this.closed) throw new Error('storage closed');
    return viewOf(this.chunks, this.size, offset, length);
  }

  persist(offset: number, length: number): void {
    checkRangeAny(this.size, offset, length);
    if (!this.durable) return;
    const pre = Buffer.alloc(length);
    this.copyRange(this.durable, pre, offset, length, 'out');
    const now = Buffer.alloc(length);
    this.copyRange(this.chunks, now, offset, length, 'out');
    this.copyRange(this.durable, now, offset, length, 'in');
    this.lastPersist = { offset, pre };
  }

  persistAll(): void {
    this.persist(0, this.size);
  }

  /**
   * The bytes that survive a power failure now. `tear` in [0,1): only that fraction
   * (rounded down to 8 bytes, the media's atomic unit) of the last persisted range
   * reached the media; the rest keeps the bytes that were durable before it.
   */
  crashImage(tear?: number): Buffer[] {
    if (!this.durable) throw new Error('crashImage needs trackPersistence');
    const img = this.durable.map((b) => Buffer.from(b));
    if (tear !== undefined && this.lastPersist) {
      const { offset, pre } = this.lastPersist;
      const keep = Math.floor((pre.length * tear) / 8) * 8;
      this.copyRange(img, pre.subarray(keep), offset + keep, pre.length - keep, 'in');
    }
    return img;
  }

  /** Copy between chunked storage and a flat buffer: 'out' reads storage into flat, 'in' writes flat into storage. */
  private copyRange(chunks: Buffer[], flat: Buffer, offset: number, length: number, dir: 'in' | 'out'): void {
    for (let done = 0; done < length;) {
      const off = offset + done;
      const c = Math.floor(off / CHUNK_SIZE);
      const base = off - c * CHUNK_SIZE;
      const n = Math.min(CHUNK_SIZE - base, length - done);
      if (dir === 'out') chunks[c]!.copy(flat, done, base, base + n);
      else flat.copy(chunks[c]!, base, done, done + n);
      done += n;
    }
  }

  close(): void {
    this.closed = true;
  }
}

function checkRangeAny(size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new RangeError(`storage range [${offset}, +${length}) outside device of ${size} bytes`);
  }
}
