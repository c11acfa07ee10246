// Random 8-byte reads in a tight C loop (reads.c, compiled on first use like kmap.c):
// the TLB-bound row of the benchmark table (docs/bench.md, row 13).
import { buildAddon } from './kmap';

interface ReadsAddon {
  randomReads(ab: ArrayBuffer, count: number, seed: number): { ns: number; sum: bigint };
}

let addon: ReadsAddon | undefined;

/** `count` random 8-byte reads of `ab` (indices from `seed`): ns per read, and the words' sum mod 2^64. */
export function randomReads(ab: ArrayBuffer, count: number, seed: number): { nsPerRead: number; sum: bigint } {
  addon ??= buildAddon<ReadsAddon>('reads');
  const r = addon.randomReads(ab, count, seed);
  return { nsPerRead: r.ns / count, sum: r.sum };
}
