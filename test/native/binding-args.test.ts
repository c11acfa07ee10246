// Argument conversion in the native bindings: NaN, infinities, negatives,
// fractions, numbers beyond 2^53 and non-numbers are refused (EINVAL, or EBADF for
// a descriptor) before any integer conversion, which for them would be undefined
// behaviour or a silent truncation onto a real value.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../dist/native/addon';
import { TrappedRegion } from '../../dist/native/region';
import { FaultChannel } from '../../dist/native/channel';
import { A_WRITABLE } from '../../dist/native/frames';
import { tempDevice } from './helpers';

const PAGE = 4096;
// The addon with its argument types switched off: these tests pass what TS would refuse.
const raw = native() as unknown as Record<string, (...args: unknown[]) => any>;

// Each bad value, with the error class it must give: TypeError for what is not a
// number (or bigint), RangeError for a number that is not an integer in range.
const BAD: [string, unknown, 'TypeError' | 'RangeError'][] = [
  ['NaN', NaN, 'RangeError'],
  ['Infinity', Infinity, 'RangeError'],
  ['-Infinity', -Infinity, 'RangeError'],
  ['-1', -1, 'RangeError'],
  ['-4096', -4096, 'RangeError'],
  ['1.5', 1.5, 'RangeError'],
  ['4096.5', 4096.5, 'RangeError'],
  ['2^53', 2 ** 53, 'RangeError'],
  ['1e300', 1e300, 'RangeError'],
  ['-1n', -1n, 'RangeError'],
  ['2^64 n', 2n ** 64n, 'RangeError'],
  ['"4096"', '4096', 'TypeError'],
  ['undefined', undefined, 'TypeError'],
  ['null', null, 'TypeError'],
  ['{}', {}, 'TypeError'],
];

t.test('integer arguments: NaN, infinities, negatives, fractions, beyond 2^53 and non-numbers are EINVAL', async (t) => {
  const { dev, cleanup } = tempDevice('tmpfs', 4 * PAGE);
  t.teardown(cleanup);
  const r = new TrappedRegion(4 * PAGE);
  t.teardown(() => r.close());
  const ch = new FaultChannel(() => {}, { ref: false });
  t.teardown(() => ch.close());
  const d = dev.deviceId;
  const timeout = raw.agentStats().faultTimeoutMs;

  // [name, call with the bad value v]
  const sites: [string, (v: unknown) => unknown][] = [
    ['regionCreate length', (v) => raw.regionCreate(v)],
    ['regionBuffer id', (v) => raw.regionBuffer(v)],
    ['regionClose id', (v) => raw.regionClose(v)],
    ['regionBind id', (v) => raw.regionBind(v, 0)],
    ['regionBind channel', (v) => raw.regionBind(r.id, v)],
    ['regionSetDirect offset', (v) => raw.regionSetDirect(r.id, v, PAGE, d, 0, A_WRITABLE, PAGE)],
    ['regionSetDirect length', (v) => raw.regionSetDirect(r.id, 0, v, d, 0, A_WRITABLE, PAGE)],
    ['regionSetDirect device', (v) => raw.regionSetDirect(r.id, 0, PAGE, v, 0, A_WRITABLE, PAGE)],
    ['regionSetDirect device offset', (v) => raw.regionSetDirect(r.id, 0, PAGE, d, v, A_WRITABLE, PAGE)],
    ['regionSetDirect flags', (v) => raw.regionSetDirect(r.id, 0, PAGE, d, 0, v, PAGE)],
    ['regionSetDirect window', (v) => raw.regionSetDirect(r.id, 0, PAGE, d, 0, A_WRITABLE, v)],
    ['regionClearDirect offset', (v) => raw.regionClearDirect(r.id, v, PAGE)],
    ['regionClearDirect length', (v) => raw.regionClearDirect(r.id, 0, v)],
    ['deviceView offset', (v) => raw.deviceView(d, v, PAGE)],
    ['deviceView length', (v) => raw.deviceView(d, 0, v)],
    ['devicePersist offset', (v) => raw.devicePersist(d, v, PAGE)],
    ['deviceZero length', (v) => raw.deviceZero(d, 0, v)],
    ['deviceClose id', (v) => raw.deviceClose(v)],
    ['channelTake id', (v) => raw.channelTake(v, Buffer.alloc(64))],
    ['channelAbandon count', (v) => raw.channelAbandon(ch.id, Buffer.alloc(64), v)],
    ['channelClose id', (v) => raw.channelClose(v)],
    ['channelRef id', (v) => raw.channelRef(v, true)],
    ['channelCloseSocket id', (v) => raw.channelCloseSocket(v)],
    ['channelSocketInfo id', (v) => raw.channelSocketInfo(v)],
    ['agentConfigure faultTimeoutMs', (v) => raw.agentConfigure({ faultTimeoutMs: v })],
  ];
  for (const [site, call] of sites) {
    for (const [label, v, cls] of BAD) {
      // agentConfigure treats an absent (undefined) timeout as "leave it"
      if (site.startsWith('agentConfigure') && v === undefined) continue;
      let err: any;
      try {
        call(v);
      } catch (e) {
        err = e;
      }
      const got = err === undefined ? 'no error' : `${err.name} ${err.code}`;
      t.equal(got, `${cls} EINVAL`, `${site} = ${label}`);
    }
  }
  t.equal(raw.agentStats().faultTimeoutMs, timeout, 'no bad timeout was applied');

  // Device size: refused before any file is created.
  const p = path.join('/dev/shm', `daxmap-test-badsize-${process.pid}-${Date.now()}.dev`);
  t.teardown(() => fs.rmSync(p, { force: true }));
  for (const [label, v, cls] of BAD) {
    if (v === undefined) continue;  // absent: no size given
    t.throws(() => raw.deviceOpen(p, { create: true, size: v }), { name: cls, code: 'EINVAL' }, `deviceOpen size = ${label}`);
  }
  t.notOk(fs.existsSync(p), 'no device file was created');

  // File descriptors: EBADF, never descriptor 0 or a wrapped number.
  for (const [label, v, cls] of BAD) {
    const want = typeof v === 'bigint' ? 'TypeError' : cls;
    t.throws(() => raw.peerCred(v), { name: want, code: 'EBADF' }, `peerCred fd = ${label}`);
    t.throws(() => raw.channelOpenSocket(v, 1n), { name: want, code: 'EBADF' }, `channelOpenSocket fd = ${label}`);
  }
  t.throws(() => raw.peerCred(2 ** 31), { name: 'RangeError', code: 'EBADF' }, 'peerCred fd = 2^31 (beyond int)');
  t.throws(() => raw.channelOpenSocket(0, -1n), { name: 'RangeError', code: 'EINVAL' }, 'channelOpenSocket session = -1n');
  t.throws(() => raw.channelConnectSocket('/nonexistent/daxmap.sock', NaN), { name: 'RangeError', code: 'EINVAL' },
    'channelConnectSocket session = NaN, refused before connecting');

  // Ids above 2^32 are not truncated onto a real id.
  t.throws(() => raw.regionClearDirect(2 ** 32 + r.id, 0, PAGE), { name: 'RangeError', code: 'EINVAL' }, 'region id 2^32 + id');
  t.throws(() => raw.regionSetDirect(r.id, 0, PAGE, d, 0, 256 | A_WRITABLE, PAGE), { name: 'RangeError', code: 'EINVAL' }, 'flags beyond 8 bits');

  // Buffers that would need a misaligned store, or the wrong element type.
  t.throws(() => raw.execute(new Uint8Array(0), new Uint8Array(8)), { name: 'TypeError', code: 'EINVAL' }, 'execute results must be an Int32Array');
  t.throws(() => raw.channelTake(ch.id, Buffer.alloc(65).subarray(1)), { name: 'RangeError', code: 'EINVAL' }, 'a misaligned event buffer');

  // What is valid still is: bigints, -0, the largest safe integer (refused by the range check, not the conversion).
  t.doesNotThrow(() => raw.regionClearDirect(BigInt(r.id), -0, BigInt(PAGE)), 'bigint and -0 arguments');
  t.throws(() => raw.deviceView(d, 2 ** 53 - 1, 1), { name: 'Error', code: 'EINVAL', message: /outside the mapped device/ }, '2^53 - 1 converts');
  t.equal(raw.deviceView(d, PAGE, PAGE).length, PAGE, 'a good view');
  t.equal(raw.channelTake(ch.id, Buffer.alloc(64)), 0, 'an aligned take of an idle channel');
});
