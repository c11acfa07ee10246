// Stores into a private mapping must never be lost to a revoke. A worker stores into
// pages of its private mapping that it has just read (answered, not yet its own) while
// the main thread punches or zeroes every other one of them. As with Linux, a store
// that lands before the revoke makes the page the mapping's own (kept), one that
// lands after it copies the hole: either way the stored byte reads back. Rounds: DAXMAP_PRIVATE_RACE_ROUNDS (default 150).
import t from 'tap';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { forBackings, FIXTURES, PAGE, checkLockdep } from './helpers';

const ROUNDS = Number(process.env.DAXMAP_PRIVATE_RACE_ROUNDS ?? 150);
const GROUP = 64; // pages per round: all stored to, the odd ones revoked meanwhile

async function waitAbove(a: Int32Array, i: number, v: number): Promise<void> {
  while (Atomics.load(a, i) <= v) await Atomics.waitAsync(a, i, Atomics.load(a, i), 1000).value;
}

for (const op of ['punchHole', 'zeroRange'] as const) {
  for (const faultAround of [true, false]) {
    forBackings(t, `${op} of other pages never loses a store to a private mapping (faultAround ${faultAround})`, async (t, { pool }) => {
      const f = await pool.openFile('r', { create: true });
      await f.write(Buffer.alloc(ROUNDS * GROUP * PAGE, 0xaa), 0);
      const sab = new SharedArrayBuffer(16);
      const ctl = new Int32Array(sab);
      const s = pool.share();
      const w = new Worker(path.join(FIXTURES, 'private-writer.js'), {
        workerData: { shared: s, name: 'r', faultAround, sab }, transferList: s.transferList, execArgv: [],
      });
      const msgs: any[] = [];
      let wake: (() => void) | null = null;
      w.on('message', (m) => { msgs.push(m); wake?.(); });
      w.on('error', (e) => { msgs.push({ error: String(e) }); wake?.(); });
      const next = async (): Promise<any> => {
        while (msgs.length === 0) await new Promise<void>((r) => (wake = r));
        const m = msgs.shift();
        if (m.error) throw new Error(m.error);
        return m;
      };
      t.ok((await next()).ready);
      let lost = 0;
      let lostRounds = 0;
      let badReads = 0;
      let before = 0;
      let after = 0;
      for (let r = 0; r < ROUNDS; r++) {
        const base = r * GROUP;
        const pages = Array.from({ length: GROUP }, (_, i) => base + i);
        w.postMessage({ round: r, pages });
        await waitAbove(ctl, 1, r); // the worker has read its pages
        Atomics.store(ctl, 0, r + 1);
        Atomics.notify(ctl, 0);
        await Promise.all(pages.filter((p) => p % 2 === 1).map((p) => f[op](p * PAGE, PAGE)));
        Atomics.store(ctl, 2, r + 1);
        Atomics.notify(ctl, 2);
        const res = await next();
        if (res.sum !== GROUP * 0xaa) badReads++;
        before += res.before;
        after += res.after;
        if (res.lost.length) {
          lost += res.lost.length;
          lostRounds++;
        }
      }
      t.comment(`${op} faultAround=${faultAround}: ${lost} stores lost in ${lostRounds} of ${ROUNDS} rounds`);
      t.equal(badReads, 0, 'every round read the file before its stores');
      t.equal(lost, 0, 'no store to the private mapping was lost');
      // The race was run: stores landed on both sides of the revokes.
      t.ok(before > 0 && after > 0, `revoked pages stored to before their revoke (${before}) and after it (${after})`);
      await w.terminate();
      await checkLockdep(t, pool);
    }, { size: 128 << 20, hugetlb: true });
  }
}

forBackings(t, 'a private mapping holds no windows: it takes none of the budget and eviction never touches it', async (t, { pool, backing }) => {
  // The shared mapping's windows come from faults: nothing decided ahead at map().
  // On a 2 MiB-granular device each is a whole unit (2 for this file, docs/pool.md):
  // a budget of 1 makes them evict there.
  const granular = backing === 'hugetlbfs';
  await pool.request('configure', [{ windowBudget: granular ? 1 : 8, decided: 'off' }]);
  const f = await pool.openFile('e', { create: true });
  await f.write(Buffer.alloc(4 << 20, 0x11), 0);
  const p = await f.map({ private: true, faultAround: false });
  const s = await f.map({ faultAround: false });
  const w0 = (await pool.stats()).installedWindows;
  for (let i = 0; i < 64; i++) t.equal(p.buffer[i * PAGE], 0x11);
  for (let i = 0; i < 64; i += 2) p.buffer[i * PAGE + 1] = i + 1;
  t.equal((await pool.stats()).installedWindows, w0, 'private pages are not windows');
  const e0 = (await pool.stats()).evictions;
  for (let i = 0; i < (granular ? 1024 : 512); i++) s.buffer[i * PAGE + 2] = 0x22; // shared windows, far past the budget
  const st = await pool.stats();
  t.ok(st.evictions > e0, `shared windows were evicted (${st.evictions - e0})`);
  let kept = 0;
  for (let i = 0; i < 64; i += 2) if (p.buffer[i * PAGE + 1] === i + 1) kept++;
  t.equal(kept, 32, 'every private store is still there');
  t.equal(p.buffer[PAGE * 3 + 2], 0x11, 'a page the private mapping read keeps the bytes it copied');
  await p.unmap();
  await s.unmap();
}, { hugetlb: true });
