// A file's extent map: sorted, non-overlapping runs of file blocks mapped to device
// blocks, each unwritten or written; gaps are holes. Kept as a list of small sorted
// leaves so a file with a million extents still updates in microseconds.

import { STATE_UNWRITTEN, STATE_WRITTEN, type ExtentStateCode } from './log';

export interface Extent {
  readonly fb: number;
  readonly len: number;
  readonly dev: number;
  readonly state: ExtentStateCode;
}

/** Longest single extent, so lengths fit the checkpoint's u32 field. */
export const MAX_EXTENT_BLOCKS = 2 ** 31;
const LEAF_MAX = 128;
/** Shared result for the common "nothing was replaced" case (callers only iterate it). */
const NONE: Extent[] = [];
const LEAF_FILL = 64;

export class ExtentMap {
  private leaves: Extent[][] = [];
  private n = 0;
  private blockCount = 0;

  get count(): number { return this.n; }
  /** Blocks mapped (written or unwritten). */
  get blocks(): number { return this.blockCount; }

  /** Index of the leaf that holds fb, or would: the last leaf whose first extent starts at or before fb (0 if none). */
  private leafFor(fb: number): number {
    const L = this.leaves;
    let lo = 0;
    let hi = L.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (L[mid]![0]!.fb <= fb) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The extent that contains fb, or null. */
  find(fb: number): Extent | null {
    if (this.n === 0) return null;
    const leaf = this.leaves[this.leafFor(fb)]!;
    let lo = 0;
    let hi = leaf.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const e = leaf[mid]!;
      if (e.fb + e.len <= fb) lo = mid + 1;
      else if (e.fb > fb) hi = mid - 1;
      else return e;
    }
    return null;
  }

  /** The first extent that ends after fb (the one containing fb or the next one), or null. */
  next(fb: number): Extent | null {
    if (this.n === 0) return null;
    let li = this.leafFor(fb);
    for (; li < this.leaves.length; li++) {
      for (const e of this.leaves[li]!) if (e.fb + e.len > fb) return e;
    }
    return null;
  }

  /** Extents overlapping [fb, end), in order (whole extents, not clipped). */
  overlapping(fb: number, end: number): Extent[] {
    const out: Extent[] = [];
    if (this.n === 0 || end <= fb) return out;
    for (let li = this.leafFor(fb); li < this.leaves.length; li++) {
      for (const e of this.leaves[li]!) {
        if (e.fb >= end) return out;
        if (e.fb + e.len > fb) out.push(e);
      }
    }
    return out;
  }

  last(): Extent | null {
    const l = this.leaves[this.leaves.length - 1];
    return l ? l[l.length - 1]! : null;
  }

  all(): Extent[] {
    return this.leaves.flat();
  }

  /** Map [fb, fb+len) to dev.. with `state`, replacing what was there; returns the replaced pieces (clipped). */
  set(fb: number, len: number, dev: number, state: ExtentStateCode): Extent[] {
    return this.replace(fb, fb + len, { fb, len, dev, state });
  }

  /** Make [fb, end) a hole; returns the removed pieces (clipped). */
  clear(fb: number, end: number): Extent[] {
    return this.replace(fb, end, null);
  }

  private static mergeable(p: Extent, e: Extent): boolean {
    return p.fb + p.len === e.fb && p.dev + p.len === e.dev && p.state === e.state && p.len + e.len <= MAX_EXTENT_BLOCKS;
  }

  /**
   * Fast path for an extent that lands in a hole and merges with neither neighbour
   * (random 4 KiB allocations, reserve adoptions): one splice into its leaf, no leaf
   * rebuilt. False (nothing changed) when it overlaps or could merge: replace() does it.
   */
  private insertInHole(ins: Extent): boolean {
    const a = this.leafFor(ins.fb);
    const leaf = this.leaves[a]!;
    let lo = 0;
    let hi = leaf.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (leaf[mid]!.fb < ins.fb) lo = mid + 1;
      else hi = mid;
    }
    // lo > 0 unless a is the first leaf (leafFor: leaf a's first extent starts at or before ins.fb)
    const prev = lo > 0 ? leaf[lo - 1]! : null;
    const next = lo < leaf.length ? leaf[lo]! : (this.leaves[a + 1]?.[0] ?? null);
    if (prev && (prev.fb + prev.len > ins.fb || ExtentMap.mergeable(prev, ins))) return false;
    if (next && (next.fb < ins.fb + ins.len || ExtentMap.mergeable(ins, next))) return false;
    leaf.splice(lo, 0, ins);
    if (leaf.length > LEAF_MAX) this.leaves.splice(a, 1, leaf.slice(0, LEAF_FILL), leaf.slice(LEAF_FILL));
    this.n++;
    this.blockCount += ins.len;
    return true;
  }

  private replace(fb: number, end: number, ins: Extent | null): Extent[] {
    if (this.n === 0) {
      if (ins) { this.leaves = [[ins]]; this.n = 1; this.blockCount = ins.len; }
      return NONE;
    }
    // fast path: appending past the last extent (replay of a checkpoint, sequential growth)
    const lastLeaf = this.leaves[this.leaves.length - 1]!;
    const last = lastLeaf[lastLeaf.length - 1]!;
    if (fb >= last.fb + last.len) {
      if (!ins) return NONE;
      if (ExtentMap.mergeable(last, ins)) {
        lastLeaf[lastLeaf.length - 1] = { fb: last.fb, len: last.len + ins.len, dev: last.dev, state: last.state };
      } else if (lastLeaf.length < LEAF_MAX) {
        lastLeaf.push(ins);
        this.n++;
      } else {
        this.leaves.push([ins]);
        this.n++;
      }
      this.blockCount += ins.len;
      return NONE;
    }
    if (ins && this.insertInHole(ins)) return NONE;
    const removed: Extent[] = [];
    // the leaves that hold [fb, end) (the extent containing fb is always in leafFor(fb)),
    // plus the next leaf when its first extent touches `end` (it may merge)
    const a = this.leafFor(fb);
    let b = this.leafFor(Math.max(fb, end - 1));
    if (b + 1 < this.leaves.length && this.leaves[b + 1]![0]!.fb <= end) b++;
    const win: Extent[] = a === b ? this.leaves[a]! : this.leaves.slice(a, b + 1).flat();
    const out: Extent[] = [];
    let placed = ins === null;
    const put = (e: Extent): void => {
      const p = out[out.length - 1];
      if (p && ExtentMap.mergeable(p, e)) out[out.length - 1] = { fb: p.fb, len: p.len + e.len, dev: p.dev, state: p.state };
      else out.push(e);
    };
    for (const e of win) {
      const eEnd = e.fb + e.len;
      if (eEnd <= fb) { put(e); continue; }
      if (e.fb >= end) {
        if (!placed) { put(ins!); placed = true; }
        put(e);
        continue;
      }
      // overlaps: keep the parts outside, report the part inside
      const s = Math.max(e.fb, fb);
      const t = Math.min(eEnd, end);
      removed.push({ fb: s, len: t - s, dev: e.dev + (s - e.fb), state: e.state });
      if (e.fb < fb) put({ fb: e.fb, len: fb - e.fb, dev: e.dev, state: e.state });
      if (eEnd > end) {
        if (!placed) { put(ins!); placed = true; }
        put({ fb: end, len: eEnd - end, dev: e.dev + (end - e.fb), state: e.state });
      }
    }
    if (!placed) put(ins!);
    // the extent before the window (last of leaf a-1) may continue the first one
    if (a > 0 && out.length > 0) {
      const pl = this.leaves[a - 1]!;
      const p = pl[pl.length - 1]!;
      if (ExtentMap.mergeable(p, out[0]!)) {
        const first = out.shift()!;
        pl[pl.length - 1] = { fb: p.fb, len: p.len + first.len, dev: p.dev, state: p.state };
      }
    }
    let delta = 0;
    for (const e of removed) delta -= e.len;
    if (ins) delta += ins.len;
    this.blockCount += delta;
    this.n += out.length - win.length;
    if (out.length === 0) this.leaves.splice(a, b - a + 1);
    else if (out.length <= LEAF_MAX) this.leaves.splice(a, b - a + 1, out);
    else {
      const chunks: Extent[][] = [];
      for (let i = 0; i < out.length; i += LEAF_FILL) chunks.push(out.slice(i, i + LEAF_FILL));
      this.leaves.splice(a, b - a + 1, ...chunks);
    }
    return removed;
  }

  /**
   * The leaves' shape, for tests: what keeps an update cheap is that no leaf grows
   * past LEAF_MAX extents (an update rebuilds at most a few leaves).
   */
  shape(): { leaves: number; largest: number; leafMax: number } {
    let largest = 0;
    for (const leaf of this.leaves) largest = Math.max(largest, leaf.length);
    return { leaves: this.leaves.length, largest, leafMax: LEAF_MAX };
  }

  /** Structural self-check for fsck and tests: sorted, non-overlapping, counters right. */
  check(): string | null {
    let prevEnd = -1;
    let n = 0;
    let blocks = 0;
    for (const leaf of this.leaves) {
      if (leaf.length === 0) return 'empty leaf';
      for (const e of leaf) {
        if (!(e.len > 0) || e.fb < 0 || (e.state !== STATE_UNWRITTEN && e.state !== STATE_WRITTEN)) return `bad extent ${JSON.stringify(e)}`;
        if (e.fb < prevEnd) return `extents overlap or are unsorted at file block ${e.fb}`;
        prevEnd = e.fb + e.len;
        n++;
        blocks += e.len;
      }
    }
    if (n !== this.n || blocks !== this.blockCount) return 'extent counters disagree';
    return null;
  }
}
