// Mappings larger than one Buffer (4 GiB on Node 20): a 6 GiB and a 64 GiB sparse
// file mapped whole, embedded and through daxmapd. Stores at 5 GiB and at the last
// page through view(), read back with file.read; a punch seen through the mapping;
// unmap detaches every view. Sparse: a few pages are touched, nothing more.
import t from 'tap';
import fs from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { forBackings, PAGE, HUGE, type Ctx } from '../fault/helpers';
import { startDaemon } from '../daemon/helpers';
import { Pool, type Mapping, type PoolFile } from '../../dist/index';
import type { Test } from 'tap';

const GiB = 2 ** 30;
const MAX = bufferConstants.MAX_LENGTH;

async function readBack(f: PoolFile, offset: number, length: number): Promise<string> {
  const b = Buffer.alloc(length);
  await f.read(b, offset);
  return b.toString('latin1');
}

/** The whole-mapping accessors: each works where the runtime allows, else EINVAL naming view(). */
function wholeAccessors(t: Test, m: Mapping, size: number): void {
  if (size > MAX) {
    t.throws(() => m.buffer, { code: 'EINVAL', message: /view\(offset, length\)/ }, `m.buffer of ${size / GiB} GiB: more than one Buffer here`);
    t.throws(() => m.arrayBuffer, { code: 'EINVAL', message: /view\(offset, length\)/ }, 'm.arrayBuffer: Node-API makes it as a Buffer here');
  } else {
    t.equal(m.buffer.length, size, 'm.buffer is the whole mapping');
    t.equal(m.arrayBuffer.byteLength, size, 'm.arrayBuffer is the whole mapping');
  }
}

async function bigMapping(t: Test, pool: Pool, size: number): Promise<void> {
  const f = await pool.openFile(`big-${size}`, { create: true });
  await f.truncate(size);
  const m = await f.map();
  t.equal(m.length, size, 'the whole file is mapped');
  wholeAccessors(t, m, size);

  const at5 = m.view(5 * GiB, PAGE);
  t.equal(at5.length, PAGE);
  t.equal(at5[0], 0, 'a hole reads as zeros');
  at5.write('stored at 5 GiB', 0, 'latin1');
  const last = m.view(size - PAGE);
  t.equal(last.length, PAGE, 'view(offset) runs to the end of the mapping');
  last.write('the last page', PAGE - 13, 'latin1');
  m.store(Buffer.from('checked'), size / 2 + 3);
  t.equal(await readBack(f, 5 * GiB, 15), 'stored at 5 GiB', 'file.read sees the store at 5 GiB');
  t.equal(await readBack(f, size - 13, 13), 'the last page', 'and the one in the last page');
  t.equal(m.load(size / 2 + 3, 7).toString(), 'checked', 'load() past 4 GiB');
  t.equal(await readBack(f, size / 2 + 3, 7), 'checked');

  // A view that straddles the 4 GiB boundary, and one as long as a Buffer may be.
  const across = m.view(4 * GiB - 4, 8);
  across.write('abcdefgh', 'latin1');
  t.equal(await readBack(f, 4 * GiB - 4, 8), 'abcdefgh', 'a view across 4 GiB');
  t.equal(m.view(0, Math.min(MAX, size)).length, Math.min(MAX, size), 'a view of the largest Buffer');

  // file.write lands in the mapping; a punch hole revokes the page in it.
  await f.write(Buffer.from('by file.write'), 5 * GiB + HUGE);
  t.equal(m.view(5 * GiB + HUGE, 13).toString(), 'by file.write', 'file.write is seen through the mapping');
  await f.punchHole(5 * GiB, PAGE);
  t.equal(at5[0], 0, 'the punched page reads zeros again through a view taken before');
  t.equal(m.view(5 * GiB, 15).toString('latin1'), '\0'.repeat(15));

  // Bounds.
  t.throws(() => m.view(size - 4, 5), { code: 'EINVAL' }, 'a view past the end');
  t.throws(() => m.view(-1, 1), { code: 'EINVAL' }, 'a negative offset');
  t.throws(() => m.view(size + 1), { code: 'EINVAL' }, 'an offset past the end');
  t.throws(() => m.view(0.5, 1), { code: 'EINVAL' }, 'a fractional offset');
  if (size > MAX) t.throws(() => m.view(0, MAX + 1), { code: 'EINVAL', message: /more than one Buffer/ }, 'a view longer than a Buffer');
  t.equal(m.view(size, 0).length, 0, 'an empty view at the end');

  await m.flush(5 * GiB, PAGE);
  await m.unmap();
  t.equal(at5.length, 0, 'a view kept past unmap() is detached');
  t.equal(last.length, 0);
  t.throws(() => m.view(0, 1), { code: 'ECLOSED' }, 'view() after unmap()');
  t.equal(await readBack(f, size - 13, 13), 'the last page', 'the data stays in the file');
  t.same(await pool.request('testState'), { mappings: 0, regions: 0, files: 1, windows: 0 }, 'the service holds nothing of the mapping');
  await f.close();
}

for (const size of [6 * GiB, 64 * GiB]) {
  forBackings(t, `a ${size / GiB} GiB mapping, embedded`, async (t: Test, { pool }: Ctx) => bigMapping(t, pool, size));
}

t.test('a 6 GiB and a 64 GiB mapping through daxmapd', async (t) => {
  const d = await startDaemon();
  const pool = await Pool.connect(d.socket);
  t.teardown(async () => {
    await pool.close();
    await d.stop();
  });
  for (const size of [6 * GiB, 64 * GiB]) await t.test(`${size / GiB} GiB`, async (t) => bigMapping(t, pool, size));
  t.ok(fs.existsSync(d.device));
});
