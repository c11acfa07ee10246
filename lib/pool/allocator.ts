// The block allocator over the data area: a bitmap plus a free count per 2 MiB
// group. Blocks freed in the current log epoch are held back ("pending") until the
// next checkpoint, so replaying any prefix of the log can never find a block that
// was meanwhile handed to another file (docs/pool-format.md, "reuse rule").

import { GROUP_BLOCKS } from './format';

export interface Run { start: number; len: number }

const MAX_RUN = 2 ** 31;

export class BlockAllocator {
  /** Bit set = block in use (owned by a file, or pending reuse). Indexed from dataStart. */
  private readonly bits: Uint32Array;
  /** Free (allocatable) blocks per group. */
  private readonly groupFree: Uint16Array;
  private readonly nGroups: number;
  private pending: Run[] = [];
  private pendingBlocks = 0;
  private freeBlocks: number;
  /** Round-robin start for scans of partly used groups. */
  private cursor = 0;

  constructor(readonly dataStart: number, readonly dataEnd: number) {
    const n = dataEnd - dataStart;
    this.bits = new Uint32Array(Math.ceil(n / 32));
    this.nGroups = Math.ceil(n / GROUP_BLOCKS);
    this.groupFree = new Uint16Array(this.nGroups);
    for (let g = 0; g < this.nGroups; g++) this.groupFree[g] = Math.min(GROUP_BLOCKS, n - g * GROUP_BLOCKS);
    this.freeBlocks = n;
  }

  get capacity(): number { return this.dataEnd - this.dataStart; }
  /** Blocks allocatable now. */
  get free(): number { return this.freeBlocks; }
  /** Blocks freed in this epoch, allocatable after the next checkpoint. */
  get pendingCount(): number { return this.pendingBlocks; }
  get used(): number { return this.capacity - this.freeBlocks - this.pendingBlocks; }

  inData(start: number, len: number): boolean {
    return Number.isSafeInteger(start) && Number.isSafeInteger(len) && len > 0 && start >= this.dataStart && start + len <= this.dataEnd;
  }

  isUsed(dev: number): boolean {
    const i = dev - this.dataStart;
    return (this.bits[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  /** Mark [start, start+len) used. Returns the first block already used (and changes nothing), or -1. */
  markUsed(start: number, len: number): number {
    for (let d = start; d < start + len; d++) if (this.isUsed(d)) return d;
    for (let d = start; d < start + len; d++) {
      const i = d - this.dataStart;
      this.bits[i >>> 5]! |= 1 << (i & 31);
      this.groupFree[Math.floor(i / GROUP_BLOCKS)]!--;
    }
    this.freeBlocks -= len;
    return -1;
  }

  /** Return never-exposed blocks straight to the free pool (an aborted allocation). */
  unmark(start: number, len: number): void {
    for (let d = start; d < start + len; d++) {
      const i = d - this.dataStart;
      if (!this.isUsed(d)) throw new Error(`allocator: unmark of free block ${d}`);
      this.bits[i >>> 5]! &= ~(1 << (i & 31));
      this.groupFree[Math.floor(i / GROUP_BLOCKS)]!++;
    }
    this.freeBlocks += len;
  }

  /** A file released these blocks: they stay marked until releasePending(). */
  freeLater(start: number, len: number): void {
    const last = this.pending[this.pending.length - 1];
    if (last && last.start + last.len === start) last.len += len;
    else this.pending.push({ start, len });
    this.pendingBlocks += len;
  }

  /** After a durable checkpoint: pending blocks become allocatable. */
  releasePending(): void {
    const p = this.pending;
    this.pending = [];
    this.pendingBlocks = 0;
    for (const r of p) this.unmark(r.start, r.len);
  }

  pendingRuns(): readonly Run[] { return this.pending; }

  /**
   * Choose and mark `n` blocks (caller checked free >= n). Order of preference:
   * `goal` and the blocks after it (keeps a file contiguous); whole free 2 MiB
   * groups when `wholeGroups` (one per aligned file chunk: the fault policy can then
   * install a 2 MiB window); free runs in partly used groups (keeps whole groups
   * whole); then fresh groups, starting at `congruent` mod 512 within the group so
   * the file and device offsets share their 2 MiB phase.
   */
  take(n: number, opts: { goal?: number; wholeGroups?: boolean; congruent?: number } = {}): Run[] {
    if (n > this.freeBlocks) throw new Error(`allocator: take(${n}) with ${this.freeBlocks} free`);
    const out: Run[] = [];
    let left = n;
    const grab = (start: number, len: number): void => {
      this.markUsed(start, len);
      left -= len;
      // runs stay below 2^31 blocks (the checkpoint's extent length field)
      for (let s = start; s < start + len;) {
        const last = out[out.length - 1];
        if (last && last.start + last.len === s && last.len < MAX_RUN) {
          const n = Math.min(MAX_RUN - last.len, start + len - s);
          last.len += n;
          s += n;
        } else {
          const n = Math.min(MAX_RUN, start + len - s);
          out.push({ start: s, len: n });
          s += n;
        }
      }
    };
    if (opts.goal !== undefined && opts.goal >= this.dataStart && opts.goal < this.dataEnd) {
      const d = opts.goal;
      let len = 0;
      while (len < left && d + len < this.dataEnd && !this.isUsed(d + len)) len++;
      if (len > 0) grab(d, len);
    }
    if (opts.wholeGroups && left >= GROUP_BLOCKS) {
      for (let g = 0; g < this.nGroups && left >= GROUP_BLOCKS; g++) {
        if (this.groupFree[g] === GROUP_BLOCKS) grab(this.dataStart + g * GROUP_BLOCKS, GROUP_BLOCKS);
      }
    }
    if (left > 0) this.scanGroups(left, (g) => this.groupFree[g]! > 0 && this.groupFree[g]! < this.groupSize(g), grab, () => left, undefined);
    if (left > 0) this.scanGroups(left, (g) => this.groupFree[g]! > 0, grab, () => left, opts.congruent);
    if (left > 0) throw new Error(`allocator: free count says ${this.freeBlocks + n - left} but found only ${n - left}`);
    return out;
  }

  /**
   * A whole free 2 MiB group, marked used: its first block, or null when no group is
   * wholly free. The last one first (a reserve window's run: the front of the pool is
   * left to files allocated in order).
   */
  takeWholeGroup(): number | null {
    for (let g = this.nGroups - 1; g >= 0; g--) {
      if (this.groupFree[g] === GROUP_BLOCKS) {
        const start = this.dataStart + g * GROUP_BLOCKS;
        this.markUsed(start, GROUP_BLOCKS);
        return start;
      }
    }
    return null;
  }

  private groupSize(g: number): number {
    return Math.min(GROUP_BLOCKS, this.capacity - g * GROUP_BLOCKS);
  }

  private scanGroups(_n: number, want: (g: number) => boolean, grab: (s: number, l: number) => void, left: () => number, congruent: number | undefined): void {
    const first = this.cursor;
    for (let k = 0; k < this.nGroups && left() > 0; k++) {
      const g = (first + k) % this.nGroups;
      if (!want(g)) continue;
      const base = this.dataStart + g * GROUP_BLOCKS;
      const end = base + this.groupSize(g);
      // in a fresh group, start at the congruent phase when the rest fits after it
      let from = base;
      if (congruent !== undefined && this.groupFree[g] === this.groupSize(g) && base + congruent + Math.min(left(), GROUP_BLOCKS - congruent) <= end) {
        from = base + congruent;
      }
      for (let pass = 0; pass < 2 && left() > 0; pass++) {
        const lo = pass === 0 ? from : base;
        const hi = pass === 0 ? end : from;
        let d = lo;
        while (d < hi && left() > 0) {
          if (this.isUsed(d)) { d++; continue; }
          let len = 1;
          while (d + len < hi && len < left() && !this.isUsed(d + len)) len++;
          grab(d, len);
          d += len;
        }
      }
      if (left() > 0 || this.groupFree[g] === 0) this.cursor = (g + 1) % this.nGroups;
      else this.cursor = g;
    }
  }

  /** The bitmap as runs of used blocks (fsck compares it with the extents). */
  usedRuns(): Run[] {
    const out: Run[] = [];
    let d = this.dataStart;
    while (d < this.dataEnd) {
      const i = d - this.dataStart;
      if (this.bits[i >>> 5] === 0 && (i & 31) === 0) { d += 32; continue; }
      if (!this.isUsed(d)) { d++; continue; }
      let len = 1;
      while (d + len < this.dataEnd && this.isUsed(d + len)) len++;
      out.push({ start: d, len });
      d += len;
    }
    return out;
  }

  /** Free blocks per group, recomputed from the bitmap vs the kept counters (fsck). */
  checkCounters(): string[] {
    const problems: string[] = [];
    let total = 0;
    for (let g = 0; g < this.nGroups; g++) {
      let f = 0;
      const base = this.dataStart + g * GROUP_BLOCKS;
      for (let d = base; d < base + this.groupSize(g); d++) if (!this.isUsed(d)) f++;
      if (f !== this.groupFree[g]) problems.push(`group ${g}: counter says ${this.groupFree[g]} free, bitmap says ${f}`);
      total += f;
    }
    if (total !== this.freeBlocks) problems.push(`free counter ${this.freeBlocks} != bitmap ${total}`);
    return problems;
  }
}
