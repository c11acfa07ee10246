// Decided ranges in the agent (docs/native.md, "Decided ranges"): the SetDirect and
// ClearDirect answers, faults answered with no handler, and ClearDirect + Revoke
// leaving no stale window while another thread faults on the range.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { TrappedRegion } from '../../dist/native/region';
import { agentStats } from '../../dist/native/engine';
import { Op, A_WRITABLE, A_POPULATE, A_PRIVATE, A_WP } from '../../dist/native/frames';
import { boundRegion, kernelTouch, runAnswers, runChild, tempDevice, type Rule } from './helpers';

const PAGE = 4096;
const HUGE = 2 << 20;

function setup(t: Test, size: number, name: string, rule: Rule) {
  return boundRegion(t, size, `decided-${name}`, rule);
}

t.test('SetDirect: the agent answers faults in the range itself, the handler never sees them', async (t) => {
  // A fault that reaches the handler is never answered.
  const { dev, scratch, h, r } = await setup(t, 8 << 20, 'direct', { mode: 'ignore' });
  dev.view(HUGE + 5 * PAGE, 4).write('deep');
  t.same(runAnswers([{ op: Op.SetDirect, flags: A_WRITABLE, region: r.id, offset: HUGE, length: 2 * HUGE, device: dev.deviceId, devOffset: HUGE }]), [0]);
  const before = agentStats();
  const b = r.buffer;
  t.equal(kernelTouch(b, HUGE + 5 * PAGE, false, scratch), 'ok', 'a read fault in the range completes');
  t.equal(b.toString('utf8', HUGE + 5 * PAGE, HUGE + 5 * PAGE + 4), 'deep', 'from the device');
  t.equal(kernelTouch(b, 2 * HUGE + 7 * PAGE, true, scratch), 'ok', 'a write fault in the next chunk completes');
  t.equal(dev.view(2 * HUGE + 7 * PAGE, 1)[0], 0x3c, 'and reached the device');
  for (let off = HUGE; off < 3 * HUGE; off += PAGE) b[off + 1] = 9; // the rest: no trap (the windows are in)
  const after = agentStats();
  t.equal(after.direct - before.direct, 2, 'one native answer per 2 MiB chunk');
  t.equal(after.delivered - before.delivered, 0, 'nothing reached the handler');

  // Cleared: the next fault there is the handler's again.
  t.same(runAnswers([{ op: Op.ClearDirect, region: r.id, offset: 2 * HUGE, length: HUGE }, { op: Op.Revoke, region: r.id, offset: 2 * HUGE, length: HUGE }]), [0, 0]);
  await h.rule(r.id, { mode: 'copy', payloadByte: 0x61 });
  const d0 = agentStats();
  t.equal(b[2 * HUGE + 9 * PAGE], 0x61, 'after ClearDirect + Revoke the handler answers');
  t.equal(agentStats().direct - d0.direct, 0, 'not the agent');
  t.equal(agentStats().delivered - d0.delivered, 1);
  t.equal(b[HUGE + 5 * PAGE], 0x64, 'the other chunk is still the device (d of "deep")');
});

t.test('a write, or a write-protect fault, in a range decided read-only goes to the handler', async (t) => {
  const { dev, scratch, h, r } = await setup(t, 4 << 20, 'ro', { mode: 'copy', payloadByte: 0x22 });
  t.same(runAnswers([{ op: Op.SetDirect, region: r.id, offset: 0, length: 4 << 20, device: dev.deviceId, devOffset: 0 }]), [0]);
  const s0 = agentStats();
  t.equal(kernelTouch(r.buffer, 3 * PAGE, true, scratch), 'ok', 'the write completes');
  t.equal(agentStats().delivered - s0.delivered, 1, 'through the handler');
  t.equal(agentStats().direct - s0.direct, 0);
  t.equal(dev.view(3 * PAGE, 1)[0], 0, 'the device is untouched');
  // A write-protect fault (a zero page written) is never the agent's either.
  // (The handler answers it with SIGBUS here: EFAULT for the system call.)
  t.same(runAnswers([{ op: Op.Zero, flags: A_WP, region: r.id, offset: HUGE, length: PAGE }]), [0]);
  await h.rule(r.id, { mode: 'poison' });
  const s1 = agentStats();
  t.equal(kernelTouch(r.buffer, HUGE, true, scratch), 'EFAULT');
  t.equal(agentStats().delivered - s1.delivered, 1, 'the WP fault went to the handler');
  t.equal(agentStats().direct - s1.direct, 0);
});

t.test('SetDirect and ClearDirect answers: argument checks', async (t) => {
  const { dev, cleanup } = tempDevice('tmpfs', 4 << 20);
  t.teardown(cleanup);
  const r = new TrappedRegion(4 << 20);
  t.teardown(() => r.close());
  const base = { op: Op.SetDirect, region: r.id, offset: 0, length: HUGE, device: dev.deviceId, devOffset: 0 } as const;
  const res = runAnswers([
    { ...base, flags: A_WRITABLE | A_POPULATE },
    { ...base, device: 999999 },
    { ...base, region: 999999 },
    { ...base, offset: 4 << 20 },
    { ...base, length: 3000 },
    { ...base, offset: 2 * HUGE - PAGE, length: 2 * PAGE },
    { ...base, devOffset: (4 << 20) - PAGE, length: 2 * PAGE },
    { ...base, devOffset: 100 },
    { ...base, flags: A_PRIVATE },
    { ...base, flags: A_WP },
    { op: Op.ClearDirect, region: r.id, offset: 0, length: 4 << 20 },
    { op: Op.ClearDirect, region: r.id, offset: 0, length: 8 << 20 },
    { op: Op.ClearDirect, region: 999999, offset: 0, length: PAGE },
    { op: Op.ClearDirect, region: r.id, offset: 5, length: PAGE },
  ]);
  t.same(res, [0, -19, -6, -22, -22, -22, -22, -22, -22, -22, 0, -22, -6, -22],
    'good; ENODEV; ENXIO; outside the region (x3); outside the device; unaligned; private; wp; clear good; clear outside; clear ENXIO; clear unaligned');
});

for (const [what, env, rounds] of [
  ['with the install delayed (test seam), every round in the window', { DAXMAP_TEST_DIRECT_DELAY_US: '3000' }, 60],
  ['at full speed', {}, 400],
] as const) {
  t.test(`ClearDirect + Revoke while another thread faults on the range: no stale window, ${what}`, async (t) => {
    const dev = `/dev/shm/daxmap-test-direct-race-${process.pid}-${rounds}`;
    t.teardown(() => fs.rmSync(dev, { force: true }));
    const res = await runChild('direct-race-child.js', [dev, String(rounds)], { env, timeoutMs: 120000 });
    t.equal(res.code, 0, res.stderr);
    const out = JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}');
    t.equal(out.stale, 0, `no round left a page reading the device after the revoke (${out.stale} of ${out.rounds})`);
    t.ok(out.direct > 0, `the agent answered faults natively (${out.direct})`);
    t.ok(out.handled > 0, `and, after each clear, the handler did (${out.handled})`);
  });
}
