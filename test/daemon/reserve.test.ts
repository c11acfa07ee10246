// Reserves with daxmapd (docs/fault-policy.md, "Reserves"): the daemon grants a
// client's mapping zeroed blocks; the client's agent answers its sparse hole writes
// alone and its notes travel over the fault connection; the daemon's pool records
// them, so another client reads the stores through file.read. A client killed with a
// live reserve leaves the daemon serving and its pool consistent.
import t from 'tap';
import { daemonWithClients, PAGE } from './helpers';
import { RESERVE_BLOCKS, RESERVE_LOW_WATER } from '../../dist/fault/reserve';
import { useLockdep } from '../lock/guard';
import { until } from '../wait';

useLockdep(t);

const MiB = 1 << 20;
const scattered = (n: number, count: number): number[] => Array.from({ length: count }, (_, i) => (i * 7919 + 13) % n);

t.test('a client\'s native allocations reach the daemon\'s pool; a client killed with a live reserve', async (t) => {
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_RESERVE: 'on', DAXMAP_RESERVE_WINDOW: 'off', DAXMAP_STAGE: 'off' } });
  if (!a || !b) throw new Error('two clients');
  const pages = 8 * MiB / PAGE;
  await a.call('open', { name: 'f', create: true });
  await a.call('truncate', { name: 'f', size: 8 * MiB });
  await a.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
  const touched = scattered(pages, 300);
  const r0 = (await a.call<any>('agentStats')).reserved;
  const s0 = await a.call<any>('stats');
  await a.call('tags', { id: 1, pages: touched });
  const native = (await a.call<any>('agentStats')).reserved - r0;
  t.ok(native > touched.length / 2, `A's agent answered most from reserves (${native} of ${touched.length})`);
  // B reads the file through the daemon: the reserve is taken back first.
  await b.call('open', { name: 'f' });
  const text = await b.call<string>('read', { name: 'f', offset: 0, length: 8 * MiB });
  const back = Buffer.from(text, 'latin1');
  const want = new Set(touched);
  let bad = 0;
  for (let p = 0; p < pages; p++) if (back.readUInt32LE(p * PAGE + 8) !== (want.has(p) ? p + 1 : 0)) bad++;
  t.equal(bad, 0, 'B reads every store of A');
  const s1 = await a.call<any>('stats');
  t.equal(s1.reserved - s0.reserved, native, 'the daemon got a note for each native answer');

  // More stores (a new reserve), then A dies at once.
  await a.call('tags', { id: 1, pages: scattered(pages, 600).slice(300) });
  const killed = await a.kill('SIGKILL');
  t.equal(killed.signal, 'SIGKILL');
  // The daemon goes on serving: B maps and reads the file.
  await b.call('map', { name: 'f', id: 2 });
  t.equal(await b.call('load', { id: 2, offset: touched[0]! * PAGE + 8, length: 2 }), Buffer.from([touched[0]! + 1, 0]).toString('latin1'));
  await b.call('close');
  t.same(await d.stop(), { code: 0, signal: null });
});

t.test('top-ups over the fault connection: the low-water note wakes the daemon, which adds blocks without a take-back', async (t) => {
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_RESERVE: 'on', DAXMAP_RESERVE_WINDOW: 'off', DAXMAP_STAGE: 'off' } });
  if (!a || !b) throw new Error('two clients');
  const pages = 16 * MiB / PAGE;
  await a.call('open', { name: 'g', create: true });
  await a.call('truncate', { name: 'g', size: 16 * MiB });
  await a.call('map', { name: 'g', id: 1, opts: { faultAround: false } });
  const order = scattered(pages, pages);
  const s0 = await a.call<any>('stats');
  const r0 = (await a.call<any>('agentStats')).reserved;
  let s = s0;
  const statsWhen = (what: string, cond: (x: any) => boolean) => until(async () => cond((s = await a.call<any>('stats'))), what, { detail: () => s });
  await a.call('tags', { id: 1, pages: order.slice(0, 1) });
  await statsWhen('the grant', (x) => x.reserveGrants - s0.reserveGrants === 1);
  // Chunks of stores, each waiting for the top-up its last store asks for (at the
  // low-water mark: RESERVE_LOW_WATER of the RESERVE_BLOCKS given).
  const CHUNK = RESERVE_BLOCKS - RESERVE_LOW_WATER;
  const chunks = Math.floor((pages - 1) / CHUNK);
  for (let c = 0; c < chunks; c++) {
    await a.call('tags', { id: 1, pages: order.slice(1 + c * CHUNK, 1 + (c + 1) * CHUNK) });
    await statsWhen(`top-up ${c + 1}`, (x) => x.reserveTopUps - s0.reserveTopUps >= c + 1);
  }
  const stored = 1 + chunks * CHUNK;
  t.equal(s.reserveTopUps - s0.reserveTopUps, chunks, 'a top-up per chunk');
  t.equal(s.reserveGrants - s0.reserveGrants, 1, 'one grant');
  t.equal(s.reserveTakeBacks - s0.reserveTakeBacks, 0, 'no take-back');
  t.equal(s.faults - s0.faults, 1, 'only the first store reached the daemon as a fault');
  // (the first after its trap: the daemon granted the reserve, then woke it)
  t.equal((await a.call<any>('agentStats')).reserved - r0, stored, 'A\'s agent answered every store');
  // B reads the file through the daemon: the reserve is taken back first.
  await b.call('open', { name: 'g' });
  const back = Buffer.from(await b.call<string>('read', { name: 'g', offset: 0, length: 16 * MiB }), 'latin1');
  const want = new Set(order.slice(0, stored));
  let bad = 0;
  for (let p = 0; p < pages; p++) if (back.readUInt32LE(p * PAGE + 8) !== (want.has(p) ? p + 1 : 0)) bad++;
  t.equal(bad, 0, 'B reads every store of A');
  t.equal((await a.call<any>('stats')).reserveTakeBacks - s0.reserveTakeBacks, 1, 'B\'s read took the reserve back');
  await a.call('close');
  await b.call('close');
  t.same(await d.stop(), { code: 0, signal: null });
});

t.test('a load then a store on a hole through daxmapd: the client\'s agent answers both, the daemon records the store', async (t) => {
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_RESERVE: 'on', DAXMAP_RESERVE_WINDOW: 'off', DAXMAP_STAGE: 'off' } });
  if (!a || !b) throw new Error('two clients');
  const pages = 8 * MiB / PAGE;
  await a.call('open', { name: 'h', create: true });
  await a.call('truncate', { name: 'h', size: 8 * MiB });
  await a.call('map', { name: 'h', id: 1, opts: { faultAround: false } });
  const order = scattered(pages, 201);
  const s0 = await a.call<any>('stats');
  let s = s0;
  await a.call('tags', { id: 1, pages: order.slice(0, 1) });
  await until(async () => (s = await a.call<any>('stats')).reserveGrants - s0.reserveGrants === 1, 'the grant', { detail: () => s });
  const a0 = await a.call<any>('agentStats');
  const s1 = await a.call<any>('stats');
  const rest = order.slice(1);
  let nonzero = 0;
  for (const p of rest) if ((await a.call<string>('load', { id: 1, offset: p * PAGE + 8, length: 4 })) !== '\0\0\0\0') nonzero++;
  t.equal(nonzero, 0, 'every hole read as zeros');
  await a.call('tags', { id: 1, pages: rest });
  const a1 = await a.call<any>('agentStats');
  const s2 = await a.call<any>('stats');
  t.equal(a1.reservedZero - a0.reservedZero, rest.length, 'A\'s agent answered each read');
  t.equal(a1.reservedWp - a0.reservedWp, rest.length, 'and each store after it');
  t.equal(s2.faults - s1.faults, 0, 'no fault reached the daemon');
  t.equal(s2.reserveTakeBacks - s1.reserveTakeBacks, 0, 'no take-back');
  await b.call('open', { name: 'h' });
  const back = Buffer.from(await b.call<string>('read', { name: 'h', offset: 0, length: 8 * MiB }), 'latin1');
  const want = new Set(order);
  let bad = 0;
  for (let p = 0; p < pages; p++) if (back.readUInt32LE(p * PAGE + 8) !== (want.has(p) ? p + 1 : 0)) bad++;
  t.equal(bad, 0, 'B reads every store of A');
  await a.call('close');
  await b.call('close');
  t.same(await d.stop(), { code: 0, signal: null });
});

t.test('reserve windows through daxmapd: most of a client\'s stores take no trap, the daemon records them all, the unmap trims', async (t) => {
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_RESERVE: 'on', DAXMAP_RESERVE_WINDOW: '16', DAXMAP_STAGE: 'off' } });
  if (!a || !b) throw new Error('two clients');
  // Two windows: the grant's own two runs upgrade both, however late more would come.
  const size = 4 * MiB;
  const pages = size / PAGE;
  await a.call('open', { name: 'w', create: true });
  await a.call('truncate', { name: 'w', size });
  await a.call('map', { name: 'w', id: 1, opts: { faultAround: false } });
  const order = scattered(pages, pages);
  const a0 = await a.call<any>('agentStats');
  const s0 = await a.call<any>('stats');
  await a.call('tags', { id: 1, pages: order });
  // The upgrade runs on the agent's thread after the store that filled the threshold is woken.
  let a1 = a0;
  await until(async () => (a1 = await a.call<any>('agentStats')).upgrades - a0.upgrades === 2, 'A\'s agent upgraded both windows', { detail: () => a1 });
  t.ok(a1.events - a0.events < pages / 8, `fewer traps than an eighth of the pages (${a1.events - a0.events} for ${pages})`);
  // B reads the file through the daemon: the reserve is taken back, the gaps adopted.
  await b.call('open', { name: 'w' });
  const back = Buffer.from(await b.call<string>('read', { name: 'w', offset: 0, length: size }), 'latin1');
  let bad = 0;
  for (let p = 0; p < pages; p++) if (back.readUInt32LE(p * PAGE + 8) !== p + 1) bad++;
  t.equal(bad, 0, 'B reads every store of A');
  const s1 = await a.call<any>('stats');
  t.equal(s1.reserveUpgrades - s0.reserveUpgrades, a1.upgrades - a0.upgrades, 'the daemon recorded every upgrade');
  await a.call('unmap', { id: 1 });
  await a.call('map', { name: 'w', id: 2, opts: { faultAround: false } });
  const back2 = Buffer.from(await a.call<string>('load', { id: 2, offset: 0, length: size }), 'latin1');
  let bad2 = 0;
  for (let p = 0; p < pages; p++) if (back2.readUInt32LE(p * PAGE + 8) !== p + 1) bad2++;
  t.equal(bad2, 0, 'after the unmap and its trim, a new mapping reads every store');
  await a.call('close');
  await b.call('close');
  t.same(await d.stop(), { code: 0, signal: null });
});
