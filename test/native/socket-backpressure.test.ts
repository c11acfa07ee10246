// A daemon that stops reading: the client's socket fills, yet the agent's reader
// never blocks. Revokes still run (they wait for the reader), a JS channel in the
// same process is still answered, and events batch up until the daemon reads again.
import t from 'tap';
import fs from 'node:fs';
import { TrappedRegion } from '../../dist/native/region';
import { Op } from '../../dist/native/frames';
import { SocketFaultChannel } from '../../dist/native/socket-channel';
import { Handler, tempDevice } from './helpers';
import { FakeDaemon, waitFor } from './socket-helpers';

const PAGE = 4096;
const HIGH_WATER = 1 << 20; // native/socket_channel.cc kHighWater

function writeFrom(fd: number, b: Buffer, off: number): Promise<NodeJS.ErrnoException | null> {
  return new Promise((res) => fs.write(fd, b, off, PAGE, 0, (e) => res(e)));
}

t.test('a daemon that stops reading never blocks the reader', async (t) => {
  const d = await FakeDaemon.start();
  const h = await Handler.start();
  const { dev, cleanup } = tempDevice('tmpfs', 64 * PAGE);
  const out = `/dev/shm/daxmap-test-sockbp-${process.pid}`;
  const fd = fs.openSync(out, 'w');
  t.teardown(async () => {
    fs.closeSync(fd);
    fs.rmSync(out, { force: true });
    await h.stop();
    cleanup();
    await d.stop();
  });
  dev.view(8 * PAGE, PAGE).fill(0x18);
  const ch = SocketFaultChannel.connect(d.path, { session: 20n });
  t.teardown(() => ch.close());
  const r = new TrappedRegion(32 * PAGE);
  await d.rule(r.id, { mode: 'install', device: dev.deviceId, populate: true });
  r.bind(ch);
  const b = r.buffer;
  t.equal(b[8 * PAGE], 0x18, 'page 8 installed through the daemon');
  // A region of the same process whose handler is a JS worker.
  const jr = new TrappedRegion(8 * PAGE);
  await h.rule(jr.id, { mode: 'copy', payloadByte: 0x6a });
  jr.bind(h.ref);

  // Phase 1: the daemon stops reading and sends 40000 answers (results: 640 KB, more
  // than the socket holds, less than the high-water mark), then a revoke.
  await d.pause();
  const answers0 = ch.info().answers;
  await d.flood(40000);
  await waitFor(() => ch.info().answers >= answers0 + 40000, 'the flood to be executed');
  await waitFor(() => ch.info().pendingOut > 0, 'the socket to be full');
  const revoke = d.answer([{ op: Op.Revoke, region: r.id, offset: 8 * PAGE, length: PAGE, tag: 7007 }]);
  await waitFor(() => ch.info().answers === answers0 + 40001, 'the revoke to run on the I/O thread');
  const pending = ch.info().pendingOut;
  t.ok(pending > 0 && pending < HIGH_WATER, `its result waits in user space (${pending} bytes) while the socket is full`);
  t.equal(jr.buffer[5], 0x6a, 'a fault on a JS-channel region of this process is answered meanwhile');
  // A socket-channel fault now: its event is queued behind the results.
  const w1 = writeFrom(fd, b, 2 * PAGE);
  await waitFor(() => ch.info().live === 1, 'the event');
  await d.resume();
  t.same(await revoke, [{ tag: 7007, result: 0 }], 'the daemon gets the revoke result once it reads');
  t.equal(await w1, null, 'the queued fault is answered');
  const rep1 = await d.until((x) => x.floodResults === 40000, 'the flood results', 20n);
  t.equal(rep1.tagMismatch, 0, 'every RESULTS message matched its ANSWERS');
  await d.forget(r.id); // the daemon's record: page 8 needs a page answer again
  const ev = rep1.events;
  t.equal(b[8 * PAGE + 1], 0x18, 'the revoked page faults again');
  t.equal((await d.report(20n)).events, ev + 1);

  // Phase 2: past the high-water mark the client stops taking events; four faults
  // wait in the channel and then go out as one EVENTS message.
  await d.pause();
  await d.flood(100000);
  await waitFor(() => ch.info().pendingOut >= HIGH_WATER, 'output past the high-water mark');
  const sent = ch.info().eventsSent;
  // One file each: writes to one file serialise on its inode lock, faults and all.
  const fds = [0, 1, 2, 3].map((i) => fs.openSync(`${out}-${i}`, 'w'));
  t.teardown(() => fds.forEach((f, i) => {
    fs.closeSync(f);
    fs.rmSync(`${out}-${i}`, { force: true });
  }));
  const writes = [10, 11, 12, 13].map((p, i) => writeFrom(fds[i]!, b, p * PAGE));
  await waitFor(() => ch.info().live === 4, 'four faults queued');
  t.equal(ch.info().eventsSent, sent, 'none taken while output is backed up');
  t.equal(jr.buffer[3 * PAGE], 0x6a, 'the JS channel is still answered');
  await d.resume();
  t.same(await Promise.all(writes), [null, null, null, null], 'all four faults answered');
  // The faulting threads are woken before the client sends its RESULTS back: wait
  // for those too, not only for the flood's.
  const rep2 = await d.until((x) => x.floodResults === 140000 && x.log.slice(-4).every((l) => l[5] !== null), 'all flood results and the four results', 20n);
  t.equal(rep2.eventMessages[rep2.eventMessages.length - 1], 4, 'the four events came in one EVENTS message');
  const last = rep2.log.slice(-4);
  t.same(last.map((l) => l[1]).sort((a, z) => a - z), [10, 11, 12, 13].map((p) => p * PAGE));
  t.same(last.map((l) => l[5]), [0, 0, 0, 0], 'answered in one ANSWERS message, four results back');
  t.same(new Set(last.map((l) => l[6])).size, 4, 'each with its own tag');
  t.equal(rep2.tagMismatch, 0);
  t.equal(ch.info().state, 'open', 'the channel survived it all');
  r.close();
  jr.close();
});
