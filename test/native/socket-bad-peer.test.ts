// A daemon that misbehaves: malformed, oversized or truncated messages, bad HELLOs,
// silence. Each orphans the channel cleanly (waiting faults get EFAULT/SIGBUS, the
// JS side learns why), and the process goes on.
import t from 'tap';
import fs from 'node:fs';
import { TrappedRegion } from '../../dist/native/region';
import { agentStats, configureAgent } from '../../dist/native/engine';
import { SocketFaultChannel } from '../../dist/native/socket-channel';
import type { DaxmapError } from '../../dist/errors';
import { runChild, tempDevice } from './helpers';
import { FakeDaemon, waitFor } from './socket-helpers';

const PAGE = 4096;

function writeFrom(fd: number, b: Buffer, off: number): Promise<NodeJS.ErrnoException | null> {
  return new Promise((res) => fs.write(fd, b, off, PAGE, 0, (e) => res(e)));
}

// [what the daemon does, HELLO mode or raw bytes after a normal HELLO, the reason]
const CASES: [string, 'hello' | 'raw', RegExp][] = [
  ['garbage', 'raw', /^(EPROTO|EMSGSIZE): /],
  ['oversize', 'raw', /^EMSGSIZE: ANSWERS message of 1073741824 bytes exceeds the limit of 16777216$/],
  ['truncated', 'raw', /^EPROTO: the daemon closed the connection in the middle of a message$/],
  ['bad-frame', 'raw', /^EPROTO: the payload of answer 0 runs past its message$/],
  ['unknown-type', 'raw', /^EPROTO: unknown message type 9$/],
  ['results', 'raw', /^EPROTO: RESULTS messages go from the client to the daemon only$/],
  ['flags', 'raw', /^EPROTO: ANSWERS message with flags 1 \(none are defined in version 1\)$/],
  ['second-hello', 'raw', /^EPROTO: a second HELLO$/],
  ['bye', 'raw', /^ECONNRESET: the daemon said BYE$/],
  ['bad-magic', 'hello', /^EPROTO: bad HELLO magic 0x12345678$/],
  ['bad-session', 'hello', /^EPROTO: the daemon's HELLO names session 112, not this channel's 111$/],
  ['bad-version', 'hello', /^EPROTO: the daemon speaks protocol version 2, this client speaks 1$/],
  ['answers-first', 'hello', /^EPROTO: expected HELLO first, got ANSWERS$/],
];

t.test('bad input from the daemon orphans the channel; nothing hangs, nothing crashes', async (t) => {
  const d = await FakeDaemon.start();
  const { dev, cleanup } = tempDevice('tmpfs', 16 * PAGE);
  const out = `/dev/shm/daxmap-test-sockbad-${process.pid}`;
  const fd = fs.openSync(out, 'w');
  t.teardown(async () => {
    fs.closeSync(fd);
    fs.rmSync(out, { force: true });
    cleanup();
    await d.stop();
  });
  let session = 100n;
  for (const [kind, how, reason] of CASES) {
    session++;
    await d.config(how === 'hello' ? kind : 'normal');
    let died: DaxmapError | undefined;
    const r = new TrappedRegion(4 * PAGE);
    await d.rule(r.id, { mode: 'ignore' });
    const ch = SocketFaultChannel.connect(d.path, { session, onClose: (e) => (died = e) });
    r.bind(ch); // before a bad HELLO can arrive (the fake daemon sends those 50 ms late)
    const write = writeFrom(fd, r.buffer, 0);
    if (how === 'raw') {
      await d.until((rep) => rep.events === 1, `${kind}: the event to reach the daemon`, session);
      await d.raw(kind, session);
    }
    t.equal((await write)?.code, 'EFAULT', `${kind}: the waiting fault fails with EFAULT`);
    await waitFor(() => died !== undefined, `${kind}: the death callback`);
    t.match(ch.reason, reason, `${kind}: ${ch.reason}`);
    t.equal(died?.code, 'ECLOSED');
    t.equal(ch.info().state, 'closed');
    t.equal(ch.info().live, 0, `${kind}: no event left live`);
    t.equal((await writeFrom(fd, r.buffer, PAGE))?.code, 'EFAULT', `${kind}: later faults fail too`);
    await d.until((rep) => rep.closed, `${kind}: the client to shut the connection`, session);
    r.close();
    ch.close();
  }
  // The process (and the daemon) are fine: a well-behaved exchange still works.
  await d.config('normal');
  const ch = SocketFaultChannel.connect(d.path, { session: 99n });
  const r = new TrappedRegion(4 * PAGE);
  dev.view(0, 2).write('ok');
  await d.rule(r.id, { mode: 'install', device: dev.deviceId });
  r.bind(ch);
  t.equal(r.buffer.toString('utf8', 0, 2), 'ok', 'a later channel is answered normally');
  r.close();
  ch.close();
});

t.test('a daemon that never says HELLO: the fault is left to the watchdog', async (t) => {
  const d = await FakeDaemon.start();
  const out = `/dev/shm/daxmap-test-socksilent-${process.pid}`;
  const fd = fs.openSync(out, 'w');
  t.teardown(async () => {
    configureAgent({ faultTimeoutMs: 30000 });
    fs.closeSync(fd);
    fs.rmSync(out, { force: true });
    await d.stop();
  });
  await d.config('none');
  configureAgent({ faultTimeoutMs: 300 });
  const ch = SocketFaultChannel.connect(d.path, { session: 12n });
  t.teardown(() => ch.close());
  const r = new TrappedRegion(4 * PAGE);
  r.bind(ch);
  const before = agentStats().timeouts;
  t.equal((await writeFrom(fd, r.buffer, 0))?.code, 'EFAULT', 'answered with SIGBUS by the watchdog');
  t.equal(agentStats().timeouts, before + 1);
  t.equal(ch.info().state, 'handshake', 'no event was sent before the daemon\'s HELLO');
  t.equal(ch.info().eventsSent, 0);
  r.close();
});

t.test('the daemon dies while the client\'s main thread is blocked in a fault: SIGBUS, not a hang', async (t) => {
  const res = await runChild('socket-client-child.js', [`/tmp/daxmap-test-sockchild-${process.pid}.sock`], { timeoutMs: 20000 });
  t.equal(res.signal, 'SIGBUS', 'the child died of SIGBUS');
  const touched = /touching (0x[0-9a-f]+)/.exec(res.stdout)?.[1];
  t.ok(touched, 'the child said where it would touch');
  t.equal(/daxmap: SIGBUS at (0x[0-9a-f]+)/.exec(res.stderr)?.[1], touched, 'at the touched address');
  t.notMatch(res.stdout, /survived/);
});
