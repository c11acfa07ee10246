// True 2 MiB mappings at the native layer (docs/native.md, "True 2 MiB mappings"):
// the device layer recognises a tmpfs mounted with huge pages, an aligned 2 MiB
// install from it (or from the hugetlbfs stand-in) is one PMD mapping, and where it
// cannot be (a misaligned device offset, a 4 KiB window) the kernel maps 4 KiB pages
// and the data is the same. The mounts are the test's own, in private temp dirs.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { openDevice, type DeviceStorage } from '../../dist/device/device';
import { TrappedRegion } from '../../dist/native/region';
import { execute } from '../../dist/native/engine';
import { AnswerBatch, Op, A_WRITABLE, A_POPULATE } from '../../dist/native/frames';
import { hugetlb } from '../hugetlb';
import { hugeTmpfs, smapsSum, vmasIn } from '../pmd';

const PAGE = 4096;
const HUGE = 2 << 20;

/** A device of `size` bytes at `p`, each 4 KiB page below `stamped` stamped with its index; closed and removed at teardown. */
function stampedDevice(t: Test, p: string, size: number, stamped = size): DeviceStorage {
  const d = openDevice(p, { create: true, size });
  t.teardown(() => { d.close(); fs.rmSync(p, { force: true }); });
  for (let off = 0; off < stamped; off += PAGE) d.view(off, 4).writeUInt32LE(off / PAGE);
  return d;
}

/** Installs [regionOff, +length) of r from the device at devOff, writable and populated; the result code. */
function install(r: TrappedRegion, d: DeviceStorage, regionOff: number, length: number, devOff: number): number {
  const b = new AnswerBatch();
  b.add({ op: Op.Install, flags: A_WRITABLE | A_POPULATE, region: r.id, offset: regionOff, length, device: d.deviceId, devOffset: devOff });
  return execute(b)[0]!;
}

/** Every page of [regionOff, +length) reads the device page it was installed from. */
function readsDevice(r: TrappedRegion, regionOff: number, length: number, devOff: number): boolean {
  const b = r.buffer;
  for (let off = 0; off < length; off += PAGE) if (b.readUInt32LE(regionOff + off) !== (devOff + off) / PAGE) return false;
  return true;
}

t.test('the device layer: a tmpfs is huge when mounted huge=always, within_size or advise', async (t) => {
  for (const mode of ['always', 'within_size', 'advise', 'never']) {
    const m = hugeTmpfs(t, 16, mode);
    if (typeof m === 'string') {
      t.skip(m, () => {});
      return;
    }
    const d = openDevice(path.join(m.dir, 'dev'), { create: true, size: 4 * HUGE });
    t.equal(d.kind, 'tmpfs', `huge=${mode}: a tmpfs`);
    t.equal(d.huge, mode !== 'never', `huge=${mode}: huge ${mode !== 'never'}`);
    t.equal(d.align, PAGE, `huge=${mode}: still 4 KiB granular (any page maps)`);
    d.close();
  }
});

t.test('huge tmpfs: an aligned 2 MiB install is one PMD; misaligned and 4 KiB installs fall back to 4 KiB pages', async (t) => {
  for (const mode of ['always', 'advise']) {
    const m = hugeTmpfs(t, 32, mode);
    if (typeof m === 'string') {
      t.skip(m, () => {});
      return;
    }
    const d = stampedDevice(t, path.join(m.dir, 'dev'), 8 * HUGE, 6 * HUGE);
    const r = new TrappedRegion(4 * HUGE);
    t.teardown(() => r.close());
    t.equal(install(r, d, 0, HUGE, HUGE), 0, `huge=${mode}: aligned window installed`);
    t.equal(install(r, d, HUGE, HUGE, 3 * HUGE + PAGE), 0, 'misaligned window installed');
    t.equal(install(r, d, 2 * HUGE, PAGE, 5 * HUGE), 0, '4 KiB window installed');
    t.equal(install(r, d, 3 * HUGE, HUGE, 7 * HUGE), 0, 'aligned window of a range never written installed');
    t.ok(readsDevice(r, 0, HUGE, HUGE), 'the aligned window reads its device range');
    t.ok(readsDevice(r, HUGE, HUGE, 3 * HUGE + PAGE), 'the misaligned window reads its device range');
    t.ok(readsDevice(r, 2 * HUGE, PAGE, 5 * HUGE), 'the 4 KiB window reads its device page');
    t.equal(smapsSum(r.address, HUGE, 'ShmemPmdMapped'), 2048, `huge=${mode}: the aligned window is one PMD mapping`);
    t.equal(smapsSum(r.address + BigInt(HUGE), HUGE, 'ShmemPmdMapped'), 0, 'the misaligned window is mapped with 4 KiB pages');
    t.equal(smapsSum(r.address + BigInt(HUGE), HUGE, 'Rss'), 2048, '... all of them (populated)');
    t.equal(smapsSum(r.address + BigInt(2 * HUGE), PAGE, 'ShmemPmdMapped'), 0, 'the 4 KiB window is one 4 KiB page');
    t.equal(smapsSum(r.address + BigInt(3 * HUGE), HUGE, 'ShmemPmdMapped'), 2048, `huge=${mode}: a window of a range never written is one PMD too`);
    t.ok(r.buffer.subarray(3 * HUGE, 4 * HUGE).every((x) => x === 0), '... and reads zeros');
    r.buffer.writeUInt32LE(0xabcd, 5);
    t.equal(d.view(HUGE + 5, 4).readUInt32LE(), 0xabcd, 'a store through the PMD lands in the device');
    // revoke: the window is taken back whole, its next touch faults again
    const b = new AnswerBatch();
    b.add({ op: Op.Revoke, region: r.id, offset: 0, length: HUGE });
    t.same(Array.from(execute(b)), [0], 'revoked');
    t.equal(smapsSum(r.address, HUGE, 'ShmemPmdMapped'), 0, 'no PMD left after the revoke');
    t.notOk(vmasIn(r.address, HUGE).some((v) => v.file.includes(m.dir)), 'the window no longer maps the device');
  }
});

t.test('hugetlbfs stand-in: an aligned install maps 2 MiB pages; a misaligned one is refused', async (t) => {
  const h = await hugetlb(t, 8);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }
  const d = stampedDevice(t, h.file('dev'), 4 * HUGE);
  const r = new TrappedRegion(2 * HUGE);
  t.teardown(() => r.close());
  t.equal(install(r, d, 0, HUGE, 2 * HUGE), 0, 'aligned window installed');
  t.ok(readsDevice(r, 0, HUGE, 2 * HUGE), 'it reads its device range');
  const v = vmasIn(r.address, HUGE);
  t.ok(v.length === 1 && v[0]!.kb['KernelPageSize'] === 2048, 'one VMA of 2 MiB kernel pages');
  t.equal((v[0]!.kb['Shared_Hugetlb'] ?? 0) + (v[0]!.kb['Private_Hugetlb'] ?? 0), 2048, 'mapped by one huge page');
  t.equal(install(r, d, HUGE, HUGE, PAGE), -22, 'a misaligned device offset: -EINVAL (hugetlbfs maps nothing smaller)');
  t.equal(install(r, d, HUGE, PAGE, 0), -22, 'a 4 KiB window: -EINVAL');
});
