// The agent's reader thread: it runs while the agent has users and is joined when
// the last one goes; it sleeps until there is something to do; a failed start is
// tried again. Each case runs in a child process of its own, so that no earlier
// test has started the agent, left graves to release, or events to watch.
import t, { type Test } from 'tap';
import { runChild } from './helpers';

async function child(t: Test, mode: string): Promise<any> {
  const res = await runChild('agent-reader-child.js', [mode]);
  t.equal(res.code, 0, res.stderr);
  return JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}');
}

t.test('the reader thread runs while a worker uses the agent, is joined when it exits, and starts again', async (t) => {
  const out = await child(t, 'lifetime');
  t.equal(out.before, 0, 'no reader before anyone used the agent');
  t.equal(out.during, 1, 'one reader while the worker holds a region');
  t.equal(out.startsA, 1);
  t.equal(out.codeA, 0);
  t.equal(out.afterA, 0, 'the reader is gone once the last user (the worker) has exited');
  t.equal(out.codeB, 0);
  // starts is 2: the same instance of the library, kept loaded (pinned) after the
  // last environment that loaded it went away; a reloaded copy would count from 1.
  t.same(out.b, { value: 42, starts: 2, direct: 1 }, 'a new user starts a new reader in the same library, and a fault round trip works');
  t.equal(out.afterB, 0, 'and that one is joined too');
});

t.test('a failed start is not remembered: the next use starts the agent', async (t) => {
  const out = await child(t, 'retry');
  t.equal(out.first, 'EUFFD', 'the first start fails (the denial seam)');
  t.equal(out.readersAfterFailure, 0, 'and leaves no thread behind');
  t.equal(out.second, 'created', 'the next one is tried again and succeeds');
  t.equal(out.readers, 1);
  t.equal(out.starts, 1);
});

t.test('the reader wakes only for work: no timer while idle', async (t) => {
  const out = await child(t, 'idle');
  t.equal(out.bad, 0, 'every touch read the device byte and every revoke succeeded');
  t.equal(out.direct, out.cycles, 'one direct answer per touch');
  t.equal(out.remaps, out.cycles, 'one REMAP event per revoke');
  // A timer would add wakes; under load a fault and a REMAP event are now and then
  // read in one wake (seen once: 399 of 400), never more than two per round trip.
  t.ok(out.wakes <= 2 * out.cycles && out.wakes >= out.cycles, `at most two wakes per round trip (${out.wakes} for ${out.cycles})`);
  t.ok(out.idleMs >= 500, `idle for ${out.idleMs.toFixed(0)} ms`);
  t.equal(out.idleWakes, 2, 'across the idle span and one more round trip: only that round trip\'s two wakes');
});
