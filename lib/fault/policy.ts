// The DAX fault policy: the only place that decides what a page becomes. Runs in the
// service (a worker thread, or the daemon), answers faults of every mapping of every
// client, and revokes pages before the pool frees or zeroes blocks.
//
// Locks, in the one order (DESIGN §5): the file's range lock (class 'range', shared
// over the 2 MiB chunk of the fault) → the entry lock of that chunk (class 'entry')
// → the pool's allocator and log locks (taken inside ensureWritten). Every lock is
// released in `finally`; no lock outlives the fault that took it.
import { daxError, isDaxError } from '../errors';
import { KeyedMutex, RANGE_END, withOperation, type LockHandle } from '../lock/index';
import { logger } from '../log';
import { monotonicNow } from '../native/engine';
import {
  Op, EV_WP, EV_WRITE, RESULT_RACED,
  A_ADOPT, A_FROM_DEVICE, A_POPULATE, A_WP, A2_POPULATE_READ,
  type AnswerSpec, type FaultEvent,
} from '../native/frames';
import type { Inode, PoolInternals } from '../pool/internal';
import { WindowBudget } from './budget';
import { HUGE, PAGE, PageState, PageStates } from './states';
import { FaultStats, type CounterName, type FaultStatsSnapshot } from './stats';

const ENOMEM = -12;
const ENXIO = -6;
const ENOENT = -2;

/** Who executes answers for a set of regions: this process (embedded) or a client process (daemon). */
export interface Client {
  readonly id: string;
  /**
   * Executes answers on the client's regions, in order; one result per answer (0,
   * RESULT_RACED, -errno). A client that is gone answers -ENXIO for every one (its
   * regions are gone with it).
   */
  run(answers: AnswerSpec[]): number[] | Promise<number[]>;
  /** Installed-window budget of the client's process. */
  readonly budget: WindowBudget;
  /** The client's id for the pool's device (installs name it). */
  readonly deviceId: number;
}

export interface MapRequest {
  region: number;
  inode: Inode;
  fileOffset: number;
  length: number;
  private: boolean;
  sync: boolean;
  faultAround: boolean;
  /** Mapping may write the device (shared, writable). */
  writable: boolean;
}

interface Mapping extends MapRequest {
  readonly key: string;
  readonly client: Client;
  /**
   * What each page is. For a private mapping the states are exact: its pages are
   * anonymous copies in its own trapped region (never windows of the device), and
   * every first store to one traps, so Copy marks precisely the pages it owns.
   */
  readonly states: PageStates;
  dead: boolean;
}

interface Classified {
  allWritten: boolean;
  anyWritten: boolean;
  /** device offset of the first byte, when allWritten and contiguous */
  devStart: number;
  contiguous: boolean;
}

/** A fault that must be retried after the locks are dropped (e.g. to evict windows). */
class RetryAfterEvict extends Error {}

const roundUp = (x: number, a: number): number => Math.ceil(x / a) * a;

export class FaultPolicy {
  private readonly mappings = new Map<string, Mapping>();
  private readonly byInode = new Map<number, Set<Mapping>>();
  private readonly entryLocks = new KeyedMutex<string>('entry');
  /** Entry keys held right now (eviction skips those instead of waiting). */
  private readonly busy = new Set<string>();
  readonly stats = new FaultStats();
  /** Per file (inode id), each feeding the pool-wide `stats`. */
  private readonly perFile = new Map<number, { name: () => string; stats: FaultStats }>();
  private readonly log = logger('fault');
  private evicting = false;
  /** How long a SIGBUS for a failed fault stands before the page is taken back. */
  transientPoisonMs = 20;
  /** Test seam: throw from (or wait inside) a fault after its locks are taken. */
  inject: ((where: 'huge' | 'page', m: MapRequest) => void | Promise<void>) | null = null;

  constructor(private readonly pool: PoolInternals) {
    pool.setInvalidator((f, off, len) => this.invalidate(f, off, len));
  }

  // ---- mappings ----

  map(client: Client, req: MapRequest): void {
    const key = `${client.id}:${req.region}`;
    if (this.mappings.has(key)) throw daxError('EEXIST', `region ${req.region} is already mapped`);
    const m: Mapping = { ...req, key, client, states: new PageStates(), dead: false };
    this.mappings.set(key, m);
    let set = this.byInode.get(req.inode.id);
    if (!set) this.byInode.set(req.inode.id, (set = new Set()));
    set.add(m);
  }

  /** Forget a mapping (its region is already closed by its owner). */
  unmap(client: Client, region: number): void {
    const m = this.mappings.get(`${client.id}:${region}`);
    if (!m) return;
    this.forget(m);
  }

  /** Forget every mapping of a client (it went away). */
  dropClient(client: Client): void {
    for (const m of [...this.mappings.values()]) if (m.client === client) this.forget(m);
  }

  private forget(m: Mapping): void {
    m.dead = true;
    this.mappings.delete(m.key);
    this.byInode.get(m.inode.id)?.delete(m);
    m.client.budget.dropMapping(m.key);
    m.states.clear();
  }

  mappingsOf(inode: Inode): Mapping[] {
    return [...(this.byInode.get(inode.id) ?? [])];
  }

  snapshot(): FaultStatsSnapshot {
    let windows = 0;
    const seen = new Set<WindowBudget>();
    for (const m of this.mappings.values()) {
      if (!seen.has(m.client.budget)) {
        seen.add(m.client.budget);
        windows += m.client.budget.count;
      }
    }
    return this.stats.snapshot(windows);
  }

  // ---- faults ----

  /** Handle a batch of events of one client. Every event gets an answer, whatever happens. */
  handle(client: Client, events: FaultEvent[]): Promise<void> {
    return Promise.all(events.map((ev) => this.handleOne(client, ev))).then(() => undefined);
  }

  private async handleOne(client: Client, ev: FaultEvent): Promise<void> {
    const m = this.mappings.get(`${client.id}:${ev.region}`);
    if (!m || m.dead) {
      // A region unknown to us (unmapped meanwhile): SIGBUS, like a mapping that is gone.
      await this.answer(client, [{ op: Op.Poison, region: ev.region, offset: ev.offset, length: PAGE }]);
      return;
    }
    this.bump(m, 'faults');
    if (ev.flags & EV_WP) this.bump(m, 'writeProtect');
    if (ev.flags & EV_WRITE) this.bump(m, 'write'); else this.bump(m, 'read');
    for (let attempt = 0; ; attempt++) {
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
        this.bump(m, 'sigbus');
        this.log.warn({ err, region: ev.region, offset: ev.offset, file: m.inode.name }, 'fault answered with SIGBUS');
        await this.answer(client, [{ op: Op.Poison, region: ev.region, offset: ev.offset, length: PAGE }]).catch(() => {});
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
    this.fileStats(m).latency(Number(monotonicNow() - ev.timeNs) / 1000);
    if (m.client.budget.over) {
      // Evict in batches (1/64 of the budget at least), not one window per fault.
      const b = m.client.budget;
      this.evict(m.client, Math.max(b.count - b.limit, Math.ceil(b.limit / 64))).catch((err: unknown) => {
        this.log.warn({ err }, 'eviction of installed windows failed');
      });
    }
  }

  /** Takes range (shared, the 2 MiB chunk) → entry (the chunk), resolves, releases. */
  private async locked(m: Mapping, ev: FaultEvent): Promise<void> {
    const fileOff = m.fileOffset + ev.offset;
    const chunk = Math.floor(fileOff / HUGE);
    const range = await m.inode.rangeLock.acquireShared(chunk * HUGE, (chunk + 1) * HUGE);
    let entry: LockHandle | undefined;
    try {
      entry = await this.lockEntry(`${m.inode.id}:${chunk}`);
      await this.resolve(m, ev, fileOff);
    } finally {
      entry?.release();
      range.release();
    }
  }

  private fileStats(m: Mapping): FaultStats {
    let e = this.perFile.get(m.inode.id);
    if (!e) {
      const ino = m.inode;
      e = { name: () => ino.name, stats: new FaultStats(this.stats) };
      this.perFile.set(ino.id, e);
    }
    return e.stats;
  }

  private bump(m: Mapping, counter: CounterName, n = 1): void {
    this.fileStats(m).bump(counter, n);
  }

  /** Per-file fault statistics (files that took faults since the service started). */
  fileSnapshots(): { file: string; stats: FaultStatsSnapshot }[] {
    return [...this.perFile.values()].map((e) => ({ file: e.name(), stats: e.stats.snapshot(0) }));
  }

  private async lockEntry(key: string): Promise<LockHandle> {
    const h = await this.entryLocks.acquire(key);
    this.busy.add(key);
    const busy = this.busy;
    return {
      get held() { return h.held; },
      release() {
        busy.delete(key);
        h.release();
      },
    };
  }

  private async resolve(m: Mapping, ev: FaultEvent, fileOff: number): Promise<void> {
    const write = (ev.flags & EV_WRITE) !== 0;
    const wp = (ev.flags & EV_WP) !== 0;
    const page = ev.offset / PAGE;
    const st = m.states.get(page);
    const ino = m.inode;

    if (!ino.live || fileOff >= roundUp(ino.size, PAGE)) {
      // Beyond EOF, or the file is gone: SIGBUS, as the kernel does.
      this.bump(m, 'beyondEof');
      this.bump(m, 'sigbus');
      await this.answer(m.client, [{ op: Op.Poison, region: ev.region, offset: ev.offset, length: PAGE }]);
      m.states.set(page, page + 1, PageState.Poison);
      return;
    }
    // Already answered: a fault that was raised before the answer landed.
    if (st === PageState.Installed || (st === PageState.Copy && !wp) || ((st === PageState.Zero || st === PageState.Clean) && !write)) {
      this.bump(m, 'spurious');
      await this.answer(m.client, [{ op: Op.Wake, region: ev.region, offset: ev.offset, length: PAGE }]);
      return;
    }
    if (m.private) return this.resolvePrivate(m, ev, fileOff, write, st);
    if (!write) return this.resolveRead(m, ev, fileOff);
    return this.resolveSharedWrite(m, ev, fileOff);
  }

  /** The 2 MiB window around fileOff, if fault-around may answer it whole. */
  private hugeWindow(m: Mapping, fileOff: number): { fileStart: number; regionOff: number } | null {
    if (!m.faultAround) return null;
    const fileStart = Math.floor(fileOff / HUGE) * HUGE;
    const regionOff = fileStart - m.fileOffset;
    // Aligned in the mapping (the region is 2 MiB aligned), inside the mapping, and
    // wholly inside EOF.
    if (regionOff < 0 || regionOff % HUGE !== 0 || regionOff + HUGE > m.length) return null;
    if (fileStart + HUGE > m.inode.size) return null;
    return { fileStart, regionOff };
  }

  private classify(ino: Inode, start: number, end: number): Classified {
    const c: Classified = { allWritten: true, anyWritten: false, devStart: -1, contiguous: true };
    let expect = -1;
    for (let off = start; off < end;) {
      const x = this.pool.lookup(ino, off);
      const xEnd = Math.min(end, x.offset + x.length);
      if (x.state === 'written') {
        c.anyWritten = true;
        const dev = (x.deviceOffset as number) + (off - x.offset);
        if (off === start) c.devStart = dev;
        else if (dev !== expect) c.contiguous = false;
        expect = dev + (xEnd - off);
      } else {
        c.allWritten = false;
      }
      off = xEnd;
    }
    return c;
  }

  private countExtent(m: Mapping, state: 'hole' | 'unwritten' | 'written'): void {
    if (state === 'written') this.bump(m, 'written');
    else if (state === 'unwritten') this.bump(m, 'unwritten');
    else this.bump(m, 'hole');
  }

  private installSpec(m: Mapping, regionOff: number, length: number, devOff: number, forRead: boolean, adopt = false): AnswerSpec {
    let flags = A_POPULATE;
    if (m.writable) flags |= 1;
    if (adopt) flags |= A_ADOPT;
    return {
      op: Op.Install, flags, flags2: forRead ? A2_POPULATE_READ : 0,
      region: m.region, offset: regionOff, length, device: m.client.deviceId, devOffset: devOff,
    };
  }

  /** Read fault on a shared mapping: the device range if written, else the zero page. */
  private async resolveRead(m: Mapping, ev: FaultEvent, fileOff: number): Promise<void> {
    const win = this.hugeWindow(m, fileOff);
    if (win) {
      await this.inject?.('huge', m);
      const c = this.classify(m.inode, win.fileStart, win.fileStart + HUGE);
      const p0 = win.regionOff / PAGE;
      if (c.allWritten && c.contiguous && c.devStart % HUGE === 0) {
        this.bump(m, 'written');
        this.bump(m, 'pmd');
        await this.install(m, win.regionOff, HUGE, c.devStart, true);
        return;
      }
      if (!c.anyWritten && !m.states.any(p0, p0 + HUGE / PAGE, PageState.Installed)) {
        this.countExtent(m, this.pool.lookup(m.inode, fileOff).state);
        this.bump(m, 'pmd');
        if (await this.zero(m, win.regionOff, HUGE)) return;
        // Fell back: answer the faulting page alone, below.
      }
    }
    await this.inject?.('page', m);
    const x = this.pool.lookup(m.inode, fileOff);
    this.countExtent(m, x.state);
    this.bump(m, 'pte');
    if (x.state === 'written') {
      await this.install(m, ev.offset, PAGE, (x.deviceOffset as number) + (fileOff - x.offset), true);
    } else {
      await this.zero(m, ev.offset, PAGE);
    }
  }

  /**
   * A private mapping never maps the device: every page it has is an anonymous page
   * of its own trapped region. A read copies the file's bytes write-protected
   * (Clean) or maps the zero page (Zero); the first store to either traps and makes
   * the page the mapping's own (Copy). So the policy knows exactly which pages a
   * private mapping owns, and a revoke takes back the others without racing a store
   * — the kernel's copy-on-write of a device window could not be seen, nor stopped.
   * The price: a read copies the file's bytes into memory (the kernel would share the
   * page), and a page once read does not follow later stores made through a shared
   * mapping (file.write, punch, zero range and truncate are followed).
   */
  private async resolvePrivate(m: Mapping, ev: FaultEvent, fileOff: number, write: boolean, st: PageState): Promise<void> {
    const page = ev.offset / PAGE;
    if (write && (st === PageState.Zero || st === PageState.Clean || st === PageState.Copy)) {
      // The first store to a protected copy or zero page: it becomes the mapping's own.
      this.bump(m, 'copy');
      await this.answer(m.client, [{ op: Op.Unprotect, region: m.region, offset: ev.offset, length: PAGE }]);
      m.states.set(page, page + 1, PageState.Copy);
      return;
    }
    const win = write ? null : this.hugeWindow(m, fileOff);
    if (win && m.states.allNone(win.regionOff / PAGE, (win.regionOff + HUGE) / PAGE)) {
      await this.inject?.('huge', m);
      const c = this.classify(m.inode, win.fileStart, win.fileStart + HUGE);
      if (c.allWritten) {
        this.bump(m, 'written');
        this.bump(m, 'pmd');
        await this.copyFromFile(m, win.fileStart, HUGE, true);
        return;
      }
      if (!c.anyWritten) {
        this.countExtent(m, this.pool.lookup(m.inode, fileOff).state);
        this.bump(m, 'pmd');
        if (await this.zero(m, win.regionOff, HUGE)) return;
      }
    }
    await this.inject?.('page', m);
    const x = this.pool.lookup(m.inode, fileOff);
    this.countExtent(m, x.state);
    this.bump(m, 'pte');
    if (x.state === 'written') {
      if (write) this.bump(m, 'copy');
      await this.copyFromFile(m, fileOff, PAGE, !write);
    } else if (write) {
      // A store to a hole: a private zero-filled page, no block.
      this.bump(m, 'copy');
      await this.answer(m.client, [{ op: Op.Copy, region: m.region, offset: ev.offset, length: PAGE, payload: ZERO_PAGE }]);
      m.states.set(page, page + 1, PageState.Copy);
    } else {
      await this.zero(m, ev.offset, PAGE);
    }
  }

  /**
   * Copy the file's written bytes of [fileOff, +length) into a private mapping, one
   * answer per device run: write-protected (Clean) for a read, writable and its own
   * (Copy) for a write. Pages already present are skipped by the copy and keep their
   * state. Caller holds the chunk's locks, so the extents cannot change meanwhile.
   */
  private async copyFromFile(m: Mapping, fileOff: number, length: number, forRead: boolean): Promise<void> {
    const specs: AnswerSpec[] = [];
    for (let off = fileOff; off < fileOff + length;) {
      const x = this.pool.lookup(m.inode, off);
      const end = Math.min(fileOff + length, x.offset + x.length);
      if (x.state !== 'written') throw daxError('EIO', `copy of a range that is not written (${x.state}) at ${off}`);
      specs.push({
        op: Op.Copy, flags: A_FROM_DEVICE | (forRead ? A_WP : 0), region: m.region, offset: off - m.fileOffset,
        length: end - off, device: m.client.deviceId, devOffset: (x.deviceOffset as number) + (off - x.offset),
      });
      off = end;
    }
    const results = await this.answer(m.client, specs);
    for (let i = 0; i < specs.length; i++) {
      const r = results[i];
      if (r === ENXIO) return; // the client is gone
      if (r !== 0) throw daxError('EIO', `copy answer failed: ${r}`);
      const a = specs[i]!;
      m.states.setWhere(a.offset / PAGE, (a.offset + a.length) / PAGE, PageState.None, forRead ? PageState.Clean : PageState.Copy);
    }
  }

  /** Write fault on a shared mapping: the pool allocates/converts and zeroes, then we install. */
  private async resolveSharedWrite(m: Mapping, ev: FaultEvent, fileOff: number): Promise<void> {
    if (!m.writable) {
      this.bump(m, 'sigbus');
      await this.answer(m.client, [{ op: Op.Poison, region: m.region, offset: ev.offset, length: PAGE }]);
      return;
    }
    const win = this.hugeWindow(m, fileOff);
    if (win) {
      await this.inject?.('huge', m);
      const c = this.classify(m.inode, win.fileStart, win.fileStart + HUGE);
      this.countExtent(m, c.allWritten ? 'written' : this.pool.lookup(m.inode, fileOff).state);
      let exts;
      try {
        exts = c.allWritten && c.contiguous && !m.sync
          ? [{ offset: win.fileStart, length: HUGE, deviceOffset: c.devStart }]
          : await this.materialise(m, win.fileStart, HUGE, { sync: m.sync, preferAligned: true }, [win.regionOff, win.regionOff + HUGE]);
      } catch (err) {
        // Not enough space for the whole window: fall back to this page alone, as the
        // kernel falls back from a PMD fault to a PTE fault.
        if (!isDaxError(err, 'ENOSPC')) throw err;
        this.bump(m, 'fallback');
        exts = null;
      }
      if (exts === null) return this.resolveSharedWritePage(m, ev, fileOff);
      const single = exts.length === 1 && exts[0]!.length === HUGE && exts[0]!.deviceOffset % HUGE === 0;
      if (single) {
        this.bump(m, 'pmd');
        await this.install(m, win.regionOff, HUGE, exts[0]!.deviceOffset, false);
        return;
      }
      // Not one aligned run: install the faulting page only (the rest is written now
      // and will be installed on its own first touch).
      const e = exts.find((x) => x.offset <= fileOff && fileOff < x.offset + x.length)!;
      this.bump(m, 'pte');
      await this.install(m, ev.offset, PAGE, e.deviceOffset + (fileOff - e.offset), false);
      return;
    }
    return this.resolveSharedWritePage(m, ev, fileOff);
  }

  private async resolveSharedWritePage(m: Mapping, ev: FaultEvent, fileOff: number): Promise<void> {
    await this.inject?.('page', m);
    const x = this.pool.lookup(m.inode, fileOff);
    this.countExtent(m, x.state);
    this.bump(m, 'pte');
    let devOff: number;
    if (x.state === 'written' && !m.sync) {
      devOff = (x.deviceOffset as number) + (fileOff - x.offset);
    } else {
      const [e] = await this.materialise(m, fileOff, PAGE, { sync: m.sync }, [ev.offset, ev.offset + PAGE]);
      devOff = e!.deviceOffset;
    }
    await this.install(m, ev.offset, PAGE, devOff, false);
  }

  /**
   * ensureWritten, then take back the zero pages every mapping of the file holds
   * over the range: they stood for a hole or an unwritten block that is now a
   * written block, and would otherwise go on reading zeros (the kernel's DAX code
   * unmaps zero-page entries from all mappings when a block replaces them).
   * `skip`: a range of one mapping about to be installed over anyway.
   */
  private async materialise(m: Mapping, fileOff: number, length: number, opts: { sync: boolean; preferAligned?: boolean }, skip?: [number, number]) {
    const exts = await this.pool.ensureWritten(m.inode, fileOff, length, opts);
    await this.refreshZeros(m.inode, fileOff, fileOff + length, skip ? { m, lo: skip[0], hi: skip[1] } : undefined);
    return exts;
  }

  /**
   * Revoke Zero pages of every mapping of `ino` within file range [start, end), and
   * with `clean` (the file's bytes changed: file.write) the Clean copies of private
   * mappings too, over every page the range touches. Caller holds the entry lock(s).
   */
  private async refreshZeros(ino: Inode, start: number, end: number, skip?: { m: Mapping; lo: number; hi: number }, clean = false): Promise<void> {
    for (const o of this.mappingsOf(ino)) {
      const lo = Math.max(start, o.fileOffset);
      const hi = Math.min(end, o.fileOffset + o.length);
      if (hi <= lo) continue;
      const p0 = Math.floor((lo - o.fileOffset) / PAGE);
      const p1 = Math.ceil((hi - o.fileOffset) / PAGE);
      const stale = (st: PageState): boolean => st === PageState.Zero || (clean && st === PageState.Clean);
      for (const [a, b] of o.states.runsWhere(p0, p1, stale)) {
        let ra = a * PAGE;
        let rb = b * PAGE;
        if (skip && skip.m === o) {
          // The part about to be installed over needs no revoke.
          if (ra >= skip.lo && rb <= skip.hi) continue;
          if (ra < skip.lo && rb > skip.hi) {
            await this.revokeRange(o, ra, skip.lo - ra);
            ra = skip.hi;
          } else if (ra < skip.hi && rb > skip.hi) ra = skip.hi;
          else if (ra < skip.lo && rb > skip.lo) rb = skip.lo;
        }
        if (rb > ra) await this.revokeRange(o, ra, rb - ra);
      }
    }
  }

  /**
   * After file.write: blocks in the range may have turned from hole/unwritten to
   * written, and private mappings' copies of the old bytes are stale.
   */
  async written(ino: Inode, offset: number, length: number): Promise<void> {
    if (length <= 0 || this.mappingsOf(ino).length === 0) return;
    await withOperation('written', async () => {
      for (let chunk = Math.floor(offset / HUGE); chunk * HUGE < offset + length; chunk++) {
        const entry = await this.lockEntry(`${ino.id}:${chunk}`);
        try {
          await this.refreshZeros(ino, Math.max(offset, chunk * HUGE), Math.min(offset + length, (chunk + 1) * HUGE), undefined, true);
        } finally {
          entry.release();
        }
      }
    });
  }

  private async install(m: Mapping, regionOff: number, length: number, devOff: number, forRead: boolean, adopt = false): Promise<void> {
    const [r] = await this.answer(m.client, [this.installSpec(m, regionOff, length, devOff, forRead, adopt)]);
    if (r === ENOMEM) throw new RetryAfterEvict();
    if (r !== 0 && r !== ENXIO) throw daxError('EIO', `install answer failed: ${r}`);
    if (r === 0) {
      m.states.set(regionOff / PAGE, (regionOff + length) / PAGE, PageState.Installed);
      m.client.budget.add({ mapping: m.key, offset: regionOff, length });
    }
  }

  /**
   * The zero page, write-protected. A write that raced it is adopted into a block.
   * False if a multi-page window could not be answered whole (ENOENT: the range of
   * the region is split into several mappings there); the caller falls back to the
   * faulting page.
   */
  private async zero(m: Mapping, regionOff: number, length: number): Promise<boolean> {
    this.bump(m, 'zeroPage');
    const [r] = await this.answer(m.client, [{ op: Op.Zero, flags: A_WP, region: m.region, offset: regionOff, length }]);
    if (r === ENOENT && length > PAGE) {
      this.bump(m, 'fallback');
      return false;
    }
    if (r === RESULT_RACED) {
      this.bump(m, 'raced');
      if (m.private) {
        // The racing write made a private page: exactly a private copy. (The agent
        // cannot say which pages of a window raced; the others are zero pages that
        // this mapping now treats as its own, which only costs their revocation.)
        m.states.set(regionOff / PAGE, (regionOff + length) / PAGE, PageState.Copy);
        return true;
      }
      // Zeros plus that write is the right content for the hole: make it a block.
      const fileOff = m.fileOffset + regionOff;
      const exts = await this.materialise(m, fileOff, length, { sync: m.sync }, [regionOff, regionOff + length]);
      for (const e of exts) {
        await this.install(m, e.offset - m.fileOffset, e.length, e.deviceOffset, false, true);
      }
      return true;
    }
    if (r !== 0 && r !== ENXIO) throw daxError('EIO', `zero answer failed: ${r}`);
    if (r === 0) m.states.setWhere(regionOff / PAGE, (regionOff + length) / PAGE, PageState.None, PageState.Zero);
    return true;
  }

  private async answer(client: Client, specs: AnswerSpec[]): Promise<number[]> {
    return client.run(specs);
  }

  /** Take back a page poisoned by a failed fault, unless something else answered it since. */
  private async recover(m: Mapping, regionOff: number): Promise<void> {
    if (m.dead) return;
    await withOperation('recover', async () => {
      const chunk = Math.floor((m.fileOffset + regionOff) / HUGE);
      const range = await m.inode.rangeLock.acquireShared(chunk * HUGE, (chunk + 1) * HUGE);
      let entry: LockHandle | undefined;
      try {
        entry = await this.lockEntry(`${m.inode.id}:${chunk}`);
        const page = regionOff / PAGE;
        if (m.dead || m.states.get(page) !== PageState.Poison) return;
        if (m.fileOffset + regionOff >= roundUp(m.inode.size, PAGE)) return; // beyond EOF: stays poisoned
        await this.revokeRange(m, regionOff, PAGE);
        this.bump(m, 'recovered');
      } finally {
        entry?.release();
        range.release();
      }
    }).catch((err: unknown) => this.log.warn({ err }, 'could not take back a poisoned page'));
  }

  // ---- eviction ----

  /**
   * Revoke at least `n` of the client's installed windows, oldest first, a whole
   * 2 MiB file chunk of a mapping at a time: the chunk of the least recently
   * installed window goes with every window of it. One revoke (one mremap, one TLB
   * shootdown, one REMAP event) then takes back up to 512 windows, where a window at
   * a time cost as much as a fault each. Each chunk is taken with its own locks
   * (range shared → entry), skipped if they are busy; never called with locks held.
   */
  async evict(client: Client, n: number): Promise<void> {
    if (this.evicting || n <= 0) return;
    this.evicting = true;
    try {
      await withOperation('evict', async () => {
        const start = client.budget.count;
        // Only shared mappings have windows (a private mapping's pages are its own
        // anonymous memory), so eviction never touches a private mapping.
        for (const w of client.budget.oldest(n)) {
          if (start - client.budget.count >= n) return;
          if (!client.budget.has(w.mapping, w.offset)) continue; // went with an earlier chunk
          await this.evictChunk(client, w);
        }
      });
    } finally {
      this.evicting = false;
    }
  }

  private async evictChunk(client: Client, w: { mapping: string; offset: number; length: number }): Promise<void> {
    const m = this.mappings.get(w.mapping);
    if (!m || m.dead) {
      client.budget.dropRange(w.mapping, w.offset, w.length);
      return;
    }
    const chunk = Math.floor((m.fileOffset + w.offset) / HUGE);
    const key = `${m.inode.id}:${chunk}`;
    if (this.busy.has(key)) return;
    const range = m.inode.rangeLock.tryAcquire(chunk * HUGE, (chunk + 1) * HUGE, 'shared');
    if (!range) return;
    let entry: LockHandle | undefined;
    try {
      entry = await this.lockEntry(key);
      // The chunk's part of the mapping (a mapping at an offset that is not 2 MiB
      // aligned has a partial chunk at each end).
      const lo = Math.max(0, chunk * HUGE - m.fileOffset);
      const hi = Math.min(m.length, (chunk + 1) * HUGE - m.fileOffset);
      const [r] = await this.answer(client, [{ op: Op.Revoke, region: m.region, offset: lo, length: hi - lo }]);
      if (r === 0 || r === ENXIO) {
        const before = client.budget.count;
        client.budget.dropRange(w.mapping, lo, hi - lo);
        this.bump(m, 'evictions', before - client.budget.count);
        m.states.set(lo / PAGE, hi / PAGE, PageState.None);
      }
    } finally {
      entry?.release();
      range.release();
    }
  }

  // ---- invalidation: truncate, punch hole, zero range, unlink, rename over ----

  /**
   * The pool calls this with the file's range lock held exclusive over
   * [offset, offset+length), before it frees or zeroes any block. Every page of the
   * range is revoked in every mapping (waiting for each client), so no mapping can
   * reach a block once it is freed. A length to the end means truncate, unlink or
   * rename: private copies go too. A bounded range means punch or zero range: as in
   * Linux, private copy-on-write pages stay.
   */
  async invalidate(ino: Inode, offset: number, length: number): Promise<void> {
    const toEnd = offset + length >= RANGE_END;
    // Truncate keeps the page that holds the new EOF; punch and zero revoke whole
    // pages only (partial pages are zeroed in place, in the same block).
    const start = roundUp(offset, PAGE);
    const end = toEnd ? RANGE_END : Math.floor((offset + length) / PAGE) * PAGE;
    // A private mapping's copies of the file's bytes (Clean, Zero) are taken back over
    // every page the operation touches, partial ones included: they hold bytes the
    // file no longer has. Its own pages (Copy) stay, except wholly past a new EOF.
    const outStart = Math.floor(offset / PAGE) * PAGE;
    const outEnd = toEnd ? RANGE_END : roundUp(offset + length, PAGE);
    const work: Promise<void>[] = [];
    for (const m of this.mappingsOf(ino)) {
      if (m.private) {
        work.push(this.revokePrivate(m, outStart, outEnd, toEnd ? start : RANGE_END));
        continue;
      }
      if (end <= start) continue;
      const lo = Math.max(start, m.fileOffset);
      const hi = Math.min(end, m.fileOffset + m.length);
      if (hi <= lo) continue;
      const rlo = lo - m.fileOffset;
      const rhi = hi - m.fileOffset;
      if (m.states.allNone(rlo / PAGE, rhi / PAGE)) continue;
      work.push(this.revokeRange(m, rlo, rhi - rlo));
    }
    await Promise.all(work);
  }

  /**
   * Take back a private mapping's pages over file range [start, end): every page that
   * is not its own, and its own pages too from file offset `ownFrom` on. Each run of
   * such pages is revoked whole. A store racing this cannot be lost: a first store to
   * a protected page traps and waits for our locks, and own pages are not touched.
   */
  private async revokePrivate(m: Mapping, start: number, end: number, ownFrom: number): Promise<void> {
    const lo = Math.max(start, m.fileOffset);
    const hi = Math.min(end, m.fileOffset + m.length);
    if (hi <= lo) return;
    const p0 = (lo - m.fileOffset) / PAGE;
    const p1 = Math.ceil((hi - m.fileOffset) / PAGE);
    const ownFromPage = Math.ceil((ownFrom - m.fileOffset) / PAGE);
    const runs = m.states.runsWhere(p0, p1, (st, p) => st !== PageState.None && (st !== PageState.Copy || p >= ownFromPage));
    await Promise.all(runs.map(([a, b]) => this.revokeRange(m, a * PAGE, (b - a) * PAGE)));
  }

  private async revokeRange(m: Mapping, regionOff: number, length: number): Promise<void> {
    this.bump(m, 'revokes');
    const [r] = await this.answer(m.client, [{ op: Op.Revoke, region: m.region, offset: regionOff, length }]);
    if (r !== 0 && r !== ENXIO) {
      // The pages could not be taken back: the blocks must not be freed under them.
      throw daxError('EIO', `revoke of [${regionOff}, +${length}) in a mapping of '${m.inode.name}' failed (${r})`);
    }
    m.states.set(regionOff / PAGE, (regionOff + length) / PAGE, PageState.None);
    m.client.budget.dropRange(m.key, regionOff, length);
  }

  /**
   * The file grew (truncate up, fallocate, an extending write): pages poisoned as
   * beyond EOF that are now inside it are taken back, so the next touch faults.
   */
  async grown(ino: Inode): Promise<void> {
    const eof = roundUp(ino.size, PAGE);
    const work: Promise<void>[] = [];
    for (const m of this.mappingsOf(ino)) {
      if (m.states.poisoned === 0) continue;
      const hi = Math.min(m.length, eof - m.fileOffset);
      for (const [a, b] of m.states.runs(0, Math.max(0, hi / PAGE), PageState.Poison)) {
        work.push(this.revokeRange(m, a * PAGE, (b - a) * PAGE));
      }
    }
    await Promise.all(work);
  }

  /** Revoke everything of a mapping (pool closing with mappings in other threads). */
  async revokeAll(m: Mapping): Promise<void> {
    if (!m.states.allNone(0, m.length / PAGE)) await this.revokeRange(m, 0, m.length);
  }

  allMappings(): Mapping[] {
    return [...this.mappings.values()];
  }

  /** Kill a mapping: every page revoked and later faults get SIGBUS (the pool is closing). */
  async kill(m: Mapping): Promise<void> {
    await this.revokeAll(m).catch(() => {});
    this.forget(m);
  }
}

const ZERO_PAGE = new Uint8Array(PAGE);
