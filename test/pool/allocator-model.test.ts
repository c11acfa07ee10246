// The block allocator against a model that keeps one flag per block: random takes,
// marks, unmarks, zeroer holds and releases, in a data area whose start is not a
// multiple of 32 and whose last group is partial. The allocator works a bitmap word
// at a time (allocator.ts); the model block by block.
import t from 'tap';
import { BlockAllocator, type Run } from '../../dist/pool/allocator.js';
import { GROUP_BLOCKS } from '../../dist/pool/format.js';
import { rng } from './helpers.ts';

const START = 1003;
const BLOCKS = 5 * GROUP_BLOCKS + 77;

class Model {
  used = new Uint8Array(BLOCKS);
  clean = new Uint8Array(BLOCKS);
  pending: Run[] = [];
  isUsed(d: number): boolean { return this.used[d - START] === 1; }
  isClean(d: number): boolean { return this.clean[d - START] === 1; }
  free(): number { return this.used.reduce((n, u) => n + (u ? 0 : 1), 0); }
  cleanFree(): number { return this.clean.reduce((n, c) => n + c, 0); }
  usedRuns(): Run[] {
    const out: Run[] = [];
    for (let i = 0; i < BLOCKS; i++) {
      if (!this.used[i]) continue;
      const last = out[out.length - 1];
      if (last && last.start + last.len === START + i) last.len++;
      else out.push({ start: START + i, len: 1 });
    }
    return out;
  }
  /** Marks the runs used; every block must be free. Returns the runs of the blocks that were clean. */
  take(runs: readonly Run[]): Run[] {
    const cleanRuns: Run[] = [];
    for (const r of runs) {
      for (let d = r.start; d < r.start + r.len; d++) {
        if (this.isUsed(d)) throw new Error(`model: block ${d} handed out twice`);
        this.used[d - START] = 1;
        if (this.isClean(d)) {
          this.clean[d - START] = 0;
          const last = cleanRuns[cleanRuns.length - 1];
          if (last && last.start + last.len === d) last.len++;
          else cleanRuns.push({ start: d, len: 1 });
        }
      }
    }
    return cleanRuns;
  }
  release(r: Run, clean: boolean): void {
    for (let d = r.start; d < r.start + r.len; d++) {
      this.used[d - START] = 0;
      if (clean) this.clean[d - START] = 1;
    }
  }
}

function sum(runs: readonly Run[]): number {
  return runs.reduce((n, r) => n + r.len, 0);
}

t.test('the allocator agrees with a block-by-block model over random operations', async (t) => {
  for (const seed of [1, 2, 3, 4]) {
    const r = rng(seed * 7919);
    const a = new BlockAllocator(START, START + BLOCKS);
    const m = new Model();
    const owned: Run[] = [];
    const zeroing: Run[][] = [];
    let problems = 0;
    let marks = 0;
    let refused = 0;
    let cleanTaken = 0;
    const check = (what: string): void => {
      const p = a.checkCounters();
      if (p.length > 0 || a.free !== m.free() || a.cleanFree !== m.cleanFree()) {
        problems++;
        if (problems < 5) t.fail(`seed ${seed} after ${what}: ${p.join('; ')} free ${a.free} vs ${m.free()}, clean ${a.cleanFree} vs ${m.cleanFree()}`);
      }
    };
    for (let step = 0; step < 1500; step++) {
      const op = r.int(7);
      if (op === 0 && a.free > 0) {
        const n = 1 + r.int(Math.min(a.free, r.chance(0.3) ? 2 * GROUP_BLOCKS : 40));
        const opts = { wholeGroups: r.chance(0.5), clean: r.chance(0.2) ? 'avoid' as const : 'prefer' as const, goal: r.chance(0.3) ? START + r.int(BLOCKS) : undefined };
        const cleanOut: Run[] = [];
        const got = a.take(n, opts, cleanOut);
        if (sum(got) !== n) t.fail(`take(${n}) returned ${sum(got)} blocks`);
        const expect = m.take(got);
        cleanTaken += sum(expect);
        if (JSON.stringify(cleanOut) !== JSON.stringify(expect)) t.fail(`seed ${seed} take: clean runs ${JSON.stringify(cleanOut)} vs ${JSON.stringify(expect)}`);
        owned.push(...got);
        check('take');
      } else if (op === 1) {
        // a range at random: refused at its first used block, else marked
        const start = START + r.int(BLOCKS);
        const len = 1 + r.int(Math.min(START + BLOCKS - start, 100));
        let first = -1;
        for (let d = start; d < start + len && first < 0; d++) if (m.isUsed(d)) first = d;
        const cleanOut: Run[] = [];
        const res = a.markUsed(start, len, cleanOut);
        if (res !== first) t.fail(`seed ${seed} markUsed(${start}, ${len}) = ${res}, model ${first}`);
        if (first < 0) {
          marks++;
          const expect = m.take([{ start, len }]);
          if (JSON.stringify(cleanOut) !== JSON.stringify(expect)) t.fail(`seed ${seed} markUsed clean runs differ`);
          owned.push({ start, len });
        } else if (cleanOut.length > 0) t.fail('a refused mark reported clean blocks');
        check('markUsed');
      } else if (op === 2 && owned.length > 0) {
        // give a piece of an owned run back (an aborted allocation): dirty
        const k = r.int(owned.length);
        const o = owned[k]!;
        const off = r.int(o.len);
        const len = 1 + r.int(o.len - off);
        a.unmark(o.start + off, len);
        m.release({ start: o.start + off, len }, false);
        owned.splice(k, 1);
        if (off > 0) owned.push({ start: o.start, len: off });
        if (off + len < o.len) owned.push({ start: o.start + off + len, len: o.len - off - len });
        check('unmark');
      } else if (op === 3) {
        // an unmark over a free block throws and changes nothing
        const d = START + r.int(BLOCKS);
        if (m.isUsed(d)) continue;
        const lo = Math.max(START, d - r.int(40));
        const before = JSON.stringify([a.usedRuns(), a.free, a.cleanFree]);
        t.throws(() => a.unmark(lo, d - lo + 1 + r.int(10)), /unmark of free block/);
        if (JSON.stringify([a.usedRuns(), a.free, a.cleanFree]) !== before) t.fail(`seed ${seed} a refused unmark changed the bitmap`);
        refused++;
      } else if (op === 4) {
        const runs = a.beginZero(1 + r.int(3 * GROUP_BLOCKS), r.chance(0.5));
        for (const z of runs) for (let d = z.start; d < z.start + z.len; d++) if (m.isUsed(d) || m.isClean(d)) t.fail(`seed ${seed} the zeroer took block ${d}, used or clean`);
        m.take(runs);
        if (runs.length > 0) zeroing.push(runs);
        check('beginZero');
      } else if (op === 5 && zeroing.length > 0) {
        const runs = zeroing.splice(r.int(zeroing.length), 1)[0]!;
        const zeroed = r.chance(0.8);
        a.endZero(runs, zeroed);
        for (const z of runs) m.release(z, zeroed);
        check('endZero');
      } else if (op === 6 && owned.length > 0) {
        // a file frees whole runs: pending, then released by a checkpoint
        const o = owned.splice(r.int(owned.length), 1)[0]!;
        a.freeLater(o.start, o.len);
        m.pending.push(o);
        if (r.chance(0.3)) {
          a.releasePending();
          for (const p of m.pending) m.release(p, false);
          m.pending = [];
        }
        check('free');
      }
    }
    t.equal(problems, 0, `seed ${seed}: counters, free and clean counts agree with the model at every step`);
    t.same(a.usedRuns(), m.usedRuns(), `seed ${seed}: the bitmap is the model's`);
    t.ok(marks > 0 && refused > 0 && cleanTaken > 0, `seed ${seed}: the run marked ranges (${marks}), refused unmarks (${refused}) and took clean blocks (${cleanTaken})`);
  }
});
