// Adaptive fault-around for writes: a write fault that would allocate takes a whole
// 2 MiB window only when it continues a sequential stream (or is a mapping's first
// write, at a chunk's start); sparse random writes allocate 4 KiB blocks. Reads of
// holes keep their free 2 MiB zero windows.
import t from 'tap';
import { forBackings, PAGE, HUGE } from './helpers';

function rng(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (x * 1664525 + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

forBackings(t, 'sparse random writes allocate about the bytes they touch, not 2 MiB each', async (t, { pool, backing }) => {
  // A 2 MiB-granular device allocates and maps whole units only (docs/pool.md): there
  // each touched unit is allocated whole, in a file that fits the pool.
  const granular = backing === 'hugetlbfs';
  const f = await pool.openFile('sparse', { create: true });
  const size = granular ? 32 << 20 : 256 << 20;
  await f.truncate(size);
  const m = await f.map(); // the default policy: fault-around on
  const r = rng(7);
  const pages = new Set<number>();
  while (pages.size < 256) {
    const p = Math.floor(r() * (size / PAGE));
    if (p % (HUGE / PAGE) !== 0) pages.add(p); // never a chunk's first page
  }
  for (const p of pages) m.buffer[p * PAGE + 5] = 0x5a;
  const st = await f.stat();
  const touched = pages.size * PAGE;
  if (granular) {
    const units = new Set([...pages].map((p) => Math.floor((p * PAGE) / HUGE)));
    t.equal(st.allocated, units.size * HUGE, `each of the ${units.size} touched units allocated whole, once`);
    t.equal((await pool.stats()).sigbus, 0, 'no SIGBUS');
  } else {
    t.ok(st.allocated <= 1.1 * touched, `allocated ${st.allocated} bytes for ${touched} touched (≤ 1.1×)`);
  }
  let seen = 0;
  for (const p of pages) if (m.buffer[p * PAGE + 5] === 0x5a) seen++;
  t.equal(seen, pages.size, 'every store is there');
  await m.unmap();
}, { size: 64 << 20, hugetlb: true });

forBackings(t, 'a sequential writer still gets whole 2 MiB windows, from its first chunk or its second', async (t, { pool }) => {
  const f = await pool.openFile('seq', { create: true });
  await f.truncate(8 * HUGE);
  const m = await f.map();
  let s0 = await pool.stats();
  for (let off = 0; off < 4 * HUGE; off += PAGE) m.buffer[off] = 1; // from the file's start
  let s1 = await pool.stats();
  // Each chunk is a whole window: answered to its fault, or installed ahead of it
  // (fault-ahead, from the second chunk on: ahead.test.ts).
  t.ok(s1.pmd - s0.pmd + (s1.ahead - s0.ahead) >= 4 && s1.pte === s0.pte, `from a chunk's start: a 2 MiB window per chunk (${s1.pmd - s0.pmd} faulted, ${s1.ahead - s0.ahead} ahead)`);
  t.ok(s1.faults - s0.faults <= 4, `at most one fault each (${s1.faults - s0.faults})`);
  const g = await pool.openFile('seq2', { create: true });
  await g.truncate(8 * HUGE);
  const n = await g.map();
  s0 = await pool.stats();
  for (let off = 3 * PAGE; off < 4 * HUGE; off += PAGE) n.buffer[off] = 2; // from inside the first chunk
  s1 = await pool.stats();
  t.ok(s1.pmd - s0.pmd + (s1.ahead - s0.ahead) >= 3, `starting inside a chunk: whole windows from the next chunk on (${s1.pmd - s0.pmd} faulted, ${s1.ahead - s0.ahead} ahead)`);
  t.ok(s1.faults - s0.faults < 16, `few faults (${s1.faults - s0.faults}): the rest of the first chunk is allocated on the second`);
  const st = await g.stat();
  t.ok(st.allocated <= 6 * HUGE, `allocated ${st.allocated}: no more than the chunks written and the window ahead (and one more)`);
  await m.unmap();
  await n.unmap();
}, { hugetlb: true });

forBackings(t, 'reads of holes keep 2 MiB zero windows whatever the pattern', async (t, { pool }) => {
  const f = await pool.openFile('r', { create: true });
  await f.truncate(8 * HUGE);
  const m = await f.map();
  const s0 = await pool.stats();
  for (const p of [5, 600, 1500, 2000]) t.equal(m.buffer[p * PAGE + 1], 0);
  const s1 = await pool.stats();
  t.equal(s1.pmd - s0.pmd, 4, 'one zero window per chunk read');
  t.equal((await f.stat()).allocated, 0, 'nothing allocated');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'a sequential writer starting inside a chunk whose first block landed in a used group still gets the chunk whole', async (t, { pool }) => {
  // A sparse write elsewhere leaves a 2 MiB group partly used (its block at the
  // file's phase in a fresh group); the next 4 KiB allocation goes to that group's
  // free blocks, so the writer's first page is not where the rest of its chunk can
  // join it in one aligned run. The rest of the chunk must still be installed with
  // its second fault, not page by page (CI saw 510 faults: the pool's stock refill
  // had left such a group).
  const h = await pool.openFile('other', { create: true });
  await h.truncate(HUGE);
  const hm = await h.map();
  hm.buffer[7 * PAGE] = 1;
  const g = await pool.openFile('seq', { create: true });
  await g.truncate(4 * HUGE);
  const n = await g.map();
  const s0 = await pool.stats();
  for (let off = 3 * PAGE; off < 2 * HUGE; off += PAGE) n.buffer[off] = 2;
  const s1 = await pool.stats();
  t.ok(s1.faults - s0.faults < 16, `few faults (${s1.faults - s0.faults})`);
  let seen = 0;
  for (let off = 3 * PAGE; off < 2 * HUGE; off += PAGE) if (n.buffer[off] === 2) seen++;
  t.equal(seen, (2 * HUGE - 3 * PAGE) / PAGE, 'every store is there');
  await hm.unmap();
  await n.unmap();
}, { hugetlb: true });
