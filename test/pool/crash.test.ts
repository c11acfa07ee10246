// Crash safety: a child process doing random operations on a pool in a real device
// file is SIGKILLed at random moments. Reopening must succeed, fsck must be clean,
// every file whose last event was an fsync must be byte for byte what was synced,
// and the freed secret pattern must appear nowhere. Also on the device-DAX stand-in
// (a pool on hugetlbfs, test/hugetlb.ts: whole 2 MiB allocation units), where the
// file calls' sizes need not be whole units (no mapping faults there).
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { rng } from './helpers.ts';
import { runAndKill } from './kill.ts';
import { useLockdep } from '../lock/guard.ts';
import { hugetlb } from '../hugetlb.ts';

useLockdep(t);

const root = resolve(__dirname, '../../dist/index.js');
const child = resolve(__dirname, 'fixtures/crash-child.js');
const bin = resolve(__dirname, '../../bin/daxmap');
const dir = mkdtempSync(join(tmpdir(), 'daxmap-crash-'));
const SECRET = Buffer.from('CRASH-SECRET-PAT');
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

async function check(t: Test, path: string, synced: Map<string, string>): Promise<void> {
  const pool = await PoolFs.open(path);
  t.same(coreOf(pool).checkState(), [], 'consistent after recovery');
  for (const name of await pool.list()) {
    const f = await pool.openFile(name);
    const st = await f.stat();
    const b = Buffer.alloc(st.size);
    await f.read(b, 0);
    const want = synced.get(name);
    if (want) t.equal(createHash('sha1').update(b).digest('hex'), want, `fsync'ed ${name} intact`);
    if (b.indexOf(SECRET) >= 0) t.fail(`stale pattern visible in ${name}`);
  }
  for (const name of synced.keys()) t.ok((await pool.list()).includes(name), `${name} exists`);
  t.notOk((await pool.list()).includes('s1'), 'the unlink was synced');
  await pool.close();
  const fsck = spawnSync(process.execPath, [bin, 'fsck', path], { encoding: 'utf8' });
  t.equal(fsck.status, 0, `daxmap fsck clean: ${fsck.stdout.split('\n').filter((l) => /error/.test(l)).slice(0, 3).join('; ')}`);
}

// Where, how many rounds, the pool size and seed; a path, or why the place is not available here.
const places: [string, (t: Test) => Promise<string | { skip: string }>, number, number, number][] = [
  ['tmpfs', async () => `/dev/shm/daxmap-crash-${process.pid}-${Math.random().toString(36).slice(2)}`, 6, 16 << 20, 17],
  ['disk', async () => join(dir, `pool-${Math.random().toString(36).slice(2)}`), 3, 16 << 20, 23],
  // 7 files of up to 1 MiB, a 2 MiB unit each, and the freed ones held back until a checkpoint
  ['hugetlbfs', async (t) => {
    const h = await hugetlb(t, 32 / 2 + 8);
    return typeof h === 'string' ? { skip: h } : h.file();
  }, 3, 32 << 20, 29],
];

for (const [kind, mk, rounds, size, seed] of places) {
  t.test(`SIGKILL at random points, ${kind}`, async (t) => {
    const r = rng(seed);
    const path = await mk(t);
    if (typeof path !== 'string') {
      t.skip(path.skip, () => {});
      return;
    }
    t.teardown(() => rmSync(path, { force: true }));
    await (await PoolFs.create(path, { size })).close();
    let syncedChecked = 0;
    // extra rounds (up to 12) until at least one fsync'ed file could be checked
    for (let round = 0; round < rounds || (syncedChecked === 0 && round < 12); round++) {
      const target = 20 + r.int(400);
      const { synced, lines } = await runAndKill(child, [root, path, String(1000 + round)], target, r.int(30));
      t.ok(lines >= target, `round ${round}: killed after ${lines} lines`);
      syncedChecked += synced.size;
      await check(t, path, synced);
    }
    t.ok(syncedChecked > 0, `${syncedChecked} fsync'ed files verified`);
  });
}
