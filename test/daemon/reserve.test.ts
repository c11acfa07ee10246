// Reserves with daxmapd (docs/fault-policy.md, "Reserves"): the daemon grants a
// client's mapping zeroed blocks; the client's agent answers its sparse hole writes
// alone and its notes travel over the fault connection; the daemon's pool records
// them, so another client reads the stores through file.read. A client killed with a
// live reserve leaves the daemon serving and its pool consistent.
import t from 'tap';
import { daemonWithClients, PAGE } from './helpers';
import { useLockdep } from '../lock/guard';

useLockdep(t);

const MiB = 1 << 20;
const scattered = (n: number, count: number): number[] => Array.from({ length: count }, (_, i) => (i * 7919 + 13) % n);

t.test('a client\'s native allocations reach the daemon\'s pool; a client killed with a live reserve', async (t) => {
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_RESERVE: 'on' } });
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
