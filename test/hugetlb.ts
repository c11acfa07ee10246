// The device-DAX stand-in for tests: a hugetlbfs mount with 2 MiB pages
// (docs/native.md, "2 MiB-granular devices"). As root, hugetlb() reserves huge pages
// (adding to /proc/sys/vm/nr_hugepages and giving back only what it added), mounts
// its own hugetlbfs in a private temp dir (or uses DAXMAP_HUGETLBFS), and undoes
// both at the test's teardown. Where that is not possible it returns the reason, for
// the caller to skip with.
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

/** Read-modify-write of nr_hugepages under a lock: test files run in parallel. */
async function adjustPages(delta: number): Promise<number> {
  await until(() => {
    try {
      fs.mkdirSync(LOCK);
      return true;
    } catch {
      // a lock left by a killed test run is older than any read-modify-write
      try {
        if (Date.now() - fs.statSync(LOCK).mtimeMs > 10000) fs.rmdirSync(LOCK);
      } catch { /* gone meanwhile */ }
      return false;
    }
  }, 'the nr_hugepages lock');
  try {
    const before = Number(fs.readFileSync(NR, 'utf8').trim());
    const want = Math.max(0, before + delta);
    fs.writeFileSync(NR, String(want));
    const after = Number(fs.readFileSync(NR, 'utf8').trim());
    return after - before;
  } finally {
    fs.rmdirSync(LOCK);
  }
}

let n = 0;

/**
 * A hugetlbfs with at least `pages` free 2 MiB pages for this test, or the reason
 * there is none. `owner` is the tap test whose teardown gives everything back.
 */
export async function hugetlb(owner: { teardown(fn: () => void | Promise<void>): void }, pages = 128): Promise<Hugetlb | string> {
  if (!fs.readFileSync('/proc/filesystems', 'utf8').includes('hugetlbfs')) return 'the kernel has no hugetlbfs';
  if (meminfo('Hugepagesize') !== 2048) return 'the default huge page size is not 2 MiB';
  const given = process.env.DAXMAP_HUGETLBFS;
  const root = process.getuid?.() === 0;
  if (!root && !given) return 'not root: cannot reserve huge pages or mount hugetlbfs (set DAXMAP_HUGETLBFS)';
  // one teardown, undoing in reverse: unmount before the pages are given back
  const undo: (() => void | Promise<void>)[] = [];
  owner.teardown(async () => {
    for (const u of undo.reverse()) await u();
  });
  let added = 0;
  if (root) {
    added = await adjustPages(pages);
    undo.push(async () => {
      if (added > 0) await adjustPages(-added);
    });
    if (added < pages) return `only ${added} of ${pages} huge pages could be reserved (memory fragmented?)`;
  } else if (meminfo('HugePages_Free') < pages) {
    return `fewer than ${pages} free huge pages, and not root to reserve them`;
  }
  let dir = given ?? '';
  if (!given) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-hugetlbfs-'));
    const r = spawnSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M', 'none', dir], { encoding: 'utf8' });
    if (r.status !== 0) {
      fs.rmdirSync(dir);
      return `mount -t hugetlbfs failed: ${(r.stderr || r.error?.message || '').trim()}`;
    }
    undo.push(() => {
      for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { force: true });
      spawnSync('umount', [dir]);
      fs.rmdirSync(dir);
    });
  }
  const base = dir;
  return {
    dir: base,
    file: (name = 'pool') => path.join(base, `daxmap-${process.pid}-${n++}-${name}`),
  };
}
