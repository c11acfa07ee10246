// Zeroing off the calling thread (Storage.zeroPersistAsync, the addon's
// deviceZeroPersistAsync): what the pool's reserve refill zeroes its blocks with
// (docs/pool.md, "Reserve"). The zeros land over exactly the ranges named, the pages
// are left resident (written, not punched), bad ranges are refused, and a closed
// device refuses it.
import t from 'tap';
import fs from 'node:fs';
import { native } from '../../dist/native/addon';
import { tempDevice } from './helpers';

const PAGE = 4096;
const raw = native() as unknown as Record<string, (...args: unknown[]) => any>;
const F = (...v: number[]): Float64Array => Float64Array.from(v);

for (const kind of ['tmpfs', 'disk'] as const) {
  t.test(`${kind}: the ranges read zeros afterwards, the rest keeps its bytes`, async (t) => {
    const { dev, cleanup } = tempDevice(kind, 64 * PAGE);
    t.teardown(cleanup);
    dev.view(0, 64 * PAGE).fill(0xa5);
    dev.persist(0, 64 * PAGE);
    // two runs: pages 2..4 and 10; persisted as one span
    await dev.zeroPersistAsync(F(2 * PAGE, 3 * PAGE, 10 * PAGE, PAGE), F(2 * PAGE, 9 * PAGE));
    const all = Buffer.from(dev.view(0, 64 * PAGE));
    const zeroPage = (p: number): boolean => all.subarray(p * PAGE, (p + 1) * PAGE).every((x) => x === 0);
    const bad: number[] = [];
    for (let p = 0; p < 64; p++) {
      const want = (p >= 2 && p < 5) || p === 10;
      if (zeroPage(p) !== want) bad.push(p);
      if (!want && !all.subarray(p * PAGE, (p + 1) * PAGE).every((x) => x === 0xa5)) bad.push(p);
    }
    t.same(bad, [], 'pages 2-4 and 10 zero, every other page untouched');
  });
}

t.test('tmpfs: the zeros are written, so the pages are resident afterwards', async (t) => {
  const { dev, path, cleanup } = tempDevice('tmpfs', 256 * PAGE);
  t.teardown(cleanup);
  dev.zero(0, 256 * PAGE); // a hole punched: nothing resident
  const before = fs.statSync(path).blocks;
  await dev.zeroPersistAsync(F(0, 128 * PAGE), F(0, 128 * PAGE));
  const after = fs.statSync(path).blocks;
  // st_blocks counts 512-byte units: 128 pages are 1,024 of them
  t.ok(after - before >= 1024, `128 pages allocated by the zeroing (st_blocks ${before} → ${after})`);
  t.ok(Buffer.from(dev.view(0, 128 * PAGE)).every((x) => x === 0), 'and they read zeros');
});

t.test('bad ranges are EINVAL, a closed device ECLOSED', async (t) => {
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  let closed = false;
  t.teardown(() => { if (!closed) cleanup(); });
  await t.rejects(dev.zeroPersistAsync(F(1, PAGE), F()), { code: 'EINVAL' }, 'an unaligned offset');
  await t.rejects(dev.zeroPersistAsync(F(0, PAGE + 1), F()), { code: 'EINVAL' }, 'an unaligned length');
  await t.rejects(dev.zeroPersistAsync(F(15 * PAGE, 2 * PAGE), F()), { code: 'EINVAL' }, 'past the end');
  await t.rejects(dev.zeroPersistAsync(F(), F(16 * PAGE, PAGE)), { code: 'EINVAL' }, 'a persist range past the end');
  // the addon itself refuses what the TypeScript layer would have caught
  const d = dev.deviceId;
  await t.rejects(raw.deviceZeroPersistAsync(d, F(16 * PAGE, PAGE), F()), { code: 'EINVAL' }, 'addon: zero range outside the device (rejects)');
  t.throws(() => raw.deviceZeroPersistAsync(d, [0, PAGE], F()), { name: 'TypeError', code: 'EINVAL' }, 'addon: ranges not a Float64Array');
  t.throws(() => raw.deviceZeroPersistAsync(d, new Uint32Array(2), F()), { name: 'TypeError', code: 'EINVAL' }, 'addon: another typed array');
  t.throws(() => raw.deviceZeroPersistAsync(d, F(0), F()), { name: 'RangeError', code: 'EINVAL' }, 'addon: an odd count of numbers');
  t.throws(() => raw.deviceZeroPersistAsync(d, F(), F(0, -1)), { name: 'RangeError', code: 'EINVAL' }, 'addon: a negative length');
  t.throws(() => raw.deviceZeroPersistAsync(d, F(NaN, PAGE), F()), { name: 'RangeError', code: 'EINVAL' }, 'addon: NaN');
  t.throws(() => raw.deviceZeroPersistAsync(d, F(0.5, PAGE), F()), { name: 'RangeError', code: 'EINVAL' }, 'addon: a fraction');
  t.throws(() => raw.deviceZeroPersistAsync(d, F(2 ** 53, PAGE), F()), { name: 'RangeError', code: 'EINVAL' }, 'addon: 2^53');
  cleanup();
  closed = true;
  await t.rejects(dev.zeroPersistAsync(F(0, PAGE), F()), { code: 'ECLOSED' }, 'after close');
  t.throws(() => raw.deviceZeroPersistAsync(d, F(0, PAGE), F()), { code: 'EPERM' }, 'addon: a closed device id');
});
