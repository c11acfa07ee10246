// The suite of the fsx-style model test of mappings (xfstests generic/075 in spirit): random mapped
// reads and writes through two mappings of one file — one shared, one private —
// mixed with file.read/write, truncate up and down, fallocate (with and without
// keepSize), punch hole, zero range and remaps at random page-aligned offsets and
// lengths (past EOF too), each checked at once against a shadow model of the file
// and of the private mapping's own pages (map-model-core.ts). Pages past EOF are
// probed by the kernel (EFAULT), never touched from JavaScript.
//
// Runs on a pool in a tmpfs file, on one on disk, and on the device-DAX stand-in
// (hugetlbfs, fewer seeds; test/hugetlb.ts), the lock validator on and
// asserted clean; once with the default window budget and once with a budget of 16
// windows, so that installed windows are evicted all the time (DAXMAP_MODEL_BUDGET
// overrides the small one). DAXMAP_SEED (a seed, or a comma list) and DAXMAP_OPS override the
// CI seeds and count for long runs. A failure prints the seed, the
// backing and the operation log; the log is also written as it goes to
// $TMPDIR/daxmap-map-model-<seed>-<backing>.log (kept on failure), so a run that
// dies outright still leaves it. map-model-replay.ts replays and reduces a run.
import type { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { forBackings, HUGE } from '../fault/helpers';
import { runMapModel, ModelMismatch, type RunResult } from './map-model-core';

const envSeed = process.env['DAXMAP_SEED'];
const seeds = envSeed ? envSeed.split(',').map(Number) : [1, 2, 3];
const ops = Number(process.env['DAXMAP_OPS'] ?? 200);

export const smallBudget = Number(process.env['DAXMAP_MODEL_BUDGET'] ?? 16);

// Seed 11 with the small budget found a 2 MiB private copy over a chunk that revokes
// had split into several VMAs (UFFDIO_COPY met ENOENT: SIGBUS inside EOF).
const budgetSeeds = envSeed ? seeds : [...seeds, 11];

/**
 * The model runs on every backing. With `budget`, the window budget is that small
 * (constant eviction) and seed 11 runs too. `part` [k, n]: only every n-th seed from
 * the k-th (k from 0), so that a run can be split over test files, each with tap's
 * whole timeout.
 */
export function mapModelSuite(t: Test, budget?: number, part: [number, number] = [0, 1]): void {
  const [k, n] = part;
  const mine = (_seed: number, i: number): boolean => i % n === k;
  if (!(budget ? budgetSeeds : seeds).some(mine)) {
    t.plan(0, `no seed falls to part ${k + 1} of ${n} (DAXMAP_SEED=${envSeed ?? ''}): the other part runs them`);
    return;
  }
  forBackings(t, `map model, ${ops} ops per seed${budget ? `, window budget ${budget} (constant eviction)` : ''}`, async (t, { pool, backing }) => {
    // On the 2 MiB-granular stand-in every window is a whole unit and the model's file
    // spans two: a budget of 1 evicts there (docs/pool.md, "2 MiB-granular devices").
    const windowBudget = budget && backing === 'hugetlbfs' ? 1 : budget;
    // A small budget of runs there in every `npm test` (one seed, and seed 11 with the
    // small budget); DAXMAP_SEED runs the seeds given.
    const all = (budget ? budgetSeeds : seeds).filter(mine);
    const runSeeds = backing === 'hugetlbfs' && !envSeed ? all.filter((s) => s === 1 || s === 11) : all;
    for (const seed of runSeeds) {
      await t.test(`seed ${seed}`, async (t) => {
        const log: string[] = [];
        const logFile = path.join(os.tmpdir(), `daxmap-map-model-${seed}-${backing}${budget ? `-b${budget}` : ''}.log`);
        const s0 = await pool.stats();
        let res: RunResult;
        const t0 = Date.now();
        try {
          res = await runMapModel({ pool, seed, ops, log, logFile, file: `map-model-${seed}`, windowBudget, ...(backing === 'hugetlbfs' ? { granule: HUGE } : {}) });
        } catch (e) {
          t.comment(`FAILED on ${backing} with DAXMAP_SEED=${seed} DAXMAP_OPS=${ops}${budget ? ` window budget ${budget}` : ''} (whole log: ${logFile}); last operations:\n${log.slice(-60).join('\n')}`);
          t.fail(`seed ${seed} [${backing}]: ${e instanceof ModelMismatch ? '' : 'unexpected error: '}${(e as Error).stack ?? String(e)}`);
          return;
        }
        fs.rmSync(logFile, { force: true });
        t.pass(`${res.ops} operations matched the model (${res.skipped} skipped) in ${Date.now() - t0} ms: ` +
          `${(res.bytesCompared / 1048576).toFixed(0)} MiB compared, ${res.eofPagesChecked} pages past EOF probed, ` +
          `up to ${res.privatePagesMax} private pages`);

        // This seed's faults. Every SIGBUS the service answered was a beyond-EOF fault,
        // each one of this test's kernel probes (a probe of a page already poisoned
        // faults no more).
        const s1 = await pool.stats();
        const d = (k: 'sigbus' | 'beyondEof' | 'recovered' | 'faults' | 'read' | 'write' | 'writeProtect' | 'zeroPage' | 'copy' | 'revokes' | 'pmd' | 'pte' | 'evictions'): number => s1[k] - s0[k];
        t.equal(d('sigbus'), d('beyondEof'), 'every SIGBUS was for a page past EOF');
        t.ok(d('beyondEof') <= res.efaultProbes, `beyond-EOF faults (${d('beyondEof')}) are no more than the probes past EOF (${res.efaultProbes})`);
        t.equal(d('recovered'), 0, 'no page was poisoned by a failed fault');
        t.ok(d('read') > 0 && d('write') > 0, `faults were taken (${d('read')} read, ${d('write')} write, ${d('writeProtect')} write-protect; ${d('pmd')} 2 MiB, ${d('pte')} 4 KiB)`);
        t.ok(d('zeroPage') > 0 && d('copy') > 0, `zero pages (${d('zeroPage')}) and private copies (${d('copy')}) were answered`);
        t.ok(d('revokes') > 0, `pages were revoked (${d('revokes')})`);
        if (budget) t.ok(d('evictions') > 0, `windows were evicted (${d('evictions')})`);
      });
    }
    t.same(await pool.list(), [], 'every run removed its file');
  }, { size: 32 << 20, hugetlb: true });
}
