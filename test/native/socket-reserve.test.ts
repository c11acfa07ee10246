// Reserves over the daemon socket (docs/wire.md, "ANSWERS" and "EVENTS"; docs/native.md,
// "Reserves"): the client's agent answers write faults from a reserve alone and queues
// a note per install, which wakes nobody; when the daemon clears the reserve, every
// note of it reaches the daemon ahead of the RESULTS message carrying the clear's
// result (the number of blocks left unused), so the daemon may adopt "every note"
// once it reads that result. The fake daemon (fixtures/socket-daemon.js) traces what
// it reads in socket order.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { TrappedRegion } from '../../dist/native/region';
import { agentStats, configureAgent } from '../../dist/native/engine';
import { Op, EV_NOTE, EV_WRITE } from '../../dist/native/frames';
import { SocketFaultChannel } from '../../dist/native/socket-channel';
import { tempDevice } from './helpers';
import { FakeDaemon, waitFor, type TraceEntry } from './socket-helpers';

const PAGE = 4096;

let d: FakeDaemon;
t.before(async () => {
  d = await FakeDaemon.start();
});
t.teardown(() => d.stop());

let sessions = 0x5e5e000n;

/** The page's stamp: a byte that differs from one page to the next and is never 0. */
const stamp = (p: number): number => ((p * 29) & 0xff) | 1;

/**
 * A connected channel, a region of `pages` pages bound to it (faults that reach the
 * daemon are poisoned: EFAULT in a system call), a tmpfs device of `blocks` zeroed
 * blocks, and a scratch file of `pages` pages, page p filled with stamp(p): a read(2)
 * of it into the region is a kernel-mode write fault per page.
 */
async function setup(t: Test, pages: number, blocks: number) {
  const session = ++sessions;
  configureAgent({ faultTimeoutMs: 10000 });
  t.teardown(() => configureAgent({ faultTimeoutMs: 30000 }));
  const ch = SocketFaultChannel.connect(d.path, { session });
  t.teardown(() => ch.close());
  await waitFor(() => ch.info().state === 'open', 'the handshake');
  const { dev, cleanup } = tempDevice('tmpfs', (blocks + 1) * PAGE);
  t.teardown(cleanup);
  const r = new TrappedRegion(pages * PAGE);
  t.teardown(() => r.close());
  r.bind(ch); // no rule for the region: the fake daemon poisons its faults
  const scratch = `/dev/shm/daxmap-test-sockres-${process.pid}-${session}`;
  const content = Buffer.alloc(pages * PAGE);
  for (let p = 0; p < pages; p++) content.fill(stamp(p), p * PAGE, (p + 1) * PAGE);
  fs.writeFileSync(scratch, content);
  t.teardown(() => fs.rmSync(scratch, { force: true }));
  // blocks 1..blocks of the device (block 0 is never given, and must stay zero)
  const given = Array.from({ length: blocks }, (_, i) => (i + 1) * PAGE);
  return { session, ch, dev, r, scratch, given };
}

/** read(2) of pages [0, n) of the scratch file into the region: its bytes, or the error's code. */
function storeFrom(scratch: string, r: TrappedRegion, n: number): Promise<number | string> {
  const fd = fs.openSync(scratch, 'r');
  return new Promise((res) => {
    fs.read(fd, r.buffer, 0, n * PAGE, 0, (err, bytes) => {
      fs.closeSync(fd);
      res(err ? (err.code ?? String(err)) : bytes);
    });
  });
}

/** The notes of the trace, with their place in it: [index, region, offset, devOffset]. */
function notesOf(trace: TraceEntry[]): [number, number, number, number][] {
  const out: [number, number, number, number][] = [];
  trace.forEach((e, i) => {
    if (e[0] === 'E' && (e[3] & EV_NOTE) !== 0) out.push([i, e[1], e[2], e[4]]);
  });
  return out;
}

/** The place in the trace of the result with `tag`. */
function resultAt(trace: TraceEntry[], tag: number): number {
  return trace.findIndex((e) => e[0] === 'R' && e[1] === tag);
}

// 37 notes go in one EVENTS message; 4,146 need two (4,096 events at most in one).
for (const n of [37, 4096 + 50]) {
  t.test(`${n} stores answered from a reserve: their notes wait, then all reach the daemon ahead of the clear reserve's result`, async (t) => {
    const blocks = n + 13;
    const { session, ch, dev, r, scratch, given } = await setup(t, n + 16, blocks);
    const set = await d.answer([{ op: Op.SetReserve, region: r.id, offset: 0, length: (n + 16) * PAGE, device: dev.deviceId, blocks: given }]);
    t.same(set.map((x) => x.result), [0], 'set reserve: every page of the region, with the blocks');
    const s0 = agentStats();
    const sent0 = ch.info().eventsSent;
    t.equal(await storeFrom(scratch, r, n), n * PAGE, `a read(2) of ${n} pages into the region completed`);
    t.equal(agentStats().reserved - s0.reserved, n, 'each of its write faults was answered from the reserve');
    t.equal(agentStats().delivered - s0.delivered, 0, 'no fault went to the daemon');
    // Nothing wakes the channel's I/O thread for a note: they are still queued (so the
    // order checked below is the clear's doing, not an earlier send).
    t.equal(ch.info().eventsSent, sent0, 'the notes were not sent on their own');
    t.same(notesOf(await d.trace(session)), [], 'the daemon has seen none of them');

    const tag = 7001;
    const clear = await d.answer([{ op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE, tag }]);
    t.same(clear, [{ tag, result: blocks - n }], 'clear reserve\'s result: the blocks left unused');
    const trace = await d.trace(session);
    const at = resultAt(trace, tag);
    const notes = notesOf(trace);
    t.ok(at >= 0, 'the daemon read the clear\'s result');
    t.equal(notes.length, n, 'the daemon read a note per store');
    t.same(notes.filter(([i]) => i > at).map(([, , off]) => off), [], 'every note came ahead of the RESULTS that carry the clear\'s result');
    t.same(notes.map(([, region, off]) => [region, off]), Array.from({ length: n }, (_, p) => [r.id, p * PAGE]), 'one per page stored, in the order of the faults');
    t.equal(trace.filter((e) => e[0] === 'E' && (e[3] & EV_NOTE) !== 0 && (e[3] & EV_WRITE) === 0).length, 0, 'every note is marked a write');
    const devs = notes.map(([, , , dv]) => dv);
    t.equal(new Set(devs).size, n, 'each names its own block');
    t.same(devs.filter((dv) => !given.includes(dv)), [], 'every block named was given');
    t.same(notes.filter(([, , off, dv]) => dev.view(dv, PAGE).some((x) => x !== stamp(off / PAGE))).map(([, , off]) => off), [], 'each noted block holds its page\'s store');
    t.equal(dev.view(0, PAGE).some((x) => x !== 0), false, 'the block never given was not written');
    t.equal(ch.info().live, 0, 'nothing outstanding');
  });
}

t.test('clear reserve while another thread stores page after page: notes + unused = blocks given, no note after the clear\'s result', async (t) => {
  const pages = 8000;
  const blocks = pages; // enough for every page: the store runs until the clear stops it
  const { session, dev, r, scratch, given } = await setup(t, pages, blocks);
  t.same((await d.answer([{ op: Op.SetReserve, region: r.id, offset: 0, length: pages * PAGE, device: dev.deviceId, blocks: given }])).map((x) => x.result), [0]);
  const s0 = agentStats();
  let stored: number | string | undefined;
  // a libuv thread stores page after page (a write fault each) while this one clears
  void storeFrom(scratch, r, pages).then((v) => (stored = v));
  await waitFor(() => agentStats().reserved - s0.reserved >= 100 || stored !== undefined, 'a hundred stores from the reserve');
  const tag = 7002;
  const [res] = await d.answer([{ op: Op.ClearReserve, region: r.id, offset: 0, length: PAGE, tag }]);
  // The faults after the clear reach the daemon, which poisons them: the read(2) stops short.
  await waitFor(() => stored !== undefined, 'the store to end');
  // One more ANSWERS message (empty): whatever was queued by now goes out ahead of its RESULTS.
  await d.answer([]);
  const trace = await d.trace(session);
  const at = resultAt(trace, tag);
  const notes = notesOf(trace);
  t.ok(typeof stored === 'number' && stored < pages * PAGE, `the read(2) stopped short (${stored} bytes)`);
  t.equal(res?.result, blocks - notes.length, `notes (${notes.length}) + unused (${res?.result}) = blocks given (${blocks})`);
  t.same(notes.filter(([i]) => i > at).map(([, , off]) => off), [], 'no note came after the clear\'s result');
  t.equal(typeof stored === 'number' ? stored / PAGE : -1, notes.length, 'the pages stored are the pages noted');
  t.equal(agentStats().reserved - s0.reserved, notes.length, 'and the agent\'s count of reserve answers');
  t.same(notes.filter(([, , off, dv]) => dev.view(dv, PAGE).some((x) => x !== stamp(off / PAGE))).map(([, , off]) => off), [], 'each noted block holds its page\'s store');
});
