// Reserves (docs/fault-policy.md, "Reserves"): sparse 4 KiB write faults on holes
// answered by the client's agent from blocks the policy gave ahead, the conversions
// recorded from its notes. Stores read back through file.read; truncate, punch,
// unlink and a second map() take the reserve back first; a block punched and given
// again never shows its old bytes; a child killed before its notes were adopted
// leaves a pool fsck passes, those pages reading zeros.
import t from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { agentStats } from '../../dist/native/engine';
import { RESERVE_BLOCKS, RESERVE_LOW_WATER } from '../../dist/fault/reserve';
import { checkLockdep, forBackings, kernelTouch, poolPath, FIXTURES, PAGE, Pool, type Ctx } from './helpers';
import { useLockdep } from '../lock/guard';
import { fsckErrors } from '../fsck';
import { until } from '../wait';

useLockdep(t);

type PoolT = Ctx['pool'];
const MiB = 1 << 20;

/** Pages in a scattered order (a stride coprime to n): sparse, not sequential. */
function scattered(n: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push((i * 7919 + 13) % n);
  return out;
}

/**
 * A sparse file of `size` bytes mapped shared, fault-around off (every write fault is
 * 4 KiB). Without reserve windows (`reserveWindow: 0`: every store is one block from
 * the reserve) unless `window` says how many pages of a window fill it. Staging off:
 * these tests are of the reserve (test/fault/staged.test.ts has staged ranges).
 */
async function sparse(pool: PoolT, name: string, size: number, window = 0) {
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: window }]);
  const f = await pool.openFile(name, { create: true });
  await f.truncate(size);
  const m = await f.map({ faultAround: false });
  return { f, m };
}

/**
 * Store page p's tag (p + 1, as u32 LE) at byte 8 of page p, byte by byte: the first
 * touch is a store (Buffer.writeUInt32LE reads the page first, for its bounds check,
 * and a read of a hole is the policy's zero page, never a reserve's block).
 */
function tag(b: Buffer, p: number): void {
  const v = p + 1;
  for (let i = 0; i < 4; i++) b[p * PAGE + 8 + i] = (v >>> (8 * i)) & 255;
}

/**
 * Read-modify-writes (`b[i] |= x`: a load, then a store) that tag each page of `rmw`,
 * then loads of the pages of `readOnly`; the number of pages whose first load was not zero.
 */
function readThenStore(b: Buffer, rmw: number[], readOnly: number[]): number {
  let nonzero = 0;
  for (const pg of rmw) {
    if (b[pg * PAGE + 8] !== 0) nonzero++;
    b[pg * PAGE + 8] |= (pg + 1) & 255;
    for (let i = 1; i < 4; i++) b[pg * PAGE + 8 + i] = ((pg + 1) >>> (8 * i)) & 255;
  }
  for (const pg of readOnly) if (b[pg * PAGE + 8] !== 0) nonzero++;
  return nonzero;
}

forBackings(t, 'sparse hole writes are answered from a reserve and read back through file.read', async (t, { pool }) => {
  const pages = 16 * MiB / PAGE;
  const { f, m } = await sparse(pool, 'r', 16 * MiB);
  const touched = scattered(pages, 600);
  const s0 = await pool.stats();
  const a0 = agentStats();
  for (const p of touched) tag(m.buffer, p);
  const a1 = agentStats();
  // file.read takes the reserve back first: every note is adopted by then.
  const back = Buffer.alloc(16 * MiB);
  await f.read(back, 0);
  const s1 = await pool.stats();
  const native = a1.reserved - a0.reserved;
  t.ok(native > touched.length / 2, `most faults were answered by the agent from reserves (${native} of ${touched.length})`);
  t.equal(s1.reserved - s0.reserved, native, 'the policy got a note for each');
  // (A fault the agent read just before a reserve was set reaches the policy, which
  // only wakes it: its retry is answered from the reserve. Both count as faults.)
  t.ok((s1.faults - s0.faults) + native >= touched.length, 'every other fault reached the policy');
  const want = new Set(touched);
  let bad = 0;
  for (let p = 0; p < pages; p++) {
    const v = back.readUInt32LE(p * PAGE + 8);
    if (v !== (want.has(p) ? p + 1 : 0)) bad++;
  }
  t.equal(bad, 0, 'file.read sees every store, and zeros elsewhere');
  const st = await f.stat();
  t.ok(st.allocated <= touched.length * PAGE * 1.1, `allocated ${st.allocated} bytes for ${touched.length * PAGE} touched`);
  // Stores through the mapping after the take-back: the pages are installed, no fault.
  const s2 = await pool.stats();
  for (const p of touched) m.buffer[p * PAGE + 100] = 0x5a;
  t.equal((await pool.stats()).faults - s2.faults, 0, 'adopted pages are installed: no fault');
  await m.unmap();
  await f.close();
});

forBackings(t, 'truncate, punch, zero range and a second map() take a live reserve back first', async (t, { pool }) => {
  const pages = 8 * MiB / PAGE;
  const { f, m } = await sparse(pool, 'r', 8 * MiB);
  const b = (): Buffer => m.buffer;
  const first = scattered(pages, 200);
  for (const p of first) tag(b(), p);
  // Punch a range and zero another: both cover pages stored natively, not yet adopted.
  await f.punchHole(MiB, MiB);
  await f.zeroRange(3 * MiB, 512 * 1024);
  // The freed blocks go to another file with other bytes: a stale page would show them.
  const other = await pool.openFile('other', { create: true });
  await other.write(Buffer.alloc(2 * MiB, 0xee), 0);
  const holes = (p: number): boolean => (p >= 256 && p < 512) || (p >= 768 && p < 896);
  const want = new Set(first.filter((p) => !holes(p)));
  let bad = 0;
  for (let p = 0; p < pages; p++) if (b().readUInt32LE(p * PAGE + 8) !== (want.has(p) ? p + 1 : 0)) bad++;
  t.equal(bad, 0, 'punched and zeroed pages read zeros in the mapping, the rest their stores');
  // More sparse stores (new reserves, maybe the freed blocks again): each page is
  // zeros but for its store, never another file's bytes.
  const second = scattered(pages, 400).filter((p) => !want.has(p)).slice(0, 150);
  for (const p of second) tag(b(), p);
  let stale = 0;
  for (const p of second) {
    const pg = b().subarray(p * PAGE, (p + 1) * PAGE);
    for (let i = 0; i < PAGE; i++) if (i < 8 || i >= 12 ? pg[i] !== 0 : false) { stale++; break; }
  }
  t.equal(stale, 0, 'a block given again holds zeros but for the new store');
  // A second mapping of the file: the reserve is taken back, both see every store.
  const m2 = await f.map({ faultAround: false });
  for (const p of second) want.add(p);
  let bad2 = 0;
  for (let p = 0; p < pages; p++) if (m2.buffer.readUInt32LE(p * PAGE + 8) !== (want.has(p) ? p + 1 : 0)) bad2++;
  t.equal(bad2, 0, 'the second mapping sees every store of the first');
  // Truncate while the first mapping holds pages: past EOF is SIGBUS.
  await f.truncate(4 * MiB);
  t.equal(await kernelTouch(b(), 6 * MiB), 'EFAULT', 'past the new EOF');
  const back = Buffer.alloc(4 * MiB);
  await f.read(back, 0);
  let bad3 = 0;
  for (let p = 0; p < 4 * MiB / PAGE; p++) if (back.readUInt32LE(p * PAGE + 8) !== (want.has(p) ? p + 1 : 0)) bad3++;
  t.equal(bad3, 0, 'file.read after truncate sees the stores below EOF');
  await m2.unmap();
  await m.unmap();
  await other.close();
  await f.close();
});

forBackings(t, 'unlink with a live reserve: every page is SIGBUS, the blocks are freed', async (t, { pool }) => {
  const { f, m } = await sparse(pool, 'u', 8 * MiB);
  const before = (await pool.statfs()).free;
  for (const p of scattered(2048, 100)) tag(m.buffer, p);
  await pool.unlink('u');
  t.equal(await kernelTouch(m.buffer, 0), 'EFAULT', 'unlinked: SIGBUS');
  t.equal(await kernelTouch(m.buffer, 13 * PAGE), 'EFAULT');
  await m.unmap();
  await f.close();
  t.equal((await pool.statfs()).free, before, 'every block came back, the reserve\'s unused ones too');
});

/** Pool stats once `cond` holds of them (the policy handles notes and top-ups on its own thread). */
async function statsWhen(pool: PoolT, what: string, cond: (s: Awaited<ReturnType<PoolT['stats']>>) => boolean) {
  let s = await pool.stats();
  await until(async () => cond((s = await pool.stats())), what, { detail: () => s });
  return s;
}

forBackings(t, 'a long run of sparse stores is served by top-ups: one grant, no take-back, until something else touches the file', async (t, { pool, path: p }) => {
  const size = 32 * MiB;
  const pages = size / PAGE;
  const { f, m } = await sparse(pool, 't', size);
  const order = scattered(pages, pages);
  const s0 = await pool.stats();
  const a0 = agentStats();
  // The first store traps: the policy grants the reserve, then wakes it, and the
  // agent answers its retried store from the reserve (policy.ts, the sparse writer's
  // reserve before its fault).
  tag(m.buffer, order[0]!);
  await statsWhen(pool, 'the grant', (s) => s.reserveGrants - s0.reserveGrants === 1);
  // Chunks of stores, each waiting for the top-up its last store asks for (the
  // low-water mark is RESERVE_LOW_WATER of the RESERVE_BLOCKS given): the reserve
  // never runs dry, so no fault reaches the policy, which never takes it back.
  const CHUNK = RESERVE_BLOCKS - RESERVE_LOW_WATER;
  let done = 1;
  let chunks = 0;
  while (done + CHUNK <= Math.min(pages, 1 + 24 * CHUNK)) {
    for (const pg of order.slice(done, done + CHUNK)) tag(m.buffer, pg);
    done += CHUNK;
    chunks++;
    await statsWhen(pool, `top-up ${chunks}`, (s) => s.reserveTopUps - s0.reserveTopUps >= chunks);
  }
  const s1 = await pool.stats();
  t.equal(s1.reserveTopUps - s0.reserveTopUps, chunks, `a top-up per ${CHUNK} stores (${chunks})`);
  t.equal(s1.reserveGrants - s0.reserveGrants, 1, 'one grant');
  t.equal(s1.reserveTakeBacks - s0.reserveTakeBacks, 0, 'no take-back');
  t.equal(s1.faults - s0.faults, 1, 'only the first store reached the policy');
  t.equal(agentStats().reserved - a0.reserved, done, 'the agent answered every store, the first after its trap');
  t.ok(agentStats().lowWater - a0.lowWater >= chunks, 'each top-up followed a low-water note');
  // Something else touches the file: the reserve is taken back first, then the punch.
  await f.punchHole(0, MiB);
  const s2 = await pool.stats();
  t.equal(s2.reserveTakeBacks - s0.reserveTakeBacks, 1, 'a punch takes the reserve back');
  const back = Buffer.alloc(size);
  await f.read(back, 0);
  const want = new Set(order.slice(0, done).filter((pg) => pg >= MiB / PAGE));
  let bad = 0;
  for (let pg = 0; pg < pages; pg++) if (back.readUInt32LE(pg * PAGE + 8) !== (want.has(pg) ? pg + 1 : 0)) bad++;
  t.equal(bad, 0, 'file.read sees every store outside the punched range, and zeros elsewhere');
  t.equal((await f.stat()).allocated, want.size * PAGE, 'a block for each of them, none for anything else');
  // More stores: a new grant (the reserve was taken back), and unmap takes it back again.
  const more = order.slice(done, done + 100);
  for (const pg of more) tag(m.buffer, pg);
  await m.unmap();
  const s3 = await pool.stats();
  t.ok(s3.reserveGrants - s0.reserveGrants >= 2, 'stores after the punch got a new reserve');
  t.equal(s3.reserveTakeBacks - s0.reserveTakeBacks, s3.reserveGrants - s0.reserveGrants, 'every reserve was taken back by the unmap');
  await f.read(back, 0);
  for (const pg of more) want.add(pg);
  let bad2 = 0;
  for (let pg = 0; pg < pages; pg++) if (back.readUInt32LE(pg * PAGE + 8) !== (want.has(pg) ? pg + 1 : 0)) bad2++;
  t.equal(bad2, 0, 'every store read back after the unmap');
  await f.close();
  await checkLockdep(t, pool);
  await pool.close();
  t.same(fsckErrors(p), [], 'fsck clean');
});

forBackings(t, 'a load then a store on a hole, without fault-around: both answered by the agent, no take-back', async (t, { pool, path: p }) => {
  const size = 16 * MiB;
  const pages = size / PAGE;
  const { f, m } = await sparse(pool, 'ls', size);
  const order = scattered(pages, 700);
  const s0 = await pool.stats();
  tag(m.buffer, order[0]!); // the policy answers it, then grants the reserve
  await statsWhen(pool, 'the grant', (s) => s.reserveGrants - s0.reserveGrants === 1);
  const a0 = agentStats();
  const s1 = await pool.stats();
  // 200 pages read first, then stored (a read-modify-write: `b[i] |= x`), fewer than
  // the blocks above the low-water mark, so the reserve never runs dry; 100 more pages
  // only read.
  const rmw = order.slice(1, 201);
  const readOnly = order.slice(201, 301);
  t.equal(readThenStore(m.buffer, rmw, readOnly), 0, 'every hole read as zeros');
  const a1 = agentStats();
  const s2 = await pool.stats();
  t.equal(a1.reservedZero - a0.reservedZero, rmw.length + readOnly.length, 'the agent answered every read of a hole (write-protected zeros)');
  t.equal(a1.reservedWp - a0.reservedWp, rmw.length, 'and every store after a read, from the reserve');
  t.equal(s2.faults - s1.faults, 0, 'no fault reached the policy');
  t.equal(s2.reserveTakeBacks - s1.reserveTakeBacks, 0, 'the reserve was not taken back');
  // file.read takes the reserve back: the stores are the file's, the reads made nothing.
  const back = Buffer.alloc(size);
  await f.read(back, 0);
  const want = new Set([order[0]!, ...rmw]);
  let bad = 0;
  for (let pg = 0; pg < pages; pg++) if (back.readUInt32LE(pg * PAGE + 8) !== (want.has(pg) ? pg + 1 : 0)) bad++;
  t.equal(bad, 0, 'file.read sees every store, and zeros elsewhere');
  t.equal((await f.stat()).allocated, want.size * PAGE, 'a block for each page stored, none for the pages only read');
  // After the take-back the pages only read are the policy's zero pages: a store is
  // its write-protect fault (or a new reserve's), and lands.
  for (const pg of readOnly.slice(0, 10)) tag(m.buffer, pg);
  await m.unmap();
  await f.read(back, 0);
  for (const pg of readOnly.slice(0, 10)) want.add(pg);
  let bad2 = 0;
  for (let pg = 0; pg < pages; pg++) if (back.readUInt32LE(pg * PAGE + 8) !== (want.has(pg) ? pg + 1 : 0)) bad2++;
  t.equal(bad2, 0, 'stores on pages read under the reserve land after it is taken back');
  await f.close();
  await checkLockdep(t, pool);
  await pool.close();
  t.same(fsckErrors(p), [], 'fsck clean');
});

forBackings(t, 'a load then a store on a hole, with fault-around: the agent zeroes the holes around the load, the store takes a block, no take-back', async (t, { pool, path: p }) => {
  // Before, the first read of each hole window came to the policy, which took the
  // reserve back to answer it with its zero window, and the store after it granted a
  // new one: a take-back and a grant per window (docs/fault-policy.md, "Reserves").
  const size = 16 * MiB;
  const pages = size / PAGE;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 0 }]);
  const f = await pool.openFile('lsw', { create: true });
  await f.truncate(size);
  const m = await f.map();
  const order = scattered(pages, 700);
  const s0 = await pool.stats();
  // Stores until the policy finds them sparse enough for a reserve.
  const stored: number[] = [];
  for (let i = 0; (await pool.stats()).reserveGrants === s0.reserveGrants; i++) {
    if (i < 64) {
      tag(m.buffer, order[i]!);
      stored.push(order[i]!);
    }
    await new Promise((res) => setImmediate(res));
  }
  const a0 = agentStats();
  const s1 = await pool.stats();
  // Read-modify-writes on pages the first stores left holes (their windows may hold a
  // stored page or the policy's zero pages already), then pages only read.
  const rmw = order.slice(64, 264);
  const readOnly = order.slice(264, 364);
  t.equal(readThenStore(m.buffer, rmw, readOnly), 0, 'every hole read as zeros');
  const a1 = agentStats();
  const s2 = await pool.stats();
  t.equal(s2.faults - s1.faults, 0, 'no fault reached the policy');
  t.equal(s2.reserveTakeBacks - s1.reserveTakeBacks, 0, 'the reserve was not taken back');
  t.equal(a1.reservedWp - a0.reservedWp, rmw.length, 'every store after a read was answered from the reserve');
  const reads = a1.reservedZero - a0.reservedZero;
  t.ok(reads >= 1 && reads < rmw.length / 4, `the agent answered the reads of holes, a run of holes each: ${reads} read faults for ${rmw.length + readOnly.length} pages read`);
  await m.unmap();
  const back = Buffer.alloc(size);
  await f.read(back, 0);
  const want = new Set([...stored, ...rmw]);
  let bad = 0;
  for (let pg = 0; pg < pages; pg++) if (back.readUInt32LE(pg * PAGE + 8) !== (want.has(pg) ? pg + 1 : 0)) bad++;
  t.equal(bad, 0, 'file.read sees every store, and zeros elsewhere');
  t.equal((await f.stat()).allocated, want.size * PAGE, 'a block for each page stored, none for the pages only read');
  await f.close();
  await checkLockdep(t, pool);
  await pool.close();
  t.same(fsckErrors(p), [], 'fsck clean');
});

forBackings(t, 'with fault-around: a store on a zero window the policy answered is taken from a live reserve', async (t, { pool }) => {
  const size = 16 * MiB;
  await pool.request('configure', [{ reserve: 'on', stage: 'off', reserveWindow: 0 }]);
  const f = await pool.openFile('zw', { create: true });
  await f.truncate(size);
  const m = await f.map();
  // A read of a hole window: the policy's 2 MiB of zero pages (write-protected).
  const W = 5 * MiB / PAGE; // a page of the window [4 MiB, 6 MiB)
  t.equal(m.buffer[W * PAGE], 0, 'a hole reads zeros');
  // Sparse stores elsewhere (pages spread over the other windows): the policy grants a reserve.
  const s0 = await pool.stats();
  const elsewhere = scattered(size / PAGE, 64).filter((pg) => pg < 4 * MiB / PAGE || pg >= 6 * MiB / PAGE);
  for (const pg of elsewhere) tag(m.buffer, pg);
  await statsWhen(pool, 'a grant', (s) => s.reserveGrants - s0.reserveGrants >= 1);
  const a0 = agentStats();
  const s1 = await pool.stats();
  // Stores on pages of the zero window: write-protect faults, answered from the reserve.
  const inWindow = Array.from({ length: 100 }, (_, i) => 4 * MiB / PAGE + ((i * 37) % 512));
  for (const pg of inWindow) tag(m.buffer, pg);
  const s2 = await pool.stats();
  t.equal(agentStats().reservedWp - a0.reservedWp, inWindow.length, 'the agent answered each store on a zero page');
  t.equal(s2.faults - s1.faults, 0, 'none reached the policy');
  t.equal(s2.reserveTakeBacks - s1.reserveTakeBacks, 0, 'the reserve was not taken back');
  const back = Buffer.alloc(size);
  await f.read(back, 0);
  const want = new Set([...elsewhere, ...inWindow]);
  let bad = 0;
  for (let pg = 0; pg < size / PAGE; pg++) if (back.readUInt32LE(pg * PAGE + 8) !== (want.has(pg) ? pg + 1 : 0)) bad++;
  t.equal(bad, 0, 'file.read sees every store, and zeros elsewhere');
  await m.unmap();
  await f.close();
});

forBackings(t, 'the window budget bounds a reserve and its top-ups: windows + blocks given never pass the limit', async (t, { pool }) => {
  const LIMIT = 300;
  await pool.request('configure', [{ windowBudget: LIMIT }]);
  const { f, m } = await sparse(pool, 'b', 8 * MiB);
  const order = scattered(2048, 2048);
  const s0 = await pool.stats();
  const a0 = agentStats();
  tag(m.buffer, order[0]!); // a grant of the whole budget, then the agent answers this store from it
  await statsWhen(pool, 'the grant', (s) => s.reserveGrants - s0.reserveGrants === 1);
  // The grant took the budget: the low-water note finds no room for a top-up.
  const room = LIMIT;
  for (const pg of order.slice(1, room)) tag(m.buffer, pg);
  const s1 = await pool.stats();
  t.equal(agentStats().reserved - a0.reserved, room, `the reserve held what the budget had (${room} blocks)`);
  t.equal(s1.reserveTopUps - s0.reserveTopUps, 0, 'no top-up past the budget');
  t.equal(s1.faults - s0.faults, 1, 'no fault reached the policy but the first store\'s');
  // The next store finds the reserve empty: the policy takes it back and answers.
  tag(m.buffer, order[room]!);
  const s2 = await pool.stats();
  // (At least one fault: its window takes the budget over the limit, and the eviction
  // that follows, a whole 2 MiB chunk at a time, may take its page back before the
  // store's last bytes, which then fault again.)
  t.ok(s2.faults - s1.faults >= 1, 'the store past the reserve reached the policy');
  t.ok(s2.reserveTakeBacks - s0.reserveTakeBacks >= 1, 'which took the reserve back');
  await statsWhen(pool, 'the windows back within the budget (eviction)', (s) => s.installedWindows <= LIMIT);
  await m.unmap();
  await f.close();
});

forBackings(t, 'past the window budget: a grant covers every hole, however many pages eviction left between them', async (t, { pool }) => {
  // Eviction leaves written pages that are not installed; a grant must leave each out
  // (a store there must reach its block), so each cuts the ranges it may fill. A grant
  // once sent at most 4,096 ranges, those nearest the file's start: past the budget,
  // stores further on fell outside them and nearly every fault came to the policy for
  // a take-back and a new grant (1 ms a fault for random stores over 200 MiB).
  const LIMIT = 2048;
  const size = 64 * MiB;
  const pages = size / PAGE;
  await pool.request('configure', [{ windowBudget: LIMIT }]);
  const { f, m } = await sparse(pool, 'past', size);
  // Every even page: each its own window, the oldest evicted, so the odd holes of the
  // file's first part lie between evicted pages (thousands of one-page ranges).
  for (let p = 0; p < pages; p += 2) tag(m.buffer, p);
  const s0 = await pool.stats();
  t.ok(s0.evictions >= pages / 2 - 2 * LIMIT, `windows were evicted (${s0.evictions}): the run went past the budget`);
  // Take the reserve back (file.read does): the next store needs a fresh grant.
  await f.read(Buffer.alloc(PAGE), 0);
  // Odd pages from the end of the file: the first comes to the policy, which grants.
  const top: number[] = [];
  for (let p = pages - 1; top.length < 256; p -= 2) top.push(p);
  for (const p of top) tag(m.buffer, p);
  const s1 = await pool.stats();
  t.ok(s1.faults - s0.faults <= 8, `the stores were answered from the reserve (${s1.faults - s0.faults} of ${top.length} reached the policy)`);
  const back = Buffer.alloc(size);
  await f.read(back, 0);
  let bad = 0;
  for (let p = 0; p < pages; p++) {
    const want = p % 2 === 0 || top.includes(p) ? p + 1 : 0;
    if (back.readUInt32LE(p * PAGE + 8) !== want) bad++;
  }
  t.equal(bad, 0, 'every page reads back its store, the rest zeros');
  await m.unmap();
  await f.close();
}, { size: 160 * MiB });

t.test('a child killed after native stores, before its notes were adopted: fsck clean, those pages read zeros', async (t) => {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const pool0 = await Pool.create(p, { size: 64 << 20 });
  const g = await pool0.openFile('g', { create: true });
  await g.write(Buffer.alloc(MiB, 0xd7), 0); // another file's bytes, then freed
  await pool0.unlink('g');
  await pool0.close();
  const child = spawn(process.execPath, [`${FIXTURES}/reserve-kill-child.js`, p], {
    stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, DAXMAP_TEST_RESERVE_HOLD: '1' },
  });
  const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_c, s) => res(s)));
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  t.equal(await exited, 'SIGKILL', 'killed itself after its stores');
  const res = JSON.parse(out.trim().split('\n').pop() ?? '{}');
  t.ok(res.native > 0, `stores were answered natively (${res.native})`);
  t.same(fsckErrors(p), [], 'fsck clean after the kill');
  const pool = await Pool.open(p);
  t.teardown(() => pool.close());
  const f = await pool.openFile('k');
  const back = Buffer.alloc(8 * MiB);
  await f.read(back, 0);
  let nonzero = 0;
  let foreign = 0;
  for (let i = 0; i < back.length; i++) {
    if (back[i] !== 0) nonzero++;
    if (back[i] === 0xd7) foreign++;
  }
  t.equal(foreign, 0, 'never another file\'s bytes');
  t.ok(nonzero <= res.stores - res.native, 'only stores the policy answered itself can be there (the native ones were never adopted)');
});
