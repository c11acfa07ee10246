// The pool's reserve of pre-zeroed 4 KiB data blocks (docs/pool.md, "Reserve";
// docs/pool-format.md, "Reserve"). A write fault on a hole of a shared mapping can
// then be answered from blocks handed out ahead of it, without zeroing on the fault
// path; the fault policy adopts them into files later, in batches (core.ts,
// adoptReserved).
//
// Every block of the reserve is recorded in the log as reserved (a `reserve`
// record) before it is zeroed, and is owned by no file: no replay of any prefix of
// the log exposes it, and the open after a crash frees whatever is still reserved.
// A block is in exactly one of these states while reserved:
//   zeroing  taken by a refill, being zeroed (and the zeros persisted)
//   clean    in the stock: zeroed, zeros durable, ready to hand out
//   out      handed out by take(): a mapping may have stored into it
//   dirty    given back by returnBlocks() (or refused by an adoption): stores may be
//            in it, so it is zeroed again before it is handed out again
// The stock is refilled in the background (setImmediate steps, one transaction per
// batch) when it falls below `lowWater`, up to `target`.

import { daxError } from '../errors';
import type { Storage } from '../device/storage';
import { withOperation } from '../lock/index';
import { logger } from '../log';
import type { Run } from './allocator';
import { zeroResidentRuns } from './blocks';
import { BLOCK_SIZE, GROUP_BLOCKS } from './format';
import { RecType, type LogRecord } from './log';
import { toRuns, type FsState } from './state';
import type { Journal } from './txn';
import type { Zeroer } from './zeroer';

const B = BLOCK_SIZE;
const log = logger('pool');

/** What the reserve holds and has done (counts in blocks); `daxmap stat` prints it. */
export interface ReserveStats {
  /** False on a 2 MiB-granular device: the reserve is off there. */
  enabled: boolean;
  /** Zeroed blocks ready to hand out. */
  stock: number;
  /** Blocks handed out and neither adopted nor returned yet. */
  out: number;
  /** Returned blocks waiting to be zeroed again. */
  dirty: number;
  /** Blocks being zeroed by a refill. */
  zeroing: number;
  /** Every reserved block (the four above). */
  reserved: number;
  target: number;
  lowWater: number;
  /** Totals since open. */
  taken: number;
  adopted: number;
  refused: number;
  returned: number;
  /** Blocks zeroed by the background refill / on a taker's path (the stock was short). */
  zeroedBackground: number;
  zeroedForeground: number;
}

export class Reserve {
  /**
   * Stock size the background refill aims at, and the level that starts it (blocks):
   * an eighth of the pool's data blocks, from 1,024 to 4,096 (16 MiB), a quarter of
   * that. The fault policy's grants take up to 2,048 blocks and its top-ups up to
   * 512 at once (lib/fault/reserve.ts): a stock of 1,024 was emptied by one sparse
   * writer's grant, and its next top-ups zeroed their blocks on the worker's path
   * (10–25 ms) while the writer's reserve ran dry.
   */
  target: number;
  lowWater: number;
  /** Blocks per refill step (one transaction each). */
  batch = 128;
  readonly clean: number[] = [];
  readonly dirty: number[] = [];
  readonly out = new Set<number>();
  zeroing = 0;
  /** Zeroing jobs in flight: close() waits for them, so the device is not closed under one. */
  private readonly zeroJobs = new Set<Promise<void>>();
  private running: Promise<void> | null = null;
  private stopped = false;
  readonly counts = { taken: 0, adopted: 0, refused: 0, returned: 0, zeroedBackground: 0, zeroedForeground: 0 };

  constructor(
    private readonly storage: Storage,
    private readonly state: FsState,
    private readonly txn: Journal,
    /** Off on 2 MiB-granular devices (a 4 KiB block cannot be installed there). */
    readonly enabled: boolean,
    /** The zeroer of free space: new blocks taken clean are not zeroed again (its counts learn it). */
    private readonly zeroer: Zeroer,
  ) {
    this.target = Math.min(4096, Math.max(1024, Math.floor(state.alloc.capacity / 8)));
    this.lowWater = Math.floor(this.target / 4);
    txn.reclaim = () => this.reclaim();
    txn.zeroingReserve = () => (this.zeroJobs.size === 0 ? null : { blocks: this.zeroing, done: Promise.allSettled([...this.zeroJobs]) });
  }

  /** Most blocks the reserve holds at once: its re-reservation after a checkpoint must fit a quarter of the log. */
  get limit(): number {
    return Math.floor(this.txn.log.capacity / 4 / 24);
  }

  private check(): void {
    this.txn.checkOpen();
    if (this.stopped) throw daxError('EBADF', `pool '${this.storage.path}' is closing`);
    if (!this.enabled) throw daxError('EOPNOTSUPP', `pool '${this.storage.path}' is on a 2 MiB-granular device: no 4 KiB reserve`);
  }

  /**
   * Hand out up to n zeroed blocks (device block numbers). From the stock when it
   * has them; otherwise the shortfall is zeroed now, on the caller's path. Fewer
   * when the pool is short; ENOSPC only when not one block can be had; EAGAIN when
   * the reserve is at its limit with every block handed out.
   */
  async take(n: number): Promise<number[]> {
    if (!Number.isSafeInteger(n) || n <= 0) throw daxError('EINVAL', `takeReserve count must be a positive integer, got ${String(n)}`);
    this.check();
    for (let round = 0; this.clean.length < n && round < 4; round++) {
      const got = await this.step(n - this.clean.length, false);
      this.check();
      if (got === 0) break;
    }
    if (this.clean.length === 0) {
      if (this.state.reserved.size >= this.limit) {
        throw daxError('EAGAIN', `pool '${this.storage.path}': the reserve is at its limit of ${this.limit} blocks, all handed out (adopt or return some)`);
      }
      throw daxError('ENOSPC', `pool '${this.storage.path}' has no block free for the reserve`);
    }
    const k = Math.min(n, this.clean.length);
    const got = this.clean.splice(this.clean.length - k, k);
    for (const d of got) this.out.add(d);
    this.counts.taken += k;
    this.kick();
    return got;
  }

  /**
   * Runs for reserve windows (docs/pool.md, "Reserve"): up to n whole free 2 MiB groups
   * (GROUP_BLOCKS contiguous blocks each), wholly clean ones first (zeroer.ts: their
   * zeros are durable already), recorded reserved in one transaction; the others
   * zeroed and their zeros persisted (one job, off the thread where the device can);
   * then handed out like blocks from take(): their first blocks. Fewer (none) when
   * fewer groups are wholly free or the reserve would pass its limit.
   */
  async takeRuns(n: number): Promise<number[]> {
    this.check();
    const dirty: number[] = [];
    const starts = await this.txn.locked(() => {
      const got: number[] = [];
      while (!this.stopped && got.length < n && this.state.reserved.size + GROUP_BLOCKS <= this.limit) {
        const g = this.state.alloc.takeWholeGroup();
        if (g === null) break;
        this.txn.commit([{ t: RecType.Reserve, dev: g.start, len: GROUP_BLOCKS }]);
        got.push(g.start);
        // a wholly clean group (zeroer.ts) holds durable zeros already
        if (g.clean) this.zeroer.counts.cleanTaken += GROUP_BLOCKS;
        else dirty.push(g.start);
      }
      this.zeroing += dirty.length * GROUP_BLOCKS;
      return got;
    });
    if (starts.length === 0) return starts;
    const blocks = dirty.length * GROUP_BLOCKS;
    if (this.stopped) {
      this.zeroing -= blocks; // closing: close() frees them with the rest of the reserve
      return [];
    }
    if (dirty.length > 0) {
      const job = zeroResidentRuns(this.storage, dirty.map((start) => ({ start, len: GROUP_BLOCKS })));
      this.zeroJobs.add(job);
      try {
        await job;
      } catch (e) {
        for (const start of starts) for (let d = start; d < start + GROUP_BLOCKS; d++) this.dirty.push(d);
        throw e;
      } finally {
        this.zeroJobs.delete(job);
        this.zeroing -= blocks;
      }
    }
    for (const start of starts) for (let d = start; d < start + GROUP_BLOCKS; d++) this.out.add(d);
    this.counts.taken += starts.length * GROUP_BLOCKS;
    this.counts.zeroedForeground += blocks;
    return starts;
  }


  /** Blocks handed out and not used come back; they are zeroed again before the next hand-out. */
  returnBlocks(devs: number[]): void {
    this.txn.checkOpen();
    this.takeOut(devs, 'returnReserve');
    this.toDirty(devs);
    this.counts.returned += devs.length;
  }

  /** Blocks taken out of `out` (takeOut) come back dirty: returned, or refused by an adoption. */
  toDirty(devs: readonly number[]): void {
    for (const d of devs) this.dirty.push(d);
    this.kick();
  }

  /**
   * Take the blocks out of the handed-out set, or raise EINVAL with nothing changed
   * unless every one is handed out, once (a block named twice is not out the second
   * time). One set operation per block: an adoption runs this for every page.
   */
  takeOut(devs: readonly number[], what: string): void {
    for (let i = 0; i < devs.length; i++) {
      if (this.out.delete(devs[i]!)) continue;
      for (let k = 0; k < i; k++) this.out.add(devs[k]!);
      throw daxError('EINVAL', `${what}: device offset ${devs[i]! * B} is not a reserved block handed out (or is named twice)`);
    }
  }

  get busy(): boolean {
    return this.running !== null;
  }

  /** Resolves once no refill is running (tests, benchmarks). */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Start the background refill if the stock is low or blocks wait to be zeroed again. */
  kick(): void {
    if (this.running || this.stopped || !this.enabled || this.txn.closed) return;
    if (this.clean.length >= this.lowWater && this.dirty.length === 0 && this.clean.length <= this.target) return;
    this.running = withOperation('pool.reserve.refill', () => this.refill()).finally(() => { this.running = null; });
  }

  private async refill(): Promise<void> {
    try {
      while (!this.stopped && !this.txn.closed) {
        await new Promise<void>((res) => setImmediate(res));
        if (this.stopped || this.txn.closed) break;
        const want = this.target - this.clean.length - this.zeroing;
        if (want <= 0) {
          // full: returned blocks, and clean ones beyond the target, are freed rather than kept
          await this.txn.locked(() => this.unreserve([...this.dirty.splice(0), ...this.clean.splice(0, Math.max(0, this.clean.length - this.target))]));
          break;
        }
        if ((await this.step(Math.min(this.batch, want), true)) === 0) break;
      }
    } catch (e) {
      if (!this.txn.closed) log.warn({ path: this.storage.path, err: e }, 'reserve refill failed');
    }
  }

  /**
   * One refill transaction: up to `max` blocks, first those given back (no record:
   * they are reserved already), then new ones from the free blocks (`reserve`
   * records). Then, outside the locks, they are zeroed and the zeros persisted before
   * they join the stock; new blocks taken from clean free space (zeroer.ts: their
   * zeros are durable already) join it at once. Returns the number of blocks added.
   */
  private async step(max: number, background: boolean): Promise<number> {
    let ready = 0;
    const blocks = await this.txn.locked(() => {
      if (this.stopped) return []; // closing: close() frees the reserve, nothing joins it
      const got = this.dirty.splice(0, max);
      const alloc = this.state.alloc;
      let want = Math.min(max - got.length, this.limit - this.state.reserved.size);
      // the background keeps to blocks free now; a taker may wait for a checkpoint
      if (!background && want > alloc.free && alloc.pendingCount > 0) this.txn.checkpoint();
      want = Math.min(want, alloc.free);
      if (want > 0) {
        const clean: Run[] = [];
        const runs = alloc.take(want, {}, clean);
        this.txn.commit(runs.map((r): LogRecord => ({ t: RecType.Reserve, dev: r.start, len: r.len })));
        const isClean = new Set<number>();
        for (const r of clean) for (let d = r.start; d < r.start + r.len; d++) isClean.add(d);
        for (const r of runs) for (let d = r.start; d < r.start + r.len; d++) (isClean.has(d) ? this.clean : got).push(d);
        ready = isClean.size;
        this.zeroer.counts.cleanTaken += ready;
      }
      this.zeroing += got.length;
      return got;
    });
    if (blocks.length === 0) return ready;
    if (this.stopped) {
      // closing since: close() frees them; no zeroing may start now (close() waits only
      // for the jobs it finds), so the device is never closed under one
      this.zeroing -= blocks.length;
      return ready;
    }
    // Written, not punched: the pages stay resident, so a fault on them finds them
    // in memory. Off this thread where the device can (a libuv pool thread): the
    // thread that runs the fault policy goes on meanwhile.
    const job = zeroResidentRuns(this.storage, toRuns(blocks.slice()));
    this.zeroJobs.add(job);
    try {
      await job;
    } catch (e) {
      this.dirty.push(...blocks);
      throw e;
    } finally {
      this.zeroJobs.delete(job);
      this.zeroing -= blocks.length;
    }
    this.clean.push(...blocks);
    if (background) this.counts.zeroedBackground += blocks.length;
    else this.counts.zeroedForeground += blocks.length;
    return ready + blocks.length;
  }

  /** Free reserved blocks (held back until the next checkpoint). Caller holds alloc + log. */
  unreserve(blocks: number[]): void {
    if (blocks.length === 0) return;
    this.txn.commit(toRuns(blocks).map((r): LogRecord => ({ t: RecType.Unreserve, dev: r.start, len: r.len })));
  }

  /** An allocation is short of blocks: the stock and the returned blocks go back. Caller holds alloc + log. */
  private reclaim(): void {
    const blocks = [...this.clean.splice(0), ...this.dirty.splice(0)];
    if (blocks.length > 0) log.debug({ path: this.storage.path, blocks: blocks.length }, 'reserve reclaimed for an allocation');
    this.unreserve(blocks);
  }

  /**
   * Closing: stop the refill and free every reserved block, those handed out
   * included (the mappings that held them are gone). The checkpoint of close then
   * records them free.
   */
  async close(): Promise<void> {
    this.stopped = true;
    await this.running;
    await Promise.allSettled([...this.zeroJobs]); // a taker's, zeroing on its own path
    if (this.state.reserved.size === 0 || this.txn.closed) return;
    await this.txn.locked(() => {
      this.clean.length = 0;
      this.dirty.length = 0;
      this.out.clear();
      this.unreserve([...this.state.reserved]);
    });
  }

  stats(): ReserveStats {
    return {
      enabled: this.enabled, stock: this.clean.length, out: this.out.size, dirty: this.dirty.length, zeroing: this.zeroing,
      reserved: this.state.reserved.size, target: this.target, lowWater: this.lowWater, ...this.counts,
    };
  }
}
