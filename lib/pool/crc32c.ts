// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven slice-by-8.
// Used for every checksum in the on-media format (docs/pool-format.md).

const POLY = 0x82f63b78;
const T = new Uint32Array(8 * 256);
for (let i = 0; i < 256; i++) {
  let c = i;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[i] = c >>> 0;
}
for (let i = 0; i < 256; i++) {
  for (let t = 1; t < 8; t++) {
    const prev = T[(t - 1) * 256 + i]!;
    T[t * 256 + i] = ((prev >>> 8) ^ T[prev & 0xff]!) >>> 0;
  }
}

/**
 * CRC32C of buf[start, end). `seed` is a previous CRC to continue from (0 for a
 * fresh one): crc32c(b, crc32c(a)) === crc32c(a ++ b).
 */
export function crc32c(buf: Uint8Array, seed = 0, start = 0, end = buf.length): number {
  let crc = ~seed >>> 0;
  let i = start;
  const n8 = end - ((end - start) & 7);
  while (i < n8) {
    const a = (crc ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24))) >>> 0;
    const b = buf[i + 4]! | (buf[i + 5]! << 8) | (buf[i + 6]! << 16) | (buf[i + 7]! << 24);
    crc = T[1792 + (a & 0xff)]! ^ T[1536 + ((a >>> 8) & 0xff)]! ^ T[1280 + ((a >>> 16) & 0xff)]! ^ T[1024 + (a >>> 24)]! ^
      T[768 + (b & 0xff)]! ^ T[512 + ((b >>> 8) & 0xff)]! ^ T[256 + ((b >>> 16) & 0xff)]! ^ T[(b >>> 24) & 0xff]!;
    i += 8;
  }
  while (i < end) {
    crc = T[(crc ^ buf[i]!) & 0xff]! ^ (crc >>> 8);
    i++;
  }
  return ~crc >>> 0;
}
