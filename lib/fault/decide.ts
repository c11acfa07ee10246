// Decided ranges (docs/fault-policy.md, "Decided ranges"): at map() of a shared
// mapping the written extents are known, so the policy decides them ahead. Each
// written piece (cut at the 2 MiB chunks of the file and of the region) is either set
// direct in the client's agent — its faults are answered natively, no JavaScript, no
// round trip to the daemon — or installed at once (no trap at all). Every piece is a
// window of the client's budget from the moment it is decided. Before any revoke of
// a range, its direct pieces are cleared, in the same answer batch (clear, then
// revoke): once the clear has run no direct install of the range can happen.
import { withOperation } from '../lock/index';
import { Op, A_POPULATE, A_WRITABLE, type AnswerSpec } from '../native/frames';
import { mappedEof, type FaultContext, type Mapping } from './context';
import { HUGE, PAGE, PageState } from './states';

/**
 * How written extents are decided at map():
 * - `direct`: set direct in the agent; the first touch of a piece traps and the agent
 *   installs the piece itself (not populated: the thread then takes the kernel's own
 *   fault);
 * - `direct-populate`: the same, and the agent populates the faulting page;
 * - `install`: installed at map() (not populated): the first touch is the kernel's
 *   own fault, nothing is trapped;
 * - `off`: nothing is decided; every first touch goes to the policy.
 */
export const DECIDE_MODES = ['direct', 'direct-populate', 'install', 'off'] as const;
export type DecideMode = (typeof DECIDE_MODES)[number];

export function defaultDecideMode(): DecideMode {
  const v = process.env.DAXMAP_DECIDED;
  return DECIDE_MODES.includes(v as DecideMode) ? (v as DecideMode) : 'install';
}


/** One mapping's direct pieces (region offsets), by 2 MiB chunk of the region; none crosses a chunk. */
export class DirectPieces {
  private byChunk = new Map<number, Map<number, number>>();

  get empty(): boolean {
    return this.byChunk.size === 0;
  }

  add(offset: number, length: number): void {
    const c = Math.floor(offset / HUGE);
    let m = this.byChunk.get(c);
    if (!m) this.byChunk.set(c, (m = new Map<number, number>()));
    m.set(offset, length);
  }

  /**
   * Remove [lo, hi) from the pieces. Returns the pieces that overlapped it (as they
   * were) and what is left of them outside it.
   */
  cut(lo: number, hi: number): { hit: number; kept: [number, number][] } {
    const first = Math.floor(lo / HUGE);
    const last = Math.floor((hi - 1) / HUGE);
    const chunks = last - first + 1 <= this.byChunk.size
      ? Array.from({ length: last - first + 1 }, (_, i) => first + i)
      : [...this.byChunk.keys()].filter((c) => c >= first && c <= last);
    let hit = 0;
    const kept: [number, number][] = [];
    for (const c of chunks) {
      const m = this.byChunk.get(c);
      if (!m) continue;
      for (const [off, len] of [...m]) {
        if (off + len <= lo || off >= hi) continue;
        hit++;
        m.delete(off);
        if (off < lo) kept.push([off, lo - off]);
        if (off + len > hi) kept.push([hi, off + len - hi]);
      }
      for (const [off, len] of kept) if (Math.floor(off / HUGE) === c) m.set(off, len);
      if (m.size === 0) this.byChunk.delete(c);
    }
    return { hit, kept };
  }

  clear(): void {
    this.byChunk.clear();
  }
}

export class Decider {
  mode: DecideMode = defaultDecideMode();

  constructor(private readonly ctx: FaultContext) {}

  /**
   * Decide the written extents of a new shared mapping. Each file chunk with written
   * data is taken with its locks (range shared → entry), so its extents cannot
   * change meanwhile. Pieces beyond the budget's share are left to fault as usual.
   */
  async decide(m: Mapping): Promise<void> {
    // A private mapping never maps the device. A sync mapping's write fault on a
    // written block must first make its record durable (ensureWritten({sync})), and
    // its windows are installed writable, so it gets no decided ranges.
    if (this.mode === 'off' || m.private || m.sync) return;
    const chunks = this.writtenChunks(m);
    if (chunks.length === 0) return;
    await withOperation('decide', async () => {
      for (const chunk of chunks) {
        if (!(await this.decideChunk(m, chunk))) return;
      }
    });
  }

  /** File chunks of the mapping that hold written data (unlocked: each is checked again under its locks). */
  private writtenChunks(m: Mapping): number[] {
    const out: number[] = [];
    const end = Math.min(m.fileOffset + m.length, mappedEof(m, this.ctx.pool.storage.align));
    for (let off = m.fileOffset; off < end;) {
      const x = this.ctx.pool.lookup(m.inode, off);
      const xEnd = Math.min(end, x.offset + x.length);
      if (x.state === 'written') {
        for (let c = Math.floor(off / HUGE); c * HUGE < xEnd; c++) if (out[out.length - 1] !== c) out.push(c);
      }
      off = xEnd;
    }
    return out;
  }

  /** False once the budget has no room left (or the mapping is gone). */
  private async decideChunk(m: Mapping, chunk: number): Promise<boolean> {
    const range = await m.inode.rangeLock.acquireShared(chunk * HUGE, (chunk + 1) * HUGE);
    let entry;
    try {
      entry = await this.ctx.lockEntry(`${m.inode.id}:${chunk}`);
      if (m.dead || !m.inode.live) return false;
      const budget = m.client.budget;
      let room = budget.aheadRoom;
      const lo = Math.max(chunk * HUGE, m.fileOffset);
      // (on a 2 MiB-granular device the EOF unit is decided whole: context.ts, mappedEof)
      const hi = Math.min((chunk + 1) * HUGE, m.fileOffset + m.length, mappedEof(m, this.ctx.pool.storage.align));
      const specs: AnswerSpec[] = [];
      // A mapping that may not write gets direct ranges even in `install` mode: its first
      // store must still reach the policy (SIGBUS), where a read-only window would be SIGSEGV.
      const install = this.mode === 'install' && m.writable;
      const flags = (m.writable ? A_WRITABLE : 0) | (this.mode === 'direct-populate' ? A_POPULATE : 0);
      for (let off = lo; off < hi && room > 0;) {
        const x = this.ctx.pool.lookup(m.inode, off);
        // Cut at the region's 2 MiB chunks too: a piece is then exactly one window.
        const regionChunkEnd = (Math.floor((off - m.fileOffset) / HUGE) + 1) * HUGE + m.fileOffset;
        const end = Math.min(hi, x.offset + x.length, regionChunkEnd);
        if (x.state === 'written') {
          specs.push({
            op: install ? Op.Install : Op.SetDirect, flags, region: m.region, offset: off - m.fileOffset,
            length: end - off, device: m.client.deviceId, devOffset: (x.deviceOffset as number) + (off - x.offset),
          });
          room--;
        }
        off = end;
      }
      if (specs.length === 0) return room > 0;
      const results = await this.ctx.answer(m.client, specs);
      for (let i = 0; i < specs.length; i++) {
        if (results[i] !== 0) continue; // left to fault as usual (the client is gone, or no room for a VMA)
        const a = specs[i]!;
        m.states.set(a.offset / PAGE, (a.offset + a.length) / PAGE, install ? PageState.Installed : PageState.Direct);
        if (!install) m.direct.add(a.offset, a.length);
        m.client.budget.add({ mapping: m.key, offset: a.offset, length: a.length });
        this.ctx.bump(m, 'decided');
      }
      return room > 0;
    } finally {
      entry?.release();
      range.release();
    }
  }
}

/**
 * The answers that take back [offset, +length) of a mapping: its direct pieces there
 * cleared first (so no direct install can follow), then the revoke. What is left of
 * a cut piece stays decided and keeps a window of the budget.
 */
export function revokeAnswers(m: Mapping, offset: number, length: number): AnswerSpec[] {
  const revoke: AnswerSpec = { op: Op.Revoke, region: m.region, offset, length };
  if (m.direct.empty) return [revoke];
  const { hit, kept } = m.direct.cut(offset, offset + length);
  if (hit === 0) return [revoke];
  for (const [off, len] of kept) m.client.budget.add({ mapping: m.key, offset: off, length: len });
  return [{ op: Op.ClearDirect, region: m.region, offset, length }, revoke];
}
