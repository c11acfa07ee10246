import t from 'tap';
import { Mutex, RangeLock, lockdep, withOperation, outsideOperation, LOCK_ORDER } from '../../dist/lock/index.js';
import { useLockdep } from './guard.ts';

useLockdep(t);

t.test('the declared order is range -> entry -> alloc -> log', async (t) => {
  t.same([...LOCK_ORDER], ['range', 'entry', 'alloc', 'log']);
  const edges = lockdep.orderEdges();
  t.ok(edges.includes('range -> entry'));
  t.ok(edges.includes('alloc -> log'));
});

t.test('taking locks in order records no violation', async (t) => {
  const range = new RangeLock('range', 'f');
  const alloc = new Mutex('alloc');
  const log = new Mutex('log');
  await withOperation('ordered', async () => {
    const r = await range.acquireShared(0, 4096);
    try {
      const a = await alloc.acquire();
      try {
        const l = await log.acquire();
        l.release();
      } finally { a.release(); }
    } finally { r.release(); }
  });
  t.same(lockdep.violations(), []);
});

t.test('a deliberate inversion is caught', async (t) => {
  const alloc = new Mutex('alloc');
  const log = new Mutex('log');
  await withOperation('inverted', async () => {
    const l = await log.acquire();
    try {
      const a = await alloc.acquire();
      a.release();
    } finally { l.release(); }
  });
  const v = lockdep.violations();
  t.equal(v.length, 1);
  t.equal(v[0]!.kind, 'order');
  t.match(v[0]!.message, /taking alloc while holding log/);
  t.equal(v[0]!.operation, 'inverted');
  lockdep.reset();
});

t.test('an inversion between two undeclared classes is caught once both orders are seen', async (t) => {
  const x = new Mutex('test-x');
  const y = new Mutex('test-y');
  await withOperation('xy', async () => {
    const a = await x.acquire(); const b = await y.acquire(); b.release(); a.release();
  });
  t.same(lockdep.violations(), []);
  await withOperation('yx', async () => {
    const b = await y.acquire(); const a = await x.acquire(); a.release(); b.release();
  });
  const v = lockdep.violations();
  t.equal(v.length, 1);
  t.match(v[0]!.message, /test-x -> test-y \(first in xy\)/);
  lockdep.reset();
});

t.test('a leaked lock is reported when its operation ends', async (t) => {
  const m = new Mutex('test-leak', 'leaky');
  let h;
  await withOperation('leaker', async () => { h = await m.acquire(); });
  const v = lockdep.violations();
  t.equal(v.length, 1);
  t.equal(v[0]!.kind, 'leak');
  t.match(v[0]!.message, /leaky/);
  h!.release();
  lockdep.reset();
});

t.test('a leaked lock is reported also when the operation throws', async (t) => {
  const m = new Mutex('test-leak');
  let h;
  await t.rejects(withOperation('thrower', async () => { h = await m.acquire(); throw new Error('x'); }), /x/);
  t.equal(lockdep.violations()[0]?.kind, 'leak');
  h!.release();
  lockdep.reset();
});

t.test('self-deadlock throws instead of hanging', async (t) => {
  const m = new Mutex('test-self');
  const r = new RangeLock('range', 'f');
  await withOperation('self', async () => {
    const h = await m.acquire();
    t.throws(() => m.acquire(), /self|already holds/);
    h.release();
    const a = await r.acquireShared(0, 10);
    t.throws(() => r.acquireShared(5, 20), /already holds/);
    const b = await r.acquireShared(10, 20); // disjoint on the same lock: fine
    b.release(); a.release();
  });
  t.equal(lockdep.violations().filter((v) => v.kind === 'self-deadlock').length, 2);
  lockdep.reset();
});

t.test('work started outside an operation does not inherit its locks (a channel drained inside a take-back)', async (t) => {
  const r = new RangeLock('range', 'f');
  let inner: Promise<void> = Promise.resolve();
  await withOperation('take-back', async () => {
    const h = await r.acquireShared(0, 100);
    // What a synchronously drained channel starts: a fault and a timer's batch, each
    // its own operation, taking the same range shared while the take-back holds it.
    inner = outsideOperation(() => {
      const timer = new Promise<void>((res) => setTimeout(() => void withOperation('batch', async () => {
        (await r.acquireShared(0, 100)).release();
      }).then(res), 1));
      return Promise.all([withOperation('fault', async () => { (await r.acquireShared(0, 4096)).release(); }), timer]).then(() => undefined);
    });
    await inner;
    h.release();
  });
  await inner;
  t.same(lockdep.violations(), [], 'no self-deadlock reported: the fault and the batch are operations of their own');
  // The same nesting inside the operation is what the validator reports.
  await withOperation('take-back', async () => {
    const h = await r.acquireShared(0, 100);
    await withOperation('fault', async () => { t.throws(() => r.acquireShared(0, 4096), /already holds/); });
    h.release();
  });
  t.equal(lockdep.violations().filter((v) => v.kind === 'self-deadlock').length, 1);
  lockdep.reset();
});

t.test('two locks of one class need a nesting annotation', async (t) => {
  const a = new Mutex('test-n', 'n1');
  const b = new Mutex('test-n', 'n2');
  await withOperation('nest', async () => {
    const x = await a.acquire(); const y = await b.acquire(); y.release(); x.release();
  });
  t.equal(lockdep.violations()[0]?.kind, 'nesting');
  lockdep.reset();
  await withOperation('nest-annotated', async () => {
    const x = await a.acquire(); const y = await b.acquire({ nested: true }); y.release(); x.release();
  });
  t.same(lockdep.violations(), []);
});

t.test('nested operations see their parent locks; the leak check is per operation', async (t) => {
  const alloc = new Mutex('alloc');
  const log = new Mutex('log');
  await withOperation('outer', async () => {
    const l = await log.acquire();
    await withOperation('inner', async () => {
      const a = await alloc.acquire();
      a.release();
    });
    l.release();
  });
  const v = lockdep.violations();
  t.equal(v.length, 1);
  t.equal(v[0]!.operation, 'outer > inner');
  lockdep.reset();
});

t.test('trylock records no order edge', async (t) => {
  const alloc = new Mutex('alloc');
  const log = new Mutex('log');
  await withOperation('try', async () => {
    const l = await log.acquire();
    const a = alloc.tryAcquire();
    t.ok(a);
    a!.release();
    l.release();
  });
  t.same(lockdep.violations(), []);
});

t.test('disabled: no tracking, withOperation is a plain call', async (t) => {
  lockdep.disable();
  try {
    const m = new Mutex('test-off');
    let h;
    const r = await withOperation('off', async () => { h = await m.acquire(); return 7; });
    t.equal(r, 7);
    t.same(lockdep.violations(), []);
    h!.release();
  } finally { lockdep.enable(); }
});

t.test('onViolation callback and assertClean', async (t) => {
  const seen: string[] = [];
  lockdep.onViolation = (v) => seen.push(v.kind);
  lockdep.report('leak', null, 'synthetic');
  lockdep.onViolation = null;
  t.same(seen, ['leak']);
  t.throws(() => lockdep.assertClean(), /synthetic/);
  lockdep.reset();
  t.doesNotThrow(() => lockdep.assertClean());
});
