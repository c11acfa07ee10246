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

t.test('addPages: one window per page, in order, like add() for each', async (t) => {
  const b = new WindowBudget(100);
  b.add({ mapping: 'a', offset: 3 * PAGE, length: PAGE });
  b.add({ mapping: 'b', offset: 0, length: PAGE });
  b.addPages('a', [1, 3, 7], PAGE); // page 3 again: now newer than b's window
  t.same(b.oldest(9).map((w) => `${w.mapping}@${w.offset / PAGE}+${w.length / PAGE}`), ['b@0+1', 'a@1+1', 'a@3+1', 'a@7+1']);
  t.equal(b.count, 4, 'the page added twice is one window');
  t.ok(b.has('a', 7 * PAGE) && b.has('a', PAGE) && !b.has('a', 2 * PAGE), 'has() finds exactly those pages');
  b.addPages('c', [], PAGE);
  t.equal(b.count, 4, 'no pages, no change');
  t.notOk(b.has('c', 0));
});

t.test('a window added again takes its new length; oldest() hands out copies', async (t) => {
  const b = new WindowBudget(100);
  b.add({ mapping: 'a', offset: 0, length: PAGE });
  b.add({ mapping: 'a', offset: HUGE, length: PAGE });
  b.add({ mapping: 'a', offset: 0, length: HUGE }); // the 4 KiB window grew to 2 MiB
  const [w] = b.oldest(1);
  t.same(w, { mapping: 'a', offset: HUGE, length: PAGE }, 'the oldest is the window not touched again');
  t.same(b.oldest(2)[1], { mapping: 'a', offset: 0, length: HUGE }, 'the other has its new length');
  b.dropRange('a', HUGE - PAGE, PAGE); // only the grown window covers the page before HUGE
  t.same(b.oldest(9).map((x) => x.offset), [HUGE], 'dropRange sees the new length');
  b.add({ mapping: 'a', offset: 0, length: PAGE });
  t.same(w, { mapping: 'a', offset: HUGE, length: PAGE }, 'a window handed out earlier is not changed by later adds');
  b.dropMapping('a');
  t.equal(b.count, 0);
  t.same(b.oldest(9), [], 'empty');
  b.add({ mapping: 'a', offset: PAGE, length: PAGE });
  t.same(b.oldest(9).map((x) => x.offset), [PAGE], 'usable again after the mapping was dropped');
});

t.test('recency order survives interleaved adds and drops across mappings', async (t) => {
  const b = new WindowBudget(1 << 20);
  const model: string[] = [];
  const key = (m: string, o: number): string => `${m}@${o}`;
  let seed = 12345;
  const rnd = (n: number): number => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed % n; };
  for (let i = 0; i < 5000; i++) {
    const m = `m${rnd(3)}`;
    const o = rnd(64) * PAGE;
    const op = rnd(10);
    if (op < 7) {
      b.add({ mapping: m, offset: o, length: PAGE });
      const k = model.indexOf(key(m, o));
      if (k >= 0) model.splice(k, 1);
      model.push(key(m, o));
    } else if (op < 9) {
      b.dropRange(m, o, 2 * PAGE);
      for (const x of [key(m, o), key(m, o + PAGE)]) { const k = model.indexOf(x); if (k >= 0) model.splice(k, 1); }
    } else {
      b.dropMapping(m);
      for (let k = model.length - 1; k >= 0; k--) if (model[k]!.startsWith(`${m}@`)) model.splice(k, 1);
    }
  }
  t.equal(b.count, model.length, 'the count matches a model of the operations');
  t.same(b.oldest(model.length + 1).map((w) => key(w.mapping, w.offset)), model, 'and so does the order, oldest first');
});
