// Shared helpers for pool tests: memory pools, a seeded PRNG, stamped data.
import { MemoryStorage } from '../../dist/device/storage.js';
import { PoolFs, PoolFsFile, coreOf } from '../../dist/pool/pool-fs.js';

export const B = 4096;

export function memPool(size = 16 << 20, opts: { trackPersistence?: boolean; logBytes?: number; maxFiles?: number; deferConversion?: boolean; writebackMs?: number } = {}): { pool: PoolFs; storage: MemoryStorage } {
  const storage = new MemoryStorage(size, { trackPersistence: opts.trackPersistence === true });
  const fmt: { logBytes?: number; maxFiles?: number; deferConversion?: boolean; writebackMs?: number } = {};
  if (opts.logBytes !== undefined) fmt.logBytes = opts.logBytes;
  if (opts.maxFiles !== undefined) fmt.maxFiles = opts.maxFiles;
  if (opts.deferConversion !== undefined) fmt.deferConversion = opts.deferConversion;
  if (opts.writebackMs !== undefined) fmt.writebackMs = opts.writebackMs;
  const pool = PoolFs.createOn(storage, fmt);
  return { pool, storage };
}

/** Reopen a pool over the same bytes (a clean close must already have happened, or this models a crash with no loss). */
export function reopenFrom(storage: MemoryStorage, img?: Buffer[], track = false): { pool: PoolFs; storage: MemoryStorage } {
  const s = new MemoryStorage(storage.size, { from: img ?? storage.crashImage(), trackPersistence: track });
  return { pool: PoolFs.openOn(s), storage: s };
}

/** mulberry32: small, fast, reproducible. */
export function rng(seed: number): { next(): number; int(n: number): number; pick<T>(a: readonly T[]): T; chance(p: number): boolean } {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    pick: (a) => a[Math.floor(next() * a.length)]!,
    chance: (p) => next() < p,
  };
}

/** Bytes that identify the operation that wrote them (never zero): fsx's stamp. */
export function stamp(op: number, fileOffset: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = ((op * 131 + ((fileOffset + i) >>> 0) * 7 + ((fileOffset + i) >>> 8)) % 255) + 1;
  return b;
}

export function checkClean(pool: PoolFs): string[] {
  return coreOf(pool).checkState();
}

/** True when `needle` (a recognisable pattern, at least 16 bytes) occurs in `hay`. */
export function contains(hay: Buffer, needle: Buffer): boolean {
  return hay.indexOf(needle) >= 0;
}

/** The whole of a file, read through the pool. */
export async function readAll(f: PoolFsFile): Promise<Buffer> {
  const b = Buffer.alloc((await f.stat()).size);
  await f.read(b, 0);
  return b;
}

/**
 * Pages of `b` after a crash: `foreign`, the first page holding a byte that is neither
 * 0 nor its own byte `own(page)` (-1 if none: a page reads as never stored, as its own
 * stores, or as both); `torn`, the pages that mix the two. A child killed while it
 * fills a page (a `fill` of 4 KiB is many stores) leaves that one page torn.
 */
export function checkPages(b: Buffer, own: (page: number) => number): { foreign: number; torn: number[] } {
  const torn: number[] = [];
  for (let p = 0; p * B < b.length; p++) {
    const page = b.subarray(p * B, (p + 1) * B);
    const v = own(p);
    let zeros = 0;
    let mine = 0;
    for (const x of page) {
      if (x === 0) zeros++;
      else if (x === v) mine++;
      else return { foreign: p, torn };
    }
    if (zeros > 0 && mine > 0) torn.push(p);
  }
  return { foreign: -1, torn };
}

/**
 * The first page of `b` that is neither all zeros nor all its own byte `own(page)`,
 * or -1: after a crash, every page must read as never stored or as its own stores.
 */
export function firstForeignPage(b: Buffer, own: (page: number) => number): number {
  for (let p = 0; p * B < b.length; p++) {
    const page = b.subarray(p * B, (p + 1) * B);
    const v = page[0]!;
    if ((v !== 0 && v !== own(p)) || !page.every((x) => x === v)) return p;
  }
  return -1;
}
