// The consistency check of a pool's live state, used by fsck (fsck.ts) and the
// tests: what docs/pool-format.md lists under "Invariants fsck checks" for the
// in-memory state (the media side, checksums and the log chain, is checked as the
// state is replayed).

import { BLOCK_SIZE, MAX_FILE_SIZE } from './format';
import { STATE_WRITTEN } from './log';
import { MAX_FILE_BLOCKS, type FsState, type Inode } from './state';

const B = BLOCK_SIZE;

/**
 * Consistency of the live state (fsck and tests): extent maps well formed, every
 * block owned at most once and inside the data area, the allocator bitmap equal
 * to the extents plus the blocks pending reuse plus the reserve (each reserved block
 * owned by no file) plus the free blocks the zeroer holds, clean blocks free, sizes sane, no written block past EOF (past the end of the
 * EOF's allocation unit of `unit` blocks, on a 2 MiB-granular device).
 */
export function checkState(state: FsState, progress?: (done: number, total: number) => void, unit = 1): string[] {
  const problems: string[] = [];
  const add = (p: string): void => { if (problems.length < 200) problems.push(p); };
  const g = state.geometry;
  const n = g.dataEnd - g.dataStart;
  const seen = new Uint32Array(Math.ceil(n / 32));
  const isSeen = (d: number): boolean => (seen[(d - g.dataStart) >>> 5]! & (1 << ((d - g.dataStart) & 31))) !== 0;
  const setSeen = (d: number): void => { seen[(d - g.dataStart) >>> 5]! |= 1 << ((d - g.dataStart) & 31); };
  const ownerOf = (d: number, not: Inode | null): string => {
    for (const o of state.files.values()) {
      if (o === not) continue;
      for (const e of o.extents.overlapping(0, MAX_FILE_BLOCKS)) if (e.dev <= d && d < e.dev + e.len) return `'${o.name}'`;
    }
    return 'the same file twice';
  };
  const ownerOfAny = (d: number): string => {
    for (const r of state.alloc.pendingRuns()) if (r.start <= d && d < r.start + r.len) return 'the blocks pending reuse';
    const o = ownerOf(d, null);
    return o === 'the same file twice' ? 'nothing else' : `file ${o}`;
  };
  let used = 0;
  let done = 0;
  const total = state.alloc.used + state.alloc.pendingCount + n;
  for (const f of state.files.values()) {
    const bad = f.extents.check();
    if (bad) add(`file '${f.name}': ${bad}`);
    if (f.size > MAX_FILE_SIZE) add(`file '${f.name}': size ${f.size} above the limit`);
    if (state.names.get(f.name) !== f) add(`file id ${f.id} not reachable by its name '${f.name}'`);
    // on a 2 MiB-granular device (unit > 1) the unit holding EOF may be written whole
    const limit = Math.ceil(Math.ceil(f.size / B) / unit) * unit;
    for (const e of f.extents.all()) {
      if (e.dev < g.dataStart || e.dev + e.len > g.dataEnd) {
        add(`file '${f.name}': file blocks [${e.fb}, +${e.len}) map to device blocks [${e.dev}, +${e.len}) outside the data area [${g.dataStart}, ${g.dataEnd})`);
        continue;
      }
      if (e.state === STATE_WRITTEN && e.fb + e.len > limit) add(`file '${f.name}': written file blocks [${e.fb}, +${e.len}) past ${unit > 1 ? 'the end of its EOF unit,' : 'its EOF'} block ${limit}`);
      for (let d = e.dev; d < e.dev + e.len; d++) {
        if (isSeen(d)) add(`device block ${d} owned twice: by '${f.name}' and by ${ownerOf(d, f)}`);
        setSeen(d);
        if (!state.alloc.isUsed(d)) add(`device block ${d} of '${f.name}' is marked free in the allocator`);
      }
      used += e.len;
      done += e.len;
      if (progress && (done & 0xffff) < e.len) progress(done, total);
    }
  }
  for (const r of state.alloc.pendingRuns()) for (let d = r.start; d < r.start + r.len; d++) {
    if (isSeen(d)) add(`device block ${d} is both pending reuse and owned by a file`);
    setSeen(d);
  }
  // the reserve: marked used, owned by no file, not pending (docs/pool-format.md, "Reserve")
  for (const d of state.reserved) {
    if (d < g.dataStart || d >= g.dataEnd) { add(`reserved device block ${d} outside the data area`); continue; }
    if (isSeen(d)) add(`device block ${d} is reserved and also owned by ${ownerOfAny(d)}`);
    setSeen(d);
    if (!state.alloc.isUsed(d)) add(`reserved device block ${d} is marked free in the allocator`);
  }
  // free blocks the zeroer holds while it zeroes them: marked used, owned by nothing
  for (const r of state.alloc.zeroingHeld()) for (let d = r.start; d < r.start + r.len; d++) {
    if (isSeen(d)) add(`device block ${d} is being zeroed as free space and also owned by ${ownerOfAny(d)}`);
    setSeen(d);
  }
  for (const r of state.alloc.usedRuns()) for (let d = r.start; d < r.start + r.len; d++) {
    if (!isSeen(d)) add(`device block ${d} is marked used in the allocator but no file owns it (leaked)`);
  }
  progress?.(total, total);
  for (const c of state.alloc.checkCounters()) add(c);
  if (used + state.reserved.size !== state.alloc.used) add(`extents hold ${used} blocks and the reserve ${state.reserved.size}, the allocator counts ${state.alloc.used} in use`);
  if (state.names.size !== state.files.size) add(`${state.names.size} names for ${state.files.size} files`);
  if (state.files.size > g.maxFiles) add(`${state.files.size} files, above the limit of ${g.maxFiles}`);
  return problems;
}
