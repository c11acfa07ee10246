// The device-DAX stand-in for tests: a hugetlbfs mount with 2 MiB pages
// (docs/native.md, "2 MiB-granular devices"). As root, hugetlb() reserves huge pages
// (adding to /proc/sys/vm/nr_hugepages and giving back only what it added), mounts
// its own hugetlbfs in a private temp dir with those pages reserved to it (min_size),
// or uses DAXMAP_HUGETLBFS, and undoes both at the test's teardown. Where that is not
// possible it returns the reason, for the caller to skip with. With DAXMAP_HUGETLB_REPORT set to a file, each call adds a
// line to it, "ran" or "skipped: <reason>" (.ci/run says from it whether the stand-in ran).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { until } from './wait';

const NR = '/proc/sys/vm/nr_hugepages';
const LOCK = path.join(os.tmpdir(), 'daxmap-hugetlb-nr.lock');
export const HUGE = 2 << 20;

export interface Hugetlb {
  /** The hugetlbfs mount (pagesize 2M) to create pool files in. */
  dir: string;
  /** A fresh path in it. */
  file(name?: string): string;
}

function meminfo(key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return Number(m?.[1] ?? 0);
}

/** Run fn under a lock shared by every test process (mkdir is atomic). */
async function locked<T>(fn: () => T): Promise<T> {
  await until(() => {
    try {
      fs.mkdirSync(LOCK);
      return true;
    } catch {
      // a lock left by a killed test run is older than any holder's work
      try {
        if (Date.now() - fs.statSync(LOCK).mtimeMs > 10000) fs.rmdirSync(LOCK);
      } catch { /* gone meanwhile */ }
      return false;
    }
  }, 'the hugetlb test lock');
  try {
    return fn();
  } finally {
    fs.rmdirSync(LOCK);
  }
}

/** Add delta to nr_hugepages (caller holds the lock); returns what the kernel really added. */
function adjustPages(delta: number): number {
  const before = Number(fs.readFileSync(NR, 'utf8').trim());
  fs.writeFileSync(NR, String(Math.max(0, before + delta)));
  return Number(fs.readFileSync(NR, 'utf8').trim()) - before;
}

/** Huge pages free and not reserved by a mapping or a mount: what a new mapping can have. */
function available(): number {
  return meminfo('HugePages_Free') - meminfo('HugePages_Rsvd');
}

/**
 * Raise nr_hugepages until `pages` more are available (caller holds the lock). Raising
 * it first turns surplus pages (in use past an earlier lowering) into persistent
 * ones, which makes none available: so raise again, as far as needed. Returns what was
 * added to nr_hugepages (to give back) and how many more pages are available.
 */
function reservePages(pages: number): { added: number; gained: number } {
  const before = available();
  let added = 0;
  for (let i = 0; i < 8 && available() - before < pages; i++) {
    const want = pages - (available() - before);
    const k = adjustPages(want);
    added += k;
    if (k < want) break; // the kernel found no more memory for huge pages
  }
  return { added, gained: available() - before };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Unmount a test mount and give back the pages its run added (recorded beside it). */
function release(dir: string): void {
  if (fs.existsSync(dir)) {
    for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
    // lazily: a pool a failed test left open still maps it, until this process ends
    spawnSync('umount', ['-l', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const rec = `${dir}.pages`;
  if (fs.existsSync(rec)) {
    const added = Number(fs.readFileSync(rec, 'utf8'));
    if (added > 0) adjustPages(-added);
    fs.rmSync(rec, { force: true });
  }
}

/** What a test run killed before its teardown (SIGBUS, SIGKILL) left behind. */
function sweepDeadRuns(): void {
  for (const e of fs.readdirSync(os.tmpdir())) {
    const m = /^daxmap-hugetlbfs-(\d+)-[^.]+$/.exec(e) ?? /^daxmap-hugetlbfs-(\d+)-[^.]+(?=\.pages$)/.exec(e);
    if (m && !alive(Number(m[1]))) release(path.join(os.tmpdir(), m[0]));
  }
}

let n = 0;

type Owner = { teardown(fn: () => void | Promise<void>): void };

/**
 * A hugetlbfs with at least `pages` free 2 MiB pages for this test, or the reason
 * there is none. `owner` is the tap test whose teardown gives everything back.
 */
export async function hugetlb(owner: Owner, pages = 128): Promise<Hugetlb | string> {
  const r = await setUp(owner, pages);
  const report = process.env.DAXMAP_HUGETLB_REPORT;
  // one short line per call, appended (O_APPEND): test processes running at once do not mix lines
  if (report) fs.appendFileSync(report, typeof r === 'string' ? `skipped: ${r}\n` : 'ran\n');
  return r;
}

async function setUp(owner: Owner, pages: number): Promise<Hugetlb | string> {
  if (!fs.readFileSync('/proc/filesystems', 'utf8').includes('hugetlbfs')) return 'the kernel has no hugetlbfs';
  if (meminfo('Hugepagesize') !== 2048) return 'the default huge page size is not 2 MiB';
  const given = process.env.DAXMAP_HUGETLBFS;
  const root = process.getuid?.() === 0;
  if (!root && !given) return 'not root: cannot reserve huge pages or mount hugetlbfs (set DAXMAP_HUGETLBFS)';
  let dir = given ?? '';
  if (given) {
    if (meminfo('HugePages_Free') < pages && !root) return `fewer than ${pages} free huge pages in ${given}, and not root to reserve them`;
    if (root && meminfo('HugePages_Free') < pages) {
      const { added, gained } = await locked(() => reservePages(pages));
      owner.teardown(async () => { await locked(() => adjustPages(-added)); });
      if (gained < pages) return `only ${gained} of ${pages} huge pages could be reserved (memory fragmented?)`;
    }
  } else {
    // Our own mount, named by pid, with the pages we added recorded beside it, so a
    // run killed before its teardown is cleaned up by the next one.
    const dir0 = fs.mkdtempSync(path.join(os.tmpdir(), `daxmap-hugetlbfs-${process.pid}-`));
    owner.teardown(() => locked(() => release(dir0)));
    const why = await locked(() => {
      sweepDeadRuns();
      const { added, gained } = reservePages(pages);
      fs.writeFileSync(`${dir0}.pages`, String(added));
      if (gained < pages) return `only ${gained} of ${pages} huge pages could be reserved (memory fragmented?)`;
      // min_size: the pages are reserved to this mount, so another test (or anything
      // else on the machine) mapping huge pages meanwhile cannot take them
      const r = spawnSync('mount', ['-t', 'hugetlbfs', '-o', `pagesize=2M,min_size=${pages * 2}M`, 'none', dir0], { encoding: 'utf8' });
      if (r.status !== 0) return `mount -t hugetlbfs failed: ${(r.stderr || r.error?.message || '').trim()}`;
      return null;
    });
    if (why !== null) return why;
    dir = dir0;
  }
  const base = dir;
  return {
    dir: base,
    file: (name = 'pool') => path.join(base, `daxmap-${process.pid}-${n++}-${name}`),
  };
}
