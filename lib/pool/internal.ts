// Internal entry points for the fault policy (lib/fault/, docs/fault-policy.md);
// not part of the pool's public surface (index.ts). Lock order (docs/locking.md):
// the caller holds the file's range lock (class 'range') over the window it works
// on, may then take its entry lock (class 'entry'); the functions here take
// 'alloc' then 'log' themselves.

import type { Storage } from '../device/storage';
import type { RangeLock } from '../lock/index';
import { coreOf, inodeOf, type PoolFs, type PoolFsFile } from './pool-fs';
import type { AdoptResult, DeviceExtent, Inode, Invalidator, LookupResult, PoolCore, ReservedPair, ReserveStats } from './core';

export type { AdoptResult, DeviceExtent, Inode, Invalidator, LookupResult, PoolCore, ReservedPair, ReserveStats };

export interface EnsureWrittenOptions {
  /** Return only after the metadata that makes the blocks reachable is durable (MAP_SYNC semantics). */
  sync?: boolean;
  /** Allocate whole 2 MiB groups for whole aligned 2 MiB file chunks (device offset congruent to file offset). */
  preferAligned?: boolean;
  /**
   * Zero new blocks by writing zeros (not by punching them out), so their pages are
   * resident when the fault maps them: a 2 MiB window's install then maps pages
   * instead of allocating and clearing them (docs/faults.md, "The 2 MiB window").
   */
  resident?: boolean;
}

export interface PoolInternals {
  /** The device: `view(deviceOffset, length)` for direct access, `deviceId` for installs. */
  readonly storage: Storage;
  /** The inode behind a file handle. */
  inode(file: PoolFsFile): Inode;
  /** The file's byte-range lock (class 'range'), the outermost lock of any fault on it. */
  rangeLock(file: Inode): RangeLock;
  /** Current size in bytes (read it again after taking the range lock). */
  fileSize(file: Inode): number;
  /** The extent covering `offset`. Caller holds the range lock over it. */
  lookup(file: Inode, offset: number): LookupResult;
  /**
   * The byte runs of [offset, end) that have blocks (written or unwritten), sorted,
   * adjacent ones merged: one pass over the extent map (the gaps are holes). Caller
   * holds the range lock over it.
   */
  mappedRuns(file: Inode, offset: number, end: number): [number, number][];
  /**
   * Device extents for [offset, offset+length) (rounded out to blocks), after
   * allocating holes and converting unwritten blocks: zeroed, zeroing persisted,
   * then recorded written. Idempotent under the allocator lock: blocks already
   * written are never zeroed again. EINVAL past the EOF block, ENOSPC with nothing
   * changed. Caller holds the range lock over the range.
   */
  ensureWritten(file: Inode, offset: number, length: number, opts?: EnsureWrittenOptions): Promise<DeviceExtent[]>;
  /**
   * Register the hook destructive operations (truncate down, punch hole, zero range,
   * unlink, rename over a file) await with the file's range lock held exclusive,
   * before any block is freed or zeroed. null restores the default no-op.
   */
  setInvalidator(fn: Invalidator | null): void;
  /**
   * Make the data of the written blocks of [offset, offset+length) durable (one msync
   * on a disk-file pool); Mapping.flush, before the file's fsync. Caller holds the
   * range lock over the range.
   */
  persistWritten(file: Inode, offset: number, length: number): void;
  /**
   * Up to n pre-zeroed 4 KiB blocks, logged as reserved: their device byte offsets
   * (docs/pool.md, "Reserve"). From the background-refilled stock (the caller zeroes
   * nothing unless the stock ran short); fewer when the pool is short, ENOSPC only
   * when none is left; EAGAIN when the reserve is at its limit with every block
   * handed out; EOPNOTSUPP on a 2 MiB-granular device (`reserveStats().enabled`).
   */
  takeReserve(n: number): Promise<number[]>;
  /**
   * Up to n runs for reserve windows: 2 MiB of pre-zeroed contiguous blocks each,
   * logged as reserved (the device byte offsets of their first blocks); fewer when
   * fewer whole 2 MiB groups are free. Their blocks come back like takeReserve's.
   */
  takeReserveRuns(n: number): Promise<number[]>;
  /**
   * In one log transaction, reserved blocks become file blocks: `fb` is a file block
   * number, `dev` a device byte offset from takeReserve. Written on tmpfs and devdax
   * pools; on a disk-file pool recorded unwritten and converted after the data is
   * flushed (deferred.ts). Pairs whose block is no longer a hole, past the EOF block,
   * named twice, or of an unlinked file are refused (returned in `refused`; their
   * blocks go back to the reserve, or with `keepRefused` stay handed out for the
   * caller to return once it has revoked those pages): the caller revokes those
   * pages. `sync`: durable before it returns. Caller holds the range lock over the
   * blocks.
   */
  adoptReserved(file: Inode, pairs: ReservedPair[], opts?: { sync?: boolean; keepRefused?: boolean }): Promise<AdoptResult>;
  /** Blocks handed out and not adopted come back (treated as dirty: zeroed again before reuse). */
  returnReserve(devs: number[]): void;
  /**
   * Promise up to n free blocks to a staged range (docs/pool.md, "Promised space"):
   * no other allocation may take them until releasePromise. The number promised.
   */
  promiseBlocks(n: number): number;
  /** Give back n promised blocks. */
  releasePromise(n: number): void;
  /**
   * Staged pages into the file: each run `{ fb, data }` still a hole inside EOF gets
   * new blocks with its bytes, in one transaction, after `promised` blocks are given
   * back under the same locks. The blocks written (runs no longer holes are skipped).
   * Caller holds the range lock over the runs.
   */
  writeStaged(file: Inode, runs: { fb: number; data: Uint8Array }[], promised: number): Promise<number>;
  /** Counts of the reserve (blocks). */
  reserveStats(): ReserveStats;
  /** Start the reserve's background refill if its stock is low (a taker found it empty). */
  refillReserve(): void;
  /** The core itself (the service reads the pool's superblock from it; tests). */
  readonly core: PoolCore;
}

export function poolInternals(pool: PoolFs): PoolInternals {
  const core = coreOf(pool);
  return {
    storage: core.storage,
    core,
    inode: (file) => inodeOf(file),
    rangeLock: (file) => file.rangeLock,
    fileSize: (file) => file.size,
    lookup: (file, offset) => core.lookup(file, offset),
    mappedRuns: (file, offset, end) => core.mappedRuns(file, offset, end),
    ensureWritten: (file, offset, length, opts = {}) => core.ensureWritten(file, offset, length, opts),
    setInvalidator: (fn) => { core.invalidator = fn ?? (async () => {}); },
    persistWritten: (file, offset, length) => core.persistWritten(file, offset, offset + length),
    takeReserve: (n) => core.takeReserve(n),
    takeReserveRuns: (n) => core.takeReserveRuns(n),
    adoptReserved: (file, pairs, opts = {}) => core.adoptReserved(file, pairs, opts),
    returnReserve: (devs) => core.returnReserve(devs),
    promiseBlocks: (n) => core.promiseBlocks(n),
    releasePromise: (n) => core.releasePromise(n),
    writeStaged: (file, runs, promised) => core.writeStaged(file, runs, promised),
    reserveStats: () => core.reserve.stats(),
    refillReserve: () => core.reserve.kick(),
  };
}
