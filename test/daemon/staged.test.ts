// Staged ranges with daxmapd (docs/fault-policy.md, "Staged ranges"): a client's
// sparse stores go to its own memfd, which the daemon took with pidfd_getfd, so they
// take no trap; the daemon copies them into the file at the take-back, also after the
// client was killed.
import t from 'tap';
import { daemonWithClients, HUGE, PAGE } from './helpers';
import { useLockdep } from '../lock/guard';
import { until } from '../wait';
import fs from 'node:fs';
import { fsckDevice } from '../../dist/pool/fsck.js';

useLockdep(t);

const MiB = 1 << 20;
const scattered = (n: number, count: number): number[] => Array.from({ length: count }, (_, i) => (i * 7919 + 13) % n);

/** The u32 at byte 8 of every page of file 'f', through `c`'s file.read. */
function readAll(c: { call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> }, size: number): Promise<number[]> {
  return c.call<number[]>('readTags', { name: 'f', size });
}

/** Every page of `back` holds its tag (page + 1 at byte 8) if in `want`, else zeros there. */
function misread(back: number[], pages: number, want: Set<number>): number {
  let bad = 0;
  for (let p = 0; p < pages; p++) if (back[p] !== (want.has(p) ? p + 1 : 0)) bad++;
  return bad;
}

t.test('a client\'s sparse stores take no trap; the daemon collects them, also from a client killed without a flush', async (t) => {
  // Reserve windows off: the reserve answers 4 KiB blocks only, so the space is exact.
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_RESERVE_WINDOW: 'off' } });
  if (!a || !b) throw new Error('two clients');
  const size = 64 * MiB;
  const pages = size / PAGE;
  const half = pages / 2;
  const windowOf = (p: number): number => Math.floor(p / (HUGE / PAGE));
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size });
  await a.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
  const s0 = await a.call<any>('stats');
  // The first sparse store is the cue for the grant, which stages the whole-hole windows.
  const cue = 13;
  await a.call('tags', { id: 1, pages: [cue] });
  let s = s0;
  await until(async () => (s = await a.call<any>('stats')).reserveGrants > s0.reserveGrants, 'the grant', { detail: () => s });
  const touched = scattered(half, 600);
  const inStaged = touched.filter((p) => windowOf(p) !== windowOf(cue));
  const e0 = (await a.call<any>('agentStats')).events;
  await a.call('tags', { id: 1, pages: inStaged });
  const trapped = (await a.call<any>('agentStats')).events - e0;
  t.equal(trapped, 0, `no store into the staged windows trapped (${inStaged.length} stores)`);
  // The rest, in the cue's window (not a whole hole): the reserve's, each a trap.
  await a.call('tags', { id: 1, pages: touched.filter((p) => windowOf(p) === windowOf(cue)) });

  // B reads the file through the daemon: the take-back copies A's staged stores.
  await b.call('open', { name: 'f' });
  const want = new Set([cue, ...touched]);
  const back = await readAll(b, size);
  t.equal(misread(back, pages, want), 0, 'B reads every store of A, zeros elsewhere');
  const s1 = await a.call<any>('stats');
  t.equal(s1.staged - s0.staged, inStaged.length, 'the daemon copied each staged page stored');
  t.equal(s1.stagedLost - s0.stagedLost, 0, 'no staged page lost');
  t.equal((await b.call<{ allocated: number }>('stat', { name: 'f' })).allocated, want.size * PAGE, 'a block per page stored, no more');

  // The second half: a new cue and grant, stores in its staged windows, then A dies
  // without a flush. The daemon holds the memfd: what A stored there is collected
  // when A's mappings go.
  const cue2 = half + 77;
  await a.call('tags', { id: 1, pages: [cue2] });
  await until(async () => (s = await a.call<any>('stats')).reserveGrants > s1.reserveGrants, 'the second grant', { detail: () => s });
  const last = scattered(half, 600).map((p) => half + ((p + 4099) % half)).filter((p) => windowOf(p) !== windowOf(cue2));
  await a.call('tags', { id: 1, pages: last });
  const killed = await a.kill('SIGKILL');
  t.equal(killed.signal, 'SIGKILL');
  for (const p of last) want.add(p);
  let bad = -1;
  let back2: number[] = [];
  await until(async () => {
    back2 = await readAll(b, size);
    bad = 0;
    for (const p of want) if (back2[p] !== p + 1) bad++;
    return bad === 0;
  }, 'every staged store of the killed client in the file', { detail: () => ({ bad }) });
  t.pass('B reads every staged store of the killed client');
  // The cue's own page went to the reserve: its store may be lost with the client (its note never came), never another's data.
  const c2 = back2[cue2];
  t.ok(c2 === 0 || c2 === cue2 + 1, `the second cue's page reads its store or zeros (${c2})`);
  await b.call('close');
  const device = d.device;
  t.same(await d.stop('SIGTERM', true), { code: 0, signal: null });
  const report = fsckDevice(device);
  fs.rmSync(device, { force: true });
  t.ok(report.clean, `fsck clean: ${report.errors.slice(0, 3).join('; ')}`);
});

t.test('a daemon that may not take a client\'s memfd (EPERM) serves it with the reserve, and asks once', async (t) => {
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_RESERVE_WINDOW: 'off', DAXMAP_TEST_STAGE_DENY: '1' } });
  if (!a || !b) throw new Error('two clients');
  const size = 32 * MiB;
  const pages = size / PAGE;
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size });
  await a.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
  const s0 = await a.call<any>('stats');
  await a.call('tags', { id: 1, pages: [13] });
  let s = s0;
  await until(async () => (s = await a.call<any>('stats')).reserveGrants > s0.reserveGrants, 'the grant', { detail: () => s });
  const r0 = (await a.call<any>('agentStats')).reserved;
  const touched = scattered(pages, 400);
  await a.call('tags', { id: 1, pages: touched });
  const native = (await a.call<any>('agentStats')).reserved - r0;
  t.ok(native > touched.length / 2, `the reserve answered the stores natively (${native} of ${touched.length})`);
  await b.call('open', { name: 'f' });
  const want = new Set([13, ...touched]);
  t.equal(misread(await readAll(b, size), pages, want), 0, 'B reads every store of A, zeros elsewhere');
  const s1 = await a.call<any>('stats');
  t.equal(s1.staged - s0.staged, 0, 'nothing was staged');
  // A second grant does not ask again.
  await a.call('tags', { id: 1, pages: scattered(pages, 800).slice(400) });
  await until(async () => (s = await a.call<any>('stats')).reserveGrants > s1.reserveGrants, 'the second grant', { detail: () => s });
  await b.call('close');
  await a.call('close');
  t.same(await d.stop(), { code: 0, signal: null });
  const denied = d.log.filter((l) => l.includes('DAXMAP_TEST_STAGE_DENY'));
  t.equal(denied.length, 1, `the EPERM was met and logged once (${denied.length})`);
});
