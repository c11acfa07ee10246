// Reserve windows (docs/fault-policy.md, "Reserve windows"): once a window that was a
// hole has had enough of its pages filled from the reserve, the agent installs the rest
// of it from a run of zeroed blocks, and its first touches take the kernel's own
// faults, no trap. The stores all reach the file; the pages recorded written that
// nobody stored to are trimmed back to holes when the mapping goes; punch, truncate
// and a second mapping take the reserve back first as ever; a process killed before
// the gaps were adopted leaves a pool fsck passes and never another file's bytes.
import t from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { agentStats } from '../../dist/native/engine';
import { RESERVE_BLOCKS, RESERVE_LOW_WATER } from '../../dist/fault/reserve';
import { checkLockdep, forBackings, poolPath, FIXTURES, PAGE, Pool, type Ctx } from './helpers';
import { useLockdep } from '../lock/guard';
import { fsckErrors } from '../fsck';
import { until } from '../wait';

useLockdep(t);

type PoolT = Ctx['pool'];
const MiB = 1 << 20;
const WINDOW = 2 * MiB / PAGE;

/** Pages in a scattered order (a stride coprime to n). */
function scattered(n: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push((i * 7919 + 13) % n);
  return out;
}

/** Store page p's tag (p + 1, u32 LE at byte 8) byte by byte: the first touch is a store. */
function tag(b: Buffer, p: number): void {
  const v = p + 1;
  for (let i = 0; i < 4; i++) b[p * PAGE + 8 + i] = (v >>> (8 * i)) & 255;
}

async function readAll(f: Awaited<ReturnType<PoolT['openFile']>>, size: number): Promise<Buffer> {
  const back = Buffer.alloc(size);
  await f.read(back, 0);
  return back;
}

/** Pages whose tag is not what `want` says (p + 1 for stored pages, 0 elsewhere). */
function wrong(back: Buffer, pages: number, want: Set<number>): number {
  let bad = 0;
  for (let p = 0; p < pages; p++) if (back.readUInt32LE(p * PAGE + 8) !== (want.has(p) ? p + 1 : 0)) bad++;
  return bad;
}

forBackings(t, 'every page of a file written in a random order: most stores take no trap, all read back, nothing more is allocated', async (t, { pool, path: p }) => {
  // Two windows: the grant's own two runs upgrade both, however late more would come
  // on a busy machine (so the count of traps below does not depend on the timing).
  const size = 4 * MiB;
  const pages = size / PAGE;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 16 }]);
  const f = await pool.openFile('all', { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  const order = scattered(pages, pages);
  const a0 = agentStats();
  const s0 = await pool.stats();
  for (const q of order) tag(m.buffer, q);
  // The store that fills a window's threshold is woken before its window's upgrade is
  // done (the upgrade runs on the agent's thread after it): wait for the count.
  await until(() => agentStats().upgrades - a0.upgrades === pages / WINDOW, 'both windows upgraded', { detail: () => agentStats() });
  const a1 = agentStats();
  const traps = a1.events - a0.events;
  // 16 stores per window before its upgrade, a few more around the grant.
  t.ok(traps < pages / 8, `fewer traps than an eighth of the pages (${traps} for ${pages})`);
  t.equal(wrong(await readAll(f, size), pages, new Set(order)), 0, 'file.read sees every store');
  const s1 = await pool.stats(); // file.read took the reserve back: every note is in
  t.equal(s1.reserveUpgrades - s0.reserveUpgrades, a1.upgrades - a0.upgrades, 'the policy got every upgrade');
  await m.unmap();
  t.equal((await f.stat()).allocated, size, 'every page allocated, once');
  // Mapped again: every store is there, nothing faults into a stale block.
  const m2 = await f.map({ faultAround: false });
  let bad = 0;
  for (let q = 0; q < pages; q++) if (m2.buffer.readUInt32LE(q * PAGE + 8) !== q + 1) bad++;
  t.equal(bad, 0, 'a new mapping reads every store');
  await m2.unmap();
  await f.close();
  await checkLockdep(t, pool);
  await pool.close();
  t.same(fsckErrors(p), [], 'fsck clean');
});

forBackings(t, 'a sparse writer that never fills a window is topped up all the same: the runs it holds do not count as its reserve', async (t, { pool }) => {
  // One store per window: no window reaches the threshold, so the grant's two runs
  // (1,024 blocks) stay given. The top-up was sized from every block given: with the
  // runs counted the reserve looked full, no top-up came, and the reserve ran dry
  // (a take-back and a new grant: a stall of ms per RESERVE_BLOCKS stores).
  const windows = RESERVE_BLOCKS - RESERVE_LOW_WATER + 64;
  const size = windows * 2 * MiB;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 16 }]);
  const f = await pool.openFile('sparse', { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  const s0 = await pool.stats();
  const a0 = agentStats();
  const page = (w: number): number => w * WINDOW + ((w * 37) % WINDOW);
  tag(m.buffer, page(0)); // the policy's, then the grant
  await until(async () => (await pool.stats()).reserveGrants - s0.reserveGrants === 1, 'the grant');
  // Past the low-water mark (RESERVE_LOW_WATER of RESERVE_BLOCKS left): its note asks for a top-up.
  for (let w = 1; w < windows; w++) tag(m.buffer, page(w));
  t.ok(agentStats().lowWater - a0.lowWater >= 1, 'the reserve reached its low-water mark');
  await until(async () => (await pool.stats()).reserveTopUps - s0.reserveTopUps >= 1, 'a top-up');
  const s1 = await pool.stats();
  t.equal(s1.reserveUpgrades - s0.reserveUpgrades, 0, 'no window was upgraded: the runs are still held');
  t.equal(s1.reserveTakeBacks - s0.reserveTakeBacks, 0, 'the reserve was not taken back');
  await m.unmap();
  const want = new Set(Array.from({ length: windows }, (_, w) => page(w)));
  t.equal(wrong(await readAll(f, size), size / PAGE, want), 0, 'every store reads back, zeros elsewhere');
  await f.close();
});

forBackings(t, 'upgrades held up by a tight budget start again: a gap counts as one window from its note, and an adoption restarts the runs', async (t, { pool }) => {
  // A budget with room for the grant's blocks and runs and one run more. Each
  // adoption waits 300 ms (a busy worker), so the gaps' notes are not adopted while
  // the windows are filled. The gap of an upgrade counted 496 windows until its
  // adoption, so the next run found no room; and once no run was left, nothing
  // started the runs again (they were started by an upgrade only): every window after
  // the third stayed single pages, however long the writer went on.
  const LIMIT = RESERVE_BLOCKS + 3 * 512 + 100;
  const windows = 10;
  const size = windows * 2 * MiB;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 16, windowBudget: LIMIT }]);
  const f = await pool.openFile('tight', { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  const s0 = await pool.stats();
  const a0 = agentStats();
  const stored = new Set<number>();
  const next = new Array<number>(windows).fill(0);
  // The next page of window w not stored yet (scattered within the window).
  const store = (w: number): void => {
    const p = w * WINDOW + ((next[w]!++ * 37 + 11) % WINDOW);
    tag(m.buffer, p);
    stored.add(p);
  };
  store(0); // the policy's, then the grant
  await until(async () => (await pool.stats()).reserveGrants - s0.reserveGrants === 1, 'the grant');
  await pool.request('testInject', [{ where: 'adopt', delayMs: 300 }]);
  for (let w = 0; w < windows; w++) while (next[w]! < 16) store(w);
  // From here each adoption keeps its locks 50 ms once done: the runs it restarts ask
  // for the file's range meanwhile. They are new work, not a part of the adoption;
  // started inside its operation they inherited its locks, and the lock validator
  // reported a self-deadlock ('reserve > reserve', [0, max) requested while held) and
  // threw: no run came, and the rounds below ran out (seen once under ASan in CI).
  await pool.request('testInject', [{ where: 'adopted', delayMs: 50 }]);
  // A window whose threshold found no run upgrades at its next store once a run is at
  // hand. Rounds of one store in each window, each round once the last one made
  // progress: an upgrade, or a run given. (Few stores in all: single pages past the
  // reserve's low-water mark would bring a top-up, whose blocks the tight budget
  // would count.)
  const upgraded = (): number => agentStats().upgrades - a0.upgrades;
  const runs = async (): Promise<number> => (await pool.stats()).reserveRuns - s0.reserveRuns;
  for (let round = 0; upgraded() < windows && round < 3 * windows; round++) {
    const up0 = upgraded();
    const runs0 = await runs();
    for (let w = 0; w < windows; w++) store(w);
    await until(async () => upgraded() >= windows || upgraded() > up0 || (await runs()) > runs0, `an upgrade or a run after round ${round}`, {
      detail: () => ({ upgraded: upgraded(), stores: stored.size }),
    });
  }
  await pool.request('testInject', [{ where: null }]);
  t.equal(upgraded(), windows, 'every window upgraded');
  const s1 = await pool.stats();
  t.equal(s1.evictions - s0.evictions, 0, 'nothing was evicted: the budget held');
  await m.unmap();
  t.equal(wrong(await readAll(f, size), size / PAGE, stored), 0, 'every store reads back, zeros elsewhere');
  await f.close();
}, { size: 96 << 20 });

forBackings(t, 'a window upgraded after a few stores: its other pages count as written while mapped, and are trimmed when it goes', async (t, { pool }) => {
  // Two windows: the grant's own two runs upgrade both, however late more would come.
  const size = 4 * MiB;
  const pages = size / PAGE;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 8 }]);
  const f = await pool.openFile('few', { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  // 20 stores in each window: each reaches the threshold of 8.
  const stored: number[] = [];
  for (let w = 0; w < pages / WINDOW; w++) for (let i = 0; i < 20; i++) stored.push(w * WINDOW + ((i * 37 + 5) % WINDOW));
  const a0 = agentStats();
  for (const q of stored) tag(m.buffer, q);
  await until(() => agentStats().upgrades - a0.upgrades === pages / WINDOW, 'every window upgraded', { detail: () => agentStats() });
  const want = new Set(stored);
  t.equal(wrong(await readAll(f, size), pages, want), 0, 'file.read (which takes the reserve back) sees every store, zeros elsewhere');
  t.equal((await f.stat()).allocated, size, 'while mapped, the upgraded windows count as written');
  await m.unmap();
  t.equal((await f.stat()).allocated, want.size * PAGE, 'unmapped: only the pages stored to stay allocated');
  t.equal(wrong(await readAll(f, size), pages, want), 0, 'and every store is still there');
  await f.close();
});

forBackings(t, 'punch, truncate and a second mapping over upgraded windows: the reserve is taken back first, nothing stale shows', async (t, { pool }) => {
  const size = 8 * MiB;
  const pages = size / PAGE;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 8 }]);
  const f = await pool.openFile('pt', { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  const first = scattered(pages, 400);
  for (const q of first) tag(m.buffer, q);
  t.ok(agentStats().upgrades > 0, 'windows upgraded');
  // Stores into the upgraded windows (no trap), then a punch over part of them.
  const more = scattered(pages, 1200).slice(400);
  for (const q of more) tag(m.buffer, q);
  await f.punchHole(MiB, 3 * MiB);
  const punched = (q: number): boolean => q >= MiB / PAGE && q < 4 * MiB / PAGE;
  // The freed blocks go to another file with other bytes: a stale page would show them.
  const other = await pool.openFile('other', { create: true });
  await other.write(Buffer.alloc(3 * MiB, 0xe5), 0);
  const want = new Set([...first, ...more].filter((q) => !punched(q)));
  let bad = 0;
  for (let q = 0; q < pages; q++) if (m.buffer.readUInt32LE(q * PAGE + 8) !== (want.has(q) ? q + 1 : 0)) bad++;
  t.equal(bad, 0, 'the mapping: punched pages read zeros, the rest their stores');
  let stale = 0;
  for (let q = MiB / PAGE; q < 4 * MiB / PAGE; q++) if (m.buffer[q * PAGE + 100] !== 0) stale++;
  t.equal(stale, 0, 'never the other file\'s bytes');
  // A second mapping sees the same; then truncate below the windows.
  const m2 = await f.map({ faultAround: false });
  let bad2 = 0;
  for (let q = 0; q < pages; q++) if (m2.buffer.readUInt32LE(q * PAGE + 8) !== (want.has(q) ? q + 1 : 0)) bad2++;
  t.equal(bad2, 0, 'a second mapping sees every store of the first');
  await f.truncate(2 * MiB);
  const back = await readAll(f, 2 * MiB);
  t.equal(wrong(back, 2 * MiB / PAGE, new Set([...want].filter((q) => q < 2 * MiB / PAGE))), 0, 'file.read after truncate');
  await m2.unmap();
  await m.unmap();
  await other.close();
  await f.close();
});

t.test('a child killed after windows were upgraded, before their gaps were adopted: fsck clean, never another file\'s bytes', async (t) => {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const pool0 = await Pool.create(p, { size: 64 << 20 });
  const g = await pool0.openFile('g', { create: true });
  await g.write(Buffer.alloc(16 * MiB, 0xd7), 0); // another file's bytes, then freed
  await pool0.unlink('g');
  await pool0.close();
  const child = spawn(process.execPath, [`${FIXTURES}/reserve-kill-child.js`, p, 'windows'], {
    stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, DAXMAP_TEST_RESERVE_HOLD: '1' },
  });
  const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_c, s) => res(s)));
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  t.equal(await exited, 'SIGKILL', 'killed itself after its stores');
  const res = JSON.parse(out.trim().split('\n').pop() ?? '{}');
  t.ok(res.upgrades > 0, `windows were upgraded (${res.upgrades}, ${res.runPages} pages)`);
  t.same(fsckErrors(p), [], 'fsck clean after the kill');
  const pool = await Pool.open(p);
  t.teardown(() => pool.close());
  const f = await pool.openFile('k');
  const back = await readAll(f, 8 * MiB);
  let foreign = 0;
  for (let i = 0; i < back.length; i++) if (back[i] === 0xd7) foreign++;
  t.equal(foreign, 0, 'never another file\'s bytes');
  t.ok((await f.stat()).allocated <= (res.stores - res.native) * PAGE, 'nothing the agent answered was adopted');
});

forBackings(t, 'an evicted gap: the pages nothing was stored to are holes again, so a later store there is not a fault on a written block', async (t, { pool }) => {
  // Two windows upgraded (the grant's runs), then single pages past a budget that
  // evicts them. A gap's pages were recorded written, stored to or not: once evicted,
  // each first store to one of them was a fault on a written block, which only the
  // policy answers, taking the reserve back and granting it again every time.
  const LIMIT = RESERVE_BLOCKS + 1024 + 452;
  const size = 64 * MiB;
  const pages = size / PAGE;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 16, windowBudget: LIMIT }]);
  const f = await pool.openFile('evgap', { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  const s0 = await pool.stats();
  const a0 = agentStats();
  // 16 stores in each of windows 0 and 1: both upgraded, their other 992 pages untouched.
  const first: number[] = [];
  for (let w = 0; w < 2; w++) for (let i = 0; i < 16; i++) first.push(w * WINDOW + ((i * 37 + 3) % WINDOW));
  tag(m.buffer, first[0]!);
  await until(async () => (await pool.stats()).reserveGrants - s0.reserveGrants === 1, 'the grant');
  for (const q of first.slice(1)) tag(m.buffer, q);
  await until(() => agentStats().upgrades - a0.upgrades === 2, 'both windows upgraded', { detail: () => agentStats() });
  // One store in each page of windows 2..: single pages (no window reaches 16 before
  // the budget is passed), the oldest windows evicted, the two gaps first.
  const rest: number[] = [];
  for (let q = 2 * WINDOW; q < pages; q++) rest.push(q);
  for (const q of scattered(rest.length, rest.length).map((i) => rest[i]!)) tag(m.buffer, q);
  // The oldest windows go first: the two windows' singles and gaps. Their pages
  // nothing was stored to (2 × 496) are trimmed after the eviction.
  let s1 = s0;
  await until(async () => (s1 = await pool.stats()).trimmed - s0.trimmed >= 2 * (WINDOW - 16), 'the evicted gaps trimmed', { detail: () => s1 });
  t.ok(s1.evictions - s0.evictions > LIMIT, `more windows evicted than the budget holds, the oldest first (${s1.evictions - s0.evictions})`);
  // Now a store in every page of windows 0 and 1 nothing was stored to.
  const later: number[] = [];
  const firstSet = new Set(first);
  for (let q = 0; q < 2 * WINDOW; q++) if (!firstSet.has(q)) later.push(q);
  for (const q of later) tag(m.buffer, q);
  const s2 = await pool.stats();
  t.ok(s2.written - s1.written < 32, `the later stores were not faults on written blocks (${s2.written - s1.written} of ${later.length})`);
  // Every store reads back, through the mapping and file.read.
  const all = new Set([...first, ...rest, ...later]);
  let bad = 0;
  for (let q = 0; q < pages; q++) if (m.buffer.readUInt32LE(q * PAGE + 8) !== q + 1) bad++;
  t.equal(bad, 0, 'the mapping reads every store');
  t.equal(wrong(await readAll(f, size), pages, all), 0, 'file.read sees every store');
  await m.unmap();
  t.equal((await f.stat()).allocated, size, 'every page allocated, once');
  await f.close();
}, { size: 192 << 20 });

forBackings(t, 'past the window budget: upgraded windows\' gaps are evicted like any window, every store still reads back', async (t, { pool }) => {
  // A budget that holds the grant's blocks and runs (RESERVE_BLOCKS + 1,024 blocks
  // counted against it) but not every window the file ends up with (32 windows of up
  // to 16 single pages and their gaps, and the single pages of windows waiting for
  // runs): gaps and single pages are evicted along the way (revoked, then faulted in
  // again from their blocks).
  const LIMIT = RESERVE_BLOCKS + 1024 + 452;
  const size = 64 * MiB;
  const pages = size / PAGE;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 16, windowBudget: LIMIT }]);
  const f = await pool.openFile('ev', { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  const order = scattered(pages, pages);
  const a0 = agentStats();
  const s0 = await pool.stats();
  for (const q of order) tag(m.buffer, q);
  // The evictions run in the background: wait until the budget holds again.
  let s = s0;
  await until(async () => (s = await pool.stats()).installedWindows <= LIMIT, 'the windows back within the budget', { detail: () => s });
  t.ok(agentStats().upgrades - a0.upgrades > 0, `windows were upgraded (${agentStats().upgrades - a0.upgrades})`);
  t.ok(s.evictions - s0.evictions > 0, `windows were evicted (${s.evictions - s0.evictions})`);
  // Through the mapping (evicted pages fault in again) and through file.read.
  let bad = 0;
  for (let q = 0; q < pages; q++) if (m.buffer.readUInt32LE(q * PAGE + 8) !== q + 1) bad++;
  t.equal(bad, 0, 'the mapping reads every store');
  t.equal(wrong(await readAll(f, size), pages, new Set(order)), 0, 'file.read sees every store');
  await m.unmap();
  t.equal((await f.stat()).allocated, size, 'every page allocated, once');
  await f.close();
}, { size: 192 << 20 });
