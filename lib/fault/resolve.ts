// What a fault becomes (docs/fault-policy.md, "What a fault becomes"): the zero page
// for a hole, the device range for written data, a block allocated and zeroed for a
// shared write, a copy for a private mapping, or SIGBUS. Called with the fault's
// range lock (shared, its 2 MiB chunk) and entry lock held.
import { daxError, isDaxError } from '../errors';
import {
  Op, EV_WP, EV_WRITE, RESULT_RACED,
  A_ADOPT, A_FROM_DEVICE, A_POPULATE, A_WP, A_WRITABLE, A2_POPULATE_READ,
  type AnswerSpec, type FaultEvent,
} from '../native/frames';
import type { Inode } from '../pool/internal';
import { ENOENT, ENOMEM, ENXIO, RetryAfterEvict, WRITE_STREAMS, mappedEof, type FaultContext, type MapRequest, type Mapping } from './context';
import type { Revoker } from './revoke';
import { HUGE, PAGE, PageState } from './states';

interface Classified {
  allWritten: boolean;
  anyWritten: boolean;
  /** device offset of the first byte, when allWritten and contiguous */
  devStart: number;
  contiguous: boolean;
}

const ZERO_PAGE = new Uint8Array(PAGE);

/**
 * How far past a stream's end a write fault may start and still continue it: the
 * very next page. Any slack lets random writes pass for sequential ones (8 streams
 * × 64 KiB of slack over 1 GiB took a 2 MiB window every ~2,000 random faults).
 */
const SEQ_GAP = PAGE;
/**
 * A sequential write's 2 MiB window in more pieces than this (blocks of the chunk
 * placed before, elsewhere) installs only the faulting page: each piece is an install,
 * a VMA of the window budget.
 */
const MAX_WINDOW_PIECES = 8;

export class Resolver {
  /** Test seam: throw from (or wait inside) a fault after its locks are taken. */
  inject: ((where: 'huge' | 'page', m: MapRequest) => void | Promise<void>) | null = null;
  /**
   * Told of each shared write fault it allocated for: `sparse` for a 4 KiB block on a
   * hole that no sequential stream continues (or with fault-around off), the reserve's
   * cue (reserve.ts); not for a 2 MiB window.
   */
  onSparseWrite: ((m: Mapping, sparse: boolean) => void) | null = null;
  /**
   * Told when a write fault that continued a sequential stream was answered with the
   * whole 2 MiB window at `fileStart`: fault-ahead's cue (ahead.ts).
   */
  onSequentialWindow: ((m: Mapping, fileStart: number) => void) | null = null;
  /** Whether sync hole faults may take blocks from the pool's stock (off with the reserves: DAXMAP_RESERVE=off). */
  useStock: () => boolean = () => true;

  constructor(private readonly ctx: FaultContext, private readonly revoker: Revoker) {}

  async resolve(m: Mapping, ev: FaultEvent, fileOff: number): Promise<void> {
    const write = (ev.flags & EV_WRITE) !== 0;
    const wp = (ev.flags & EV_WP) !== 0;
    const page = ev.offset / PAGE;
    const st = m.states.get(page);
    const ino = m.inode;

    if (!ino.live || fileOff >= mappedEof(m, this.ctx.pool.storage.align)) {
      // Beyond EOF, or the file is gone: SIGBUS, as the kernel does.
      this.ctx.bump(m, 'beyondEof');
      this.ctx.bump(m, 'sigbus');
      await this.ctx.answer(m.client, [{ op: Op.Poison, region: ev.region, offset: ev.offset, length: PAGE }]);
      m.states.set(page, page + 1, PageState.Poison);
      return;
    }
    // Already answered: a fault that was raised before the answer landed.
    if (st === PageState.Installed || (st === PageState.Copy && !wp) || ((st === PageState.Zero || st === PageState.Clean) && !write)) {
      this.ctx.bump(m, 'spurious');
      await this.ctx.answer(m.client, [{ op: Op.Wake, region: ev.region, offset: ev.offset, length: PAGE }]);
      return;
    }
    if (m.private) return this.resolvePrivate(m, ev, fileOff, write, st);
    if (!write) return this.resolveRead(m, ev, fileOff);
    return this.resolveSharedWrite(m, ev, fileOff);
  }

  /** The 2 MiB window around fileOff, if fault-around may answer it whole. */
  private hugeWindow(m: Mapping, fileOff: number): { fileStart: number; regionOff: number } | null {
    // A 2 MiB-granular device maps nothing smaller: a shared fault takes its window
    // whatever faultAround says (docs/pool.md, "2 MiB-granular devices").
    if (!m.faultAround && (m.private || !this.granular())) return null;
    const fileStart = Math.floor(fileOff / HUGE) * HUGE;
    const regionOff = fileStart - m.fileOffset;
    // Aligned in the mapping (the region is 2 MiB aligned), inside the mapping, and
    // wholly inside EOF.
    if (regionOff < 0 || regionOff % HUGE !== 0 || regionOff + HUGE > m.length) return null;
    // On a 2 MiB-granular device the window holding EOF is mapped whole too.
    if (fileStart + HUGE > m.inode.size && !(fileStart < m.inode.size && this.unitEof(m))) return null;
    return { fileStart, regionOff };
  }

  private granular(): boolean {
    return (this.ctx.pool.storage.align ?? PAGE) > PAGE;
  }

  /**
   * Whether the mapping maps the EOF unit of a 2 MiB-granular device whole: a shared
   * mapping there (the pool keeps that unit written whole; its bytes past EOF read as
   * zeros and are not part of the file, as the kernel's DAX treats the last page).
   */
  private unitEof(m: Mapping): boolean {
    return !m.private && this.granular();
  }


  private classify(ino: Inode, start: number, end: number): Classified {
    const c: Classified = { allWritten: true, anyWritten: false, devStart: -1, contiguous: true };
    let expect = -1;
    for (let off = start; off < end;) {
      const x = this.ctx.pool.lookup(ino, off);
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
    if (state === 'written') this.ctx.bump(m, 'written');
    else if (state === 'unwritten') this.ctx.bump(m, 'unwritten');
    else this.ctx.bump(m, 'hole');
  }

  private installSpec(m: Mapping, regionOff: number, length: number, devOff: number, forRead: boolean, adopt = false): AnswerSpec {
    let flags = A_POPULATE;
    if (m.writable) flags |= A_WRITABLE;
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
        this.ctx.bump(m, 'written');
        this.ctx.bump(m, 'pmd');
        await this.install(m, win.regionOff, HUGE, c.devStart, true);
        return;
      }
      if (!c.anyWritten && !m.states.any(p0, p0 + HUGE / PAGE, PageState.Installed)) {
        if (await this.zeroWindow(m, win.regionOff, fileOff)) return;
        // Fell back: answer the faulting page alone, below.
      } else if (this.granular()) {
        // Written in part: the rest of the window is made written (zeros) so the
        // window maps whole, as a 2 MiB-granular device maps nothing smaller.
        const exts = await this.materialise(m, win.fileStart, HUGE, { sync: false, preferAligned: true }, [win.regionOff, win.regionOff + HUGE]);
        if (exts.length === 1 && exts[0]!.deviceOffset % HUGE === 0) {
          this.ctx.bump(m, 'written');
          this.ctx.bump(m, 'pmd');
          await this.install(m, win.regionOff, HUGE, exts[0]!.deviceOffset, true);
          return;
        }
      }
    }
    await this.inject?.('page', m);
    const x = this.ctx.pool.lookup(m.inode, fileOff);
    this.countExtent(m, x.state);
    this.ctx.bump(m, 'pte');
    if (x.state === 'written') {
      await this.install(m, ev.offset, PAGE, (x.deviceOffset as number) + (fileOff - x.offset), true);
    } else {
      await this.zero(m, ev.offset, PAGE);
    }
  }

  /** A read of a hole or unwritten chunk with fault-around: its 2 MiB of zero pages; false if it fell back. */
  private async zeroWindow(m: Mapping, regionOff: number, fileOff: number): Promise<boolean> {
    this.countExtent(m, this.ctx.pool.lookup(m.inode, fileOff).state);
    this.ctx.bump(m, 'pmd');
    return this.zero(m, regionOff, HUGE);
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
      this.ctx.bump(m, 'copy');
      await this.ctx.answer(m.client, [{ op: Op.Unprotect, region: m.region, offset: ev.offset, length: PAGE }]);
      m.states.set(page, page + 1, PageState.Copy);
      return;
    }
    const win = write ? null : this.hugeWindow(m, fileOff);
    if (win && m.states.allNone(win.regionOff / PAGE, (win.regionOff + HUGE) / PAGE)) {
      await this.inject?.('huge', m);
      const c = this.classify(m.inode, win.fileStart, win.fileStart + HUGE);
      if (c.allWritten) {
        this.ctx.bump(m, 'written');
        this.ctx.bump(m, 'pmd');
        await this.copyFromFile(m, win.fileStart, HUGE, true);
        return;
      }
      if (!c.anyWritten && (await this.zeroWindow(m, win.regionOff, fileOff))) return;
    }
    await this.inject?.('page', m);
    const x = this.ctx.pool.lookup(m.inode, fileOff);
    this.countExtent(m, x.state);
    this.ctx.bump(m, 'pte');
    if (x.state === 'written') {
      if (write) this.ctx.bump(m, 'copy');
      await this.copyFromFile(m, fileOff, PAGE, !write);
    } else if (write) {
      // A store to a hole: a private zero-filled page, no block.
      this.ctx.bump(m, 'copy');
      await this.ctx.answer(m.client, [{ op: Op.Copy, region: m.region, offset: ev.offset, length: PAGE, payload: ZERO_PAGE }]);
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
      const x = this.ctx.pool.lookup(m.inode, off);
      const end = Math.min(fileOff + length, x.offset + x.length);
      if (x.state !== 'written') throw daxError('EIO', `copy of a range that is not written (${x.state}) at ${off}`);
      specs.push({
        op: Op.Copy, flags: A_FROM_DEVICE | (forRead ? A_WP : 0), region: m.region, offset: off - m.fileOffset,
        length: end - off, device: m.client.deviceId, devOffset: (x.deviceOffset as number) + (off - x.offset),
      });
      off = end;
    }
    const results = await this.ctx.answer(m.client, specs);
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
      this.ctx.bump(m, 'sigbus');
      await this.ctx.answer(m.client, [{ op: Op.Poison, region: m.region, offset: ev.offset, length: PAGE }]);
      return;
    }
    const win = this.hugeWindow(m, fileOff);
    if (win) {
      await this.inject?.('huge', m);
      const c = this.classify(m.inode, win.fileStart, win.fileStart + HUGE);
      // A window that would allocate is taken whole only for a sequential writer:
      // sparse random writes get 4 KiB blocks, not 2 MiB each (the kernel falls back
      // from PMD to PTE faults; we choose up front). On a tmpfs mounted with huge
      // pages every writer's window is taken whole, as the kernel's own first touch
      // there takes a 2 MiB folio (docs/native.md, "True 2 MiB mappings").
      const whole = this.granular() || this.ctx.pool.storage.huge === true;
      const continued = this.continues(m, fileOff);
      if (!c.allWritten && !whole && !this.sequential(m, fileOff)) return this.resolveSharedWritePage(m, ev, fileOff);
      this.countExtent(m, c.allWritten ? 'written' : this.ctx.pool.lookup(m.inode, fileOff).state);
      let exts;
      try {
        exts = c.allWritten && c.contiguous && !m.sync
          ? [{ offset: win.fileStart, length: HUGE, deviceOffset: c.devStart }]
          : await this.materialise(m, win.fileStart, HUGE, { sync: m.sync, preferAligned: true, resident: true }, [win.regionOff, win.regionOff + HUGE]);
      } catch (err) {
        // Not enough space for the whole window: fall back to this page alone, as the
        // kernel falls back from a PMD fault to a PTE fault. A 2 MiB-granular device
        // has no such fallback (it maps nothing smaller): the fault ends in SIGBUS.
        if (!isDaxError(err, 'ENOSPC') || this.granular()) throw err;
        this.ctx.bump(m, 'fallback');
        exts = null;
      }
      if (exts === null) return this.resolveSharedWritePage(m, ev, fileOff);
      const single = exts.length === 1 && exts[0]!.length === HUGE && exts[0]!.deviceOffset % HUGE === 0;
      this.onSparseWrite?.(m, false);
      if (single) {
        this.ctx.bump(m, 'pmd');
        await this.install(m, win.regionOff, HUGE, exts[0]!.deviceOffset, false);
        this.wrote(m, fileOff, win.fileStart + HUGE);
        if (continued && !c.allWritten) this.onSequentialWindow?.(m, win.fileStart);
        return;
      }
      // Not one aligned run (a block of the chunk was placed before, elsewhere: a
      // writer that started inside the chunk, whose first 4 KiB block went to a partly
      // used group): install the window's pages this mapping has not installed, an
      // extent at a time, the faulting page's first (it wakes the writer). Page by
      // page, each of the rest would fault on its own. Only the faulting page when
      // the window is in many pieces: each install is a VMA of the budget.
      this.ctx.bump(m, 'pte');
      const e = exts.find((x) => x.offset <= fileOff && fileOff < x.offset + x.length)!;
      if (exts.length > MAX_WINDOW_PIECES) {
        await this.install(m, ev.offset, PAGE, e.deviceOffset + (fileOff - e.offset), false);
        this.wrote(m, fileOff, fileOff + PAGE);
        return;
      }
      // pages not answered, or answered with the zero page; and the faulting page
      const page = ev.offset / PAGE;
      const open = (p: number): boolean => p === page || m.states.get(p) === PageState.None || m.states.get(p) === PageState.Zero;
      for (const x of [e, ...exts.filter((y) => y !== e)]) {
        const lo = (Math.max(x.offset, win.fileStart) - m.fileOffset) / PAGE;
        const hi = (Math.min(x.offset + x.length, win.fileStart + HUGE) - m.fileOffset) / PAGE;
        for (let p = lo; p < hi;) {
          if (!open(p)) { p++; continue; }
          let q = p + 1;
          while (q < hi && open(q)) q++;
          if (!(await this.install(m, p * PAGE, (q - p) * PAGE, x.deviceOffset + (m.fileOffset + p * PAGE - x.offset), false))) return; // the mapping is gone
          p = q;
        }
      }
      this.wrote(m, fileOff, win.fileStart + HUGE);
      if (continued && !c.allWritten) this.onSequentialWindow?.(m, win.fileStart);
      return;
    }
    return this.resolveSharedWritePage(m, ev, fileOff);
  }

  /**
   * Would this fault be a sparse write on a hole (onSparseWrite(m, true))? Read
   * without the locks, as a hint for the policy to grant the mapping's reserve before
   * resolving the fault (policy.ts): the grant decides again, with the file's range
   * lock held exclusive, and the fault is resolved after it as any other.
   */
  sparseHoleWrite(m: Mapping, ev: FaultEvent, fileOff: number): boolean {
    if ((ev.flags & EV_WRITE) === 0 || m.private || m.sync || !m.writable || !m.inode.live || fileOff >= m.inode.size) return false;
    const st = m.states.get(ev.offset / PAGE);
    if (st !== PageState.None && st !== PageState.Zero) return false;
    if (this.granular() || this.ctx.pool.storage.huge === true) return false;
    if (this.ctx.pool.lookup(m.inode, fileOff).state !== 'hole') return false;
    return !m.faultAround || !this.sequential(m, fileOff);
  }

  /**
   * Does a write fault at fileOff continue a sequential stream of this mapping (it
   * starts where a recent write fault ended)? The first write
   * fault of a mapping counts as one when it is at a chunk's start, as a writer
   * going through the file from its beginning is.
   */
  private sequential(m: Mapping, fileOff: number): boolean {
    if (m.writeStreams.length === 0) return fileOff % HUGE === 0;
    return this.continues(m, fileOff);
  }

  /** Does a write at fileOff start where a recent write fault of the mapping ended? */
  private continues(m: Mapping, fileOff: number): boolean {
    return m.writeStreams.some((end) => fileOff >= end && fileOff < end + SEQ_GAP);
  }

  /**
   * Fault-ahead (ahead.ts): allocate, zero, record and install the 2 MiB window at
   * `fileStart` of a shared mapping before its writer touches it, exactly as its write
   * fault would (ensureWritten, refreshZeros, install), and extend the writer's stream
   * past it. Only for a shared, writable, non-sync mapping on a 4 KiB-granular
   * device, and a chunk that is one hole, aligned in the mapping, wholly inside it and
   * inside EOF, none of whose pages the mapping has answered. 'installed', 'skip'
   * (not such a window: look further) or 'stop' (the file is gone or ends, or the
   * window could not be installed whole). Caller holds the chunk's range (shared) and
   * entry locks, as a fault does.
   */
  async ahead(m: Mapping, fileStart: number): Promise<'installed' | 'skip' | 'stop'> {
    const ino = m.inode;
    const regionOff = fileStart - m.fileOffset;
    if (m.dead || !ino.live || regionOff < 0 || regionOff + HUGE > m.length || fileStart + HUGE > ino.size) return 'stop';
    // A sync mapping promises the record is durable before the first store reaches
    // the block: that happens in its fault, so nothing is installed ahead of it.
    if (regionOff % HUGE !== 0 || this.granular() || m.sync || m.private || !m.writable) return 'stop';
    if (!m.states.allNone(regionOff / PAGE, (regionOff + HUGE) / PAGE)) return 'skip';
    const x = this.ctx.pool.lookup(ino, fileStart);
    if (x.state !== 'hole' || x.offset + x.length < fileStart + HUGE) return 'skip';
    const exts = await this.materialise(m, fileStart, HUGE, { sync: false, preferAligned: true, resident: true }, [regionOff, regionOff + HUGE]);
    this.wrote(m, fileStart, fileStart + HUGE);
    if (exts.length !== 1 || exts[0]!.length !== HUGE || exts[0]!.deviceOffset % HUGE !== 0) return 'stop'; // written; its pages fault as usual
    if (!(await this.install(m, regionOff, HUGE, exts[0]!.deviceOffset, false))) return 'stop';
    this.ctx.bump(m, 'ahead');
    return 'installed';
  }

  /** A write fault answered [fileOff, end): extend its stream, or start one. */
  private wrote(m: Mapping, fileOff: number, end: number): void {
    const s = m.writeStreams;
    const i = s.findIndex((e) => fileOff >= e && fileOff < e + SEQ_GAP);
    if (i >= 0) s.splice(i, 1);
    else if (s.length >= WRITE_STREAMS) s.shift();
    s.push(end);
  }

  private async resolveSharedWritePage(m: Mapping, ev: FaultEvent, fileOff: number): Promise<void> {
    await this.inject?.('page', m);
    const x = this.ctx.pool.lookup(m.inode, fileOff);
    this.countExtent(m, x.state);
    this.ctx.bump(m, 'pte');
    let devOff: number;
    if (x.state === 'written' && !m.sync) {
      devOff = (x.deviceOffset as number) + (fileOff - x.offset);
    } else {
      const skip: [number, number] = [ev.offset, ev.offset + PAGE];
      const fromStock = m.sync && x.state === 'hole' ? await this.adoptSync(m, fileOff, skip) : null;
      devOff = fromStock ?? (await this.materialise(m, fileOff, PAGE, { sync: m.sync }, skip))[0]!.deviceOffset;
    }
    const sparse = x.state === 'hole' && (!m.faultAround || !this.sequential(m, fileOff));
    await this.install(m, ev.offset, PAGE, devOff, false);
    this.wrote(m, fileOff, fileOff + PAGE);
    this.onSparseWrite?.(m, sparse);
  }

  /**
   * ensureWritten, then take back the zero pages every mapping of the file holds
   * over the range: they stood for a hole or an unwritten block that is now a
   * written block, and would otherwise go on reading zeros (the kernel's DAX code
   * unmaps zero-page entries from all mappings when a block replaces them).
   * `skip`: a range of one mapping about to be installed over anyway.
   */
  private async materialise(m: Mapping, fileOff: number, length: number, opts: { sync: boolean; preferAligned?: boolean; resident?: boolean }, skip?: [number, number]) {
    const exts = await this.ctx.pool.ensureWritten(m.inode, fileOff, length, opts);
    await this.revoker.refreshZeros(m.inode, fileOff, fileOff + length, skip ? { m, lo: skip[0], hi: skip[1] } : undefined);
    return exts;
  }

  /**
   * A sync write fault on a hole takes a pre-zeroed block from the pool's stock
   * (its zeros already durable) and adopts it with `sync`: recorded written and the
   * log durable (a group commit shared with concurrent sync faults) before it
   * returns. No zeroing and no block persist on the fault path. Then the zero
   * pages other mappings hold there are taken back, as materialise does. The block's
   * device offset, or null (the caller falls back to ensureWritten) when the pool has
   * no 4 KiB reserve (a 2 MiB-granular device), its stock is empty, none is to be
   * had, the reserves are off (DAXMAP_RESERVE=off, configure), or the adoption was
   * refused (the block went back to the reserve).
   */
  private async adoptSync(m: Mapping, fileOff: number, skip: [number, number]): Promise<number | null> {
    const pool = this.ctx.pool;
    if (!this.useStock()) return null;
    const stock = pool.reserveStats();
    if (!stock.enabled) return null;
    if (stock.stock === 0) {
      // an empty stock would be zeroed on this path (today's path costs no more): it
      // is refilled in the background for the faults to come
      pool.refillReserve();
      return null;
    }
    let dev: number | undefined;
    try {
      [dev] = await pool.takeReserve(1);
    } catch (err) {
      if (isDaxError(err, 'ENOSPC') || isDaxError(err, 'EAGAIN')) return null;
      throw err;
    }
    if (dev === undefined) return null;
    const r = await pool.adoptReserved(m.inode, [{ fb: fileOff / PAGE, dev }], { sync: true });
    if (r.adopted.length !== 1) return null;
    this.ctx.bump(m, 'stock');
    await this.revoker.refreshZeros(m.inode, fileOff, fileOff + PAGE, { m, lo: skip[0], hi: skip[1] });
    return dev;
  }

  /** Install a device range (a window of the budget); false if the client is gone (ENXIO). */
  private async install(m: Mapping, regionOff: number, length: number, devOff: number, forRead: boolean, adopt = false): Promise<boolean> {
    const [r] = await this.ctx.answer(m.client, [this.installSpec(m, regionOff, length, devOff, forRead, adopt)]);
    if (r === ENOMEM) throw new RetryAfterEvict();
    if (r !== 0 && r !== ENXIO) throw daxError('EIO', `install answer failed: ${r}`);
    if (r !== 0) return false;
    m.states.set(regionOff / PAGE, (regionOff + length) / PAGE, PageState.Installed);
    m.client.budget.add({ mapping: m.key, offset: regionOff, length });
    return true;
  }

  /**
   * The zero page, write-protected. A write that raced it is adopted into a block.
   * False if a multi-page window could not be answered whole (ENOENT: the range of
   * the region is split into several mappings there); the caller falls back to the
   * faulting page.
   */
  private async zero(m: Mapping, regionOff: number, length: number): Promise<boolean> {
    this.ctx.bump(m, 'zeroPage');
    const [r] = await this.ctx.answer(m.client, [{ op: Op.Zero, flags: A_WP, region: m.region, offset: regionOff, length }]);
    if (r === ENOENT && length > PAGE) {
      this.ctx.bump(m, 'fallback');
      return false;
    }
    if (r === RESULT_RACED) {
      this.ctx.bump(m, 'raced');
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

}
