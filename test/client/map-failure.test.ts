// A map() that fails leaves nothing behind: no address space, no registration with
// the service, no window budget — at any step of its own (failures injected through
// the client's test seam); nor do maps larger than one Buffer, unmapped.
import t from 'tap';
import fs from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { forBackings, PAGE, HUGE } from '../fault/helpers';
import { testHooks, type MapStep } from '../../dist/client/pool';

const GiB = 2 ** 30;

function vmSize(): number {
  const m = /VmSize:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

interface State { mappings: number; regions: number; windows: number }

// (Address space is not measured here: an unmapped region's range stays reserved,
// inaccessible, for the graveyard's 30 s; a failed map() gives it back at once.)
forBackings(t, 'mapping more than 4 GiB works (on Node 20 more than one Buffer holds: view() windows); the service forgets each unmapped one', async (t, { pool }) => {
  t.equal(bufferConstants.MAX_LENGTH <= 2 ** 53, true);
  const f = await pool.openFile('big', { create: true });
  // Past one Buffer on Node 20 (4 GiB); Node 22 and 24 allow 2^53 - 1 bytes.
  const size = 5 * GiB;
  await f.truncate(size);
  for (let i = 0; i < 3; i++) {
    const m = await f.map();
    t.equal(m.length, size, `whole-file map ${i}`);
    m.view(size - PAGE, PAGE)[1] = i + 1;
    await m.unmap();
  }
  t.same(await pool.request<State>('testState'), { mappings: 0, regions: 0, files: 1, windows: 0 }, 'the service holds no mapping');
  const before = vmSize();
  for (let i = 0; i < 20; i++) {
    await t.rejects(f.map({ length: 2 ** 44 + PAGE }), { code: 'EINVAL' }, `a length past the largest file size ${i}`);
  }
  t.ok(vmSize() - before < GiB / 4, 'refused maps take no address space');
  const m = await f.map({ offset: size - HUGE, length: HUGE });
  t.equal(m.buffer[HUGE - PAGE + 1], 3, 'the last store is in the file');
  await m.unmap();
});

const STEPS: MapStep[] = ['reserve', 'register', 'bind', 'buffer'];

forBackings(t, 'a failure at every step of map() undoes the steps before it', async (t, { pool }) => {
  t.teardown(() => { testHooks.failMapAt = null; });
  const f = await pool.openFile('a', { create: true });
  await f.truncate(GiB);
  const keep = await f.map({ length: HUGE });
  keep.buffer[0] = 1;
  const base = (await pool.request<State>('testState'));
  t.equal(base.mappings, 1);
  const before = vmSize();
  for (const step of STEPS) {
    testHooks.failMapAt = step;
    for (let i = 0; i < 4; i++) {
      await t.rejects(f.map({ faultAround: false }), { code: 'EIO', message: new RegExp(`'${step}' step`) }, `${step} ${i}`);
    }
    testHooks.failMapAt = null;
    const after = vmSize();
    t.ok(after - before < GiB / 4, `${step}: 4 failed maps of 1 GiB left the address space at ${(before / GiB).toFixed(2)} -> ${(after / GiB).toFixed(2)} GiB`);
    t.same(await pool.request<State>('testState'), base, `${step}: the service holds only the mapping kept`);
  }
  const m = await f.map({ faultAround: false });
  m.buffer[5 * PAGE] = 9;
  t.equal(m.buffer[5 * PAGE], 9, 'the next map works');
  t.equal(keep.buffer[0], 1, 'the mapping kept was not disturbed');
  await m.unmap();
  await keep.unmap();
  t.same(await pool.request<State>('testState'), { mappings: 0, regions: 0, files: 1, windows: 0 });
});

forBackings(t, 'a handle closed while map() waits for the service: the mapping is undone, EBADF', async (t, { pool }) => {
  const f = await pool.openFile('a', { create: true });
  await f.truncate(GiB);
  const before = vmSize();
  const mapping = f.map({ length: GiB });
  const closing = f.close();
  await t.rejects(mapping, { code: 'EBADF' });
  await closing;
  t.ok(vmSize() - before < GiB / 4, 'its region was released');
  t.same(await pool.request<State>('testState'), { mappings: 0, regions: 0, files: 0, windows: 0 });
});
