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
  return b.readUInt32LE(at) + b.readUInt32LE(at + 4) * TWO32;
}

/** A bigint in [0, 2^64) (a session token), else EINVAL naming `what`. */
export function checkU64(what: string, v: unknown): bigint {
  if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) {
    throw daxError('EINVAL', `${what} must be a bigint in [0, 2^64), got ${String(v)}`);
  }
  return v;
}
