// File data on the device: copying bytes in and out of a file's blocks, zeroing
// them, persisting them, and each file's list of blocks overwritten since its last
// fsync. No metadata changes here: the callers (core.ts) decide when a block is
// exposed, after what is written here has been persisted (docs/pool-format.md,
// ordering rules 1, 3 and 4).

import { daxError } from '../errors';
import { CHUNK_SIZE, type Storage } from '../device/storage';
import type { Run } from './allocator';
import { BLOCK_SIZE } from './format';
import { fillBytes, writeBytes } from './io';
import { STATE_WRITTEN } from './log';
import type { Inode, Segment } from './state';

const B = BLOCK_SIZE;

/**
 * Persist device block runs, merging those that touch or overlap. On a regular
 * file, several runs are persisted with one msync over their span: each msync of a
 * file is an fsync of its range (a journal commit and a cache flush on ext4), while
 * the clean pages in between cost nothing to sync.
 */
export function persistRuns(storage: Storage, runs: Run[]): void {
  const spans = persistSpans(storage, runs);
  for (let i = 0; i < spans.length; i += 2) storage.persist(spans[i]!, spans[i + 1]!);
}

/** The byte ranges persistRuns persists for these runs (sorted here), as [offset, length, …]. */
function persistSpans(storage: Storage, runs: Run[]): number[] {
  const out: number[] = [];
  if (runs.length === 0) return out;
  runs.sort((a, b) => a.start - b.start);
  if (storage.kind === 'file') {
    let end = 0;
    for (const r of runs) end = Math.max(end, r.start + r.len);
    out.push(runs[0]!.start * B, (end - runs[0]!.start) * B);
    return out;
  }
  let start = -1;
  let len = 0;
  for (const r of runs) {
    if (start >= 0 && start + len >= r.start) len = Math.max(len, r.start + r.len - start);
    else {
      if (start >= 0) out.push(start * B, len * B);
      start = r.start;
      len = r.len;
    }
  }
  out.push(start * B, len * B);
  return out;
}

/**
 * Write zeros over device block runs — written, not punched, so their pages stay
 * resident — and persist them. Where the storage can, both happen off this thread
 * (Storage.zeroPersistAsync: a libuv pool thread; `background`: the process's
 * background thread at nice 19, for work ahead of need); else here, through the
 * views. Resolves once the zeros are durable.
 */
export async function zeroResidentRuns(storage: Storage, runs: Run[], background = false): Promise<void> {
  if (storage.zeroPersistAsync) {
    const zero = new Float64Array(runs.length * 2);
    for (let i = 0; i < runs.length; i++) {
      zero[2 * i] = runs[i]!.start * B;
      zero[2 * i + 1] = runs[i]!.len * B;
    }
    await storage.zeroPersistAsync(zero, Float64Array.from(persistSpans(storage, runs)), background);
    return;
  }
  for (const r of runs) fillBytes(storage, r.start * B, r.len * B, 0, true);
  persistRuns(storage, runs);
}

export class BlockIo {
  constructor(private readonly storage: Storage) {}

  copyOut(dev: number, dst: Uint8Array, dstStart: number, len: number): void {
    for (let done = 0; done < len;) {
      const off = dev + done;
      const n = Math.min(CHUNK_SIZE - (off % CHUNK_SIZE), len - done);
      dst.set(this.storage.view(off, n), dstStart + done);
      done += n;
    }
  }

  /** Persist device block runs, merging those that touch or overlap. */
  persistRuns(runs: Run[]): void {
    persistRuns(this.storage, runs);
  }

  private markDirty(f: Inode, dev: number, len: number): void {
    const last = f.dirty[f.dirty.length - 1];
    if (last && last.start + last.len === dev) last.len += len;
    else if (!last || last.start !== dev || last.len < len) f.dirty.push({ start: dev, len });
    if (f.dirty.length > 4096) this.flushDirty(f);
  }

  /** Persist the blocks of `f` overwritten since its last flush. */
  flushDirty(f: Inode): void {
    const d = f.dirty;
    f.dirty = [];
    this.persistRuns(d);
  }

  /**
   * Fill device blocks [dev, dev+n) that back file blocks [fb, fb+n): the bytes of
   * `data` (at file offset `dataOff`) where they overlap, zeros everywhere else —
   * unless `clean` (the blocks hold durable zeros already: only the data is written).
   * `resident`: whole zero pages are written, not punched (io.ts fillBytes). Returns
   * the device blocks written (to persist), or null, and the bytes of zeros written.
   */
  fillBlocks(dev: number, fb: number, n: number, data: Uint8Array | null, dataOff: number, resident = false, clean = false): { written: Run | null; zeroBytes: number } {
    const lo = fb * B;
    const hi = (fb + n) * B;
    const s = data ? Math.max(lo, Math.min(hi, dataOff)) : hi;
    const t = data ? Math.max(s, Math.min(hi, dataOff + data.length)) : hi;
    if (t > s) writeBytes(this.storage, dev * B + (s - lo), data!, s - dataOff, t - s);
    if (clean) {
      if (t <= s) return { written: null, zeroBytes: 0 };
      const a = Math.floor((s - lo) / B);
      return { written: { start: dev + a, len: Math.ceil((t - lo) / B) - a }, zeroBytes: 0 };
    }
    if (s > lo) fillBytes(this.storage, dev * B, s - lo, 0, false, resident);
    if (hi > t) fillBytes(this.storage, dev * B + (t - lo), hi - t, 0, false, resident);
    return { written: { start: dev, len: n }, zeroBytes: (s - lo) + (hi - t) };
  }

  /** Copy the part of `data` (at file offset `offset`) that falls in a written segment; durable at fsync. */
  copyToWritten(f: Inode, data: Uint8Array, offset: number, seg: Segment): void {
    if (seg.state !== 'written') throw daxError('EIO', `internal: copy into ${seg.state} block ${seg.fb} of '${f.name}'`);
    const s = Math.max(offset, seg.fb * B);
    const t = Math.min(offset + data.length, (seg.fb + seg.len) * B);
    if (t <= s) return;
    const dev = seg.dev * B + (s - seg.fb * B);
    writeBytes(this.storage, dev, data, s - offset, t - s);
    const d0 = Math.floor(dev / B);
    this.markDirty(f, d0, Math.ceil((dev + t - s) / B) - d0);
  }

  /** Zero the bytes [s, t) inside one block if it is written; returns its device block, or -1. */
  private zeroIn(f: Inode, s: number, t: number): number {
    if (t <= s) return -1;
    const fb = Math.floor(s / B);
    const e = f.extents.find(fb);
    if (!e || e.state !== STATE_WRITTEN) return -1;
    const dev = e.dev + fb - e.fb;
    fillBytes(this.storage, dev * B + (s - fb * B), t - s);
    return dev;
  }

  /** Zero the bytes [s, t) inside one block if it is written (an in-place data change, durable at fsync). */
  zeroPartial(f: Inode, s: number, t: number): void {
    const dev = this.zeroIn(f, s, t);
    if (dev >= 0) this.markDirty(f, dev, 1);
  }

  /** Before the size grows past a partial EOF block: zero its tail, durably, so no old bytes reappear (ordering rule 4). */
  zeroEofTail(f: Inode): void {
    const dev = this.zeroIn(f, f.size, Math.ceil(f.size / B) * B);
    if (dev >= 0) this.storage.persist(dev * B, B);
  }

  /** Zero, durably, the bytes [s, t) of the written blocks of `f` (before they become part of the file). */
  zeroWritten(f: Inode, s: number, t: number): void {
    if (t <= s) return;
    const runs: Run[] = [];
    for (const e of f.extents.overlapping(Math.floor(s / B), Math.ceil(t / B))) {
      if (e.state !== STATE_WRITTEN) continue;
      const a = Math.max(s, e.fb * B);
      const b = Math.min(t, (e.fb + e.len) * B);
      if (b <= a) continue;
      const dev = e.dev * B + (a - e.fb * B);
      fillBytes(this.storage, dev, b - a);
      runs.push({ start: Math.floor(dev / B), len: Math.ceil((dev + b - a) / B) - Math.floor(dev / B) });
    }
    this.persistRuns(runs);
  }

  /** After a shrink to `size`: zero the rest of the new EOF block (mappings see zeros past EOF, like the kernel). */
  zeroTailBeyond(f: Inode, size: number): void {
    this.zeroPartial(f, size, Math.ceil(size / B) * B);
  }
}
