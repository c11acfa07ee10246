// Staging in the addon (docs/native.md, "Staged ranges"): stageCollect finds, reads
// and tests the pages of a memfd a batch at a time; a region's own memfd (op 16,
// stage prepare) and op 15 staging with it; stageAdopt takes a memfd through a pidfd
// and refuses anything else.
import t from 'tap';
import fs from 'node:fs';
import { native } from '../../dist/native/addon';
import { Op, STAGE_OWN_FD } from '../../dist/native/frames';
import { boundRegion, kernelTouch, runAnswers } from './helpers';

const PAGE = 4096;
const MiB = 1 << 20;
const ENOENT = -2;

function page(byte: number): Buffer {
  return Buffer.alloc(PAGE, byte);
}

t.test('stageCollect: the pages with a byte that is not zero, in order, a batch at a time; a short memfd reads as zeros', async (t) => {
  const fd = native().stageCreate(8 * MiB);
  t.teardown(() => native().stageClose(fd));
  const stored = [3, 4, 5, 100, 1000, 2047];
  for (const p of stored) fs.writeSync(fd, page(p & 0xff || 1), 0, PAGE, p * PAGE);
  fs.writeSync(fd, page(0), 0, PAGE, 50 * PAGE); // data, but zeros: not collected
  const one = Buffer.alloc(PAGE);
  one[4095] = 9; // one byte at the page's end
  fs.writeSync(fd, one, 0, PAGE, 51 * PAGE);
  const want = [3, 4, 5, 51, 100, 1000, 2047];

  const all = native().stageCollect(fd, 0, 8 * MiB, 1000);
  t.same(Array.from(all.offsets), want.map((p) => p * PAGE), 'every page with a byte, and only those');
  t.equal(all.next, 8 * MiB, 'done: next is the end');
  t.equal(all.data.length, want.length * PAGE, 'their bytes back to back');
  t.equal(all.data[3 * PAGE + 4095], 9, 'the one byte of page 51 in its place');
  t.ok(all.data.subarray(0, PAGE).every((x) => x === 3), 'page 3\'s bytes first');

  // Two at a time: the batches join up to the same answer.
  const seen: number[] = [];
  let calls = 0;
  for (let cur = 0; cur < 8 * MiB; calls++) {
    const got = native().stageCollect(fd, cur, 8 * MiB - cur, 2);
    t.ok(got.offsets.length <= 2, 'at most max pages');
    t.ok(got.next > cur, 'each call moves on');
    for (let i = 0; i < got.offsets.length; i++) {
      seen.push(got.offsets[i]! / PAGE);
      t.equal(got.data[i * PAGE], (got.offsets[i]! / PAGE) === 51 ? 0 : (got.offsets[i]! / PAGE) & 0xff || 1, `page ${got.offsets[i]! / PAGE}'s bytes`);
    }
    cur = got.next;
  }
  t.same(seen, want, 'in batches of two: the same pages');
  t.ok(calls >= 4, `${calls} calls`);

  // A range inside: only its pages.
  t.same(Array.from(native().stageCollect(fd, 4 * PAGE, 100 * PAGE, 99).offsets), [4, 5, 51, 100].map((p) => p * PAGE), 'a range: its pages');

  // Cut short (what a daxmapd client could do to its own memfd): no error, the rest is zeros.
  fs.ftruncateSync(fd, 101 * PAGE);
  const cut = native().stageCollect(fd, 0, 8 * MiB, 1000);
  t.same(Array.from(cut.offsets), [3, 4, 5, 51, 100].map((p) => p * PAGE), 'a memfd cut short: the pages it still has');
  t.equal(cut.next, 8 * MiB, 'and done');
  t.throws(() => native().stageCollect(fd, 1, PAGE, 1), { code: 'EINVAL' }, 'an unaligned range is refused');
});

t.test('stage prepare: the region\'s own memfd; stage with it maps it, and stores land in it', async (t) => {
  const { scratch, r } = await boundRegion(t, 8 * MiB, 'stage-own', { mode: 'poison' });
  t.same(runAnswers([{ op: Op.Stage, region: r.id, offset: 0, length: 2 * MiB, devOffset: STAGE_OWN_FD }]), [ENOENT], 'stage with its own memfd before it has one: ENOENT');
  const [fd] = runAnswers([{ op: Op.StagePrepare, region: r.id, offset: 0, length: PAGE }]);
  t.ok(fd! >= 0, `stage prepare answers a descriptor (${fd})`);
  t.equal(fs.fstatSync(fd!).size, 8 * MiB, 'a memfd as long as the region');
  t.same(runAnswers([{ op: Op.StagePrepare, region: r.id, offset: 0, length: PAGE }]), [fd], 'made once: the same descriptor again');
  t.same(runAnswers([{ op: Op.Stage, region: r.id, offset: 2 * MiB, length: 2 * MiB, devOffset: STAGE_OWN_FD }]), [0], 'a range staged with it');
  t.equal(kernelTouch(r.buffer, 2 * MiB + 5 * PAGE, true, scratch), 'ok', 'a store there takes no trap (the handler would SIGBUS it)');
  const back = Buffer.alloc(PAGE);
  fs.readSync(fd!, back, 0, PAGE, 2 * MiB + 5 * PAGE);
  t.equal(back[0], 0x3c, 'the store is in the memfd, at the same offset');
  t.equal(kernelTouch(r.buffer, 5 * PAGE, true, scratch), 'EFAULT', 'outside the staged range: a fault for the handler');
  r.close();
  t.throws(() => fs.fstatSync(fd!), { code: 'EBADF' }, 'the region closed its memfd with it');
});

t.test('stageAdopt: a memfd taken through a pidfd; anything else refused', async (t) => {
  const pidfd = native().pidfdOpen(process.pid);
  t.teardown(() => native().stageClose(pidfd));
  const fd = native().stageCreate(4 * MiB);
  t.teardown(() => native().stageClose(fd));
  const mine = native().stageAdopt(pidfd, fd, 4 * MiB);
  t.teardown(() => native().stageClose(mine));
  t.not(mine, fd, 'a descriptor of its own');
  fs.writeSync(fd, page(0x5a), 0, PAGE, 7 * PAGE);
  t.same(Array.from(native().stageCollect(mine, 0, 4 * MiB, 8).offsets), [7 * PAGE], 'of the same file');
  t.throws(() => native().stageAdopt(pidfd, fd, 8 * MiB), { code: 'EINVAL' }, 'shorter than asked: refused');
  // node's own executable: a regular file on a disk, not on tmpfs
  const other = fs.openSync(process.execPath, 'r');
  t.teardown(() => fs.closeSync(other));
  t.throws(() => native().stageAdopt(pidfd, other, PAGE), { code: 'EINVAL' }, 'a file that is not a memfd: refused');
  t.throws(() => native().stageAdopt(pidfd, 1 << 20, PAGE), { code: 'EBADF' }, 'a descriptor the process does not have');
  t.throws(() => native().pidfdOpen(0x3fffffff), { code: 'ESRCH' }, 'no such process');
});
