// Decided ranges (docs/fault-policy.md, "Decided ranges"): written extents decided at
// map(), in both ways (set direct in the agent; installed ahead). Touches cost the
// policy nothing; truncate, punch, zero range, unlink and eviction still take every
// page back first (no stale data); the window budget holds.
import t from 'tap';
import { agentStats } from '../../dist/native/engine';
import { forBackings, kernelTouch, PAGE, HUGE, type Ctx } from './helpers';
import { useLockdep } from '../lock/guard';

useLockdep(t);

type Pool = Ctx['pool'];
const MODES = ['direct', 'install'] as const;

/** A file of `pages` pages, page i holding its index in its first 4 bytes and `fill` elsewhere. */
async function writtenFile(pool: Pool, name: string, pages: number, fill = 0x11) {
  const f = await pool.openFile(name, { create: true });
  const data = Buffer.alloc(pages * PAGE, fill);
  for (let i = 0; i < pages; i++) data.writeUInt32LE(i, i * PAGE);
  await f.write(data, 0);
  return f;
}

for (const mode of MODES) {
  forBackings(t, `${mode}: a mapping of a written file faults nothing through the policy`, async (t, { pool }) => {
    await pool.request('configure', [{ decided: mode }]);
    const pages = 4 * HUGE / PAGE;
    const f = await writtenFile(pool, 'w', pages);
    const s0 = await pool.stats();
    const a0 = agentStats();
    const m = await f.map();
    let bad = 0;
    for (let i = 0; i < pages; i++) if (m.buffer.readUInt32LE(i * PAGE) !== i) bad++;
    for (let i = 0; i < pages; i += 3) m.buffer[i * PAGE + 9] = 0x77;
    t.equal(bad, 0, 'every page reads the file');
    const s1 = await pool.stats();
    const a1 = agentStats();
    t.equal(s1.faults - s0.faults, 0, 'no fault reached the policy');
    t.equal(s1.decided - s0.decided, 4, 'four 2 MiB pieces were decided');
    t.equal(a1.direct - a0.direct, mode === 'direct' ? 4 : 0, mode === 'direct' ? 'the agent answered one fault per chunk' : 'nothing was even trapped');
    t.equal(a1.delivered - a0.delivered, 0, 'no event went to a handler');
    const back = Buffer.alloc(PAGE);
    await f.read(back, 300 * PAGE);
    t.equal(back[9], 0x77, 'stores reached the file');
    await m.unmap();
  });

  forBackings(t, `${mode}: truncate, punch, zero range and unlink take decided pages back first`, async (t, { pool }) => {
    await pool.request('configure', [{ decided: mode }]);
    const pages = 4 * HUGE / PAGE;
    const f = await writtenFile(pool, 'w', pages);
    const m = await f.map();
    const b = (): Buffer => m.buffer;
    // Chunks 0 and 1 touched (their windows are in); chunks 2 and 3 decided, untouched.
    for (let i = 0; i < 2 * HUGE / PAGE; i += 5) t.equal(b().readUInt32LE(i * PAGE), i);
    const page = (i: number): number => b().readUInt32LE(i * PAGE);
    // Punch across chunks 0-1 and inside untouched chunk 2; zero a range of chunk 3.
    await f.punchHole(HUGE / 2, HUGE);
    await f.punchHole(2 * HUGE + 8 * PAGE, 16 * PAGE);
    await f.zeroRange(3 * HUGE + 4 * PAGE, 4 * PAGE);
    // The freed blocks go to another file with other bytes: a stale window would show them.
    const other = await pool.openFile('other', { create: true });
    await other.write(Buffer.alloc(HUGE + 32 * PAGE, 0xee), 0);
    const holes = (i: number): boolean => (i >= 256 && i < 768) || (i >= 1032 && i < 1048) || (i >= 1540 && i < 1544);
    let bad = 0;
    for (let i = 0; i < pages; i++) {
      const want = holes(i) ? 0 : i;
      if (page(i) !== want || (holes(i) && b()[i * PAGE + 100] !== 0)) bad++;
    }
    t.equal(bad, 0, 'punched and zeroed pages read zeros, the rest the file, in touched and untouched chunks');
    // Truncate into chunk 2: past the new EOF is SIGBUS (EFAULT for a system call).
    await f.truncate(2 * HUGE + 4 * PAGE);
    t.equal(await kernelTouch(b(), 2 * HUGE + 5 * PAGE), 'EFAULT', 'past the new EOF');
    t.equal(await kernelTouch(b(), 3 * HUGE + 100 * PAGE), 'EFAULT', 'in the untouched chunk past EOF');
    t.equal(page(2 * HUGE / PAGE + 3), 2 * HUGE / PAGE + 3, 'below EOF the file');
    await pool.unlink('w');
    t.equal(await kernelTouch(b(), 0), 'EFAULT', 'unlinked: every page is SIGBUS');
    t.equal(await kernelTouch(b(), 2 * HUGE), 'EFAULT');
    await m.unmap();
    await other.close();
  });

  forBackings(t, `${mode}: a tiny window budget: decided pieces stay within it and are evicted like any window`, async (t, { pool }) => {
    await pool.request('configure', [{ windowBudget: 16, decided: mode }]);
    const pages = 16 * HUGE / PAGE;
    const f = await writtenFile(pool, 'w', pages);
    const s0 = await pool.stats();
    const m = await f.map({ faultAround: false });
    const s1 = await pool.stats();
    t.equal(s1.decided - s0.decided, 12, 'decided up to 3/4 of the budget');
    t.ok(s1.installedWindows <= 16, `counted in the budget at once (${s1.installedWindows})`);
    let seed = 4321;
    const rand = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) % pages;
    let bad = 0;
    for (let k = 0; k < 3000; k++) {
      const i = rand();
      if (m.buffer.readUInt32LE(i * PAGE) !== i) bad++;
      m.buffer[i * PAGE + 200] = (i & 0x7f) + 1;
    }
    t.equal(bad, 0, 'every page read right');
    const s2 = await pool.stats();
    t.ok(s2.evictions > 0, `windows were evicted (${s2.evictions})`);
    t.ok(s2.installedWindows <= 16 + 64, `installed windows stay near the budget (${s2.installedWindows})`);
    t.equal(s2.sigbus, 0);
    // After evicting decided pieces, a punch still finds nothing stale.
    await f.punchHole(0, 8 * HUGE);
    let stale = 0;
    for (let i = 0; i < 8 * HUGE / PAGE; i += 7) if (m.buffer.readUInt32LE(i * PAGE) !== 0) stale++;
    t.equal(stale, 0, 'punched pages read zeros');
    const back = Buffer.alloc(pages * PAGE);
    await f.read(back, 0);
    let lost = 0;
    seed = 4321;
    for (let k = 0; k < 3000; k++) {
      const i = rand();
      if (i >= 8 * HUGE / PAGE && back[i * PAGE + 200] !== (i & 0x7f) + 1) lost++;
    }
    t.equal(lost, 0, 'every store past the punch is in the file');
    await m.unmap();
  }, { size: 128 << 20 });
}

forBackings(t, 'private and sync mappings decide nothing', async (t, { pool }) => {
  await pool.request('configure', [{ decided: 'direct' }]);
  const f = await writtenFile(pool, 'w', 2 * HUGE / PAGE);
  const s0 = await pool.stats();
  const p = await f.map({ private: true });
  const s = await f.map({ sync: true });
  t.equal((await pool.stats()).decided - s0.decided, 0);
  t.equal(p.buffer.readUInt32LE(5 * PAGE), 5);
  s.buffer[5 * PAGE + 8] = 1;
  t.ok((await pool.stats()).faults > s0.faults, 'their touches go to the policy');
  await p.unmap();
  await s.unmap();
});
