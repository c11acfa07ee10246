// Byte access to a Storage across its 1 GiB view chunks, and little-endian helpers
// for 64-bit fields (stored as two u32 so values stay plain safe-integer numbers).

import { CHUNK_SIZE, type Storage } from '../device/storage';

/** Copy [offset, offset+length) out of storage (a view when it lies inside one chunk). */
export function readBytes(s: Storage, offset: number, length: number, copy = false): Buffer {
  if (length === 0) return Buffer.alloc(0);
  const c0 = Math.floor(offset / CHUNK_SIZE);
  const c1 = Math.floor((offset + length - 1) / CHUNK_SIZE);
  if (c0 === c1) {
    const v = s.view(offset, length);
    return copy ? Buffer.from(v) : v;
  }
  const out = Buffer.allocUnsafe(length);
  for (let done = 0; done < length;) {
    const off = offset + done;
    const n = Math.min(CHUNK_SIZE - (off % CHUNK_SIZE), length - done);
    s.view(off, n).copy(out, done);
    done += n;
  }
  return out;
}

export function writeBytes(s: Storage, offset: number, src: Uint8Array, srcStart = 0, length = src.length - srcStart): void {
  for (let done = 0; done < length;) {
    const off = offset + done;
    const n = Math.min(CHUNK_SIZE - (off % CHUNK_SIZE), length - done);
    s.view(off, n).set(src.subarray(srcStart + done, srcStart + done + n));
    done += n;
  }
}

export function fillBytes(s: Storage, offset: number, length: number, value = 0, populate = false, resident = false): void {
  // Whole pages of zeros: let the device do it without touching the memory (on
  // tmpfs the pages are simply freed; the next touch gets a fresh zeroed page),
  // unless the pages are wanted resident (`populate`: the reserve's stock, through
  // the view; `resident`: a fault's 2 MiB window, zeros written by the device).
  if (value === 0 && !populate && s.zero && offset % 4096 === 0 && length % 4096 === 0 && length > 0) {
    s.zero(offset, length, resident);
    return;
  }
  for (let done = 0; done < length;) {
    const off = offset + done;
    const n = Math.min(CHUNK_SIZE - (off % CHUNK_SIZE), length - done);
    s.view(off, n).fill(value);
    done += n;
  }
}

export { readU64, writeU64 } from '../util/u64';

export const align8 = (n: number): number => (n + 7) & ~7;
