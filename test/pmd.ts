// True 2 MiB mappings (docs/native.md, "True 2 MiB mappings"), for tests and the
// benchmark: a tmpfs mounted with huge pages in a private temp dir (as root; undone
// at the owner's teardown), and what /proc/self/smaps says about an address range.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';

export interface Vma {
  start: bigint;
  end: bigint;
  /** The mapped file's path, or '' */
  file: string;
  /** smaps' "kB" fields by name: KernelPageSize, Rss, ShmemPmdMapped, FilePmdMapped, Shared_Hugetlb... */
  kb: Record<string, number>;
}

/** The VMAs of this process that overlap [addr, addr + length), with their smaps fields. */
export function vmasIn(addr: bigint, length: number): Vma[] {
  const end = addr + BigInt(length);
  const out: Vma[] = [];
  let cur: Vma | null = null;
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const v: Vma = { start: BigInt(`0x${head[1]}`), end: BigInt(`0x${head[2]}`), file: head[3] ?? '', kb: {} };
      cur = v.start < end && v.end > addr ? v : null;
      if (cur) out.push(cur);
      continue;
    }
    const f = /^(\w+):\s+(\d+) kB$/.exec(line);
    if (f && cur) cur.kb[f[1]!] = Number(f[2]);
  }
  return out;
}

/** The sum of one smaps field over the VMAs overlapping the range (whole VMAs: call it on ranges VMAs do not straddle). */
export function smapsSum(addr: bigint, length: number, field: string): number {
  return vmasIn(addr, length).reduce((s, v) => s + (v.kb[field] ?? 0), 0);
}

/** The region address of a daxmap Mapping (a test's look behind the public API). */
export function mappingAddress(m: object): bigint {
  return (m as { region: { address: bigint } }).region.address;
}

/**
 * A tmpfs mounted `huge=<mode>` (default always) of `sizeMiB` in a private temp dir,
 * unmounted at the owner's teardown; or the reason there is none, to skip with.
 */
export function hugeTmpfs(owner: { teardown(fn: () => void): void }, sizeMiB: number, mode = 'always'): { dir: string } | string {
  if (process.getuid?.() !== 0) return 'not root: cannot mount a tmpfs with huge pages';
  if (!fs.existsSync('/sys/kernel/mm/transparent_hugepage/shmem_enabled')) return 'the kernel has no transparent huge pages for shmem';
  const global = /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/shmem_enabled', 'utf8'))?.[1];
  if (global === 'deny' || global === 'force') return `shmem_enabled is '${global}': it overrides every tmpfs mount's huge= option`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `daxmap-hugetmpfs-${process.pid}-`));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `huge=${mode},size=${sizeMiB}m,mode=0700`, 'none', dir], { encoding: 'utf8' });
  if (r.status !== 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    return `mount -t tmpfs -o huge=${mode} failed: ${(r.stderr || r.error?.message || '').trim()}`;
  }
  owner.teardown(() => {
    // lazily: a mapping a failed test left behind still holds it until this process ends
    spawnSync('umount', ['-l', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir };
}
