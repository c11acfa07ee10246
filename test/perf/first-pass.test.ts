// The slow first pass (docs/faults.md, "The slow first pass"): memset passes 1..4 over
// a 256 MiB tmpfs file, mapped by the kernel (one MAP_SHARED mapping), by MAP_FIXED
// windows over a plain reserved region, and by MAP_FIXED windows over a
// userfaultfd-registered region — installed ahead of any touch or from the trap, with
// each populate flavour and window size — after a churn of the same file (1 GiB
// written, then punched, as a deleted pool file's blocks are) or none. Plain C
// (test/perf/c/first-pass.c), so no daxmap code is involved; each variant runs in its
// own process, every page touched once (untimed) before the passes, as in
// test/perf/map-memset.test.ts. Prints pass 1 beside the later passes for every
// variant, and the mapping's smaps after pass 1.
// Then the same through daxmap itself (public API, default policy: 2 MiB windows),
// after a churn of the pool (a 1 GiB file written through a mapping, then unlinked) or none.
// Asserts only that every run completed (the program checks the bytes it wrote).
// Sizes: DAXMAP_BENCH_FIRSTPASS_MB (default 256), DAXMAP_BENCH_FIRSTPASS_CHURN_MB (default 1024).
import t from 'tap';
import fs from 'node:fs';
import { Pool } from '../../dist/index';
import { compileC, runC } from './c/cc';
import { RUNS, envInt, fmt, fmtSummary, pairedRatio, summarize, timeNs } from './stats';

const MB = envInt('DAXMAP_BENCH_FIRSTPASS_MB', 256);
const CHURN = envInt('DAXMAP_BENCH_FIRSTPASS_CHURN_MB', 1024);

interface Variant { label: string; args: string[] }

function variants(): Variant[] {
  const out: Variant[] = [];
  // With and without churn: the baseline, plain MAP_FIXED, and daxmap's default
  // install (2 MiB, MADV_POPULATE_WRITE) from the trap and ahead; every other
  // flavour after the churn only (where the slow first pass was seen).
  const add = (label: string, both: boolean, ...args: string[]): void => {
    if (both) out.push({ label: `${label}, no churn`, args: [...args, 'churn=0'] });
    out.push({ label: `${label}, churn`, args: [...args, `churn=${CHURN}`] });
  };
  add('kernel MAP_SHARED (baseline)', true, 'mode=kernel');
  add('MAP_FIXED 2 MiB, not registered, ahead, populate write', true, 'mode=fixed', 'window=2048', 'pop=write');
  for (const mode of ['trap', 'ahead']) {
    for (const window of [4, 64, 2048]) {
      for (const pop of ['none', 'map', 'write', 'read', 'touch']) {
        if (window === 4 && mode === 'ahead') continue; // 65,536 installs before the touch: nothing the 64 KiB row does not show
        const both = window === 2048 && pop === 'write';
        add(`uffd ${mode === 'trap' ? 'on the trap' : 'ahead'}, ${window} KiB, populate ${pop}`, both, `mode=${mode}`, `window=${window}`, `pop=${pop}`);
      }
    }
  }
  // daxmap's install since 2026-12-02: a 2 MiB window from the trap mapped in two halves,
  // so the page table the trapped fault allocated is not freed (native/region.cc, MapFixed).
  for (const pop of ['none', 'read', 'write']) add(`uffd on the trap, 2048 KiB in two halves, populate ${pop}`, true, 'mode=trap', 'window=2048', `pop=${pop}`, 'split=1');
  return out;
}

const bin = compileC('first-pass');
if ('skip' in bin) {
  t.skip(`the first-pass reproduction: ${bin.skip}`, () => {});
} else {
  t.teardown(bin.cleanup);
  t.test(`memset passes over ${MB} MiB of a tmpfs file, pass 1 beside passes 2-4 (ms)`, async (t) => {
    const vs = variants();
    const res = new Map<string, { p1: number[]; later: number[]; kernelP1: number[]; smaps: string; minflt: number[] }>();
    let completed = 0;
    for (let run = 0; run < RUNS; run++) {
      const kernelP1 = new Map<string, number>();
      for (const v of vs) {
        const [l] = runC(bin.bin, [`mib=${MB}`, ...v.args]);
        if (!l) throw new Error(`first-pass ${v.args.join(' ')}: no output`);
        const churn = v.label.endsWith(', churn') ? 'churn' : 'none';
        if (l.mode === 'kernel') kernelP1.set(churn, l.pass1_ms as number);
        let e = res.get(v.label);
        if (!e) res.set(v.label, (e = { p1: [], later: [], kernelP1: [], smaps: '', minflt: [] }));
        e.p1.push(l.pass1_ms as number);
        e.later.push(summarize([l.pass2_ms as number, l.pass3_ms as number, l.pass4_ms as number]).median);
        e.kernelP1.push(kernelP1.get(churn)!);
        e.smaps = `VMAs ${l.after1_vmas}, Rss ${Number(l.after1_rss_kb) >> 10} MiB, ShmemPmdMapped ${l.after1_shmem_pmd_kb} kB, FilePmdMapped ${l.after1_file_pmd_kb} kB, AnonHugePages ${l.after1_anon_huge_kb} kB`;
        e.minflt.push(l.pass1_minflt as number);
        completed++;
      }
    }
    t.comment(`${RUNS} runs of test/perf/c/first-pass.c mib=${MB} with churn=0 and churn=${CHURN}, each variant in its own process`);
    t.comment(`${'variant'.padEnd(62)} ${'pass 1 ms'.padStart(22)} ${'passes 2-4 ms (median)'.padStart(24)}   pass1/later (min/med/max)   pass1 / kernel pass1`);
    for (const [label, e] of res) {
      const a = summarize(e.p1);
      const b = summarize(e.later);
      t.comment(`${label.padEnd(62)} ${`${fmt(a.min, 1)} / ${fmt(a.median, 1)} / ${fmt(a.max, 1)}`.padStart(22)} ${`${fmt(b.min, 1)} / ${fmt(b.median, 1)} / ${fmt(b.max, 1)}`.padStart(24)}   ${fmtSummary(pairedRatio(e.p1, e.later), 2, 'x').padStart(24)}   ${fmt(pairedRatio(e.p1, e.kernelP1).median)}x`);
    }
    // The mapping's smaps after pass 1 (last run), variants with the same grouped.
    const bySmaps = new Map<string, string[]>();
    for (const [label, e] of res) bySmaps.set(e.smaps, [...(bySmaps.get(e.smaps) ?? []), label]);
    for (const [sm, labels] of bySmaps) t.comment(`smaps after pass 1, ${labels.length === res.size ? 'every variant' : labels.join('; ')}: ${sm}`);
    const minflt = [...res.values()].flatMap((e) => e.minflt);
    t.comment(`minor faults during pass 1, over every variant and run: ${Math.min(...minflt)} to ${Math.max(...minflt)}`);
    t.equal(completed, RUNS * vs.length, 'every variant ran to the end and read back its last pass');
  });
}

t.test(`daxmap itself: buffer.fill passes over a ${MB} MiB mapping of a tmpfs pool, pass 1 beside passes 2-4 (ms)`, async (t) => {
  const MiB = 1 << 20;
  const PAGE = 4096;
  const rows = new Map<string, { p1: number[]; later: number[] }>();
  let checked = 0;
  for (let run = 0; run < RUNS; run++) {
    for (const churn of [false, true]) {
      const poolPath = `/dev/shm/daxmap-bench-first-pass-${process.pid}-${run}-${churn ? 1 : 0}`;
      const pool = await Pool.create(poolPath, { size: (MB + CHURN + 64) * MiB });
      try {
        if (churn) {
          // Blocks allocated and written through a mapping, then freed (the pool zeroes
          // freed tmpfs blocks by punching them).
          const c = await pool.openFile('churn', { create: true });
          await c.truncate(CHURN * MiB);
          const cm = await c.map();
          for (let off = 0; off < CHURN * MiB; off += PAGE) cm.buffer[off] = 1;
          await cm.unmap();
          await c.close();
          await pool.unlink('churn');
        }
        const f = await pool.openFile('f', { create: true });
        await f.truncate(MB * MiB);
        const m = await f.map();
        const b = m.buffer;
        for (let off = 0; off < b.length; off += PAGE) b[off] = 1;
        const passes = [0, 1, 2, 3].map((i) => timeNs(() => { b.fill(0x10 + i); }) / 1e6);
        const label = churn ? `daxmap map(), after a ${CHURN} MiB file written and unlinked` : 'daxmap map(), no churn';
        let e = rows.get(label);
        if (!e) rows.set(label, (e = { p1: [], later: [] }));
        e.p1.push(passes[0]!);
        e.later.push(summarize(passes.slice(1)).median);
        await m.unmap();
        const page = Buffer.alloc(PAGE);
        await f.read(page, MB * MiB - PAGE);
        if (page.every((x) => x === 0x13)) checked++;
        await f.close();
      } finally {
        await pool.close();
        fs.rmSync(poolPath, { force: true });
      }
    }
  }
  t.comment(`${RUNS} runs; each: a fresh pool, churn or not, a ${MB} MiB file mapped, every page touched once (untimed), then 4 fills`);
  for (const [label, e] of rows) {
    const a = summarize(e.p1);
    const b = summarize(e.later);
    t.comment(`${label.padEnd(62)} pass 1 ${fmt(a.min, 1)} / ${fmt(a.median, 1)} / ${fmt(a.max, 1)}   passes 2-4 ${fmt(b.min, 1)} / ${fmt(b.median, 1)} / ${fmt(b.max, 1)}   pass1/later ${fmtSummary(pairedRatio(e.p1, e.later), 2, 'x')}`);
  }
  t.equal(checked, 2 * RUNS, 'every mapping holds its last fill');
});
