// Transactions: the allocator and log locks, the commit path (apply in memory, then
// append to the log), block allocation under those locks, and checkpoints.
//
// Every metadata change is applied in memory and appended to the log in one
// synchronous step while holding the allocator lock then the log lock, so a
// checkpoint (taken under the same locks) always sees whole transactions
// (docs/locking.md). Blocks freed by a transaction are held back until the next
// checkpoint is durable (docs/pool-format.md, ordering rule 2): replaying any
// intact prefix of the log is then safe.

import { randomBytes } from 'node:crypto';
import { daxError } from '../errors';
import type { Storage } from '../device/storage';
import { Mutex } from '../lock/index';
import { logger } from '../log';
import { BLOCK_SIZE, GROUP_BLOCKS, writeCheckpoint, writeSuperblocks, type Superblock } from './format';
import type { Run, TakeOptions } from './allocator';
import { persistRuns } from './blocks';
import { ConversionQueue, type Conversions } from './deferred';
import { RecType, type LogRecord, type MetaLog } from './log';
import type { FsState, Inode } from './state';

const B = BLOCK_SIZE;
const log = logger('pool');

/** The longest a group commit round waits for the commits it expects (Journal.durable). */
const GROUP_WAIT_MAX_MS = 2;

/** One round of group commit: its waiters, and the persist that serves them. */
interface Round {
  /** Waiters gathered before the persist started (the persist covers them). */
  joined: number;
  /** Waiters that arrived while it persisted (they wait for the next round). */
  late: number;
  persisting: boolean;
  /** Start the persist now. */
  go: () => void;
  done: Promise<void>;
}

/** File blocks [fb, fb+len) placed at device blocks [dev, dev+len). */
export interface Placed {
  fb: number;
  dev: number;
  len: number;
}

/**
 * Thrown by ensureSpace inside locked(): the room needed is in reserve blocks being
 * zeroed; locked() waits for `done` and runs its function again.
 */
class AwaitZeroing extends Error {
  constructor(readonly done: Promise<unknown>) {
    super('waiting for reserve blocks being zeroed');
  }
}

export class Journal {
  /** Class 'alloc': block allocation, extent maps, the namespace. */
  readonly allocLock = new Mutex('alloc');
  /** Class 'log': the metadata log and checkpoints. */
  readonly logLock = new Mutex('log');
  /** Set when the pool closes: no transaction starts after it. */
  closed = false;
  /** Checkpoints written since open. */
  checkpoints = 0;
  /** Blocks written in memory, unwritten on the medium (deferred.ts). */
  readonly unconverted = new ConversionQueue();
  /**
   * Give the reserve's unused blocks back (unreserve records; they are then pending)
   * when an allocation would otherwise fail (reserve.ts). Caller holds alloc + log.
   */
  reclaim: () => void = () => {};
  /**
   * The reserve's blocks being zeroed for its stock, off the thread (reserve.ts): how
   * many, and a promise of the end of that zeroing; null when none is.
   */
  zeroingReserve: () => { blocks: number; done: Promise<unknown> } | null = () => null;
  /**
   * The free blocks the background zeroer holds while it zeroes them (zeroer.ts,
   * counted by the allocator): a promise of the end of its job; null when none runs.
   */
  zeroingFree: () => Promise<unknown> | null = () => null;
  /** Called after every locked() section (the zeroer looks whether it has work). */
  afterTxn: () => void = () => {};
  /** The round of group commit gathering or persisting (durable()). */
  private round: Round | null = null;
  /** Commits the last round saw: its own, and those that arrived while it persisted. */
  private lastGroup = 0;
  /** Moving average of a group persist (ms): the longest a round waits for company. */
  private persistMsAvg = 0;
  /** Callers of durable() that had to wait for a persist (the commits the group persists serve). */
  durableWaits = 0;

  constructor(
    private readonly storage: Storage,
    private readonly state: FsState,
    readonly log: MetaLog,
    /** The superblock in force; a checkpoint replaces it. */
    public sb: Superblock,
  ) {}

  checkOpen(): void {
    if (this.closed) throw daxError('EBADF', `pool '${this.storage.path}' is closed`);
  }

  /** Take alloc then log (the tail of the lock order) and run `fn` synchronously under both. */
  async locked<T>(fn: () => T): Promise<T> {
    for (;;) {
      let wait: Promise<unknown>;
      const a = await this.allocLock.acquire();
      try {
        const l = await this.logLock.acquire();
        try {
          this.checkOpen();
          return fn();
        } catch (e) {
          if (!(e instanceof AwaitZeroing)) throw e;
          wait = e.done;
        } finally {
          this.afterTxn();
          l.release();
        }
      } finally {
        a.release();
      }
      // ensureSpace found the room it needs in blocks being zeroed for the reserve:
      // once they are in the stock it can take them back; fn changed nothing yet.
      await wait;
    }
  }

  /**
   * Group commit (docs/pool.md, "Group commit"): resolve once the log is durable up
   * to `lsn` (MetaLog.endLsn right after the caller's commit). Called with no pool
   * lock held. Waiters gather in a round; one persist of everything appended so far
   * serves the round. On a disk-file pool it runs off the thread
   * (MetaLog.persistAsync): commits made meanwhile gather in the next round. A
   * waiter resumes only once a persist that covers its records has completed; a
   * failed persist rejects every waiter of its round.
   *
   * A round does not always start its persist at once. When the last round saw k > 1
   * commits (its own and those that arrived while it persisted: k threads or
   * clients taking sync faults), the next waits until k have joined it, or at most
   * the average persist time (GROUP_WAIT_MAX_MS at most), as jbd2 batches the fsyncs
   * of several writers: otherwise two writers alternate, each persist serving one
   * commit. Where persist is cheap (no persistAsync: tmpfs, device-dax, memory) a
   * round starts at once.
   */
  async durable(lsn: number): Promise<void> {
    if (this.log.durableLsn >= lsn) return;
    this.durableWaits++;
    while (this.log.durableLsn < lsn) {
      const r = this.round;
      if (!r) this.round = this.newRound();
      else if (r.persisting) r.late++;
      else if (++r.joined >= this.lastGroup) r.go();
      await this.round!.done;
    }
  }

  private newRound(): Round {
    const r: Round = { joined: 1, late: 0, persisting: false, go: () => {}, done: Promise.resolve() };
    const gathered = new Promise<void>((res) => { r.go = res; });
    let timer: NodeJS.Timeout | null = null;
    if (this.storage.persistAsync === undefined || this.lastGroup <= 1) r.go();
    else timer = setTimeout(r.go, Math.min(GROUP_WAIT_MAX_MS, this.persistMsAvg));
    r.done = gathered.then(async () => {
      if (timer) clearTimeout(timer);
      r.persisting = true;
      // closed meanwhile: its final sync made everything durable, or this fails
      if (this.log.dirty) this.checkOpen();
      const t0 = performance.now();
      await this.log.persistAsync();
      this.persistMsAvg = (this.persistMsAvg * 7 + (performance.now() - t0)) / 8;
      this.lastGroup = r.joined + r.late;
    }).finally(() => {
      if (this.round === r) this.round = null;
    });
    return r;
  }

  /** Apply a transaction in memory and append it (caller holds alloc + log). */
  commit(recs: LogRecord[]): void {
    if (recs.length === 0) return;
    for (const r of recs) this.state.apply(r, false);
    if (this.log.fits(recs)) this.log.append(recs);
    else this.checkpoint(); // the checkpoint already contains this transaction
  }

  /**
   * Log the queued conversions of `files` (null: all) after making their data
   * durable: the data first, then the records that say written (docs/pool-format.md,
   * ordering rule 1). The log itself is not persisted here (caller holds alloc + log).
   */
  convert(files: Inode[] | null): void {
    const c = this.takeDurable(files);
    if (c.recs.length > 0) this.commit(c.recs);
  }

  /** Take queued conversions and make their data durable (put back if that fails). */
  private takeDurable(files: Inode[] | null): Conversions {
    const c = this.unconverted.take(files);
    try {
      persistRuns(this.storage, c.runs);
    } catch (e) {
      this.unconverted.restore(c);
      throw e;
    }
    return c;
  }

  /**
   * Make `n` blocks allocatable or throw ENOSPC, before anything is changed (caller
   * holds alloc + log, in locked()). When blocks being zeroed for the reserve would
   * make up the shortfall, locked() waits for them and runs its function again.
   */
  ensureSpace(n: number): void {
    const alloc = this.state.alloc;
    if (n <= alloc.free) return;
    if (n > alloc.free + alloc.pendingCount) this.reclaim();
    if (n <= alloc.free + alloc.pendingCount) this.checkpoint();
    if (n > alloc.free) {
      const z = this.zeroingReserve();
      const f = alloc.zeroing > 0 ? this.zeroingFree() : null;
      if ((z || f) && n <= alloc.free + alloc.pendingCount + (z?.blocks ?? 0) + alloc.zeroing) {
        throw new AwaitZeroing(Promise.allSettled([z?.done, f]));
      }
      throw daxError('ENOSPC', `pool '${this.storage.path}' has ${alloc.free * B} bytes free, ${n * B} needed`);
    }
  }

  /**
   * Allocate blocks for the hole [fb, fb+len): whole 2 MiB groups for whole aligned
   * file chunks (when `aligned`), the blocks after `goal` when free, and a
   * congruent phase in fresh groups; clean blocks first (or last, with `clean`
   * 'avoid'), those taken clean added to `cleanOut`. Returns file-ordered pieces,
   * already marked (caller holds alloc + log and made room with ensureSpace).
   */
  allocate(fb: number, len: number, goal: number | undefined, aligned: boolean, cleanOut?: Run[], clean: 'prefer' | 'avoid' = 'prefer'): Placed[] {
    const out: Placed[] = [];
    let cur = fb;
    let g = goal;
    const takeSome = (n: number, opts: TakeOptions): void => {
      for (const r of this.state.alloc.take(n, { ...opts, clean }, cleanOut)) {
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
        const goalAligned = g !== undefined && (g - this.state.geometry.dataStart) % GROUP_BLOCKS === 0 ? g : undefined;
        takeSome(whole, { goal: goalAligned, wholeGroups: true, congruent: 0 });
        left -= whole;
      }
    }
    if (left > 0) takeSome(left, { goal: g, congruent: cur % GROUP_BLOCKS });
    return out;
  }

  /** Write the whole state as a new checkpoint, point the superblocks at it, restart the log (caller holds log). */
  checkpoint(): void {
    // the checkpoint records the blocks queued for conversion as written (as they are
    // in memory): their data is made durable first, and the queue empties
    const conv = this.takeDurable(null);
    try {
      this.writeCheckpoint();
    } catch (e) {
      this.unconverted.restore(conv); // not recorded: they stay queued
      throw e;
    }
  }

  private writeCheckpoint(): void {
    const st = this.state;
    const gen = this.sb.ckptGen + 1;
    const seed = randomBytes(4).readUInt32LE(0);
    const files = [...st.files.values()].sort((a, b) => a.id - b.id).map((f) => {
      const ex: number[] = [];
      for (const e of f.extents.all()) ex.push(e.fb, e.dev, e.len, e.state);
      return { id: f.id, name: f.name, mode: f.mode, uid: f.uid, gid: f.gid, mtimeMs: f.mtimeMs, size: f.size, extents: ex };
    });
    let used = 0;
    for (const f of st.files.values()) used += f.extents.blocks;
    const crc = writeCheckpoint(this.storage, st.geometry, { gen, logSeed: seed, nextFileId: st.nextFileId, usedBlocks: used, files });
    this.sb = { ...this.sb, ckptGen: gen, ckptCrc: crc };
    writeSuperblocks(this.storage, this.sb);
    this.log.reset(seed);
    // the checkpoint lists reserved blocks as free: the new epoch starts by reserving
    // them again, so the reserve survives in the log (docs/pool-format.md, "Reserve")
    const reserve: LogRecord[] = st.reservedRuns().map((r) => ({ t: RecType.Reserve, dev: r.start, len: r.len }));
    if (reserve.length > 0) {
      if (!this.log.fits(reserve)) throw daxError('EIO', `pool '${this.storage.path}': the reserve (${reserve.length} runs) does not fit the log`);
      this.log.append(reserve);
    }
    const released = st.alloc.pendingCount;
    st.alloc.releasePending();
    for (const f of st.files.values()) f.mtimeDirty = false;
    this.checkpoints++;
    if (log.isLevelEnabled('debug')) log.debug({ path: this.storage.path, generation: gen, files: files.length, usedBlocks: used, released }, 'checkpoint');
  }
}
