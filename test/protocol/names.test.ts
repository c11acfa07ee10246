// One rule for file names (lib/util/check.ts checkName), used by the client API
// before it sends and by the pool itself: 1-255 bytes of UTF-8, no '/' or NUL, and
// well-formed UTF-16 — a lone surrogate has no UTF-8 form, so it would not survive
// the trip to disk. Each name below gets the same verdict from the checker, from
// the pool (lib/pool, no service) and from the public client API (a Pool with its
// service in a worker).
import t from 'tap';
import fs from 'node:fs';
import { checkName } from '../../dist/util/check';
import { memPool } from '../pool/helpers';
import { Pool, poolPath } from '../fault/helpers';

const NAMES: [string, string, boolean][] = [
  ['ascii', 'plain', true],
  ['two-byte UTF-8', 'é'.repeat(127) + 'x', true],
  ['a surrogate pair (U+1F600)', '\ud83d\ude00', true],
  ['a pair among others', 'a\ud83d\ude00b', true],
  ['a lone high surrogate', '\ud800', false],
  ['a lone low surrogate inside', 'a\udc00b', false],
  ['a high surrogate at the end', 'x\ud83d', false],
  ['a pair the wrong way round', '\ude00\ud83d', false],
  ['empty', '', false],
  ['a slash', 'a/b', false],
  ['NUL', 'a\0b', false],
  ['256 bytes', 'x'.repeat(256), false],
  ['255 bytes', 'x'.repeat(255), true],
];

t.test('the checker', async (t) => {
  for (const [what, name, ok] of NAMES) {
    if (ok) t.equal(checkName(name), name, what);
    else t.throws(() => checkName(name), { code: 'EINVAL' }, what);
  }
  t.throws(() => checkName('\ud800'), { message: /lone surrogate/ }, 'says why');
  t.throws(() => checkName(5, 'rename target'), { code: 'EINVAL', message: /^EINVAL: rename target must be a string/ });
});

t.test('the pool: the same verdicts, and accepted names come back as given', async (t) => {
  const { pool } = memPool();
  for (const [what, name, ok] of NAMES) {
    if (ok) {
      const f = await pool.openFile(name, { create: true });
      t.equal(f.name, name, what);
      await f.close();
    } else {
      await t.rejects(pool.openFile(name, { create: true }), { code: 'EINVAL' }, what);
    }
  }
  const good = NAMES.filter(([, , ok]) => ok).map(([, n]) => n);
  t.same((await pool.list()).sort(), [...good].sort(), 'listed exactly as created');
  await pool.close();
});

t.test('the client API: the same verdicts, before and through the service', async (t) => {
  const p = poolPath('tmpfs');
  const pool = await Pool.create(p, { size: 16 << 20 });
  t.teardown(async () => {
    await pool.close();
    fs.rmSync(p, { force: true });
  });
  for (const [what, name, ok] of NAMES) {
    if (ok) {
      const f = await pool.openFile(name, { create: true });
      t.equal(f.name, name, what);
      await f.close();
      await pool.rename(name, 'renamed');
      await pool.rename('renamed', name);
      t.same(await pool.list(), [name], `${what}: renamed there and back`);
      await pool.unlink(name);
    } else {
      await t.rejects(pool.openFile(name, { create: true }), { code: 'EINVAL' }, `openFile: ${what}`);
      await t.rejects(pool.rename('plain', name), { code: 'EINVAL' }, `rename: ${what}`);
      await t.rejects(pool.unlink(name), { code: 'EINVAL' }, `unlink: ${what}`);
    }
  }
  // Past the client's own check, the service's op table refuses it too (a request as any client could send it).
  await t.rejects(pool.request('openFile', ['\ud800', { create: true }]), { code: 'EINVAL', message: /lone surrogate/ });
});
