// The decision rule of decided ranges (lib/fault/decide.ts), on a real pool with a
// fake client that records the answers: which answer each kind of mapping gets.
import t from 'tap';
import fs from 'node:fs';
import { PoolFs } from '../../dist/pool/index';
import { poolInternals } from '../../dist/pool/internal';
import { FaultPolicy, type Client } from '../../dist/fault/policy';
import { WindowBudget } from '../../dist/fault/budget';
import { Op, A_WRITABLE, type AnswerSpec } from '../../dist/native/frames';
import { useLockdep } from '../lock/guard';

useLockdep(t);

const PAGE = 4096;
const HUGE = 2 << 20;

t.test('install ahead for writable shared mappings, direct ranges for those that may not write, nothing for private or sync', async (t) => {
  const p = `/dev/shm/daxmap-test-decide-unit-${process.pid}.pool`;
  t.teardown(() => fs.rmSync(p, { force: true }));
  const pool = await PoolFs.create(p, { size: 32 << 20 });
  t.teardown(() => pool.close());
  const f = await pool.openFile('f', { create: true });
  await f.write(Buffer.alloc(HUGE + 8 * PAGE, 1), 0); // written: chunk 0 and 8 pages of chunk 1
  await f.truncate(3 * HUGE);
  const ino = poolInternals(pool).inode(f);
  const policy = new FaultPolicy(poolInternals(pool));
  policy.decideMode = 'install';
  const sent: AnswerSpec[] = [];
  const client: Client = { id: 'fake', deviceId: 7, budget: new WindowBudget(1000), run: (a) => { sent.push(...a); return a.map(() => 0); } };
  const base = { inode: ino, fileOffset: 0, length: 3 * HUGE, private: false, sync: false, faultAround: true };
  const decided = async (region: number, o: { writable: boolean; private?: boolean; sync?: boolean }) => {
    sent.length = 0;
    await policy.map(client, { ...base, ...o, region });
    return sent.map((a) => [a.op, a.flags ?? 0, a.offset, a.length, a.devOffset === undefined ? -1 : a.devOffset % PAGE]);
  };
  t.same(await decided(1, { writable: true }), [[Op.Install, A_WRITABLE, 0, HUGE, 0], [Op.Install, A_WRITABLE, HUGE, 8 * PAGE, 0]],
    'a writable shared mapping: its two written pieces installed ahead, writable, not populated');
  t.same(await decided(2, { writable: false }), [[Op.SetDirect, 0, 0, HUGE, 0], [Op.SetDirect, 0, HUGE, 8 * PAGE, 0]],
    'one that may not write: read-only direct ranges (its first store still reaches the policy)');
  t.same(await decided(3, { writable: true, private: true }), [], 'private: nothing');
  t.same(await decided(4, { writable: true, sync: true }), [], 'sync: nothing');
  t.equal(client.budget.count, 4, 'each decided piece is a window of the budget');
  policy.decideMode = 'off';
  t.same(await decided(5, { writable: true }), [], 'off: nothing');
  for (const r of [1, 2, 3, 4, 5]) await policy.unmap(client, r);
  t.equal(client.budget.count, 0);
});
