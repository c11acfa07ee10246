// The block allocator over the data area: a bitmap plus a free count per 2 MiB
// group. Blocks freed in the current log epoch are held back ("pending") until the
// next checkpoint, so replaying any prefix of the log can never find a block that
// was meanwhile handed to another file (docs/pool-format.md, "reuse rule").
//
// It also keeps, in memory only, the free blocks known to hold durable zeros
// ("clean free space", docs/pool.md): a second bitmap that only the background
// zeroer (zeroer.ts) sets, through endZero(), on blocks it held out of the free
// pool while it zeroed them. Marking a block used clears its bit, so a block that
// comes back to the free pool (unmark, releasePending) is never clean until the
// zeroer zeroes it again. take() prefers clean blocks where it keeps its alignment
// preferences, and says which of the blocks it took were clean.

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
  /** Bit set = free block known to hold durable zeros. Only ever set on a free block. */
  private readonly cleanBits: Uint32Array;
  /** Clean blocks per group. */
  private readonly groupClean: Uint16Array;
  private cleanBlocks = 0;
  /** Whole 2 MiB groups whose every block is clean (so free: a window needing no zeroing). */
  private cleanGroups = 0;
  /** Runs held out of the free pool by the zeroer while it zeroes them (marked used). */
  private readonly zeroingRuns: Run[][] = [];
  private zeroingBlocks = 0;
  private promisedBlocks = 0;
  /** Where the zeroer's next scan for dirty free blocks starts (a group). */
  private zeroCursor = 0;

  constructor(readonly dataStart: number, readonly dataEnd: number) {
    const n = dataEnd - dataStart;
    this.bits = new Uint32Array(Math.ceil(n / 32));
    this.nGroups = Math.ceil(n / GROUP_BLOCKS);
    this.groupFree = new Uint16Array(this.nGroups);
    for (let g = 0; g < this.nGroups; g++) this.groupFree[g] = Math.min(GROUP_BLOCKS, n - g * GROUP_BLOCKS);
    this.freeBlocks = n;
    this.cleanBits = new Uint32Array(this.bits.length);
    this.groupClean = new Uint16Array(this.nGroups);
  }

  get capacity(): number { return this.dataEnd - this.dataStart; }
  /** Blocks allocatable now (less those promised to staged ranges). */
  get free(): number { return this.freeBlocks - this.promisedBlocks; }
  /** Blocks promised: free, but kept for staged ranges' copies (docs/pool.md, "Promised space"). */
  get promised(): number { return this.promisedBlocks; }
  /** Promise up to n free blocks, leaving at least `keep` allocatable; the number promised. */
  promise(n: number, keep: number): number {
    const g = Math.max(0, Math.min(n, this.free - keep));
    this.promisedBlocks += g;
    return g;
  }
  /** Give back n promised blocks (they become allocatable again). */
  unpromise(n: number): void {
    if (n < 0 || n > this.promisedBlocks) throw new Error(`allocator: unpromise(${n}) with ${this.promisedBlocks} promised`);
    this.promisedBlocks -= n;
  }
  /** Blocks freed in this epoch, allocatable after the next checkpoint. */
  get pendingCount(): number { return this.pendingBlocks; }
  /** Blocks owned (by files, the reserve): neither free, pending, nor held by the zeroer. */
  get used(): number { return this.capacity - this.freeBlocks - this.pendingBlocks - this.zeroingBlocks; }
  /** Free blocks known to hold durable zeros. */
  get cleanFree(): number { return this.cleanBlocks; }
  /** Free 2 MiB groups wholly clean. */
  get cleanGroupCount(): number { return this.cleanGroups; }
  /** Blocks the zeroer holds out of the free pool while it zeroes them. */
  get zeroing(): number { return this.zeroingBlocks; }

  isClean(dev: number): boolean {
    const i = dev - this.dataStart;
    return (this.cleanBits[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  inData(start: number, len: number): boolean {
    return Number.isSafeInteger(start) && Number.isSafeInteger(len) && len > 0 && start >= this.dataStart && start + len <= this.dataEnd;
  }

  isUsed(dev: number): boolean {
    const i = dev - this.dataStart;
    return (this.bits[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  /**
   * Mark [start, start+len) used. Returns the first block already used (and changes
   * nothing), or -1. Blocks that were clean stop being clean; with `cleanOut`, they
   * are added to it as runs. A word of the bitmaps at a time (a word never spans two
   * groups: a group is 16 words).
   */
  markUsed(start: number, len: number, cleanOut?: Run[]): number {
    const i0 = start - this.dataStart;
    const i1 = i0 + len;
    for (let w = i0 >>> 5; w <= (i1 - 1) >>> 5; w++) {
      const hit = this.bits[w]! & wordMask(w, i0, i1);
      if (hit !== 0) return this.dataStart + w * 32 + lowestBit(hit);
    }
    for (let w = i0 >>> 5; w <= (i1 - 1) >>> 5; w++) {
      const mask = wordMask(w, i0, i1);
      const g = w >>> 4;
      this.bits[w]! |= mask;
      this.groupFree[g]! -= popcount(mask);
      let c = this.cleanBits[w]! & mask;
      if (c === 0) continue;
      if (this.groupClean[g] === GROUP_BLOCKS) this.cleanGroups--;
      const n = popcount(c);
      this.cleanBits[w]! &= ~c;
      this.groupClean[g]! -= n;
      this.cleanBlocks -= n;
      if (!cleanOut) continue;
      while (c !== 0) {
        const b = lowestBit(c);
        const ones = c >>> b === -1 >>> b ? 32 - b : lowestBit(~(c >>> b));
        addRun(cleanOut, this.dataStart + w * 32 + b, ones);
        c &= ~(ones === 32 ? -1 : ((1 << ones) - 1) << b);
      }
    }
    this.freeBlocks -= len;
    return -1;
  }

  /**
   * Return never-exposed blocks straight to the free pool (an aborted allocation): they
   * come back dirty. Throws, changing nothing, if one of them is free.
   */
  unmark(start: number, len: number): void {
    const i0 = start - this.dataStart;
    const i1 = i0 + len;
    for (let w = i0 >>> 5; w <= (i1 - 1) >>> 5; w++) {
      const mask = wordMask(w, i0, i1);
      const free = ~this.bits[w]! & mask;
      if (free !== 0) throw new Error(`allocator: unmark of free block ${this.dataStart + w * 32 + lowestBit(free)}`);
    }
    for (let w = i0 >>> 5; w <= (i1 - 1) >>> 5; w++) {
      const mask = wordMask(w, i0, i1);
      this.bits[w]! &= ~mask;
      this.groupFree[w >>> 4]! += popcount(mask);
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
  take(n: number, opts: TakeOptions = {}, cleanOut?: Run[]): Run[] {
    if (n > this.free) throw new Error(`allocator: take(${n}) with ${this.free} free`);
    const out: Run[] = [];
    let left = n;
    const grab = (start: number, len: number): void => {
      this.markUsed(start, len, cleanOut);
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
    const avoid = opts.clean === 'avoid';
    const wholeClean = (g: number): boolean => this.groupFree[g] === GROUP_BLOCKS && this.groupClean[g] === GROUP_BLOCKS;
    if (opts.goal !== undefined && opts.goal >= this.dataStart && opts.goal < this.dataEnd) {
      const d = opts.goal;
      // whole groups: a goal in a dirty group gives way to a clean whole group (its
      // window then needs no zeroing), or a clean one to a dirty one when avoiding
      const gg = Math.floor((d - this.dataStart) / GROUP_BLOCKS);
      const skip = opts.wholeGroups === true && left >= GROUP_BLOCKS && this.cleanGroups > 0 &&
        (avoid ? wholeClean(gg) && this.cleanGroups < this.wholeFreeGroups() : !wholeClean(gg));
      let len = 0;
      if (!skip) while (len < left && d + len < this.dataEnd && !this.isUsed(d + len)) len++;
      if (len > 0) grab(d, len);
    }
    if (opts.wholeGroups && left >= GROUP_BLOCKS) {
      // clean whole groups first (dirty first when avoiding), then the others
      for (const pass of avoid ? [false, true] : [true, false]) {
        if (this.cleanGroups === 0 && pass) continue;
        for (let g = 0; g < this.nGroups && left >= GROUP_BLOCKS; g++) {
          if (this.groupFree[g] === GROUP_BLOCKS && wholeClean(g) === pass) grab(this.dataStart + g * GROUP_BLOCKS, GROUP_BLOCKS);
        }
      }
    }
    const partial = (g: number): boolean => this.groupFree[g]! > 0 && this.groupFree[g]! < this.groupSize(g);
    // clean blocks of partly used groups first (they keep whole groups whole)
    if (left > 0 && !avoid && this.cleanBlocks > 0) {
      this.scanGroups((g) => partial(g) && this.groupClean[g]! > 0, (d) => this.isClean(d), grab, () => left, undefined);
    }
    if (left > 0) this.scanGroups(partial, (d) => !this.isUsed(d), grab, () => left, undefined);
    // fresh groups: dirty ones first, so clean whole groups stay for 2 MiB windows
    if (left > 0 && this.cleanGroups > 0) this.scanGroups((g) => this.groupFree[g]! > 0 && !wholeClean(g), (d) => !this.isUsed(d), grab, () => left, opts.congruent);
    if (left > 0) this.scanGroups((g) => this.groupFree[g]! > 0, (d) => !this.isUsed(d), grab, () => left, opts.congruent);
    if (left > 0) throw new Error(`allocator: free count says ${this.freeBlocks + n - left} but found only ${n - left}`);
    return out;
  }

  /**
   * A whole free 2 MiB group, marked used: its first block and whether every block of
   * it was clean (then it needs no zeroing), or null when no group is wholly free. A
   * wholly clean group first; else the last free one (a reserve window's run: the
   * front of the pool is left to files allocated in order).
   */
  takeWholeGroup(): { start: number; clean: boolean } | null {
    if (this.free < GROUP_BLOCKS) return null; // the rest is promised
    let pick = -1;
    for (let g = this.nGroups - 1; g >= 0; g--) {
      if (this.groupFree[g] !== GROUP_BLOCKS) continue;
      if (this.groupClean[g] === GROUP_BLOCKS) {
        pick = g;
        break;
      }
      if (pick < 0) pick = g;
    }
    if (pick < 0) return null;
    const start = this.dataStart + pick * GROUP_BLOCKS;
    const clean = this.groupClean[pick] === GROUP_BLOCKS;
    this.markUsed(start, GROUP_BLOCKS);
    return { start, clean };
  }

  /** Wholly free groups (counted: only when a choice needs it). */
  private wholeFreeGroups(): number {
    let k = 0;
    for (let g = 0; g < this.nGroups; g++) if (this.groupFree[g] === GROUP_BLOCKS) k++;
    return k;
  }

  // ---- the zeroer's side (zeroer.ts) ----

  /**
   * Hold up to `max` free blocks that are not clean out of the free pool (marked
   * used, so no allocation takes them) for the zeroer to zero: whole free groups
   * first (`wholeOnly`: nothing else), then the dirty free blocks of partly used
   * groups. Returns the runs (empty when there is nothing to zero).
   */
  beginZero(max: number, wholeOnly: boolean): Run[] {
    const out: Run[] = [];
    let left = max;
    const grab = (start: number, len: number): void => {
      this.markUsed(start, len);
      left -= len;
      addRun(out, start, len);
    };
    const dirtyFree = (d: number): boolean => !this.isUsed(d) && !this.isClean(d);
    for (const whole of wholeOnly ? [true] : [true, false]) {
      const first = this.zeroCursor;
      for (let k = 0; k < this.nGroups && left > 0; k++) {
        const g = (first + k) % this.nGroups;
        const size = this.groupSize(g);
        const f = this.groupFree[g]!;
        if (f === 0 || this.groupClean[g] === f) continue; // nothing dirty and free here
        if (whole ? f !== size || size !== GROUP_BLOCKS : f === size) continue;
        if (whole && left < GROUP_BLOCKS && out.length > 0) break;
        const base = this.dataStart + g * GROUP_BLOCKS;
        if (f === size && this.groupClean[g] === 0 && left >= size) {
          grab(base, size); // wholly free and dirty: one run
          this.zeroCursor = g;
          continue;
        }
        for (let d = base; d < base + size && left > 0;) {
          if (!dirtyFree(d)) { d++; continue; }
          let len = 1;
          while (d + len < base + size && len < left && dirtyFree(d + len)) len++;
          grab(d, len);
          d += len;
        }
        this.zeroCursor = g;
      }
      if (out.length > 0) break;
    }
    let n = 0;
    for (const r of out) n += r.len;
    if (n > 0) {
      this.zeroingRuns.push(out);
      this.zeroingBlocks += n;
    }
    return out;
  }

  /** The zeroer is done with runs from beginZero: back to the free pool, clean when `zeroed` (their zeros durable). */
  endZero(runs: Run[], zeroed: boolean): void {
    const k = this.zeroingRuns.indexOf(runs);
    if (k < 0) throw new Error('allocator: endZero of runs not being zeroed');
    this.zeroingRuns.splice(k, 1);
    for (const r of runs) {
      this.unmark(r.start, r.len);
      this.zeroingBlocks -= r.len;
      if (!zeroed) continue;
      const i0 = r.start - this.dataStart;
      const i1 = i0 + r.len;
      for (let w = i0 >>> 5; w <= (i1 - 1) >>> 5; w++) {
        const g = w >>> 4;
        const added = wordMask(w, i0, i1) & ~this.cleanBits[w]!;
        if (added === 0) continue;
        const n = popcount(added);
        this.cleanBits[w]! |= added;
        this.groupClean[g]! += n;
        this.cleanBlocks += n;
        if (this.groupClean[g] === GROUP_BLOCKS) this.cleanGroups++;
      }
    }
  }

  /** Every run the zeroer holds now (fsck of the live state: owned by nothing, marked used). */
  zeroingHeld(): Run[] {
    return this.zeroingRuns.flat();
  }

  private groupSize(g: number): number {
    return Math.min(GROUP_BLOCKS, this.capacity - g * GROUP_BLOCKS);
  }

  /** Grab runs of blocks for which `avail` holds, in groups for which `want` holds, round robin from the cursor. */
  private scanGroups(want: (g: number) => boolean, avail: (d: number) => boolean, grab: (s: number, l: number) => void, left: () => number, congruent: number | undefined): void {
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
          if (!avail(d)) { d++; continue; }
          let len = 1;
          while (d + len < hi && len < left() && avail(d + len)) len++;
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

  /** Free and clean blocks per group, recomputed from the bitmaps vs the kept counters (fsck). */
  checkCounters(): string[] {
    const problems: string[] = [];
    let total = 0;
    let clean = 0;
    let cleanGroups = 0;
    for (let g = 0; g < this.nGroups; g++) {
      let f = 0;
      let c = 0;
      const base = this.dataStart + g * GROUP_BLOCKS;
      for (let d = base; d < base + this.groupSize(g); d++) {
        if (!this.isUsed(d)) f++;
        if (this.isClean(d)) {
          c++;
          if (this.isUsed(d)) problems.push(`device block ${d} is clean but marked used`);
        }
      }
      if (f !== this.groupFree[g]) problems.push(`group ${g}: counter says ${this.groupFree[g]} free, bitmap says ${f}`);
      if (c !== this.groupClean[g]) problems.push(`group ${g}: counter says ${this.groupClean[g]} clean, bitmap says ${c}`);
      if (c === GROUP_BLOCKS) cleanGroups++;
      total += f;
      clean += c;
    }
    if (total !== this.freeBlocks) problems.push(`free counter ${this.freeBlocks} != bitmap ${total}`);
    if (clean !== this.cleanBlocks) problems.push(`clean counter ${this.cleanBlocks} != bitmap ${clean}`);
    if (cleanGroups !== this.cleanGroups) problems.push(`clean group counter ${this.cleanGroups} != bitmap ${cleanGroups}`);
    return problems;
  }
}

export interface TakeOptions {
  goal?: number;
  wholeGroups?: boolean;
  congruent?: number;
  /**
   * 'prefer' (default): clean blocks first where the alignment preferences allow (the
   * caller zeroes or fills what it takes); 'avoid': dirty first (the caller zeroes
   * nothing now, e.g. fallocate's unwritten extents, so clean blocks would be wasted).
   */
  clean?: 'prefer' | 'avoid';
}

/** The bits of bitmap word w that index range [i0, i1) covers (w must meet it). */
function wordMask(w: number, i0: number, i1: number): number {
  const lo = Math.max(i0 - w * 32, 0);
  const hi = Math.min(i1 - w * 32, 32);
  return hi - lo === 32 ? -1 : ((1 << (hi - lo)) - 1) << lo;
}

/** Set bits of a 32-bit word. */
function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

/** Index of the lowest set bit of a non-zero 32-bit word. */
function lowestBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

function addRun(out: Run[], start: number, len: number): void {
  const last = out[out.length - 1];
  if (last && last.start + last.len === start) last.len += len;
  else out.push({ start, len });
}
