// Clean free space and crashes: a child keeps freeing blocks that held a secret
// pattern (the zeroer of free space zeroing them in the background) and taking clean
// space for new files, through mappings and write(), and is SIGKILLed at random
// moments. Reopening must succeed, fsck must be clean, every file whose last event
// was a sync must be what was synced, and the secret must show nowhere.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { rng } from './helpers.ts';
import { runAndKill } from './kill.ts';

const root = resolve(__dirname, '../../dist/index.js');
const child = resolve(__dirname, 'fixtures/clean-child.js');
const bin = resolve(__dirname, '../../bin/daxmap');
const SECRET = Buffer.from('CLEAN-SECRET-PAT');

t.test('SIGKILL while the zeroer of free space runs: fsck clean, synced files intact, no stale byte', async (t) => {
  const r = rng(41);
  const path = `/dev/shm/daxmap-clean-crash-${process.pid}`;
  t.teardown(() => rmSync(path, { force: true }));
  await (await PoolFs.create(path, { size: 48 << 20 })).close();
  let checked = 0;
  let zeroed = 0; // the most the zeroer of a child had zeroed when it last said
  for (let round = 0; round < 6 || (checked === 0 && round < 12); round++) {
    const target = 4 + r.int(40);
    const { synced, lines, last } = await runAndKill(child, [root, path, String(500 + round)], target, r.int(30));
    zeroed = Math.max(zeroed, Number(last.get('zeroed')?.split(' ')[1] ?? 0));
    t.ok(lines >= target, `round ${round}: killed after ${lines} lines`);
    const pool = await PoolFs.open(path);
    t.same(coreOf(pool).checkState(), [], `round ${round}: consistent after recovery`);
    t.equal(coreOf(pool).state.alloc.cleanFree, 0, `round ${round}: nothing known clean after the open`);
    for (const name of await pool.list()) {
      const f = await pool.openFile(name);
      const b = Buffer.alloc((await f.stat()).size);
      await f.read(b, 0);
      const want = synced.get(name);
      if (want) {
        t.equal(createHash('sha1').update(b).digest('hex'), want, `round ${round}: synced ${name} intact`);
        checked++;
      }
      // the secret file itself may survive the kill (before its unlink): its bytes are its own
      if (name !== 'secret') t.equal(b.indexOf(SECRET), -1, `round ${round}: no stale secret in ${name}`);
      await f.close();
    }
    await pool.close();
    const fsck = spawnSync(process.execPath, [bin, 'fsck', path], { encoding: 'utf8' });
    t.equal(fsck.status, 0, `round ${round}: daxmap fsck clean ${fsck.stdout.split('\n').filter((l) => /error/.test(l)).slice(0, 3).join('; ')}`);
  }
  t.ok(checked > 0, `${checked} synced files verified`);
  t.ok(zeroed > 0, `the children's zeroer ran before they were killed (up to ${zeroed} bytes)`);
});
