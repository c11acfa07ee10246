// Unsigned 64-bit fields of the binary formats (the pool's media, the fault frames,
// the socket wire): little-endian, read and written as JS numbers where the value is
// known to stay below 2^53 (offsets, lengths, tags), or checked as bigints.
import { daxError } from '../errors';

export const TWO32 = 0x1_0000_0000;

export function writeU64(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v % TWO32, at);
  b.writeUInt32LE(Math.floor(v / TWO32), at + 4);
}

export function readU64(b: Buffer, at: number): number {
  const lo = b.readUInt32LE(at);
  const hi = b.readUInt32LE(at + 4);
  // A value below 2^32 is returned as read, not through the multiplication by TWO32
  // (a heap number): that made every offset a double, so the objects the frames and
  // records decode into held boxed doubles and their fields changed representation
  // when a small integer came in another way, deoptimising the code that read them
  // (docs/faults.md, "The service worker's JIT").
  return hi === 0 ? lo : lo + hi * TWO32;
}

/** A bigint in [0, 2^64) (a session token), else EINVAL naming `what`. */
export function checkU64(what: string, v: unknown): bigint {
  if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) {
    throw daxError('EINVAL', `${what} must be a bigint in [0, 2^64), got ${String(v)}`);
  }
  return v;
}
