// Sync write faults (docs/fault-policy.md, "Sync faults"): a 4 KiB write fault on a
// hole of a `sync: true` mapping takes a pre-zeroed block from the pool's stock and
// adopts it durably before the wake; with the reserves off it allocates and zeroes
// as before. Concurrent sync faults of several threads share the log's persists
// (docs/pool.md, "Group commit"; the exact sharing is tested in
// test/pool/group-commit.test.ts) and all survive the death of the process, and the
// pool closed in the middle of them.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { forBackings, runChild, poolPath, Pool, PAGE } from './helpers';
import { useLockdep } from '../lock/guard';
import { fsckErrors } from '../fsck';
import { until } from '../wait';

useLockdep(t);

const DAXMAP_CLI = path.resolve(__dirname, '../../bin/daxmap');

const stampOf = (p: number): number => ((p * 31) & 0xff) | 1;

for (const reserve of ['on', 'off'] as const) {
  forBackings(t, `sync write faults on holes, reserves ${reserve}: ${reserve === 'on' ? 'blocks from the stock' : 'allocated and zeroed on the fault path'}, stores read back`, async (t, { pool }) => {
    await pool.request('configure', [{ reserve }]);
    // a non-sync mapping's sparse faults warm the stock (reserve grants take from it)
    const w = await pool.openFile('warm', { create: true });
    await w.truncate(4 << 20);
    const wm = await w.map({ faultAround: false });
    for (let p = 0; p < 64; p++) wm.buffer[p * PAGE * 3] = 1;
    await wm.unmap();
    // ...and the refill after its grants is done: the stock is full before the sync
    // faults (on a loaded machine a refill still under way left it empty for a few,
    // which then allocated and zeroed on the fault path, as they may).
    await pool.request('settled');
    const f = await pool.openFile('s', { create: true });
    await f.truncate(256 * PAGE);
    // a read first: the zero page there must be taken back when a sync fault makes the block
    const reader = await f.map({ faultAround: false, readOnly: true });
    t.equal(reader.buffer[5 * PAGE], 0, 'a hole reads zero');
    const m = await f.map({ sync: true, faultAround: false });
    const s0 = await pool.stats();
    const pages = Array.from({ length: 32 }, (_, i) => (i * 37) % 256);
    pages.push(5);
    for (const p of pages) m.buffer[p * PAGE + 7] = stampOf(p);
    const s1 = await pool.stats();
    const stock = s1.stock - s0.stock;
    if (reserve === 'on') t.ok(stock >= pages.length - 1, `sync faults took blocks from the stock (${stock} of ${pages.length})`);
    else t.equal(stock, 0, 'with the reserves off, no block from the stock');
    t.ok(s1.syncCommits - s0.syncCommits >= pages.length - 1, `each fault waited for the log (${s1.syncCommits - s0.syncCommits})`);
    t.equal(reader.buffer[5 * PAGE + 7], stampOf(5), 'the other mapping\'s zero page was taken back: it sees the store');
    const back = Buffer.alloc(256 * PAGE);
    await f.read(back, 0);
    t.same(pages.filter((p) => back[p * PAGE + 7] !== stampOf(p)), [], 'every store reads back through file.read');
    const st = await f.stat();
    t.equal(st.extents.filter((e) => e.state === 'written').reduce((a, e) => a + e.length / PAGE, 0), pages.length, 'one written block per page stored');
    t.equal(s1.sigbus - s0.sigbus, 0, 'no SIGBUS');
    await m.unmap();
    await reader.unmap();
  });
}

for (const backing of ['disk', 'tmpfs'] as const) {
  t.test(`sync faults from two threads at once, then the process is killed: every block durable with its store [${backing}]`, async (t) => {
    const p = poolPath(backing);
    t.teardown(() => fs.rmSync(p, { force: true }));
    const pool = await Pool.create(p, { size: 32 << 20 });
    await pool.close();
    const res = await runChild('sync-threads-child.js', [p]);
    t.equal(res.signal, 'SIGKILL', 'the child died before any close');
    t.match(res.stdout, /stored/);
    const m = /persists (\d+) commits (\d+)/.exec(res.stdout);
    t.ok(m, 'the child reported its log persists');
    if (m) t.comment(`32 sync faults from two threads: ${m[1]} log persists for ${m[2]} commits that waited`);
    const again = await Pool.open(p);
    const f = await again.openFile('s');
    const st = await f.stat();
    t.equal(st.extents.filter((e) => e.state === 'written').reduce((a, e) => a + e.length / PAGE, 0), 32, 'all 32 blocks are written after the crash');
    const b = Buffer.alloc(1024 * PAGE);
    await f.read(b, 0);
    const lost: number[] = [];
    for (const base of [0, 512]) {
      for (let pg = base; pg < base + 16; pg++) if (b[pg * PAGE + (pg % 4093)] !== stampOf(pg)) lost.push(pg);
    }
    t.same(lost, [], 'and hold the stores of both threads');
    await again.close();
    t.same(fsckErrors(p), [], 'fsck clean after the crash');
  });
}

t.test('a sync mapping on an empty stock: the first fault allocates as before and starts the refill', async (t) => {
  const p = poolPath('tmpfs');
  const pool = await Pool.create(p, { size: 32 << 20 });
  t.teardown(async () => {
    if (!pool.closed) await pool.close();
    fs.rmSync(p, { force: true });
  });
  await pool.request('configure', [{ reserve: 'on' }]);
  const f = await pool.openFile('s', { create: true });
  await f.truncate(1024 * PAGE);
  const m = await f.map({ sync: true, faultAround: false });
  const s0 = await pool.stats();
  m.buffer[0] = 1;
  const s1 = await pool.stats();
  t.equal(s1.stock - s0.stock, 0, 'a fresh pool has no stock: the first fault zeroes its own block');
  let pg = 1;
  await until(async () => {
    m.buffer[pg++ * PAGE] = 1;
    return (await pool.stats()).stock > s1.stock || pg >= 1024;
  }, 'a later fault to take a block from the refilled stock');
  t.ok((await pool.stats()).stock > s1.stock, 'the refill made a stock for the later faults');
  await m.unmap();
});

t.test('the pool closed while two threads take sync faults on a disk-file pool: nothing hangs, fsck clean, every store that returned is there', async (t) => {
  const PER_THREAD = 400;
  const p = poolPath('disk');
  const scratch = `/dev/shm/daxmap-test-close-sync-${process.pid}`;
  t.teardown(() => {
    fs.rmSync(p, { force: true });
    fs.rmSync(scratch, { force: true });
  });
  const content = Buffer.alloc(1024 * PAGE);
  for (let pg = 0; pg < 1024; pg++) content.fill(stampOf(pg), pg * PAGE, (pg + 1) * PAGE);
  fs.writeFileSync(scratch, content);
  const pool = await Pool.create(p, { size: 32 << 20 });
  await pool.close();
  const res = await runChild('close-sync-child.js', [p, scratch, String(PER_THREAD), '8']);
  t.equal(res.code, 0, `the child ran to its end (signal ${res.signal}) ${res.stderr.slice(-2000)}`);
  const out = JSON.parse(res.stdout.trim().split('\n').pop() ?? '{}') as { at: number[]; closed: string; threads: { stored: number[]; stop: string }[] };
  t.equal(out.closed, 'resolved', 'pool.close() completed');
  t.ok(out.at.every((n) => n >= 8), `close() began after each thread stored 8 pages (${out.at.join(' ')})`);
  const stored = out.threads.flatMap((th) => th.stored);
  t.comment(`stores that returned: ${out.threads.map((th) => `${th.stored.length} (then ${th.stop})`).join(', ')}; close began at ${out.at.join(' ')}`);
  t.ok(out.threads.some((th) => th.stored.length < PER_THREAD), 'the close came in the middle of the faults');
  for (const th of out.threads) {
    if (th.stored.length < PER_THREAD) t.match(th.stop, /^(EFAULT|ECLOSED|TypeError|RangeError)/, `a store after the close failed, nothing else: ${th.stop}`);
  }
  const fsck = spawnSync(process.execPath, [DAXMAP_CLI, 'fsck', p], { encoding: 'utf8' });
  t.equal(fsck.status, 0, 'daxmap fsck is clean', { stdout: fsck.stdout, stderr: fsck.stderr });
  const again = await Pool.open(p);
  const f = await again.openFile('s');
  const b = Buffer.alloc(1024 * PAGE);
  await f.read(b, 0);
  const st = await f.stat();
  await again.close();
  const written = (pg: number): boolean => st.extents.some((e) => e.state === 'written' && e.offset <= pg * PAGE && pg * PAGE < e.offset + e.length);
  t.same(stored.filter((pg) => !written(pg)), [], 'every page whose store returned is a written block');
  t.same(stored.filter((pg) => b.subarray(pg * PAGE, (pg + 1) * PAGE).some((x) => x !== stampOf(pg))), [], 'and holds its store');
});
