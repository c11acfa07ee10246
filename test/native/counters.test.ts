// The agent counts an answer before the wake that lets the faulting thread go on
// (docs/native.md, "Counters"): a thread that reads agentStats() right after its own
// access sees the access counted. The child runs with the agent sleeping after every
// wake (DAXMAP_TEST_WAKE_DELAY_US), so a counter bumped after a wake reads short.
import t from 'tap';
import fs from 'node:fs';
import { runChild } from './helpers';

for (const [what, env] of [
  ['with the agent sleeping after each wake (test seam)', { DAXMAP_TEST_WAKE_DELAY_US: '100000' }],
  ['at full speed', {}],
] as const) {
  t.test(`each answer is counted before its thread is woken, ${what}`, async (t) => {
    const dev = `/dev/shm/daxmap-test-counters-${process.pid}-${what.length}`;
    const scratch = `${dev}-scratch`;
    t.teardown(() => {
      fs.rmSync(dev, { force: true });
      fs.rmSync(scratch, { force: true });
    });
    const res = await runChild('counters-child.js', [dev, scratch], { env, timeoutMs: 60000 });
    t.equal(res.code, 0, res.stderr || 'the child exited 0');
    const out = JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}') as { checks: [string, unknown, unknown][] };
    t.equal(out.checks.length, 20, 'every check ran');
    for (const [name, got, want] of out.checks) t.equal(got, want, name);
  });
}
