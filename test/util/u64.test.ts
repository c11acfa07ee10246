// The u64 fields of the frames and the pool's records read back as the numbers
// written, on both sides of the boundaries where their representation changes (a
// small integer below 2^31, a double above; readU64's shortcut below 2^32).
import t from 'tap';
import { readU64, writeU64 } from '../../dist/util/u64.js';
import { EV_NOTE, decodeEvent, encodeEvent, noteDevOffset } from '../../dist/native/frames.js';

const values = [0, 1, 4096, 2 ** 31 - 4096, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 4096, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 4096, 2 ** 44, 2 ** 53 - 1];

t.test('readU64 reads back every value writeU64 wrote', async (t) => {
  const b = Buffer.alloc(16);
  for (const v of values) {
    b.fill(0xa5);
    writeU64(b, 4, v);
    t.equal(readU64(b, 4), v, `${v}`);
    t.equal(b.readBigUInt64LE(4), BigInt(v), `${v} as the bytes of a u64`);
  }
});

t.test('a note\'s device offset reads back whole, below and above 2^31', async (t) => {
  const b = Buffer.alloc(32);
  for (const v of values) {
    encodeEvent(b, 0, { region: 3, flags: EV_NOTE, count: 1, offset: 8192, tid: 1, seq: 2, timeNs: BigInt(v) });
    const ev = decodeEvent(b, 0);
    t.equal(noteDevOffset(ev), v, `${v}`);
    t.equal(ev.offset, 8192);
  }
});
