// The DAX fault policy: the only place that decides what a page becomes. Runs in the
// service (a worker thread, or the daemon), answers faults of every mapping of every
// client, and revokes pages before the pool frees or zeroes blocks. This is what the
// service sees; the work is done by the Resolver (resolve.ts), the Revoker
// (revoke.ts) and the Evictor (evict.ts) over a shared FaultContext (context.ts).
//
// Locks, in the one order (docs/locking.md): the file's range lock (class 'range',
// shared over the 2 MiB chunk of the fault) → the entry lock of that chunk (class
// 'entry') → the pool's allocator and log locks (taken inside ensureWritten). Every
// lock is released in `finally`; no lock outlives the fault that took it.
import { daxError } from '../errors';
import { outsideOperation, withOperation, type LockHandle } from '../lock/index';
import { monotonicNow } from '../native/engine';
import { Op, EV_WP, EV_WRITE, type FaultEvent } from '../native/frames';
import type { Inode, PoolInternals } from '../pool/internal';
import type { WindowBudget } from './budget';
import { FaultContext, RetryAfterEvict, mappedEof, type Client, type MapRequest, type Mapping } from './context';
import { Decider, DirectPieces, type DecideMode } from './decide';
import { FaultAhead } from './ahead';
import { Evictor } from './evict';
import { Reserves, type ReserveMode } from './reserve';
import { Resolver } from './resolve';
import { Revoker } from './revoke';
import { HUGE, PAGE, PageState, PageStates } from './states';
import type { FaultStats, FaultStatsSnapshot } from './stats';

export type { Client, MapRequest } from './context';

/**
 * Sparse 4 KiB hole writes in a row before a mapping with fault-around gets a reserve.
 * One is too few: a sequential writer that starts inside a window makes one sparse
 * write first (test/fault/adaptive.test.ts); its second store continues the first,
 * which resets the count. Two, not three: each is a trip to the policy (0.5–1.3 ms
 * on a fresh pool) that the kernel's own sparse writer does not take.
 */
const SPARSE_RUN = 2;

export class FaultPolicy {
  private readonly ctx: FaultContext;
  private readonly resolver: Resolver;
  private readonly revoker: Revoker;
  private readonly evictor: Evictor;
  private readonly decider: Decider;
  private readonly reserves: Reserves;
  private readonly faultAhead: FaultAhead;
  /** How long a SIGBUS for a failed fault stands before the page is taken back. */
  transientPoisonMs = 20;

  constructor(pool: PoolInternals) {
    this.ctx = new FaultContext(pool);
    this.revoker = new Revoker(this.ctx);
    this.resolver = new Resolver(this.ctx, this.revoker);
    this.evictor = new Evictor(this.ctx);
    this.decider = new Decider(this.ctx);
    this.reserves = new Reserves(this.ctx, this.revoker);
    this.faultAhead = new FaultAhead(this.ctx, this.resolver, (m) => this.reserves.live(m.inode));
    // Started once the fault's operation has ended (its locks released), not inside it.
    this.resolver.onSequentialWindow = (m, fileStart) => this.aheadDue.set(m, fileStart);
    this.resolver.useStock = () => this.reserves.mode === 'on';
    this.resolver.onSparseWrite = (m, sparse) => {
      // With fault-around, a reserve only after a few sparse writes in a row: a
      // sequential writer must keep getting whole 2 MiB windows (the adaptive rule).
      const n = sparse ? (this.sparseRun.get(m) ?? 0) + 1 : 0;
      this.sparseRun.set(m, n);
      if (n >= (m.faultAround ? SPARSE_RUN : 1)) this.sparse.add(m);
    };
    // The pool calls it with the range lock held exclusive: the reserve is taken back
    // first (its notes adopted), then the pages revoked, then the blocks freed.
    pool.setInvalidator(async (f, off, len) => {
      await this.reserves.reclaim(f, true);
      await this.revoker.invalidate(f, off, len);
    });
  }

  get stats(): FaultStats {
    return this.ctx.stats;
  }

  /** Test seam: throw from (or wait inside) a fault after its locks are taken. */
  get inject(): Resolver['inject'] {
    return this.resolver.inject;
  }

  set inject(fn: Resolver['inject']) {
    this.resolver.inject = fn;
  }

  /** How written extents are decided at map() (decide.ts; DAXMAP_DECIDED sets the default). */
  get decideMode(): DecideMode {
    return this.decider.mode;
  }

  set decideMode(mode: DecideMode) {
    this.decider.mode = mode;
  }

  /** Whether sparse hole writes are granted reserves answered natively (reserve.ts; DAXMAP_RESERVE sets the default). */
  get reserveMode(): ReserveMode {
    return this.reserves.mode;
  }

  set reserveMode(mode: ReserveMode) {
    this.reserves.mode = mode;
  }

  /**
   * Pages of a reserve window filled before the agent installs the rest of it from a
   * run (reserve.ts; DAXMAP_RESERVE_WINDOW sets the default; 0: no windows).
   */
  get reserveWindow(): number {
    return this.reserves.windowThreshold;
  }

  set reserveWindow(n: number) {
    this.reserves.windowThreshold = n;
  }

  /** Whether grants stage whole-hole windows (reserve.ts, "Staged ranges"; DAXMAP_STAGE sets the default). */
  get stage(): boolean {
    return this.reserves.stage;
  }

  set stage(on: boolean) {
    this.reserves.stage = on;
  }

  /** 2 MiB windows installed ahead of a sequential writer (ahead.ts; DAXMAP_AHEAD sets the default; 0: off). */
  get aheadWindows(): number {
    return this.faultAhead.windows;
  }

  set aheadWindows(n: number) {
    this.faultAhead.windows = n;
  }

  /** Fault-ahead tasks running (tests wait for none). */
  get aheadRunning(): number {
    return this.faultAhead.running;
  }

  /** Test seam: called when reserve notes are about to be adopted. */
  set beforeAdopt(fn: (() => void | Promise<void>) | null) {
    this.reserves.beforeAdopt = fn;
  }

  /** Test seam: called at the end of an adoption, its locks still held. */
  set afterAdopt(fn: (() => void | Promise<void>) | null) {
    this.reserves.afterAdopt = fn;
  }

  /** Some reserve is live (granted and not taken back). */
  get reservesLive(): boolean {
    return this.reserves.count > 0;
  }

  /**
   * Take back every live reserve (of one client, or all): each is cleared in its
   * agent, its notes adopted, its unused blocks given back. The service calls it
   * before any operation that reads or changes files, so none sees a block the
   * policy has not recorded.
   */
  reclaimReserves(client?: Client): Promise<void> {
    return this.reserves.reclaimAll(client);
  }

  // ---- mappings ----

  /**
   * Register a mapping, then decide its written extents ahead (decide.ts). Resolves
   * once the decided ranges are in the client's agent, before the region is bound.
   */
  async map(client: Client, req: MapRequest): Promise<void> {
    const key = `${client.id}:${req.region}`;
    if (this.ctx.mappings.has(key)) throw daxError('EEXIST', `region ${req.region} is already mapped`);
    const m: Mapping = { ...req, key, client, states: new PageStates(), writeStreams: [], direct: new DirectPieces(), dead: false };
    this.ctx.mappings.set(key, m);
    let set = this.ctx.byInode.get(req.inode.id);
    if (!set) this.ctx.byInode.set(req.inode.id, (set = new Set()));
    set.add(m);
    // Another mapping of the file: a reserve of the first is taken back (two
    // mappings could each allocate the same block of the file).
    await this.reserves.reclaim(req.inode);
    await this.decider.decide(m);
  }

  /** Forget a mapping (its region is already closed by its owner). */
  unmap(client: Client, region: number): Promise<void> {
    const m = this.ctx.mappings.get(`${client.id}:${region}`);
    if (!m) return Promise.resolve();
    this.forget(m);
    // Its reserve's notes are still adopted: what was stored through it is the file's;
    // then its windows are trimmed of the pages nothing was stored to.
    return this.reserves.reclaim(m.inode).then(() => this.trimWindows(m));
  }

  private trimWindows(m: Mapping): Promise<void> {
    return withOperation('reserve.trim', () => this.reserves.trim(m)).catch((err: unknown) => {
      this.ctx.log.warn({ err, file: m.inode.name }, 'trimming the zero pages of reserve windows failed');
    });
  }

  /** Forget every mapping of a client (it went away). */
  dropClient(client: Client): Promise<void> {
    const gone = [...this.ctx.mappings.values()].filter((m) => m.client === client);
    for (const m of gone) this.forget(m);
    return this.reserves.reclaimAll(client).catch((err: unknown) => {
      this.ctx.log.warn({ err, client: client.id }, 'taking back the reserves of a client that went away failed');
    }).then(async () => {
      for (const m of gone) await this.trimWindows(m);
    });
  }

  private forget(m: Mapping): void {
    m.dead = true;
    this.ctx.mappings.delete(m.key);
    this.ctx.byInode.get(m.inode.id)?.delete(m);
    m.client.budget.dropMapping(m.key);
    m.states.clear();
    // Its region is closed (or its client gone): the agent forgot the direct table with it.
    m.direct.clear();
  }

  mappingsOf(inode: Inode): Mapping[] {
    return this.ctx.mappingsOf(inode);
  }

  snapshot(): FaultStatsSnapshot {
    let windows = 0;
    const seen = new Set<WindowBudget>();
    for (const m of this.ctx.mappings.values()) {
      if (!seen.has(m.client.budget)) {
        seen.add(m.client.budget);
        windows += m.client.budget.count;
      }
    }
    const txn = this.ctx.pool.core.txn;
    return this.ctx.stats.snapshot(windows, { logPersists: txn.log.persists, syncCommits: txn.durableWaits });
  }


  // ---- faults ----

  /** Handle a batch of events of one client. Every event gets an answer, whatever happens. */
  handle(client: Client, events: FaultEvent[]): Promise<void> {
    // New work, whoever delivers it: a take-back drains its channel synchronously
    // (FaultChannel.drainNow) inside its own operation, which holds the file's range
    // lock; the faults, batch adoptions and top-ups started here are not part of it.
    return outsideOperation(() => {
      // Notes (faults the agent answered from a reserve) are queued on their reserve
      // now, synchronously: a ClearReserve's result must find them in.
      const faults = this.reserves.takeNotes(client, events);
      return Promise.all(faults.map((ev) => this.handleOne(client, ev))).then(() => undefined);
    });
  }

  /** Mappings whose last fault was a 4 KiB write on a hole (the resolver says so): candidates for a reserve. */
  private readonly sparse = new Set<Mapping>();
  /** Sparse write faults in a row, per mapping. */
  private readonly sparseRun = new WeakMap<Mapping, number>();
  /** Mappings whose sequential writer was just answered a window: fault-ahead from there (ahead.ts). */
  private readonly aheadDue = new Map<Mapping, number>();

  private async handleOne(client: Client, ev: FaultEvent): Promise<void> {
    const m = this.ctx.mappings.get(`${client.id}:${ev.region}`);
    if (!m || m.dead) {
      // A region unknown to us (unmapped meanwhile): SIGBUS, like a mapping that is gone.
      await this.ctx.answer(client, [{ op: Op.Poison, region: ev.region, offset: ev.offset, length: PAGE }]);
      return;
    }
    this.ctx.bump(m, 'faults');
    if (ev.flags & EV_WP) this.ctx.bump(m, 'writeProtect');
    if (ev.flags & EV_WRITE) this.ctx.bump(m, 'write'); else this.ctx.bump(m, 'read');
    let woken = false;
    if (this.reserves.mode === 'on' && (this.sparseRun.get(m) ?? 0) + 1 >= (m.faultAround ? SPARSE_RUN : 1) && !this.reserves.live(m.inode) &&
      this.resolver.sparseHoleWrite(m, ev, m.fileOffset + ev.offset)) {
      // The write that makes the mapping a sparse writer: its reserve (and staged
      // ranges, not in this fault's window) first, then the fault, which finds the
      // page in the reserve: the grant's answer wakes it, and the agent answers its
      // retried store. Resolved first, as the others, it cost a trip through the
      // policy (0.5–2 ms on a fresh pool) that the writer's next store spent waiting
      // for the grant after it. Not woken (the page was not the reserve's after all):
      // resolved below as any fault.
      woken = await this.reserves.grant(m, ev.offset).catch((err: unknown) => {
        this.ctx.log.warn({ err, file: m.inode.name }, 'granting a reserve failed');
        return false;
      });
      this.sparseRun.set(m, 0);
    }
    for (let attempt = 0; !woken; attempt++) {
      try {
        await withOperation('fault', () => this.locked(m, ev));
        break;
      } catch (err) {
        if (err instanceof RetryAfterEvict && attempt === 0) {
          await this.evict(m.client, Math.max(64, Math.ceil(m.client.budget.count / 8))).catch(() => {});
          continue;
        }
        // Anything unsatisfiable (ENOSPC, an I/O error, an injected failure): SIGBUS
        // for the faulting access, logged; the locks were released by `finally`.
        this.ctx.bump(m, 'sigbus');
        this.ctx.log.warn({ err, region: ev.region, offset: ev.offset, file: m.inode.name }, 'fault answered with SIGBUS');
        await this.ctx.answer(client, [{ op: Op.Poison, region: ev.region, offset: ev.offset, length: PAGE }]).catch(() => {});
        m.states.set(ev.offset / PAGE, ev.offset / PAGE + 1, PageState.Poison);
        // A poison marker stays until the page is taken back. This failure may be
        // transient (ENOSPC until space is freed, an I/O error): once the faulting
        // access has had its SIGBUS, take the page back so the next access faults
        // afresh, as with the kernel's own faults.
        const timer = setTimeout(() => void this.recover(m, ev.offset), this.transientPoisonMs);
        timer.unref();
        break;
      }
    }
    this.ctx.fileStats(m).latency(Number(monotonicNow() - ev.timeNs) / 1000);
    const due = this.aheadDue.get(m);
    if (due !== undefined) {
      this.aheadDue.delete(m);
      this.faultAhead.after(m, due);
    }
    if (this.sparse.delete(m)) {
      // Answered already; the next sparse writes of the mapping need not wait for us.
      this.reserves.grant(m).catch((err: unknown) => this.ctx.log.warn({ err, file: m.inode.name }, 'granting a reserve failed'));
    }
    if (m.client.budget.over) {
      // Evict in batches (1/16 of the budget at least), not one window per fault: each
      // round takes the client's reserves back, and a new grant walks the extents.
      const b = m.client.budget;
      this.evict(m.client, Math.max(b.used - b.limit, Math.ceil(b.limit / 16))).catch((err: unknown) => {
        this.ctx.log.warn({ err }, 'eviction of installed windows failed');
      });
    }
  }

  /** Takes range (shared, the 2 MiB chunk) → entry (the chunk), resolves, releases. */
  private async locked(m: Mapping, ev: FaultEvent): Promise<void> {
    const fileOff = m.fileOffset + ev.offset;
    const chunk = Math.floor(fileOff / HUGE);
    let range = await m.inode.rangeLock.acquireShared(chunk * HUGE, (chunk + 1) * HUGE);
    // No fault is resolved while a reserve of its file is live (reserve.ts): take it
    // back first, its notes adopted, then look again with the lock held.
    while (this.reserves.live(m.inode)) {
      if (this.reserves.retryable(m, ev)) {
        // Read before the reserve was set: the thread's retried store is the agent's.
        range.release();
        await this.ctx.answer(m.client, [{ op: Op.Wake, region: ev.region, offset: ev.offset, length: PAGE }]);
        return;
      }
      range.release();
      // A reserve that ran dry is topped up, not taken back: the fault is then woken.
      if (!(await this.reserves.dryFault(m, ev))) await this.reserves.reclaim(m.inode);
      range = await m.inode.rangeLock.acquireShared(chunk * HUGE, (chunk + 1) * HUGE);
    }
    let entry: LockHandle | undefined;
    try {
      entry = await this.ctx.lockEntry(`${m.inode.id}:${chunk}`);
      await this.resolver.resolve(m, ev, fileOff);
    } finally {
      entry?.release();
      range.release();
    }
  }

  /** Per-file fault statistics (files that took faults since the service started). */
  fileSnapshots(): { file: string; stats: FaultStatsSnapshot }[] {
    return [...this.ctx.perFile.values()].map((e) => ({ file: e.name(), stats: e.stats.snapshot(0) }));
  }

  /** Take back a page poisoned by a failed fault, unless something else answered it since. */
  private async recover(m: Mapping, regionOff: number): Promise<void> {
    if (m.dead) return;
    await withOperation('recover', async () => {
      const chunk = Math.floor((m.fileOffset + regionOff) / HUGE);
      const range = await m.inode.rangeLock.acquireShared(chunk * HUGE, (chunk + 1) * HUGE);
      let entry: LockHandle | undefined;
      try {
        entry = await this.ctx.lockEntry(`${m.inode.id}:${chunk}`);
        const page = regionOff / PAGE;
        if (m.dead || m.states.get(page) !== PageState.Poison) return;
        if (m.fileOffset + regionOff >= mappedEof(m, this.ctx.pool.storage.align)) return; // beyond EOF: stays poisoned
        await this.revoker.revokeRange(m, regionOff, PAGE);
        this.ctx.bump(m, 'recovered');
      } finally {
        entry?.release();
        range.release();
      }
    }).catch((err: unknown) => this.ctx.log.warn({ err }, 'could not take back a poisoned page'));
  }


  /** Revoke at least `n` of the client's installed windows (see Evictor.evict). */
  async evict(client: Client, n: number): Promise<void> {
    // Eviction makes written pages missing again: no reserve may be live then.
    await this.reserves.reclaimAll(client);
    await this.evictor.evict(client, n);
    // Upgraded windows' gaps that went: their pages nothing was stored to become holes.
    for (const m of this.ctx.mappings.values()) {
      if (m.client !== client) continue;
      await withOperation('reserve.trim', () => this.reserves.trimEvicted(m)).catch((err: unknown) => {
        this.ctx.log.warn({ err, file: m.inode.name }, 'trimming the zero pages of evicted reserve windows failed');
      });
    }
  }

  /** The pool's invalidator (see Revoker.invalidate). */
  invalidate(ino: Inode, offset: number, length: number): Promise<void> {
    return this.revoker.invalidate(ino, offset, length);
  }

  /** The file grew: pages poisoned past the old EOF are taken back (see Revoker.grown). */
  grown(ino: Inode): Promise<void> {
    return this.revoker.grown(ino);
  }

  /** After file.write (see Revoker.written). */
  written(ino: Inode, offset: number, length: number): Promise<void> {
    return this.revoker.written(ino, offset, length);
  }

  /** Revoke everything of a mapping (pool closing with mappings in other threads). */
  revokeAll(m: Mapping): Promise<void> {
    return this.revoker.revokeAll(m);
  }

  allMappings(): Mapping[] {
    return [...this.ctx.mappings.values()];
  }

  /** Kill a mapping: every page revoked and later faults get SIGBUS (the pool is closing). */
  async kill(m: Mapping): Promise<void> {
    await this.reserves.reclaim(m.inode).catch(() => {});
    await this.revokeAll(m).catch(() => {});
    this.forget(m);
  }
}
