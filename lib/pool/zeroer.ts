// The background zeroer of free space ("clean free space", docs/pool.md). It keeps,
// in memory only, a stock of free blocks known to hold durable zeros, so that an
// allocation that takes them (a fault's 2 MiB window above all) skips their zeroing.
//
// Nothing of it is logged: after an open (a crash included) no block is known clean,
// and every allocation zeroes what it takes as before. The allocator keeps the set
// (allocator.ts, a bitmap of free blocks): marking a block used clears its bit, so
// every path that gives a block back to the free pool (truncate, punch, unlink and
// the reserve's give-backs, once the checkpoint releases them; a failed allocation
// rolled back) gives it back dirty. Only this zeroer sets bits, on blocks it held
// out of the free pool (marked used: no allocation can take them meanwhile) while
// their zeros were written and persisted off the thread (Storage.zeroPersistAsync,
// as the reserve's refill), and only once that completed: a zeroing never overlaps
// an allocation of the same block, nor started before the block was last freed.

import type { Storage } from '../device/storage';
import { outsideOperation, withOperation } from '../lock/index';
import { logger } from '../log';
import { parseSize } from '../util/units';
import { daxError } from '../errors';
import type { Run } from './allocator';
import { zeroResidentRuns } from './blocks';
import { BLOCK_SIZE, GROUP_BLOCKS } from './format';
import type { FsState } from './state';
import type { Journal } from './txn';

const B = BLOCK_SIZE;
const log = logger('pool');

/**
 * The default target of clean free space, bytes: a sequential writer's 256 MiB
 * (bench rows 5 and 6) taken whole from clean space (docs/faults.md, "The 2 MiB window").
 */
export const DEFAULT_CLEAN_TARGET = 256 << 20;
/** Blocks zeroed per job (one job in flight at a time): two 2 MiB groups. */
const JOB_BLOCKS = 2 * GROUP_BLOCKS;
/**
 * A checkpoint that would release blocks freed in this epoch (pending) is taken in
 * the background only while the state is this small (extents over all files): a
 * checkpoint writes them all, about 1 µs each.
 */
const CHEAP_CHECKPOINT_EXTENTS = 16384;

/** DAXMAP_CLEAN_TARGET: bytes ("64M", "1G", "0" for off); undefined when unset. */
export function cleanTargetFromEnv(): number | undefined {
  const v = process.env['DAXMAP_CLEAN_TARGET'];
  if (v === undefined || v === '') return undefined;
  if (v.trim() === '0') return 0;
  return parseSize(v);
}

/** What the zeroer holds and has done; `daxmap stat` and statfs() report it (in bytes there). */
export interface CleanStats {
  /** Free blocks known to hold durable zeros. */
  clean: number;
  /** Free blocks being zeroed now (held out of the free pool). */
  zeroing: number;
  /** The clean space the zeroer aims at (0: off). */
  target: number;
  /** Blocks zeroed in the background since open. */
  zeroedAhead: number;
  /** Blocks allocations zeroed on their own path (they were not clean). */
  zeroedOnPath: number;
  /** Blocks allocations took clean (no zeroing). */
  cleanTaken: number;
  /** Zeroing jobs since open, their wall time in all (ms), and checkpoints taken to release freed blocks. */
  jobs: number;
  busyMs: number;
  checkpoints: number;
}

export class Zeroer {
  /** Clean free space aimed at, blocks (0: off). */
  target: number;
  private running: Promise<void> | null = null;
  private job: Promise<void> | null = null;
  private stopped = false;
  /** free/pending when the last scan found nothing to zero: no new scan until they change. */
  private dry: { free: number; pending: number } | null = null;
  readonly counts = { zeroedAhead: 0, zeroedOnPath: 0, cleanTaken: 0, jobs: 0, busyMs: 0, checkpoints: 0 };

  constructor(
    private readonly storage: Storage,
    private readonly state: FsState,
    private readonly txn: Journal,
    /** On a 2 MiB-granular device only whole groups are zeroed (only whole units are allocated). */
    private readonly wholeOnly: boolean,
    targetBytes: number,
  ) {
    this.target = this.blocksFor(targetBytes);
    txn.zeroingFree = () => this.job;
    txn.afterTxn = () => this.kick();
  }

  /** Bytes as a target in blocks (whole groups on a 2 MiB-granular device), at most the data area. */
  blocksFor(bytes: number): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw daxError('EINVAL', `clean target must be a non-negative integer of bytes, got ${String(bytes)}`);
    let n = Math.min(Math.floor(bytes / B), this.state.alloc.capacity);
    if (this.wholeOnly) n = Math.floor(n / GROUP_BLOCKS) * GROUP_BLOCKS;
    return n;
  }

  setTarget(bytes: number): void {
    this.target = this.blocksFor(bytes);
    this.dry = null;
    this.kick();
  }

  /** Start zeroing in the background if clean space is below target and there is free space to zero. */
  kick(): void {
    if (this.running || this.stopped || this.target === 0 || this.txn.closed) return;
    const a = this.state.alloc;
    if (a.cleanFree + a.zeroing >= this.target) return;
    // nothing free to zero, nor freed blocks a checkpoint could release: not even a look
    if (a.free === a.cleanFree && a.pendingCount < GROUP_BLOCKS) return;
    if (this.dry && this.dry.free === a.free && this.dry.pending === a.pendingCount) return;
    this.dry = null;
    this.running = outsideOperation(() => withOperation('pool.clean', () => this.loop())).finally(() => { this.running = null; });
  }

  get busy(): boolean {
    return this.running !== null;
  }

  /** Resolves once the zeroer is idle (tests, benchmarks: nothing runs beside what they time). */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  /**
   * Closing: no new job. Returns the run in flight to wait for (so the device is never
   * closed under a zeroing), or null when idle: then closing costs no turn here.
   */
  stop(): Promise<void> | null {
    this.stopped = true;
    return this.running;
  }

  /**
   * True when blocks freed in this epoch could be released for zeroing by a
   * checkpoint cheap enough to take in the background, and no free dirty space is
   * left to zero first.
   */
  private releasable(): boolean {
    const a = this.state.alloc;
    if (a.pendingCount < GROUP_BLOCKS || a.free - a.cleanFree >= GROUP_BLOCKS) return false;
    let extents = 0;
    for (const f of this.state.files.values()) {
      extents += f.extents.count;
      if (extents > CHEAP_CHECKPOINT_EXTENTS) return false;
    }
    return true;
  }

  private async loop(): Promise<void> {
    const a = this.state.alloc;
    try {
      while (!this.stopped && !this.txn.closed) {
        await new Promise<void>((res) => setImmediate(res));
        if (this.stopped || this.txn.closed) break;
        const want = this.target - a.cleanFree - a.zeroing;
        if (want <= 0) break;
        const runs = await this.txn.locked(() => {
          if (this.stopped) return [];
          let r = a.beginZero(Math.min(JOB_BLOCKS, want), this.wholeOnly);
          if (r.length === 0 && this.releasable()) {
            // the allocator would take this checkpoint on its own path once it needs
            // the freed blocks; taken here, it is off that path and they get zeroed
            this.txn.checkpoint();
            this.counts.checkpoints++;
            r = a.beginZero(Math.min(JOB_BLOCKS, want), this.wholeOnly);
          }
          if (r.length === 0) this.dry = { free: a.free, pending: a.pendingCount };
          return r;
        });
        if (runs.length === 0) break;
        await this.zero(runs);
      }
    } catch (e) {
      // no retry until the free space changes (a failing device would fail again at once)
      this.dry = { free: a.free, pending: a.pendingCount };
      if (!this.txn.closed) log.warn({ path: this.storage.path, err: e }, 'zeroing of free space failed');
    }
  }

  /** Zero and persist runs held by beginZero, off this thread; they go back to the free pool, clean if that succeeded. */
  private async zero(runs: Run[]): Promise<void> {
    const t0 = performance.now();
    let zeroed = false;
    const job = (async (): Promise<void> => {
      try {
        // At nice 19 (the background thread): only CPU time no other thread wants.
        await zeroResidentRuns(this.storage, runs.map((r) => ({ start: r.start, len: r.len })), true);
        zeroed = true;
      } finally {
        // one synchronous step, as every allocator change (the others run inside locked())
        this.state.alloc.endZero(runs, zeroed);
        this.job = null;
      }
    })();
    this.job = job;
    try {
      await job;
    } finally {
      this.counts.jobs++;
      this.counts.busyMs += performance.now() - t0;
    }
    for (const r of runs) this.counts.zeroedAhead += r.len;
  }

  stats(): CleanStats {
    const a = this.state.alloc;
    return { clean: a.cleanFree, zeroing: a.zeroing, target: this.target, ...this.counts };
  }
}
