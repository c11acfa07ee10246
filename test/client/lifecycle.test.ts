// The client's lifecycle: close() that fails, a service worker that dies, and
// buffers kept past the life of their mapping.
import t from 'tap';
import fs from 'node:fs';
import { Pool, PAGE, HUGE, poolPath, runChild } from '../fault/helpers';

t.test('close() rejects when the service\'s final flush fails, and still releases the device', async (t) => {
  const p = poolPath('tmpfs');
  t.teardown(() => fs.rmSync(p, { force: true }));
  const pool = await Pool.create(p, { size: 16 << 20 });
  const f = await pool.openFile('a', { create: true });
  await f.write(Buffer.from('kept'), 0);
  await pool.request('testFailPersist', [{ code: 'EIO' }]);
  const first = pool.close();
  await t.rejects(first, { code: 'EIO', message: /persist .* failed/ }, 'close() rejects with the flush error');
  t.equal(pool.closed, true);
  t.equal(pool.close(), first, 'close() again is the same (rejected) promise');
  await t.rejects(pool.close(), { code: 'EIO' });
  const again = await Pool.open(p);
  const g = await again.openFile('a');
  const b = Buffer.alloc(4);
  await g.read(b, 0);
  t.equal(b.toString(), 'kept', 'the device was released; the log replays what was done');
  await again.close();
});
