// Decided ranges with daxmapd (docs/fault-policy.md, "Decided ranges"): the daemon
// sends SetDirect answers over each client's fault connection at map(); the client's
// agent then answers those faults itself, in its own process, so two clients fault
// in parallel and the daemon sees none of it. A punch clears and revokes first.
import t from 'tap';
import { daemonWithClients, PAGE, HUGE } from './helpers';
import { useLockdep } from '../lock/guard';

useLockdep(t);

t.test('two clients: decided faults are answered in the clients, the daemon sees none; a punch takes them back', async (t) => {
  const { d, clients: [a, b] } = await daemonWithClients(t, 2, { env: { DAXMAP_DECIDED: 'direct' } });
  if (!a || !b) throw new Error('two clients');
  const pages = 4 * HUGE / PAGE;
  await a.call('open', { name: 'f', create: true });
  await b.call('open', { name: 'f' });
  // Written through a first mapping (faults through the daemon), then unmapped.
  await a.call('truncate', { name: 'f', size: pages * PAGE });
  await a.call('map', { name: 'f', id: 9 });
  for (let i = 0; i < pages; i++) await a.call('store', { id: 9, offset: i * PAGE, text: Buffer.from(new Uint32Array([i]).buffer).toString('latin1') });
  await a.call('unmap', { id: 9 });

  const s0 = await a.call<any>('stats');
  const da0 = (await a.call<any>('agentStats')).direct;
  const db0 = (await b.call<any>('agentStats')).direct;
  await a.call('map', { name: 'f', id: 1 });
  await b.call('map', { name: 'f', id: 1, opts: { faultAround: false } });
  const [badA, badB] = await Promise.all([a.call('scan', { id: 1, pages }), b.call('scan', { id: 1, pages })]);
  t.equal(badA, 0, 'A reads the file');
  t.equal(badB, 0, 'B reads the file');
  const s1 = await a.call<any>('stats');
  t.equal(s1.faults - s0.faults, 0, 'no fault reached the daemon');
  t.equal(s1.decided - s0.decided, 8, 'four pieces decided in each mapping');
  t.equal((await a.call<any>('agentStats')).direct - da0, 4, 'A\'s agent answered its faults');
  t.equal((await b.call<any>('agentStats')).direct - db0, 4, 'B\'s agent answered its faults');
  await a.call('store', { id: 1, offset: 3 * HUGE + 40, text: 'from A' });
  t.equal(await b.call('load', { id: 1, offset: 3 * HUGE + 40, length: 6 }), 'from A', 'stores are coherent');

  // A punch in B: both mappings' decided pages are cleared and revoked first.
  await b.call('punch', { name: 'f', offset: HUGE, length: HUGE + 64 * PAGE });
  await a.call('write', { name: 'f', offset: 3 * HUGE + 40, text: 'by write' });
  const holes = [[512, 1088]];
  t.equal(await a.call('scan', { id: 1, pages: 3 * HUGE / PAGE, holes }), 0, 'A reads zeros in the punched range');
  t.equal(await b.call('scan', { id: 1, pages: 3 * HUGE / PAGE, holes }), 0, 'and so does B');
  t.equal(await b.call('load', { id: 1, offset: 3 * HUGE + 40, length: 8 }), 'by write');
  await a.call('close');
  await b.call('close');
  t.same(await d.stop(), { code: 0, signal: null });
});
