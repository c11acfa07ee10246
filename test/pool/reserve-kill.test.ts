// SIGKILL with the reserve in use (docs/pool.md, "Reserve"), on a disk-file pool
// (adoptions deferred: recorded unwritten until the data is flushed) and on a tmpfs
// pool (adoptions recorded written). A child takes reserved blocks, stores into them
// as a mapping would (each page whole, with a byte that depends on the file and the
// page alone), adopts most of them in batches, gives the rest back after storing a
// pattern no file ever holds, fsyncs, punches and checkpoints, until it is killed at
// a point that depends on its progress. After each kill: `daxmap fsck` is clean
// before anything opens the pool, the open frees every reserved block, every page
// of every file reads all zeros or all its own byte (never a freed file's bytes, nor
// the stores of a block never adopted), and every file whose last event was an
// fsync is byte for byte what was fsync'ed.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { rng, firstForeignPage, readAll } from './helpers.ts';
import { runAndKill } from './kill.ts';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const dist = resolve(__dirname, '../../dist');
const util = resolve(__dirname, 'fixtures/child-util.js');
const bin = resolve(__dirname, '../../bin/daxmap');
const PAGES = 128;
const pageByte = (name: string, page: number): number => ((name.charCodeAt(0) * 31 + page * 7) % 255) + 1;

// The child: argv = [node, dist, child-util, pool path, seed]. Lines: "ready",
// "dirty <name>" before a change, "synced <name> <sha1>" after an fsync, and
// "taken" / "adopted" as progress (kill points right after a take, right after an
// adoption is logged).
const CHILD = `
'use strict';
const crypto = require('node:crypto');
const [dist, util, path, seed] = process.argv.slice(1);
const { PoolFs } = require(dist + '/pool/pool-fs.js');
const { poolInternals } = require(dist + '/pool/internal.js');
const { rng, say, whole } = require(util);
const { rnd, int } = rng(Number(seed));
const B = 4096, PAGES = ${PAGES};
const pageByte = ${pageByte.toString().replace(/: (string|number)/g, '').replace('): number', ')')};
const fill = (s, n) => { const b = Buffer.alloc(n); for (let i = 0; i < n; i += 16) b.write(s, i); return b; };
(async () => {
  {
    // a file's bytes, durable, freed: its blocks free for reuse after the checkpoint of close
    const pool = await PoolFs.open(path);
    const old = await pool.openFile('old', { create: true });
    await old.write(fill('<FREED-FILE-PAT>', 2 << 20), 0);
    await old.fsync();
    await old.close();
    await pool.unlink('old');
    await pool.close();
  }
  const pool = await PoolFs.open(path);
  const ip = poolInternals(pool);
  const core = ip.core;
  core.reserve.target = 64;
  core.reserve.lowWater = 16;
  core.reserve.batch = 16;
  const files = new Map();
  const get = async (n) => {
    let f = files.get(n);
    if (!f) {
      f = await pool.openFile(n, { create: true });
      if ((await f.stat()).size !== PAGES * B) await f.truncate(PAGES * B);
      files.set(n, f);
    }
    return f;
  };
  const unused = fill('<NEVER-ADOPTED!>', B);
  say('ready');
  for (;;) {
    const n = ['a', 'b', 'c'][int(3)];
    const f = await get(n);
    const k = int(10);
    if (k < 6) {
      say('dirty ' + n);
      const devs = await ip.takeReserve(1 + int(8));
      say('taken');
      const pairs = [];
      const back = [];
      for (const dev of devs) {
        if (rnd() < 0.2) { ip.storage.view(dev, B).set(unused); back.push(dev); continue; }
        const fb = int(PAGES);
        ip.storage.view(dev, B).fill(pageByte(n, fb));
        pairs.push({ fb, dev });
      }
      const ino = ip.inode(f);
      const h = await ino.rangeLock.acquireShared(0, PAGES * B);
      try { await ip.adoptReserved(ino, pairs); } finally { h.release(); }
      say('adopted');
      ip.returnReserve(back);
    } else if (k < 8) {
      const h = crypto.createHash('sha1').update(await whole(f)).digest('hex');
      await f.fsync();
      say('synced ' + n + ' ' + h);
    } else if (k < 9) {
      say('dirty ' + n);
      await f.punchHole(int(PAGES) * B, (1 + int(8)) * B);
    } else {
      await pool.sync();
    }
  }
})().catch((e) => { say('error ' + String(e && e.stack).replace(/\\n/g, ' | ')); process.exit(1); });
`;

for (const backing of ['disk-file', 'tmpfs'] as const) {
  const base = backing === 'tmpfs' ? '/dev/shm' : '/var/tmp';
  t.test(`SIGKILL with the reserve in use, ${backing} pool`, { skip: existsSync(base) ? false : `no ${base}` }, async (t) => {
    const dir = mkdtempSync(join(base, 'daxmap-reserve-kill-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'pool');
    const pool0 = await PoolFs.create(path, { size: 32 << 20 });
    t.equal(coreOf(pool0).deferConversion, backing === 'disk-file', `${backing}: adoptions ${backing === 'disk-file' ? 'deferred' : 'written'}`);
    await pool0.close();
    const r = rng(backing === 'tmpfs' ? 77 : 78);
    let syncedChecked = 0;
    let reservedAtKill = 0;
    // Where a kill lands depends on timing: rounds go on (up to 24) until one left an
    // fsync'ed file to check and one left reserved blocks, so that the two checks
    // below can fail only if recovery is wrong (6 rounds once left no fsync'ed file).
    for (let round = 0; round < 6 || ((syncedChecked === 0 || reservedAtKill === 0) && round < 24); round++) {
      const target = 8 + r.int(120);
      const { synced, lines } = await runAndKill('-e', [CHILD, dist, util, path, String(500 + round)], target, r.int(3) === 0 ? 0 : r.int(20));
      t.ok(lines >= target, `round ${round}: killed after ${lines} lines`);
      const fsck = spawnSync(process.execPath, [bin, 'fsck', '--json', path], { encoding: 'utf8' });
      t.equal(fsck.status, 0, `round ${round}: daxmap fsck clean before the open ${fsck.status === 0 ? '' : fsck.stdout.slice(0, 400)}`);
      try { reservedAtKill += JSON.parse(fsck.stdout).summary?.reservedBlocks ?? 0; } catch { /* counted only when the report parses */ }
      const pool = await PoolFs.open(path);
      const core = coreOf(pool);
      t.equal(core.state.reserved.size, 0, 'the open freed every reserved block');
      t.same(core.checkState(), [], 'consistent after recovery');
      t.notOk((await pool.list()).includes('old'), 'the freed file stays unlinked');
      for (const name of await pool.list()) {
        const b = await readAll(await pool.openFile(name));
        const bad = firstForeignPage(b, (p) => pageByte(name, p));
        t.equal(bad, -1, `round ${round}: every page of ${name} reads zeros or its own stores`);
        const want = synced.get(name);
        if (want) {
          syncedChecked++;
          t.equal(createHash('sha1').update(b).digest('hex'), want, `round ${round}: fsync'ed ${name} intact`);
        }
      }
      await pool.close();
    }
    t.ok(syncedChecked > 0, `${syncedChecked} fsync'ed files verified`);
    t.ok(reservedAtKill > 0, `${reservedAtKill} blocks were reserved in the pools the kills left`);
  });
}
