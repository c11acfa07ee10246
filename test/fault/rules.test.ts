// The seven rules (docs/fault-policy.md) that are about faults racing each other. The
// others are covered where they live (see docs/fault-policy.md): the lock
// primitives refuse a release of a lock not held (test/lock), every test runs with
// the lock validator on and fails on an order cycle or a lock held past its
// operation (the services here included), failing faults release everything
// (policy.test.ts), stale data never shows (revoke.test.ts).
import t from 'tap';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { forBackings, FIXTURES, PAGE, HUGE } from './helpers';

/** Waits (on the workers' Atomics.notify, not by polling) until a[0] >= n; fails after `ms`. */
async function counted(a: Int32Array, n: number, what: string, ms = 60000): Promise<void> {
  const waitAsync = (Atomics as unknown as { waitAsync(this: void, a: Int32Array, i: number, v: number, ms: number): { async: boolean; value: Promise<string> | string } }).waitAsync;
  const end = Date.now() + ms;
  for (let v = Atomics.load(a, 0); v < n; v = Atomics.load(a, 0)) {
    const left = end - Date.now();
    if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for ${what} (${v} of ${n})`);
    const w = waitAsync(a, 0, v, left);
    if (w.async) await w.value;
  }
}

for (const [label, faultAround, stride] of [['4 KiB path', false, PAGE], ['2 MiB path', true, HUGE]] as const) {
  forBackings(t, `rule 1: simultaneous write faults on one hole, ${label}: no store is lost`, async (t, { pool, backing }) => {
    const N = 3;
    const rounds = faultAround ? 24 : 96;
    // Every round's window must be taken by racing faults, not installed ahead of a
    // writer that continues its stream from the round before (ahead.ts).
    await pool.request('configure', [{ ahead: 0 }]);
    const f = await pool.openFile('race', { create: true });
    await f.truncate(rounds * stride);
    const sab = new SharedArrayBuffer(8);
    const gen = new Int32Array(sab, 0, 1);
    const done = new Int32Array(sab, 4, 1);
    const workers = Array.from({ length: N }, (_, id) => {
      const shared = pool.share();
      return new Worker(path.join(FIXTURES, 'racer-worker.js'), {
        execArgv: [],
        workerData: { shared, id, rounds, stride, faultAround, sab },
        transferList: shared.transferList,
      });
    });
    const ready = await Promise.all(workers.map((w) => new Promise((res) => w.once('message', res))));
    t.same(ready, Array(N).fill('ready'));
    const finished = Promise.all(workers.map((w) => new Promise((res) => w.once('message', res))));
    for (let r = 0; r < rounds; r++) {
      // Release every worker at once into the round's untouched window.
      Atomics.store(gen, 0, r + 1);
      Atomics.notify(gen, 0);
      await counted(done, (r + 1) * N, `round ${r}: every worker's stores`);
    }
    t.same(await finished, Array(N).fill('finished'));
    await Promise.all(workers.map((w) => w.terminate()));
    const data = Buffer.alloc(rounds * stride);
    await f.read(data, 0);
    let lost = 0;
    for (let r = 0; r < rounds; r++) {
      for (let id = 0; id < N; id++) {
        for (let k = 0; k < 4; k++) if (data[r * stride + k * 997 + id * 13] !== id + 1) lost++;
      }
    }
    t.equal(lost, 0, `all ${rounds * N * 4} stores are present: the winner's store is never zeroed by a loser`);
    const st = await f.stat();
    const s = await pool.stats();
    t.equal(s.sigbus, 0);
    if (backing === 'hugetlbfs' && !faultAround) {
      // A 2 MiB-granular device has no 4 KiB path (docs/pool.md, "2 MiB-granular
      // devices"): the first racing write fault allocates the whole unit and each
      // mapping installs it whole, so later rounds fault no more.
      t.equal(st.allocated, Math.ceil((rounds * stride) / HUGE) * HUGE, 'the unit was allocated once');
      t.ok(s.write >= N, `every mapping took its own write fault (${s.write} write faults)`);
      t.ok(s.pmd >= N, `each answered with the whole window (${s.pmd})`);
      return;
    }
    t.equal(st.allocated, rounds * stride, 'each window was allocated once');
    t.ok(s.write >= rounds * N, `every mapping took its own write fault each round (${s.write} write faults)`);
    // Each worker's first store of a round is at its chunk's start, where the last
    // round's window ended: a sequential writer, answered with whole windows.
    if (faultAround) t.ok(s.pmd >= rounds * N, `the racing faults took the 2 MiB path (${s.pmd} whole windows)`);
  }, { hugetlb: true });
}
