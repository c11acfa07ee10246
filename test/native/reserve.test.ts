// Reserves in the agent (docs/native.md, "Reserves"): SetReserve and ClearReserve
// answers, write faults on reserve ranges answered by the reader alone with a note
// to the handler, and ClearReserve racing faults: once it returns no block is
// installed from the reserve and every note is on the channel.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { TrappedRegion } from '../../dist/native/region';
import { agentStats } from '../../dist/native/engine';
import { A_WINDOW, A_WP, Op, reservePayload, reserveRangesPayload, reserveWindowsPayload } from '../../dist/native/frames';
import { Handler, boundRegion, kernelTouch, runAnswers, runChild, tempDevice, type Rule } from './helpers';

const PAGE = 4096;
const MiB = 1 << 20;

function setup(t: Test, size: number, name: string, rule: Rule) {
  return boundRegion(t, size, `reserve-${name}`, rule);
}

/** Waits until the handler has seen `n` notes (they are delivered asynchronously). */
async function notes(h: Handler, n: number): Promise<Awaited<ReturnType<Handler['report']>>['notes']> {
  for (;;) {
    const rep = await h.report();
    if (rep.notes.length >= n) return rep.notes;
    await new Promise((res) => setImmediate(res));
  }
}

t.test('a write fault on a reserve range is answered by the agent with a block, and noted', async (t) => {
  // A fault that reaches the handler gets SIGBUS: EFAULT for the system call.
  const { dev, scratch, h, r } = await setup(t, 8 * MiB, 'basic', { mode: 'poison' });
  const blocks = [5 * PAGE, 9 * PAGE, 2 * PAGE];
  for (const b of blocks) dev.view(b, PAGE).fill(0);
  dev.view(100 * PAGE, PAGE).fill(0xee); // a block never given: must not show up
  t.same(runAnswers([
    { op: Op.SetReserve, region: r.id, offset: MiB, length: MiB, device: dev.deviceId, payload: reservePayload(blocks) },
    { op: Op.SetReserve, region: r.id, offset: 4 * MiB, length: PAGE, device: dev.deviceId },
  ]), [0, 0], 'two ranges, three blocks');
  const s0 = agentStats();
  const b = r.buffer;
  t.equal(kernelTouch(b, MiB + 7 * PAGE, true, scratch), 'ok', 'a write fault in the first range completes');
  t.equal(kernelTouch(b, 4 * MiB, true, scratch), 'ok', 'and one in the second');
  t.equal(dev.view(5 * PAGE, 1)[0], 0x3c, 'the first block given holds the first write');
  t.equal(dev.view(9 * PAGE, 1)[0], 0x3c, 'the second the second');
  b[MiB + 7 * PAGE + 100] = 0x77; // no trap: the block is in
  t.equal(dev.view(5 * PAGE + 100, 1)[0], 0x77, 'a later store reaches the block');
  const s1 = agentStats();
  t.equal(s1.reserved - s0.reserved, 2, 'two native answers');
  t.equal(s1.delivered - s0.delivered, 0, 'no fault reached the handler');
  t.same((await h.report()).notes, [], 'and the notes wait: they wake no handler');

  // Not from the reserve: a read (the zero page is the policy's), a write outside the
  // ranges, a write on a page already filled (its range lost it).
  t.equal(kernelTouch(b, MiB + 9 * PAGE, false, scratch), 'EFAULT', 'a read fault goes to the handler');
  // Notes wake nobody: they go with the next event (this one), ahead of it.
  t.same(await notes(h, 2), [[r.id, MiB + 7 * PAGE, 5 * PAGE], [r.id, 4 * MiB, 9 * PAGE]], 'a note per answer, in order, with the block');
  t.equal(kernelTouch(b, 3 * MiB, true, scratch), 'EFAULT', 'a write outside the ranges goes to the handler');
  t.equal(agentStats().reserved - s0.reserved, 2, 'neither from the reserve');
  t.equal(kernelTouch(b, MiB + 20 * PAGE, true, scratch), 'ok', 'the last block');
  t.equal(kernelTouch(b, MiB + 21 * PAGE, true, scratch), 'EFAULT', 'out of blocks: the handler');
  t.same(runAnswers([{ op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE }]), [0], 'ClearReserve: no block left unused');
  t.same(runAnswers([
    { op: Op.SetReserve, region: r.id, offset: 2 * MiB, length: MiB, device: dev.deviceId, payload: reservePayload([30 * PAGE, 31 * PAGE]) },
    { op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE },
  ]), [0, 2], 'ClearReserve answers with the number of blocks left unused');
  t.equal(kernelTouch(b, 2 * MiB + PAGE, true, scratch), 'EFAULT', 'after ClearReserve the handler answers');
  t.equal(dev.view(100 * PAGE, 1)[0], 0xee, 'no other block was touched');
  t.equal(agentStats().reserved - s0.reserved, 3);
});

t.test('a reserve set with A_WP also answers hole reads (write-protected zeros, a zero note); the store after one takes a block', async (t) => {
  const { dev, scratch, h, r } = await setup(t, 8 * MiB, 'wp', { mode: 'poison' });
  const blocks = [6 * PAGE, 7 * PAGE];
  for (const q of blocks) dev.view(q, PAGE).fill(0);
  t.same(runAnswers([
    { op: Op.SetReserve, flags: A_WP, region: r.id, offset: MiB, length: MiB, device: dev.deviceId, payload: reservePayload(blocks) },
  ]), [0], 'set with A_WP');
  const s0 = agentStats();
  const b = r.buffer;
  t.equal(kernelTouch(b, MiB + 3 * PAGE, false, scratch), 'ok', 'a read fault in the range is answered by the agent');
  t.equal(b[MiB + 3 * PAGE + 17], 0, 'with zeros');
  t.equal(agentStats().reservedZero - s0.reservedZero, 1, 'counted');
  t.equal(agentStats().reserved - s0.reserved, 0, 'no block for a read');
  t.equal(kernelTouch(b, MiB + 3 * PAGE, true, scratch), 'ok', 'the store after it (a write-protect fault) is answered too');
  t.equal(dev.view(6 * PAGE, 1)[0], 0x3c, 'into the first block of the reserve');
  t.equal(dev.view(7 * PAGE, 1)[0], 0, 'and no other');
  const s1 = agentStats();
  t.equal(s1.reservedWp - s0.reservedWp, 1, 'counted as a store on a zero page');
  t.equal(s1.delivered - s0.delivered, 0, 'no fault reached the handler');
  t.equal(kernelTouch(b, 3 * MiB, false, scratch), 'EFAULT', 'a read outside the ranges goes to the handler');
  t.same(await notes(h, 2), [[r.id, MiB + 3 * PAGE, 0], [r.id, MiB + 3 * PAGE, 6 * PAGE]], 'a zero note (no block), then the block\'s note');
  // Without A_WP a read is the handler's, as before.
  t.same(runAnswers([
    { op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE },
    { op: Op.SetReserve, region: r.id, offset: 2 * MiB, length: MiB, device: dev.deviceId, payload: reservePayload([8 * PAGE]) },
  ]), [1, 0], 'cleared (one block unused), set again without A_WP');
  t.equal(kernelTouch(b, 2 * MiB + PAGE, false, scratch), 'EFAULT', 'a reserve set without A_WP leaves reads to the handler');
  t.equal(agentStats().reservedZero - s0.reservedZero, 1);
});

t.test('a reserve set with A_WP | A_WINDOW answers a hole read with the run of holes around it in its 2 MiB window (one zero note)', async (t) => {
  const { dev, scratch, h, r } = await setup(t, 8 * MiB, 'zwin', { mode: 'poison' });
  const blocks = Array.from({ length: 64 }, (_, i) => (100 + i) * PAGE);
  for (const q of blocks) dev.view(q, PAGE).fill(0);
  const P0 = MiB / PAGE; // the ranges: pages [P0, P0 + 64) and [P0 + 100, P0 + 256), in the window [0, 2 MiB)
  t.same(runAnswers([
    { op: Op.SetReserve, flags: A_WP | A_WINDOW, region: r.id, offset: MiB, length: 64 * PAGE, device: dev.deviceId, payload: reservePayload(blocks) },
    { op: Op.SetReserve, flags: A_WP | A_WINDOW, region: r.id, offset: MiB + 100 * PAGE, length: 156 * PAGE, device: dev.deviceId },
  ]), [0, 0], 'set with A_WP | A_WINDOW');
  const b = r.buffer;
  const s0 = agentStats();
  t.equal(kernelTouch(b, (P0 + 10) * PAGE, true, scratch), 'ok', 'a store takes a block');
  t.equal(kernelTouch(b, (P0 + 20) * PAGE, false, scratch), 'ok', 'a read of a hole is answered by the agent');
  const s1 = agentStats();
  t.equal(s1.reservedZero - s0.reservedZero, 1, 'one read answered');
  t.equal(s1.delivered - s0.delivered, 0, 'no fault reached the handler');
  // The run around it: the holes from the stored page to the end of the first range.
  for (const pg of [P0 + 11, P0 + 40, P0 + 63]) t.equal(b[pg * PAGE + 5], 0, `page ${pg - P0} of the run reads zeros`);
  t.equal(agentStats().events - s1.events, 0, 'without a fault: they were placed with it');
  t.equal(kernelTouch(b, P0 * PAGE, false, scratch), 'ok', 'a hole before the stored page is another run');
  t.equal(agentStats().reservedZero - s0.reservedZero, 2, 'answered by the agent too');
  t.equal(kernelTouch(b, (P0 + 70) * PAGE, false, scratch), 'EFAULT', 'a page between the ranges is not placed: its read goes to the handler');
  t.equal(kernelTouch(b, (P0 + 30) * PAGE, true, scratch), 'ok', 'a store to a page of the run (write-protect fault)');
  t.equal(agentStats().reservedWp - s0.reservedWp, 1, 'is answered from the reserve');
  t.equal(dev.view(blocks[1]!, 1)[0], 0x3c, 'into the next block');
  // The second range: more holes than blocks at hand (62): the run is as many pages.
  t.equal(kernelTouch(b, (P0 + 200) * PAGE, false, scratch), 'ok', 'a read in the second range');
  // Notes wake nobody: they go with the next event for the handler.
  t.equal(kernelTouch(b, 3 * MiB, false, scratch), 'EFAULT', 'a read outside the ranges goes to the handler');
  t.same(await notes(h, 5), [
    [r.id, (P0 + 10) * PAGE, blocks[0]],
    [r.id, (P0 + 11) * PAGE, 0, 53],
    [r.id, P0 * PAGE, 0, 10],
    [r.id, (P0 + 30) * PAGE, blocks[1]],
    [r.id, (P0 + 194) * PAGE, 0, 62],
  ], 'the store\'s note, a zero note per run (offset, pages), the second store\'s note, a run capped at the blocks at hand');
  t.same(runAnswers([{ op: Op.SetReserve, flags: A_WINDOW, region: r.id, offset: 4 * MiB, length: PAGE, device: dev.deviceId }]), [-22], 'A_WINDOW without A_WP: EINVAL');
});

t.test('reserve windows: after the threshold the rest of a window is installed from a run, no trap for its pages', async (t) => {
  const { dev, scratch, h, r } = await setup(t, 8 * MiB, 'windows', { mode: 'poison' });
  const singles = Array.from({ length: 8 }, (_, i) => (10 + i) * PAGE);
  const RUN = 2 * MiB; // device offset of the run: 2 MiB of zeroed blocks
  for (const q of singles) dev.view(q, PAGE).fill(0);
  dev.view(RUN, 2 * MiB).fill(0);
  dev.view(4 * MiB, PAGE).fill(0xee); // never given: must not show up
  const W = 2 * MiB; // the window: region [2 MiB, 4 MiB)
  t.same(runAnswers([
    { op: Op.SetReserve, region: r.id, offset: 0, length: 4 * MiB, device: dev.deviceId, payload: reservePayload(singles) },
    { op: Op.ReserveWindows, region: r.id, offset: 0, length: PAGE, device: dev.deviceId, payload: reserveWindowsPayload(3, [{ offset: W }], [RUN]) },
  ]), [0, 0], 'a reserve, then a window with a threshold of 3 and one run');
  const s0 = agentStats();
  const b = r.buffer;
  const filled = [5, 6, 300];
  t.equal(kernelTouch(b, W + 5 * PAGE, true, scratch), 'ok', 'a store in the window: a single block');
  t.equal(kernelTouch(b, W + 6 * PAGE, true, scratch), 'ok');
  t.equal(agentStats().upgrades - s0.upgrades, 0, 'below the threshold: no upgrade');
  t.equal(kernelTouch(b, W + 300 * PAGE, true, scratch), 'ok', 'the third');
  const s1 = agentStats();
  t.equal(s1.upgrades - s0.upgrades, 1, 'the window was upgraded');
  t.equal(s1.runPages - s0.runPages, 512 - filled.length, 'the rest of its pages installed');
  t.equal(dev.view(singles[0]!, 1)[0], 0x3c, 'the stores before went to single blocks');
  // Stores to the rest of the window: no trap (poison mode: a trap would be EFAULT).
  for (const i of [0, 7, 299, 301, 511]) t.equal(kernelTouch(b, W + i * PAGE, true, scratch), 'ok', `page ${i}: no trap`);
  t.equal(agentStats().events - s1.events, 0, 'not one fault');
  t.equal(dev.view(RUN + 7 * PAGE, 1)[0], 0x3c, 'a store lands in the run, at its place in the window');
  t.equal(dev.view(RUN + 511 * PAGE, 1)[0], 0x3c);
  t.equal(dev.view(RUN + 5 * PAGE, 1)[0], 0, 'the run\'s blocks where single blocks went are not used');
  t.equal(b[W + 100 * PAGE + 9], 0, 'an untouched page of the window reads zeros');
  t.equal(dev.view(4 * MiB, 1)[0], 0xee, 'no other block was touched');
  // The notes: three single blocks, then the gaps, each with its pages and run offset.
  t.equal(kernelTouch(b, 6 * MiB, true, scratch), 'EFAULT', 'a store outside the ranges goes to the handler (and brings the notes)');
  const seen = await notes(h, 3 + 3);
  const runNotes = seen.filter((n) => n.length === 4) as [number, number, number, number][];
  t.same(seen.filter((n) => n.length === 3).map((n) => n[1]), filled.map((i) => W + i * PAGE), 'a note per single block');
  t.same(runNotes.map((n) => [n[1] - W, n[3]]), [[0, 5], [7 * PAGE, 293], [301 * PAGE, 211]], 'a note per gap: offset, pages');
  t.ok(runNotes.every((n) => n[2] - RUN === n[1] - W), 'each at its place in the run');
  // A write fault in the window now: the pages are installed (no fault); a store in
  // [0, 2 MiB) still takes a single block (the ranges there are untouched).
  t.equal(kernelTouch(b, 3 * PAGE, true, scratch), 'ok', 'outside the window: a single block');
  t.same(runAnswers([{ op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE }]), [(8 - 4) + 3],
    'ClearReserve: the single blocks left plus the run\'s blocks not installed');

  // A window whose first 10 pages are not holes: they count toward the threshold and are
  // never installed over; the upgrade comes after 2 more.
  const RUN2 = 6 * MiB;
  dev.view(RUN2, 2 * MiB).fill(0);
  const W2 = 4 * MiB;
  const taken = Array.from({ length: 10 }, (_, i) => i);
  t.same(runAnswers([
    { op: Op.SetReserve, region: r.id, offset: W2 + 10 * PAGE, length: 2 * MiB - 10 * PAGE, device: dev.deviceId, payload: reservePayload([20 * PAGE, 21 * PAGE]) },
    { op: Op.ReserveWindows, region: r.id, offset: 0, length: PAGE, device: dev.deviceId, payload: reserveWindowsPayload(12, [{ offset: W2, notHoles: taken }], [RUN2]) },
  ]), [0, 0]);
  for (const q of [20 * PAGE, 21 * PAGE]) dev.view(q, PAGE).fill(0);
  const s2 = agentStats();
  t.equal(kernelTouch(b, W2 + 50 * PAGE, true, scratch), 'ok');
  t.equal(agentStats().upgrades - s2.upgrades, 0, '11 of 12');
  t.equal(kernelTouch(b, W2 + 60 * PAGE, true, scratch), 'ok');
  t.equal(agentStats().upgrades - s2.upgrades, 1, '12: upgraded');
  t.equal(agentStats().runPages - s2.runPages, 512 - 12, 'every page but the 12');
  t.equal(kernelTouch(b, W2 + 3 * PAGE, true, scratch), 'EFAULT', 'a page that was not a hole is not installed over: its fault is the handler\'s');
  t.equal(dev.view(RUN2 + 3 * PAGE, 1)[0], 0, 'and its run block is untouched');
  t.equal(kernelTouch(b, W2 + 11 * PAGE, true, scratch), 'ok', 'a hole page of the window: installed');
  t.equal(dev.view(RUN2 + 11 * PAGE, 1)[0], 0x3c);
  t.same(runAnswers([{ op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE }]), [12], 'the 12 run blocks not installed');
});

/** For the argument checks: a device, another one, and a 4 MiB region (closed at the end). */
function checksSetup(t: Test) {
  const { dev, cleanup } = tempDevice('tmpfs', 4 * MiB);
  t.teardown(cleanup);
  const { dev: other, cleanup: c2 } = tempDevice('tmpfs', 4 * MiB);
  t.teardown(c2);
  const r = new TrappedRegion(4 * MiB);
  t.teardown(() => r.close());
  return { dev, other, r };
}

t.test('ReserveWindows answers: argument checks', async (t) => {
  const { dev, other, r } = checksSetup(t);
  const base = { op: Op.ReserveWindows, region: r.id, offset: 0, length: PAGE, device: dev.deviceId } as const;
  t.same(runAnswers([{ ...base, payload: reserveWindowsPayload(4, [{ offset: 0 }], [0]) }]), [-2], 'no reserve set: ENOENT');
  t.same(runAnswers([{ op: Op.SetReserve, region: r.id, offset: 0, length: 4 * MiB, device: dev.deviceId, payload: reservePayload([0]) }]), [0]);
  const res = runAnswers([
    { ...base, payload: reserveWindowsPayload(4, [{ offset: 2 * MiB }], [2 * MiB]) },
    { ...base, payload: reserveWindowsPayload(0, [{ offset: 0 }], []) },
    { ...base, payload: reserveWindowsPayload(513, [{ offset: 0 }], []) },
    { ...base, payload: reserveWindowsPayload(4, [{ offset: PAGE }], []) },
    { ...base, payload: reserveWindowsPayload(4, [{ offset: 4 * MiB }], []) },
    { ...base, payload: reserveWindowsPayload(4, [], [PAGE + 1]) },
    { ...base, payload: reserveWindowsPayload(4, [], [3 * MiB]) },
    { ...base, payload: new Uint8Array(8) },
    { ...base, payload: Buffer.from(reserveWindowsPayload(4, [{ offset: 0 }], []).subarray(0, 72)) },
    { ...base, flags: 1, payload: reserveWindowsPayload(4, [{ offset: 0 }], []) },
    { ...base, device: other.deviceId, payload: reserveWindowsPayload(4, [{ offset: 0 }], []) },
    { ...base, device: 999999, payload: reserveWindowsPayload(4, [{ offset: 0 }], []) },
  ]);
  t.same(res, [0, -22, -22, -22, -22, -22, -22, -22, -22, -22, -22, -19],
    'good; threshold 0; threshold over 512; a window not 2 MiB aligned; past the region; a run not page-aligned; past the device; a payload without its counts; more windows than the payload holds; flags; another device than the reserve\'s; ENODEV');
});

t.test('SetReserve and ClearReserve answers: argument checks', async (t) => {
  const { dev, other, r } = checksSetup(t);
  const ro = new TrappedRegion(4 * MiB, true);
  t.teardown(() => ro.close());
  const base = { op: Op.SetReserve, region: r.id, offset: 0, length: MiB, device: dev.deviceId } as const;
  const res = runAnswers([
    { ...base, payload: reservePayload([0]) },
    { ...base, device: 999999 },
    { ...base, region: 999999 },
    { ...base, region: ro.id },
    { ...base, offset: 4 * MiB },
    { ...base, payload: reservePayload([100]) },
    { ...base, payload: reservePayload([4 * MiB]) },
    { ...base, payload: new Uint8Array(12) },
    { ...base, flags: 1 },
    { ...base, device: other.deviceId },
    { ...base, flags: A_WP, offset: 2 * MiB },
    { op: Op.ClearReserve, region: r.id, offset: 0, length: 4 * MiB },
    { op: Op.ClearReserve, region: 999999, offset: 0, length: PAGE },
  ]);
  t.same(res, [0, -19, -6, -22, -22, -22, -22, -22, -22, -22, 0, 1, -6],
    'good; ENODEV; ENXIO; read-only region; outside the region; unaligned block; block outside the device; a payload not of u64s; flags; another device than the reserve\'s; A_WP; clear (1 unused); clear ENXIO');
});

for (const [what, env, rounds] of [
  ['with the install delayed (test seam)', { DAXMAP_TEST_RESERVE_DELAY_US: '2000' }, 60],
  ['at full speed', {}, 300],
] as const) {
  t.test(`ClearReserve while another thread takes write faults: no install after it returns, every block accounted for, ${what}`, async (t) => {
    const dev = `/dev/shm/daxmap-test-reserve-race-${process.pid}-${rounds}`;
    t.teardown(() => fs.rmSync(dev, { force: true }));
    const res = await runChild('reserve-race-child.js', [dev, String(rounds)], { env, timeoutMs: 120000 });
    t.equal(res.code, 0, res.stderr);
    const out = JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}');
    t.equal(out.late, 0, `no round installed from the reserve after ClearReserve returned (${out.late} of ${out.rounds})`);
    t.equal(out.lost, 0, `in every round, notes + unused = blocks given (${out.lost} rounds off)`);
    t.equal(out.wrong, 0, `every noted block holds the page's write, no other block was written (${out.wrong} rounds off)`);
    t.ok(out.reserved > 0, `the agent answered from reserves (${out.reserved})`);
    t.ok(out.handled > 0, `and after each clear the handler did (${out.handled})`);
  });
}

t.test('a write fault that meets the reserve taken by a top-up waits for it and is answered from the reserve, not by the handler', async (t) => {
  // Before, the reader only tried the lock: such a fault went to the handler, and in
  // the pool the policy took the reserve back and granted it again (tens of ms).
  const rounds = 12;
  const dev = `/dev/shm/daxmap-test-reserve-busy-${process.pid}`;
  t.teardown(() => fs.rmSync(dev, { force: true }));
  const res = await runChild('reserve-busy-child.js', [dev, String(rounds)], { env: { DAXMAP_TEST_TOPUP_HOLD_US: '30000' }, timeoutMs: 120000 });
  t.equal(res.code, 0, res.stderr);
  const out = JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}');
  // The positive signal: in these rounds the agent read the fault while the lock was held.
  t.ok(out.contended >= 1, `the fault met the lock taken in some rounds (${out.contended} of ${rounds})`);
  t.equal(out.delivered, 0, 'none of those faults went to the handler');
  t.equal(out.reserved, out.contended, 'each was answered from the reserve');
  t.equal(out.wrong, 0, 'every store is in the reserve block that answered it, no other block written');
});

t.test('the low-water mark: the note of the install that reaches it wakes the handler; a top-up adds blocks, not ranges', async (t) => {
  const { dev, scratch, h, r } = await setup(t, 8 * MiB, 'low', { mode: 'poison' });
  const given = [10, 11, 12, 13, 14, 15, 16, 17].map((b) => b * PAGE);
  const more = [20, 21, 22, 23].map((b) => b * PAGE);
  for (const b of [...given, ...more]) dev.view(b, PAGE).fill(0);
  t.same(runAnswers([
    { op: Op.TopUpReserve, region: r.id, offset: 0, length: PAGE, device: dev.deviceId, payload: reservePayload(more) },
  ]), [-2], 'a top-up with no reserve set: ENOENT');
  t.same(runAnswers([
    { op: Op.SetReserve, region: r.id, offset: MiB, length: MiB, device: dev.deviceId, devOffset: 3, payload: reservePayload(given) },
  ]), [0], 'eight blocks, low-water mark 3');
  const s0 = agentStats();
  const b = r.buffer;
  const page = (i: number): number => MiB + i * 2 * PAGE;
  for (let i = 0; i < 4; i++) t.equal(kernelTouch(b, page(i), true, scratch), 'ok', `store ${i} from the reserve`);
  t.same((await h.report()).notes, [], 'above the mark the notes wake nobody');
  t.equal(kernelTouch(b, page(4), true, scratch), 'ok', 'the store that leaves 3 blocks');
  // No other fault follows: only the low-water note can have woken the handler.
  const seen = await notes(h, 5);
  t.same(seen.map((n) => n[1]), [0, 1, 2, 3, 4].map(page), 'it brought every note so far to the handler');
  t.same((await h.report()).lowNotes, [[r.id, page(4)]], 'the fifth note says the mark was reached');
  t.equal(agentStats().lowWater - s0.lowWater, 1, 'counted');
  t.equal(kernelTouch(b, page(5), true, scratch), 'ok', 'a store below the mark');
  t.same(runAnswers([
    { op: Op.TopUpReserve, region: r.id, offset: 0, length: PAGE, device: dev.deviceId, devOffset: 3, payload: reservePayload(more) },
  ]), [0], 'a top-up of four blocks: six left');
  t.equal(kernelTouch(b, 3 * MiB, true, scratch), 'EFAULT', 'it added no range: a store outside the ranges goes to the handler');
  for (let i = 6; i < 9; i++) t.equal(kernelTouch(b, page(i), true, scratch), 'ok', `store ${i} from the reserve`);
  const all = await notes(h, 9);
  t.same(all.map((n) => n[2]), [...given.slice(0, 8), more[0]], 'the blocks left were used before the top-up\'s, in the order given');
  t.same((await h.report()).lowNotes, [[r.id, page(4)], [r.id, page(8)]], 'the top-up re-armed the mark: the store that left 3 again signalled');
  t.equal(dev.view(more[0]!, 1)[0], 0x3c, 'the top-up\'s first block holds the ninth store');
  t.same(runAnswers([{ op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE }]), [3], 'ClearReserve after the top-up: 3 blocks unused');
  t.same(runAnswers([
    { op: Op.TopUpReserve, region: r.id, offset: 0, length: PAGE, device: dev.deviceId, payload: reservePayload([30 * PAGE]) },
  ]), [-2], 'a top-up after ClearReserve: ENOENT (the blocks are not taken)');
  t.equal(kernelTouch(b, page(9), true, scratch), 'EFAULT', 'cleared: the handler answers');
  t.equal(agentStats().reserved - s0.reserved, 9, 'nine native answers');
});

t.test('TopUpReserve answers: argument checks', async (t) => {
  const { dev, other, r } = checksSetup(t);
  t.same(runAnswers([{ op: Op.SetReserve, region: r.id, offset: 0, length: MiB, device: dev.deviceId, payload: reservePayload([0]) }]), [0]);
  const base = { op: Op.TopUpReserve, region: r.id, offset: 0, length: PAGE, device: dev.deviceId } as const;
  const res = runAnswers([
    { ...base, payload: reservePayload([PAGE]) },
    { ...base, device: other.deviceId, payload: reservePayload([PAGE]) },
    { ...base, payload: reservePayload([100]) },
    { ...base, payload: reservePayload([4 * MiB]) },
    { ...base, flags: 1 },
    { ...base, flags: A_WP, payload: reservePayload([2 * PAGE]) },
    { ...base, region: 999999 },
    { op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE },
  ]);
  t.same(res, [0, -22, -22, -22, -22, -22, -6, 2], 'good; another device than the reserve\'s; unaligned block; block outside the device; flags; A_WP (a set\'s flag, not a top-up\'s); ENXIO; clear (2 unused)');
});

t.test('AddReserveRanges: many ranges in one frame; a store in any of them is answered from the reserve; argument checks', async (t) => {
  const { dev, scratch, h, r } = await setup(t, 8 * MiB, 'ranges', { mode: 'poison' });
  const { dev: other, cleanup } = tempDevice('tmpfs', 4 * MiB);
  t.teardown(cleanup);
  const blocks = [40, 41, 42, 43].map((b) => b * PAGE);
  for (const b of blocks) dev.view(b, PAGE).fill(0);
  const base = { op: Op.AddReserveRanges, region: r.id, offset: 0, length: PAGE, device: dev.deviceId } as const;
  // Every other page of the region's second half: 512 one-page ranges.
  const many: [number, number][] = [];
  for (let p = 4 * MiB; p < 8 * MiB; p += 2 * PAGE) many.push([p, p + PAGE]);
  t.same(runAnswers([{ ...base, payload: reserveRangesPayload([[0, PAGE]]) }]), [-2], 'no reserve set: ENOENT');
  t.same(runAnswers([
    { op: Op.SetReserve, region: r.id, offset: 0, length: PAGE, device: dev.deviceId, payload: reservePayload(blocks) },
    { ...base, payload: reserveRangesPayload(many) },
  ]), [0, 0], `a reserve of one page, then ${many.length} ranges in one frame`);
  const res = runAnswers([
    { ...base, device: other.deviceId, payload: reserveRangesPayload([[PAGE, 2 * PAGE]]) },
    { ...base, payload: reserveRangesPayload([[PAGE + 1, 2 * PAGE]]) },
    { ...base, payload: reserveRangesPayload([[2 * PAGE, 2 * PAGE]]) },
    { ...base, payload: reserveRangesPayload([[7 * MiB, 9 * MiB]]) },
    { ...base, payload: new Uint8Array(8) },
    { ...base, flags: 1, payload: reserveRangesPayload([[PAGE, 2 * PAGE]]) },
    { ...base, region: 999999, payload: reserveRangesPayload([[PAGE, 2 * PAGE]]) },
  ]);
  t.same(res, [-22, -22, -22, -22, -22, -22, -6], 'another device; unaligned; empty; past the region; half a pair; flags; ENXIO');
  const b = r.buffer;
  const s0 = agentStats();
  t.equal(kernelTouch(b, 8 * MiB - 2 * PAGE, true, scratch), 'ok', 'a store in the last range is answered');
  t.equal(kernelTouch(b, 4 * MiB + 200 * PAGE, true, scratch), 'ok', 'and one in the middle');
  t.equal(kernelTouch(b, 4 * MiB + 201 * PAGE, true, scratch), 'EFAULT', 'a page between two ranges goes to the handler');
  t.equal(kernelTouch(b, PAGE, true, scratch), 'EFAULT', 'as does one the refused answers named');
  t.equal(agentStats().reserved - s0.reserved, 2, 'two native answers');
  t.same((await notes(h, 2)).map((n) => [n[1], n[2]]), [[8 * MiB - 2 * PAGE, 40 * PAGE], [4 * MiB + 200 * PAGE, 41 * PAGE]], 'noted with their blocks');
  t.same(runAnswers([{ op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE }]), [2], 'cleared: two blocks unused');
});
