// Staged ranges (docs/fault-policy.md, "Staged ranges"): a grant maps the mapping's
// whole-hole 2 MiB windows to a memfd of the policy's process, so sparse stores there
// take no trap at all; at the take-back (unmap, file.read, a second mapping, truncate,
// punch, flush) they are revoked first, then every page stored to is copied into a
// block and recorded as the file's. What is read back is exactly what was stored; the
// file holds a block per page stored to; a page stored nothing but zeros stays a hole.
import t from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { agentStats } from '../../dist/native/engine';
import { forBackings, poolPath, FIXTURES, PAGE, HUGE, Pool, type Ctx } from './helpers';
import { useLockdep } from '../lock/guard';
import { fsckErrors } from '../fsck';
import { until } from '../wait';
import { STAGED_RESERVE_BLOCKS } from '../../dist/fault/reserve';

useLockdep(t);

type PoolT = Ctx['pool'];
type FileT = Awaited<ReturnType<PoolT['openFile']>>;
type MapT = Awaited<ReturnType<FileT['map']>>;
const MiB = 1 << 20;

/** Store page p's tag (p + 1, u32 LE at byte 8) byte by byte: the first touch is a store. */
function tag(b: Buffer, p: number): void {
  const v = p + 1;
  for (let i = 0; i < 4; i++) b[p * PAGE + 8 + i] = (v >>> (8 * i)) & 255;
}

/** Pages whose tag is not what `want` says (p + 1 for stored pages, 0 elsewhere); any other byte set counts too. */
async function wrong(f: FileT, size: number, want: Set<number>): Promise<number> {
  const back = Buffer.alloc(size);
  await f.read(back, 0);
  let bad = 0;
  for (let p = 0; p < size / PAGE; p++) {
    const page = back.subarray(p * PAGE, (p + 1) * PAGE);
    const v = page.readUInt32LE(8);
    page.writeUInt32LE(0, 8);
    if (v !== (want.has(p) ? p + 1 : 0) || page.some((x) => x !== 0)) bad++;
  }
  return bad;
}

/** Scattered pages of [0, n) that are not a chunk's first (a sparse writer: fault-around allocates 4 KiB). */
function scattered(n: number, count: number, seed: number): number[] {
  const out: number[] = [];
  for (let i = 0; out.length < count; i++) {
    const p = (i * 7919 + seed) % n;
    if (p % (HUGE / PAGE) !== 0 && !out.includes(p)) out.push(p);
  }
  return out;
}

/** Staging on (the default, asked for in case the environment turned it off), and a sparse file of `size` bytes. */
async function stagedFile(pool: PoolT, name: string, size: number): Promise<FileT> {
  await pool.request('configure', [{ reserve: 'on', stage: 'on' }]);
  const f = await pool.openFile(name, { create: true });
  await f.truncate(size);
  return f;
}

/** Tags the pages (stored to the set too). */
function tagAll(m: MapT, pages: readonly number[], stored: Set<number>): void {
  for (const p of pages) {
    tag(m.buffer, p);
    stored.add(p);
  }
}

/**
 * Map `f` (the default policy, fault-around) and make it a sparse writer: two
 * stores in two chunks (the policy's cue), then wait for its grant. Returns the
 * mapping and the pages stored so far.
 */
async function sparseWriter(pool: PoolT, f: FileT, pages: number, first = 5): Promise<{ m: MapT; stored: Set<number> }> {
  const m = await f.map();
  const stored = new Set<number>();
  const s0 = await pool.stats();
  for (const p of [first, HUGE / PAGE + first + 4]) {
    if (p >= pages) break;
    tag(m.buffer, p);
    stored.add(p);
  }
  await until(async () => (await pool.stats()).reserveGrants > s0.reserveGrants, 'the grant');
  return { m, stored };
}

forBackings(t, 'sparse stores into staged windows take no trap, read back exactly, and allocate a block per page stored', async (t, { pool }) => {
  const size = 32 * MiB;
  const pages = size / PAGE;
  const f = await stagedFile(pool, 's', size);
  const { m, stored } = await sparseWriter(pool, f, pages);
  const more = scattered(pages, 300, 101).filter((p) => p >= 3 * (HUGE / PAGE));
  const a0 = agentStats();
  const s0 = await pool.stats();
  tagAll(m, more, stored);
  // loads of staged pages read zeros, and cost no trap either
  let nonzero = 0;
  for (let p = 3 * (HUGE / PAGE) + 1; p < pages; p += 97) if (!stored.has(p) && m.buffer[p * PAGE + 100] !== 0) nonzero++;
  t.equal(nonzero, 0, 'pages not stored to read zeros through the mapping');
  const a1 = agentStats();
  const s1 = await pool.stats();
  t.ok(a1.events - a0.events <= 2 && s1.faults === s0.faults, `no trap for ${more.length} stores in staged windows (${a1.events - a0.events} events, ${s1.faults - s0.faults} faults)`);
  await m.unmap();
  const s2 = await pool.stats();
  t.equal(s2.staged - s0.staged, more.length, 'every page stored to was copied at the unmap');
  t.equal((await f.stat()).allocated, stored.size * PAGE, 'a block per page stored to, no more');
  t.equal(await wrong(f, size, stored), 0, 'every store reads back, zeros elsewhere');
  t.equal(s2.stagedLost, 0, 'nothing lost');
  await f.close();
}, { size: 64 << 20 });

forBackings(t, 'beside staged windows the reserve starts small, and a writer that stores there has it topped up, growing', async (t, { pool }) => {
  // Reserve windows off: the grant's runs (2 MiB each) would hide the reserve's blocks in the free space.
  await pool.request('configure', [{ reserveWindow: 0 }]);
  try {
    const size = 32 * MiB;
    const pages = size / PAGE;
    const f = await stagedFile(pool, 'small', size);
    const free0 = (await pool.statfs()).free;
    const { m, stored } = await sparseWriter(pool, f, pages);
    // Chunk 0 holds the first store's block; chunk 1, the second store's (the grant's
    // cue: not staged, the reserve answered it); the 14 others are staged (a block
    // promised for each page), and the reserve has the 1,023 holes of the first two.
    // (reserveGrants counts the staging, answered first: the reserve's blocks come after it)
    const staged = 14 * HUGE + PAGE;
    let taken = 0;
    await until(async () => (taken = free0 - (await pool.statfs()).free - staged) > 0, 'the reserve\'s blocks');
    t.ok(taken <= STAGED_RESERVE_BLOCKS * PAGE, `the reserve took ${taken / PAGE} blocks for 1,023 holes beside staged windows (at most ${STAGED_RESERVE_BLOCKS})`);
    // A dense writer in chunk 0: each top-up comes when a quarter of the reserve is used,
    // so the stores wait for each before going on; none comes to the policy.
    const dense: number[] = [];
    for (let p = 1; p < HUGE / PAGE && dense.length < 400; p++) if (!stored.has(p)) dense.push(p);
    const s0 = await pool.stats();
    let done = 0;
    let tops = 0;
    for (let target = STAGED_RESERVE_BLOCKS; done < dense.length; target = Math.min(target * 4, 2048)) {
      const n = Math.min(dense.length - done, target - Math.floor(target * 3 / 4));
      tagAll(m, dense.slice(done, done + n), stored);
      done += n;
      if (done >= dense.length) break;
      tops++;
      await until(async () => (await pool.stats()).reserveTopUps - s0.reserveTopUps >= tops, `top-up ${tops}`);
    }
    const s1 = await pool.stats();
    t.ok(tops >= 2, `${tops} top-ups for ${dense.length} stores`);
    t.equal(s1.faults - s0.faults, 0, 'no store of the dense writer came to the policy');
    await m.unmap();
    t.equal(await wrong(f, size, stored), 0, 'every store reads back, zeros elsewhere');
    t.equal((await f.stat()).allocated, stored.size * PAGE, 'a block per page stored to');
    await f.close();
  } finally {
    await pool.request('configure', [{ reserveWindow: 16 }]);
  }
}, { size: 64 << 20 });

forBackings(t, 'beside staged windows the reserve\'s runs come after the grant: a dense writer in its window still has it upgraded', async (t, { pool }) => {
  await pool.request('configure', [{ reserveWindow: 16 }]);
  const size = 32 * MiB;
  const pages = size / PAGE;
  const f = await stagedFile(pool, 'runs', size);
  const a0 = agentStats();
  const s0 = await pool.stats();
  const { m, stored } = await sparseWriter(pool, f, pages);
  // The runs are taken and sent once the grant has answered (sendInitialRuns).
  await until(async () => (await pool.stats()).reserveRuns > s0.reserveRuns, 'the grant\'s runs');
  // A dense writer in chunk 0 (a window of the reserve, not staged): past the
  // threshold its window is upgraded, its other pages installed from a run.
  const dense: number[] = [];
  for (let p = 1; p < HUGE / PAGE && dense.length < 64; p += 3) if (!stored.has(p)) dense.push(p);
  tagAll(m, dense, stored);
  await until(() => agentStats().upgrades > a0.upgrades, 'the window\'s upgrade');
  await m.unmap();
  t.equal(await wrong(f, size, stored), 0, 'every store reads back, zeros elsewhere');
  t.ok((await pool.stats()).reserveUpgrades > s0.reserveUpgrades, 'the policy recorded the upgrade');
  await f.close();
}, { size: 64 << 20 });

t.test('a reserve beside staged windows that runs dry is topped up, not taken back: nothing staged is copied before its time', async (t) => {
  const p = `/dev/shm/daxmap-dry-${process.pid}`;
  t.teardown(() => fs.rmSync(p, { force: true }));
  const child = spawn(process.execPath, [`${FIXTURES}/reserve-dry-child.js`, p], {
    stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, DAXMAP_TEST_HOOKS: '1', DAXMAP_TEST_NO_TOPUP: '1' },
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  t.equal(code, 0, `the child ran (${out.trim().slice(0, 300)})`);
  const r = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { dry: number; takeBacks: number; stagedBefore: number; stagedAtUnmap: number; lost: number; stores: number; bad: number };
  t.ok(r.dry >= 1, `the reserve ran dry (${r.dry} faults found it so)`);
  t.equal(r.takeBacks, 0, 'and was not taken back');
  t.equal(r.stagedBefore, 0, 'no staged page was copied while the writer went on');
  t.equal(r.stagedAtUnmap, 50, 'the unmap copied the 50 staged stores');
  t.equal(r.lost, 0, 'none lost');
  t.equal(r.bad, 0, `all ${r.stores} stores read back, zeros elsewhere`);
});

forBackings(t, 'a read of the file mid-way collects what was staged; the mapping goes on and its later stores land too', async (t, { pool }) => {
  const size = 16 * MiB;
  const pages = size / PAGE;
  const f = await stagedFile(pool, 'r', size);
  const { m, stored } = await sparseWriter(pool, f, pages);
  const all = scattered(pages, 200, 7).filter((p) => p >= 3 * (HUGE / PAGE));
  tagAll(m, all.slice(0, 100), stored);
  t.equal(await wrong(f, size, stored), 0, 'file.read sees the stores made so far');
  // the pages collected are the file's now; the mapping traps there again and installs them
  let misread = 0;
  for (const p of all.slice(0, 100)) if (m.buffer.readUInt32LE(p * PAGE + 8) !== p + 1) misread++;
  t.equal(misread, 0, 'the pages collected read back through the mapping');
  tagAll(m, all.slice(100), stored);
  // a store over a page collected before
  m.buffer[all[0]! * PAGE + 8] = 0x77;
  const want = Buffer.alloc(4);
  want.writeUInt32LE(all[0]! + 1);
  want[0] = 0x77;
  t.equal(await wrong(f, size, new Set([...stored].filter((p) => p !== all[0]))), 1, 'every other store reads back after a second read');
  const back = Buffer.alloc(4);
  await f.read(back, all[0]! * PAGE + 8);
  t.same(back, want, 'the store over a collected page is there');
  await m.unmap();
  t.equal((await f.stat()).allocated, stored.size * PAGE, 'a block per page stored to');
  await f.close();
}, { size: 64 << 20 });

forBackings(t, 'a second mapping, truncate and punch take staged stores back first: nothing stored is lost or misplaced', async (t, { pool }) => {
  const size = 16 * MiB;
  const pages = size / PAGE;
  const f = await stagedFile(pool, 'x', size);
  const { m, stored } = await sparseWriter(pool, f, pages);
  const more = scattered(pages, 120, 33).filter((p) => p >= 3 * (HUGE / PAGE));
  tagAll(m, more, stored);
  const s0 = await pool.stats();
  const m2 = await f.map();
  t.ok((await pool.stats()).staged - s0.staged > 0, 'the second mapping took the staged range back');
  let bad = 0;
  for (const p of stored) if (m2.buffer.readUInt32LE(p * PAGE + 8) !== p + 1) bad++;
  t.equal(bad, 0, 'the second mapping sees every store of the first');
  await m2.unmap();
  await m.unmap();
  // stage again (the only mapping once more), then punch a staged window and truncate below another
  const { m: m3, stored: again } = await sparseWriter(pool, f, pages, 6);
  for (const p of again) stored.add(p);
  const late = scattered(pages, 120, 57).filter((p) => p >= 3 * (HUGE / PAGE) && !stored.has(p));
  tagAll(m3, late, stored);
  const punchAt = 4 * HUGE;
  await f.punchHole(punchAt, HUGE);
  const cut = 6 * HUGE;
  await f.truncate(cut);
  const want = new Set([...stored].filter((p) => (p < punchAt / PAGE || p >= (punchAt + HUGE) / PAGE) && p < cut / PAGE));
  t.equal(await wrong(f, cut, want), 0, 'the punched window reads zeros, the rest below EOF reads back');
  await m3.unmap();
  t.equal((await f.stat()).allocated, want.size * PAGE, 'a block per page stored to that is still in the file');
  await f.close();
}, { size: 64 << 20 });

forBackings(t, 'a page stored nothing but zeros stays a hole; the pool keeps room for every staged page meanwhile', async (t, { pool }) => {
  const size = 16 * MiB;
  const pages = size / PAGE;
  const f = await stagedFile(pool, 'z', size);
  const free0 = (await pool.statfs()).free;
  const { m, stored } = await sparseWriter(pool, f, pages);
  const free1 = (await pool.statfs()).free;
  // 8 chunks, 3 of them with a block: 5 staged windows, a block promised for each page
  t.ok(free0 - free1 >= 5 * HUGE, `free space less the staged windows while they are staged (${(free0 - free1) / MiB} MiB)`);
  const p = 5 * (HUGE / PAGE) + 17;
  m.buffer[p * PAGE] = 0; // a store of zeros: the page is the memfd's now, and all zeros
  tag(m.buffer, p + 1);
  stored.add(p + 1);
  await m.unmap();
  t.equal((await f.stat()).allocated, stored.size * PAGE, 'the page stored zeros is not allocated');
  t.equal(await wrong(f, size, stored), 0, 'and reads zeros');
  t.ok((await pool.statfs()).free >= free0 - stored.size * PAGE - 8 * HUGE, 'the promise given back at the unmap');
  await f.close();
}, { size: 64 << 20 });

t.test('staged stores survive a kill after flush; without one, a killed writer leaves fsck clean and no other file\'s bytes', async (t) => {
  for (const flush of [true, false]) {
    const p = poolPath('tmpfs');
    fs.rmSync(p, { force: true });
    const pool0 = await Pool.create(p, { size: 64 << 20 });
    const g = await pool0.openFile('g', { create: true });
    await g.write(Buffer.alloc(16 * MiB, 0xd7), 0); // another file's bytes, then freed
    await pool0.unlink('g');
    await pool0.close();
    const child = spawn(process.execPath, [`${FIXTURES}/staged-kill-child.js`, p, flush ? 'flush' : 'none'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_c, s) => res(s)));
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    t.equal(await exited, 'SIGKILL', `killed itself after its stores (${flush ? 'flushed' : 'not flushed'})`);
    const res = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { pages: number[]; events: number };
    t.ok(res.pages.length > 100 && res.events < 20, `${res.pages.length} stores, ${res.events} traps: staged`);
    t.same(fsckErrors(p), [], 'fsck clean after the kill');
    const pool = await Pool.open(p);
    const f = await pool.openFile('k');
    const back = Buffer.alloc(8 * MiB);
    await f.read(back, 0);
    let present = 0;
    for (const q of res.pages) {
      if (back.readUInt32LE(q * PAGE + 8) === q + 1) present++;
      back.writeUInt32LE(0, q * PAGE + 8); // a tag's byte may be 0xd7 itself
    }
    let foreign = 0;
    for (let i = 0; i < back.length; i++) if (back[i] !== 0) foreign++;
    t.equal(foreign, 0, 'never another file\'s bytes: every byte but the tags is zero');
    if (flush) t.equal(present, res.pages.length, 'every store made before the flush is in the file');
    else t.ok(present <= 3, `the stores staged and never taken back are lost, as unflushed stores may be (${present} present: the policy's own)`);
    await pool.close();
    fs.rmSync(p, { force: true });
  }
});

t.test('the pool closed with a staged mapping still mapped: every store is in the file when it is opened again', async (t) => {
  const p = poolPath('tmpfs');
  fs.rmSync(p, { force: true });
  t.teardown(() => fs.rmSync(p, { force: true }));
  const size = 16 * MiB;
  const pages = size / PAGE;
  const pool = await Pool.create(p, { size: 64 << 20 });
  const f = await stagedFile(pool, 'c', size);
  const { m, stored } = await sparseWriter(pool, f, pages);
  tagAll(m, scattered(pages, 150, 71).filter((q) => q >= 3 * (HUGE / PAGE)), stored);
  const s0 = await pool.stats();
  t.equal(s0.staged, 0, 'nothing collected yet');
  await pool.close(); // no unmap, no flush
  const again = await Pool.open(p);
  t.teardown(() => again.close());
  const g = await again.openFile('c');
  t.equal(await wrong(g, size, stored), 0, 'every store reads back after the close, zeros elsewhere');
  t.equal((await g.stat()).allocated, stored.size * PAGE, 'a block per page stored to');
});
