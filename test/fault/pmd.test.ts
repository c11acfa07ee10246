// True 2 MiB mappings through the fault policy (docs/native.md, "True 2 MiB
// mappings"): on a tmpfs mounted with huge pages (the test's own mount) and on the
// hugetlbfs stand-in, a window the policy answers whole is one PMD mapping (smaps of
// the mapping's VMAs), stores read back through file.read, punch and truncate still
// revoke it, and where a window cannot be whole (faultAround: false on a tmpfs) the
// kernel's 4 KiB pages serve it. Skipped, with the reason, where the mounts cannot be made.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { hugetlb } from '../hugetlb';
import { hugeTmpfs, mappingAddress, smapsSum, vmasIn } from '../pmd';
import { checkLockdep, kernelTouch, HUGE, PAGE, Pool } from './helpers';
import { fsckErrors } from '../fsck';

const KB = (bytes: number): number => bytes / 1024;

/** A pool of `size` in a new file `p`, removed at teardown. */
async function newPool(t: Test, p: string, size = 64 << 20): Promise<Pool> {
  t.teardown(() => fs.rmSync(p, { force: true }));
  return Pool.create(p, { size });
}

/** Every offset's byte read through file.read equals `expect`. */
async function readsBack(f: { read(b: Buffer, off: number): Promise<unknown> }, offs: number[], expect: (off: number) => number): Promise<boolean> {
  const b = Buffer.alloc(1);
  for (const off of offs) {
    await f.read(b, off);
    if (b[0] !== expect(off)) return false;
  }
  return true;
}

t.test('tmpfs mounted huge=always', async (t) => {
  const m = hugeTmpfs(t, 256);
  if (typeof m === 'string') {
    t.skip(m, () => {});
    return;
  }
  let n = 0;
  const file = (): string => path.join(m.dir, `pool-${n++}`);

  t.test('written windows are PMD mappings; stores read back; punch and truncate revoke', async (t) => {
    const p = file();
    const pool = await newPool(t, p);
    const f = await pool.openFile('a', { create: true });
    await f.truncate(4 * HUGE);
    const mp = await f.map();
    const at = mappingAddress(mp);
    for (let i = 0; i < 4; i++) mp.buffer.fill(0x20 + i, i * HUGE, (i + 1) * HUGE);
    t.equal(smapsSum(at, 4 * HUGE, 'ShmemPmdMapped'), KB(4 * HUGE), 'smaps: every window is mapped by a PMD');
    t.ok(vmasIn(at, 4 * HUGE).every((v) => v.file === p), 'all of it maps the pool file');
    await mp.flush();
    const offs = [0, HUGE - 1, HUGE + 4096 * 7, 3 * HUGE + 5];
    t.ok(await readsBack(f, offs, (o) => 0x20 + Math.floor(o / HUGE)), 'file.read sees the stores');
    const st = await pool.stats();
    t.ok(st.pmd + st.ahead >= 4, 'the policy answered whole windows (faulted, or installed ahead of the writer)');
    const revokes = (await pool.stats()).revokes;
    await f.punchHole(HUGE, HUGE);
    t.ok((await pool.stats()).revokes > revokes, 'punch revoked the window');
    t.equal(smapsSum(at + BigInt(HUGE), HUGE, 'ShmemPmdMapped'), 0, 'the punched window no longer maps a PMD');
    t.ok(mp.buffer.subarray(HUGE, 2 * HUGE).every((x) => x === 0), 'and reads zeros');
    await f.truncate(2 * HUGE);
    t.equal(await kernelTouch(mp.buffer, 3 * HUGE), 'EFAULT', 'past EOF after truncate: SIGBUS');
    t.equal(mp.buffer[7], 0x20, 'below EOF intact');
    t.equal(smapsSum(at, HUGE, 'ShmemPmdMapped'), KB(HUGE), 'the first window is still one PMD');
    await mp.unmap();
    await checkLockdep(t, pool);
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });

  t.test('a random writer\'s window is taken whole there (not on a plain tmpfs)', async (t) => {
    const off = 2 * HUGE + 5 * PAGE + 3; // not at a chunk's start: not a sequential writer
    for (const [where, dir, huge] of [['huge tmpfs', m.dir, true], ['/dev/shm', '/dev/shm', false]] as const) {
      const pool = await newPool(t, path.join(dir, `daxmap-pmd-${process.pid}-${n++}`));
      const f = await pool.openFile('r', { create: true });
      await f.truncate(4 * HUGE);
      const mp = await f.map();
      mp.buffer[off] = 0x42;
      t.equal((await f.stat()).allocated, huge ? HUGE : PAGE, `${where}: the first random store allocated ${huge ? 'its window' : 'its page'}`);
      if (huge) t.equal(smapsSum(mappingAddress(mp) + BigInt(2 * HUGE), HUGE, 'ShmemPmdMapped'), KB(HUGE), 'and maps it by a PMD');
      await mp.flush();
      t.ok(await readsBack(f, [off], () => 0x42), `${where}: the store reads back`);
      await mp.unmap();
      await pool.close();
    }
  });

  t.test('faultAround: false: 4 KiB blocks and pages, the kernel\'s fallback; stores read back', async (t) => {
    const p = file();
    const pool = await newPool(t, p);
    const f = await pool.openFile('a', { create: true });
    await f.write(Buffer.alloc(HUGE, 0x11), 0); // a whole written window, mapped page by page below
    await f.truncate(4 * HUGE);
    const mp = await f.map({ faultAround: false });
    const offs = [5, HUGE + 4096 * 17 + 1, 3 * HUGE + 4096 * 300 + 2];
    for (const o of offs) mp.buffer[o] = 0x66;
    t.equal(mp.buffer[HUGE - 1], 0x11, 'the written window reads its data');
    // the written window is a decided range, installed whole (docs/fault-policy.md): a PMD
    t.equal(smapsSum(mappingAddress(mp), HUGE, 'ShmemPmdMapped'), KB(HUGE), 'the written window: one PMD');
    t.equal(smapsSum(mappingAddress(mp) + BigInt(HUGE), 3 * HUGE, 'ShmemPmdMapped'), 0, 'the stores into holes: no PMD, 4 KiB installs');
    t.equal(smapsSum(mappingAddress(mp) + BigInt(HUGE), 3 * HUGE, 'Rss'), 8, 'two 4 KiB pages mapped there');
    t.equal((await f.stat()).allocated, HUGE + 2 * PAGE, 'the two stores into holes took a block each');
    await mp.flush();
    t.ok(await readsBack(f, offs, () => 0x66), 'file.read sees the stores');
    await f.punchHole(HUGE, HUGE);
    t.equal(mp.buffer[HUGE + 4096 * 17 + 1], 0, 'a punched 4 KiB page is revoked and reads zeros');
    await mp.unmap();
    await pool.close();
    t.same(fsckErrors(p), [], 'fsck clean');
  });
});

t.test('hugetlbfs stand-in', async (t) => {
  const h = await hugetlb(t, 48);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }
  for (const faultAround of [true, false]) {
    t.test(`faultAround ${faultAround}: windows are 2 MiB kernel pages; stores read back; punch revokes`, async (t) => {
      const p = h.file();
      const pool = await newPool(t, p);
      const f = await pool.openFile('a', { create: true });
      await f.truncate(4 * HUGE);
      const mp = await f.map({ faultAround });
      const at = mappingAddress(mp);
      for (let i = 0; i < 4; i++) mp.buffer[i * HUGE + 4096 * (i + 1)] = 0x30 + i;
      const vmas = vmasIn(at, 4 * HUGE);
      t.ok(vmas.length > 0 && vmas.every((v) => v.kb['KernelPageSize'] === 2048), 'smaps: every VMA of the mapping has 2 MiB kernel pages');
      t.equal(vmas.reduce((s, v) => s + (v.kb['Shared_Hugetlb'] ?? 0) + (v.kb['Private_Hugetlb'] ?? 0), 0), KB(4 * HUGE), 'four huge pages mapped');
      await mp.flush();
      t.ok(await readsBack(f, [0, 1, 2, 3].map((i) => i * HUGE + 4096 * (i + 1)), (o) => 0x30 + Math.floor(o / HUGE)), 'file.read sees the stores');
      await f.punchHole(2 * HUGE, HUGE);
      t.equal(mp.buffer[2 * HUGE + 3 * 4096], 0, 'the punched window reads zeros');
      t.notOk(vmasIn(at + BigInt(2 * HUGE), HUGE).some((v) => v.file === p), 'and no longer maps the pool file');
      await f.truncate(HUGE);
      t.equal(await kernelTouch(mp.buffer, 3 * HUGE), 'EFAULT', 'past EOF after truncate: SIGBUS');
      t.equal(mp.buffer[4096], 0x30, 'below EOF intact');
      await mp.unmap();
      await pool.close();
      t.same(fsckErrors(p), [], 'fsck clean');
    });
  }
});
