// Truncate, punch hole, zero range, unlink and rename while files are mapped: every
// page of the range is revoked in every mapping before any block is freed, so no
// mapping ever reaches a freed (and reused) block. Each test on tmpfs and on disk.
import t from 'tap';
import { forBackings, kernelTouch, PAGE, HUGE } from './helpers';

const PATTERN = 0xa5;

/** Fill a fresh file with the pattern through a mapping, so its pages are installed. */
async function patterned(pool: any, name: string, size: number, opts: object = {}) {
  const f = await pool.openFile(name, { create: true });
  await f.truncate(size);
  const m = await f.map(opts);
  m.buffer.fill(PATTERN);
  await m.flush();
  return { f, m };
}

/** Allocate and write another file large enough to reuse every free block. */
async function reuseEverything(pool: any, name: string): Promise<Buffer> {
  const st = await pool.statfs();
  const g = await pool.openFile(name, { create: true });
  // Leave room for a few more allocations (a 2 MiB fault-around window among them).
  const size = Math.floor(st.free / PAGE) * PAGE - 2 * HUGE;
  await g.truncate(size);
  const m = await g.map();
  m.buffer.fill(0x3c);
  const copy = Buffer.from(m.buffer);
  await m.unmap();
  return copy;
}

forBackings(t, 'truncate down: pages past the new EOF are revoked, then SIGBUS; the EOF page stays', async (t, { pool, backing }) => {
  const { f, m } = await patterned(pool, 'a', 4 * HUGE);
  const before = await pool.stats();
  await f.truncate(HUGE + 100);
  t.ok((await pool.stats()).revokes > before.revokes, 'the mapping was revoked before blocks were freed');
  t.equal(m.buffer[HUGE + 50], PATTERN, 'the page holding EOF keeps its bytes below EOF');
  t.equal(m.buffer[HUGE + 200], 0, 'and reads zero past EOF');
  if (backing === 'hugetlbfs') {
    // a 2 MiB-granular device maps the unit holding EOF whole (docs/pool.md): past EOF in it, zeros
    t.equal(await kernelTouch(m.buffer, HUGE + PAGE), null, 'the next page is in the EOF unit: no SIGBUS');
    t.ok(m.buffer.subarray(HUGE + 100, 2 * HUGE).every((x: number) => x === 0), 'it reads zeros to the unit\'s end');
  } else {
    t.equal(await kernelTouch(m.buffer, HUGE + PAGE), 'EFAULT', 'the next page is past EOF: SIGBUS');
  }
  t.equal(await kernelTouch(m.buffer, 3 * HUGE), 'EFAULT');
  const reused = await reuseEverything(pool, 'b');
  t.ok(reused.length > 2 * HUGE);
  t.equal(m.buffer[0], PATTERN, 'pages below EOF are intact');
  t.equal(await kernelTouch(m.buffer, 2 * HUGE), 'EFAULT', 'still SIGBUS after the blocks were reused');
  await f.truncate(4 * HUGE);
  t.equal(m.buffer[3 * HUGE], 0, 'after growing again: zeros, never the other file\'s bytes');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'punch hole and zero range: the mapping reads zeros; freed blocks are never reachable', async (t, { pool }) => {
  const { f, m } = await patterned(pool, 'a', 4 * HUGE);
  const other = await f.map({ faultAround: false });
  t.equal(other.buffer[HUGE + 5], PATTERN);
  await f.punchHole(HUGE, HUGE);
  await f.zeroRange(3 * HUGE + PAGE, 2 * PAGE);
  t.equal((await f.stat()).allocated, 3 * HUGE, 'the punched blocks were freed');
  await reuseEverything(pool, 'b');
  for (const [name, mm] of [['fault-around', m], ['4 KiB', other]] as const) {
    t.ok(mm.buffer.subarray(HUGE, 2 * HUGE).every((x: number) => x === 0), `${name} mapping: the punched range reads zeros`);
    t.ok(mm.buffer.subarray(3 * HUGE + PAGE, 3 * HUGE + 3 * PAGE).every((x: number) => x === 0), `${name} mapping: the zeroed range reads zeros`);
    t.equal(mm.buffer[HUGE - 1], PATTERN, `${name} mapping: bytes around the range are intact`);
    t.equal(mm.buffer[3 * HUGE + 3 * PAGE], PATTERN);
  }
  // A write into the hole allocates afresh; the other file keeps its bytes.
  m.buffer[HUGE + 10] = 1;
  t.equal((await pool.stats()).sigbus, 0, 'no fault failed');
  t.equal(other.buffer[HUGE + 10], 1, 'coherent after reallocation');
  t.equal(other.buffer[HUGE + 11], 0);
  await other.unmap();
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'unlink and rename over a mapped file: its mappings are revoked, its blocks unreachable', async (t, { pool }) => {
  const a = await patterned(pool, 'a', 2 * HUGE);
  const c = await patterned(pool, 'c', 2 * HUGE);
  const keep = await patterned(pool, 'keep', HUGE);
  await pool.unlink('a');
  t.equal(await kernelTouch(a.m.buffer, 0), 'EFAULT', 'a mapping of an unlinked file: SIGBUS');
  await pool.rename('keep', 'c'); // replaces c
  t.equal(await kernelTouch(c.m.buffer, PAGE), 'EFAULT', 'a mapping of a file replaced by rename: SIGBUS');
  t.equal(keep.m.buffer[100], PATTERN, 'the renamed file\'s own mapping goes on');
  await reuseEverything(pool, 'z');
  t.equal(await kernelTouch(a.m.buffer, HUGE), 'EFAULT', 'still unreachable after reuse');
  t.equal(await kernelTouch(c.m.buffer, 0), 'EFAULT');
  t.same(await pool.list().then((l: string[]) => l.sort()), ['c', 'z']);
  for (const x of [a, c, keep]) await x.m.unmap();
}, { hugetlb: true });

forBackings(t, 'private mappings: punch keeps pages this mapping wrote, truncate discards them', async (t, { pool }) => {
  const f = await pool.openFile('p', { create: true });
  await f.write(Buffer.alloc(HUGE, PATTERN), 0);
  const m = await f.map({ private: true });
  t.equal(m.buffer[0], PATTERN);
  m.buffer[2 * PAGE] = 7; // a private copy
  t.equal(m.buffer[3 * PAGE], PATTERN, 'a page read but not written');
  await f.punchHole(2 * PAGE, 2 * PAGE);
  t.equal(m.buffer[2 * PAGE], 7, 'the page this mapping wrote is kept (as Linux keeps private copies)');
  t.equal(m.buffer[2 * PAGE + 1], PATTERN, 'with the bytes it had');
  t.equal(m.buffer[3 * PAGE], 0, 'a page it only read shows the hole');
  await f.truncate(PAGE);
  t.equal(await kernelTouch(m.buffer, 2 * PAGE), 'EFAULT', 'truncate discards private pages past EOF');
  t.equal(m.buffer[10], PATTERN);
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'stale data: no mapping of another file ever shows freed bytes, also under concurrent faults', async (t, { pool }) => {
  const victim = await patterned(pool, 'victim', 8 * HUGE);
  const g = await pool.openFile('fresh', { create: true });
  await g.truncate(16 * HUGE);
  const fresh = await g.map({ faultAround: false });
  const fresh2 = await g.map();
  let seen = 0;
  // Faults on the fresh file interleave with the victim being punched, truncated and unlinked.
  const destroy = (async () => {
    await victim.f.punchHole(HUGE, 2 * HUGE);
    await victim.f.truncate(5 * HUGE);
    await victim.f.zeroRange(0, HUGE);
    await pool.unlink('victim');
  })();
  for (let off = 0; off < 16 * HUGE; off += PAGE) {
    const b = off % (2 * PAGE) === 0 ? fresh.buffer : fresh2.buffer;
    if (b[off + 17] === PATTERN) seen++;
    if (off % (8 * PAGE) === 0) b[off] = 1; // write faults allocate blocks too
    if (off % (64 * PAGE) === 0) await new Promise((r) => setImmediate(r));
  }
  await destroy;
  for (let off = 0; off < 16 * HUGE; off += PAGE) if (fresh.buffer[off + 17] === PATTERN) seen++;
  const r = Buffer.alloc(16 * HUGE);
  await g.read(r, 0);
  t.equal(seen, 0, 'the pattern never appeared through a mapping');
  t.equal(r.indexOf(PATTERN), -1, 'nor through file.read');
  t.equal(await kernelTouch(victim.m.buffer, 6 * HUGE), 'EFAULT');
  await fresh.unmap();
  await fresh2.unmap();
  await victim.m.unmap();
}, { hugetlb: true });

// Regressions found by the model test (test/model/map-model.test.ts).
forBackings(t, 'a 2 MiB zero window over a chunk split into several mappings falls back to the page', async (t, { pool }) => {
  // Reduction: write 1 byte at 100*4K; truncate to 2 MiB+4K; map private at 0;
  // read 100*4K; store at 100*4K+1; punch [0, 2 MiB); read page 0.
  const f = await pool.openFile('z', { create: true });
  await f.write(Buffer.from([1]), 100 * PAGE);
  await f.truncate(HUGE + PAGE);
  const m = await f.map({ private: true });
  t.equal(m.buffer[100 * PAGE], 1);
  m.buffer[100 * PAGE + 1] = 2; // a private copy-on-write page, in a mapping of its own
  await f.punchHole(0, HUGE);
  t.equal(await kernelTouch(m.buffer, 0), null, 'page 0 of the hole faults in (no SIGBUS)');
  t.equal(m.buffer[5 * PAGE], 0);
  t.equal(m.buffer[100 * PAGE + 1], 2, 'the private page is kept');
  t.equal((await pool.stats()).sigbus, 0);
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'a private page kept by punch is discarded by a later truncate', async (t, { pool }) => {
  // Reduction (model test, kept-private-survives-truncate): write 4 pages; map private
  // without fault-around; read then store page 2; punch page 2; truncate to one page.
  // The kept page was the only non-empty one, and truncate skipped the mapping.
  const f = await pool.openFile('k', { create: true });
  await f.write(Buffer.alloc(4 * PAGE, PATTERN), 0);
  const m = await f.map({ private: true, faultAround: false });
  t.equal(m.buffer[2 * PAGE], PATTERN);
  m.buffer[2 * PAGE] = 9;
  await f.punchHole(2 * PAGE, PAGE);
  t.equal(m.buffer[2 * PAGE], 9, 'punch keeps the private page');
  await f.truncate(PAGE);
  t.equal(await kernelTouch(m.buffer, 2 * PAGE), 'EFAULT', 'truncate discards it: SIGBUS past EOF');
  await m.unmap();
}, { hugetlb: true });

forBackings(t, 'a 2 MiB install never covers pages a private mapping made its own', async (t, { pool }) => {
  // Reduction: truncate to 10 pages; map private, 2 MiB at 0; store 0x55 at 5*4K;
  // write 2 MiB of 7 at 0 (one aligned extent); read page 20.
  const f = await pool.openFile('p', { create: true });
  await f.truncate(10 * PAGE);
  const m = await f.map({ private: true, length: HUGE });
  m.buffer[5 * PAGE] = 0x55;
  await f.write(Buffer.alloc(HUGE, 7), 0);
  t.equal(m.buffer[20 * PAGE], 7, 'a page it never wrote shows the file');
  t.equal(m.buffer[5 * PAGE], 0x55, 'the page it wrote is still its own');
  // Through eviction: a private window evicted, then faulted again.
  await pool.request('configure', [{ windowBudget: 4 }]);
  const g = await pool.openFile('q', { create: true });
  await g.write(Buffer.alloc(HUGE + 64 * 1024, 9), 0);
  const p = await g.map({ private: true });
  t.equal(p.buffer[0], 9);
  p.buffer[5 * PAGE] = 0x66;
  for (let i = 0; i < 16; i++) t.equal(p.buffer[HUGE + i * PAGE], 9);
  t.equal(p.buffer[0], 9);
  t.equal(p.buffer[5 * PAGE], 0x66, 'eviction kept the private page, and the next fault did not cover it');
  await p.unmap();
  await m.unmap();
}, { hugetlb: true });
