// The window budget's bookkeeping: recency order, ranges dropped without scanning
// other mappings, whole mappings dropped.
import t from 'tap';
import { WindowBudget } from '../../dist/fault/budget';

const PAGE = 4096;
const HUGE = 2 << 20;

t.test('windows are kept in recency order and dropped by range', async (t) => {
  const b = new WindowBudget(4);
  b.add({ mapping: 'a', offset: 0, length: HUGE });
  b.add({ mapping: 'a', offset: HUGE + PAGE, length: PAGE });
  b.add({ mapping: 'b', offset: 0, length: PAGE });
  b.add({ mapping: 'a', offset: 0, length: HUGE }); // touched again: now the newest
  t.same(b.oldest(3).map((w) => `${w.mapping}@${w.offset}`), [`a@${HUGE + PAGE}`, 'b@0', 'a@0']);
  t.equal(b.count, 3);
  t.notOk(b.over);
  b.dropRange('a', HUGE - PAGE, 2 * PAGE); // overlaps the 2 MiB window's last page and the next window
  t.same(b.oldest(9).map((w) => `${w.mapping}@${w.offset}`), [`a@${HUGE + PAGE}`, 'b@0'], 'the 2 MiB window overlapping the range went');
  b.dropRange('a', HUGE + PAGE, 1);
  t.same(b.oldest(9).map((w) => `${w.mapping}@${w.offset}`), ['b@0']);
  b.dropRange('zz', 0, HUGE);
  b.add({ mapping: 'c', offset: 8 * PAGE, length: PAGE });
  b.add({ mapping: 'c', offset: 16 * PAGE, length: PAGE });
  b.dropRange('c', 0, Number.MAX_SAFE_INTEGER); // a huge range: scans only c's windows
  t.same(b.oldest(9).map((w) => w.mapping), ['b']);
  b.add({ mapping: 'd', offset: 0, length: PAGE });
  b.dropMapping('d');
  b.dropMapping('d');
  t.equal(b.count, 1);
  for (let i = 0; i < 5; i++) b.add({ mapping: 'e', offset: i * PAGE, length: PAGE });
  t.ok(b.over, 'over the limit of 4');
});

t.test('dropping ranges of one mapping among many leaves the others alone', async (t) => {
  // (Its cost is measured by test/perf/map-random.test.ts past the budget, not here.)
  const b = new WindowBudget(1 << 20);
  for (let m = 0; m < 64; m++) for (let i = 0; i < 1000; i++) b.add({ mapping: `m${m}`, offset: i * PAGE, length: PAGE });
  for (let i = 0; i < 1000; i += 2) b.dropRange('m7', i * PAGE, PAGE);
  t.equal(b.count, 63500, 'exactly the even windows of m7 went');
  b.dropRange('m7', 0, 1000 * PAGE);
  t.equal(b.count, 63000);
  t.equal(b.oldest(1)[0]?.mapping, 'm0', 'recency order kept');
});

t.test('reserve blocks held count against the limit, not as windows', async (t) => {
  const b = new WindowBudget(4);
  b.add({ mapping: 'a', offset: 0, length: PAGE });
  b.held = 3;
  t.equal(b.count, 1, 'one window');
  t.equal(b.used, 4, 'and three blocks that may become windows without a fault');
  t.notOk(b.over, 'at the limit, not over it');
  b.held = 4;
  t.ok(b.over, 'one more held block is over');
  t.same(b.oldest(9).map((w) => w.offset), [0], 'held blocks are not windows to evict');
  b.held = 0;
  t.notOk(b.over);
});
