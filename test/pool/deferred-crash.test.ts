// Deferred conversion and SIGKILL: a child storing through mappings of files in a
// disk-file pool (write faults whose blocks are recorded unwritten and converted
// later; docs/pool.md, "Durability") is killed at random points — between a fault
// and its conversion, around flushes. Reopening must succeed, `daxmap fsck` must be
// clean, every page must read all zeros or all the byte the child stores there
// (never the freed secret's bytes), and every file whose last event was a
// Mapping.flush must be byte for byte what was flushed.
// The same on the device-DAX stand-in (a pool on hugetlbfs, test/hugetlb.ts): there
// conversion is not deferred, every first touch takes a whole 2 MiB unit, and the
// files are whole units (4 MiB). And with sequential writers on tmpfs and disk-file
// pools, killed while windows are installed ahead of them (fault-ahead,
// docs/fault-policy.md): a window installed ahead and not stored to reads zeros.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { rng, checkPages } from './helpers.ts';
import { runAndKill } from './kill.ts';
import { useLockdep } from '../lock/guard.ts';
import { hugetlb } from '../hugetlb.ts';

useLockdep(t);

const root = resolve(__dirname, '../../dist/index.js');
const deferredChild = resolve(__dirname, 'fixtures/deferred-child.js');
const aheadChild = resolve(__dirname, 'fixtures/ahead-child.js');
const bin = resolve(__dirname, '../../bin/daxmap');
const dir = mkdtempSync(join(tmpdir(), 'daxmap-deferred-crash-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const pageByte = (name: string, page: number): number => ((name.charCodeAt(0) * 31 + page * 7) % 255) + 1;

/**
 * `pages`: the child's size argument (4 KiB pages per file; ahead-child: 2 MiB chunks);
 * `rounds`: kills (more until a flushed file was checked).
 */
async function killRounds(t: Test, path: string, size: number, o: { pages: number; rounds: number; deferred: boolean; child?: string }): Promise<{ ahead: number }> {
  const child = o.child ?? deferredChild;
  const r = rng(31);
  const pool0 = await PoolFs.create(path, { size });
  t.equal(coreOf(pool0).deferConversion, o.deferred, `the pool ${o.deferred ? 'defers' : 'does not defer'} conversions`);
  await pool0.close();
  let syncedChecked = 0;
  let unconverted = 0;
  let ahead = 0;
  // Rounds go on (up to 12) until a kill left something for each check at the end to
  // look at: where a kill lands depends on timing.
  const more = (): boolean => syncedChecked === 0 || (o.deferred && unconverted === 0) || (o.child === aheadChild && ahead === 0);
  for (let round = 0; round < o.rounds || (more() && round < 12); round++) {
    const target = 10 + r.int(150);
    const { synced, lines, last } = await runAndKill(child, [root, path, String(2000 + round), String(o.pages)], target, r.int(30));
    ahead = Math.max(ahead, Number(/^ahead (\d+)$/.exec(last.get('ahead') ?? '')?.[1] ?? 0));
    t.ok(lines >= target, `round ${round}: killed after ${lines} lines`);
    const pool = await PoolFs.open(path);
    t.same(coreOf(pool).checkState(), [], 'consistent after recovery');
    // The child's one thread may be killed inside the fill of a page: at most that page
    // mixes its stores and zeros (torn); any other byte is stale or foreign.
    let torn = 0;
    for (const name of await pool.list()) {
      const f = await pool.openFile(name);
      const st = await f.stat();
      unconverted += st.extents.filter((e) => e.state === 'unwritten').length;
      const b = Buffer.alloc(st.size);
      await f.read(b, 0);
      const c = checkPages(b, (p) => pageByte(name, p));
      t.equal(c.foreign, -1, `round ${round}: every byte of ${name} is a zero or its own store`);
      torn += c.torn.length;
      const want = synced.get(name);
      if (want) {
        syncedChecked++;
        t.equal(createHash('sha1').update(b).digest('hex'), want, `round ${round}: flushed ${name} intact`);
      }
    }
    t.ok(torn <= 1, `round ${round}: at most the page being filled at the kill is torn (${torn})`);
    for (const name of synced.keys()) t.ok((await pool.list()).includes(name), `${name} exists`);
    t.notOk((await pool.list()).includes('secret'), 'the secret stays unlinked');
    await pool.close();
    const fsck = spawnSync(process.execPath, [bin, 'fsck', path], { encoding: 'utf8' });
    t.equal(fsck.status, 0, `daxmap fsck clean: ${fsck.stdout.split('\n').filter((l) => /error/.test(l)).slice(0, 3).join('; ')}`);
  }
  t.ok(syncedChecked > 0, `${syncedChecked} flushed files verified`);
  if (o.deferred) t.ok(unconverted > 0, `${unconverted} extents were found unwritten after the kills: faults were killed before their conversion`);
  return { ahead };
}

t.test('SIGKILL with write faults waiting for conversion, disk-file pool', async (t) => {
  await killRounds(t, join(dir, 'pool'), 32 << 20, { pages: 256, rounds: 4, deferred: true });
});

t.test('SIGKILL mid-stores in 2 MiB windows, pool on the hugetlbfs stand-in', async (t) => {
  const h = await hugetlb(t, 48 / 2 + 8);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }
  const path = h.file();
  t.teardown(() => rmSync(path, { force: true }));
  await killRounds(t, path, 48 << 20, { pages: 1024, rounds: 3, deferred: false });
});

for (const [backing, where] of [['tmpfs', '/dev/shm'], ['disk-file', dir]] as const) {
  t.test(`SIGKILL with windows installed ahead of sequential writers, ${backing} pool`, async (t) => {
    const path = join(where === dir ? dir : mkdtempSync(join(where, 'daxmap-ahead-crash-')), 'ahead-pool');
    if (where !== dir) t.teardown(() => rmSync(resolve(path, '..'), { recursive: true, force: true }));
    const { ahead } = await killRounds(t, path, 64 << 20, { pages: 6, rounds: 5, deferred: backing === 'disk-file', child: aheadChild });
    t.ok(ahead > 0, `windows were installed ahead before the kills (${ahead} at most in a round)`);
  });
}
