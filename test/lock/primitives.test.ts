import t from 'tap';
import { Mutex, RwLock, RangeLock, KeyedMutex, RANGE_END, withOperation } from '../../dist/lock/index.js';
import { useLockdep } from './guard.ts';

useLockdep(t);

const tick = () => new Promise<void>((r) => setImmediate(r));

t.test('mutex: exclusive, FIFO, release in finally', async (t) => {
  const m = new Mutex('test-a');
  const order: number[] = [];
  let inside = 0;
  let maxInside = 0;
  await Promise.all([1, 2, 3, 4].map((i) => withOperation(`w${i}`, async () => {
    const h = await m.acquire();
    try {
      inside++; maxInside = Math.max(maxInside, inside);
      order.push(i);
      await tick();
      inside--;
    } finally { h.release(); }
  })));
  t.equal(maxInside, 1);
  t.same(order, [1, 2, 3, 4]);
  t.equal(m.locked, false);
});

t.test('releasing a handle twice, or a foreign handle, throws and changes nothing', async (t) => {
  const m = new Mutex('test-a');
  const other = new Mutex('test-a');
  const h = await m.acquire();
  t.equal(h.held, true);
  t.throws(() => other.release(h), { code: 'EINVAL' });
  t.equal(m.locked, true);
  h.release();
  t.equal(h.held, false);
  t.throws(() => h.release(), { code: 'EINVAL' });
  t.throws(() => m.release(h), { code: 'EINVAL' });
  t.throws(() => m.release({ held: true, release() {} }), { code: 'EINVAL' });
  // still usable
  const h2 = m.tryAcquire();
  t.ok(h2);
  t.equal(m.tryAcquire(), null);
  h2!.release();
});

t.test('rwlock: readers share, a waiting writer is not starved', async (t) => {
  const l = new RwLock('test-rw');
  const r1 = await l.acquireRead();
  const r2 = await l.acquireRead();
  const events: string[] = [];
  const w = l.acquireWrite().then((h) => { events.push('w'); return h; });
  const r3 = l.acquireRead().then((h) => { events.push('r3'); return h; });
  await tick();
  t.same(events, [], 'writer waits for readers, later reader waits behind the writer');
  t.equal(l.tryAcquireRead(), null);
  r1.release(); r2.release();
  const wh = await w;
  await tick();
  t.same(events, ['w']);
  wh.release();
  (await r3).release();
  t.same(events, ['w', 'r3']);
  const tw = l.tryAcquireWrite();
  t.ok(tw);
  tw!.release();
});

t.test('range lock: overlap rules', async (t) => {
  const l = new RangeLock('range', 'file');
  const a = await l.acquireShared(0, 100);
  const b = await l.acquireShared(50, 150);
  t.equal(l.holdCount, 2, 'shared ranges overlap');
  const c = await l.acquireExclusive(150, 200);
  t.equal(l.holdCount, 3, 'disjoint exclusive granted at once');
  t.equal(l.tryAcquire(120, 160, 'exclusive'), null, 'exclusive conflicts with any overlap');
  t.equal(l.tryAcquire(160, 170, 'shared'), null, 'shared conflicts with exclusive');
  let got = false;
  const p = l.acquireExclusive(90, 120).then((h) => { got = true; return h; });
  await tick();
  t.equal(got, false);
  const d = l.tryAcquire(300, RANGE_END, 'exclusive');
  t.ok(d, 'a disjoint request is granted past a blocked waiter');
  a.release();
  await tick();
  t.equal(got, false, 'still overlaps b');
  b.release();
  const e = await p;
  t.equal(got, true);
  for (const h of [c, d!, e]) h.release();
  t.equal(l.holdCount, 0);
  t.equal(l.waiterCount, 0);
});

t.test('range lock: waiting exclusive is not starved by a stream of shared', async (t) => {
  const l = new RangeLock('range', 'file');
  let held = await l.acquireShared(0, 10);
  let excl = false;
  const ex = l.acquireExclusive(5, 6).then((h) => { excl = true; return h; });
  // a stream of overlapping readers, each one asks before the previous releases
  for (let i = 0; i < 5; i++) {
    const next = l.acquireShared(0, 10);
    held.release();
    await tick();
    if (excl) {
      (await ex).release();
      (await next).release();
      break;
    }
    held = await next;
  }
  t.equal(excl, true, 'exclusive got in after the first reader left');
});

t.test('range lock: disjoint waiter is granted even when an earlier waiter is blocked', async (t) => {
  const l = new RangeLock('range', 'file');
  const a = await l.acquireExclusive(0, 10);
  const blocked = l.acquireExclusive(5, 15);
  const b = await l.acquire(100, 200, 'exclusive'); // no conflict with holder; queue head is not overlapping
  t.ok(b.held);
  a.release();
  (await blocked).release();
  b.release();
});

t.test('range lock: bad ranges are EINVAL', async (t) => {
  const l = new RangeLock();
  t.throws(() => l.acquire(-1, 3, 'shared'), { code: 'EINVAL' });
  t.throws(() => l.acquire(5, 5, 'shared'), { code: 'EINVAL' });
  t.throws(() => l.acquire(1.5, 3, 'shared'), { code: 'EINVAL' });
  t.throws(() => l.tryAcquire(0, Infinity, 'shared'), { code: 'EINVAL' });
});

t.test('keyed mutex: per-key exclusion, entries dropped when free', async (t) => {
  const km = new KeyedMutex<number>('entry');
  const a = await km.acquire(1);
  const b = await km.acquire(2);
  t.equal(km.size, 2);
  let got = false;
  const p = km.acquire(1).then((h) => { got = true; return h; });
  await tick();
  t.equal(got, false);
  a.release();
  t.throws(() => a.release(), { code: 'EINVAL' });
  const c = await p;
  c.release(); b.release();
  t.equal(km.size, 0);
  const x = km.tryAcquire(7);
  t.ok(x);
  t.equal(km.tryAcquire(7), null);
  const y = km.tryAcquire(8);
  x!.release();
  t.throws(() => x!.release(), { code: 'EINVAL' });
  y!.release();
  t.equal(km.size, 0);
});
