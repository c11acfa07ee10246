// Taking pages back (docs/fault-policy.md, "Revocation"): before the pool frees or
// zeroes blocks (truncate, punch hole, zero range, unlink, rename over), when a
// file grows over poisoned pages, when a hole becomes data (the zero pages of every
// mapping), and when file.write changes bytes private mappings copied.
import { daxError } from '../errors';
import { RANGE_END, withOperation } from '../lock/index';
import type { Inode } from '../pool/internal';
import { ENXIO, mappedEof, roundUp, type FaultContext, type Mapping } from './context';
import { revokeAnswers } from './decide';
import { HUGE, PAGE, PageState } from './states';

export class Revoker {
  constructor(private readonly ctx: FaultContext) {}

  /**
   * Revoke Zero pages of every mapping of `ino` within file range [start, end), and
   * with `clean` (the file's bytes changed: file.write) the Clean copies of private
   * mappings too, over every page the range touches. Caller holds the entry lock(s).
   */
  async refreshZeros(ino: Inode, start: number, end: number, skip?: { m: Mapping; lo: number; hi: number }, clean = false): Promise<void> {
    for (const o of this.ctx.mappingsOf(ino)) {
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
    if (length <= 0 || this.ctx.mappingsOf(ino).length === 0) return;
    await withOperation('written', async () => {
      for (let chunk = Math.floor(offset / HUGE); chunk * HUGE < offset + length; chunk++) {
        const entry = await this.ctx.lockEntry(`${ino.id}:${chunk}`);
        try {
          await this.refreshZeros(ino, Math.max(offset, chunk * HUGE), Math.min(offset + length, (chunk + 1) * HUGE), undefined, true);
        } finally {
          entry.release();
        }
      }
    });
  }

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
    for (const m of this.ctx.mappingsOf(ino)) {
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

  async revokeRange(m: Mapping, regionOff: number, length: number): Promise<void> {
    if (!m.private && (this.ctx.pool.storage.align ?? PAGE) > PAGE) {
      // A 2 MiB-granular device's windows are taken back whole (docs/pool.md,
      // "2 MiB-granular devices"): the kernel cannot split a 2 MiB device mapping.
      const end = Math.min(m.length, roundUp(regionOff + length, HUGE));
      regionOff = Math.floor(regionOff / HUGE) * HUGE;
      length = end - regionOff;
    }
    this.ctx.bump(m, 'revokes');
    // Its direct pieces are cleared first, in the same batch: no direct install after.
    const results = await this.ctx.answer(m.client, revokeAnswers(m, regionOff, length));
    const r = results.find((x) => x !== 0 && x !== ENXIO) ?? 0;
    if (r !== 0) {
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
    const work: Promise<void>[] = [];
    for (const m of this.ctx.mappingsOf(ino)) {
      if (m.states.poisoned === 0) continue;
      const hi = Math.min(m.length, mappedEof(m, this.ctx.pool.storage.align) - m.fileOffset);
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

}
