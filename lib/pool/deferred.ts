// Deferred conversion of unwritten extents (docs/pool.md, "Durability"; ext4's
// unwritten extents). A write fault of a non-sync mapping on a disk-file pool
// records its new block on the medium as UNWRITTEN, zeroes it in memory only and
// treats it as written in memory. The block is queued here until its data is made
// durable and the conversion to written is logged: at fsync, sync, close, a
// checkpoint, or the periodic writeback.
//
// The queue is not kept in step with frees: a queued run is checked against the
// file's extent map when it is taken, and only the blocks the file still maps at the
// same device blocks, written in memory, are converted. Punch, truncate, zero range
// (written -> unwritten), unlink and rename-over thereby drop their conversions.
// A freed block cannot come back to another file before the next checkpoint
// (docs/pool-format.md, ordering rule 2), and every checkpoint empties the queue,
// so a queued run never names a block reused by someone else.

import type { Run } from './allocator';
import { RecType, STATE_WRITTEN, type LogRecord } from './log';
import type { Inode } from './state';

/** File blocks [fb, fb+len) at device blocks [dev, dev+len), written in memory, unwritten on the medium. */
export interface Unconverted {
  fb: number;
  dev: number;
  len: number;
}

export interface Conversions {
  /** Device runs whose data must be durable before `recs` are appended. */
  runs: Run[];
  /** `map … written` records, one per run still mapped. */
  recs: LogRecord[];
  /** What was taken from the queue (to put back if persisting fails). */
  taken: Map<Inode, Unconverted[]>;
}

export class ConversionQueue {
  private readonly byFile = new Map<Inode, Unconverted[]>();
  /** Blocks queued (counting those dropped since, until they are taken). */
  blocks = 0;
  /** Runs queued. */
  runs = 0;

  add(f: Inode, fb: number, dev: number, len: number): void {
    let q = this.byFile.get(f);
    if (!q) this.byFile.set(f, (q = []));
    const last = q[q.length - 1];
    this.blocks += len;
    if (last && last.fb + last.len === fb && last.dev + last.len === dev) {
      last.len += len;
      return;
    }
    q.push({ fb, dev, len });
    this.runs++;
  }

  has(f: Inode): boolean {
    return this.byFile.has(f);
  }

  get empty(): boolean {
    return this.byFile.size === 0;
  }

  /** Take the queued conversions of `files` (null: every file), keeping only the blocks still mapped as queued. */
  take(files: Inode[] | null): Conversions {
    const out: Conversions = { runs: [], recs: [], taken: new Map() };
    for (const f of files ?? [...this.byFile.keys()]) {
      const q = this.byFile.get(f);
      if (!q) continue;
      this.byFile.delete(f);
      out.taken.set(f, q);
      for (const u of q) {
        this.blocks -= u.len;
        this.runs--;
        if (f.live) still(f, u, out);
      }
    }
    return out;
  }

  /** Put back what take() returned (the data could not be made durable). */
  restore(c: Conversions): void {
    for (const [f, q] of c.taken) for (const u of q) this.add(f, u.fb, u.dev, u.len);
  }
}

/** The parts of `u` that `f` still maps at the same device blocks, written in memory. */
function still(f: Inode, u: Unconverted, out: Conversions): void {
  for (const e of f.extents.overlapping(u.fb, u.fb + u.len)) {
    if (e.state !== STATE_WRITTEN || e.dev - e.fb !== u.dev - u.fb) continue;
    const s = Math.max(u.fb, e.fb);
    const t = Math.min(u.fb + u.len, e.fb + e.len);
    const dev = e.dev + (s - e.fb);
    out.runs.push({ start: dev, len: t - s });
    out.recs.push({ t: RecType.Map, id: f.id, fb: s, len: t - s, dev, state: STATE_WRITTEN });
  }
}
