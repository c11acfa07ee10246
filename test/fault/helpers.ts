// Helpers for the fault-policy tests: every mapping test runs on a pool in a tmpfs
// file and on one in a regular file on the disk filesystem, with the lock validator
// on in the service, and fails if the validator saw a violation.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { Test } from 'tap';
import { hugetlb } from '../hugetlb';

process.env.DAXMAP_LOCKDEP = '1';
process.env.DAXMAP_TEST_HOOKS = '1';

import { Pool } from '../../dist/client/pool';
type PoolT = Pool;

export const PAGE = 4096;
export const HUGE = 2 << 20;
export const BACKINGS = ['tmpfs', 'disk'] as const;
export type Backing = (typeof BACKINGS)[number] | 'hugetlbfs';
export const DIST = path.resolve(__dirname, '../../dist');
export const FIXTURES = path.join(__dirname, 'fixtures');

let n = 0;
export function poolPath(backing: Backing): string {
  const dir = backing === 'tmpfs' ? '/dev/shm' : os.tmpdir();
  return path.join(dir, `daxmap-fault-${process.pid}-${Date.now()}-${n++}.pool`);
}

export interface Ctx {
  pool: PoolT;
  path: string;
  backing: Backing;
}

/** Asserts the service's lock validator saw nothing wrong. */
export async function checkLockdep(t: Test, pool: PoolT): Promise<void> {
  const v = await pool.request<unknown[] | null>('lockdep');
  t.same(v, [], 'the lock validator saw no violation');
}

/**
 * The backings a forBackings test runs on: tmpfs and disk, plus the device-DAX
 * stand-in (a hugetlbfs file, test/hugetlb.ts) for the tests that pass there
 * (`hugetlb: true`). DAXMAP_TEST_BACKINGS (comma-separated) overrides the list, to
 * try a test file on one backing.
 */
function backingsFor(opts: { hugetlb?: boolean }): string[] {
  const env = process.env.DAXMAP_TEST_BACKINGS;
  if (env) return env.split(',').filter((b) => b !== '');
  return opts.hugetlb ? [...BACKINGS, 'hugetlbfs'] : [...BACKINGS];
}

/** One subtest per backing, each with a fresh pool, checked by the validator and closed after. */
export function forBackings(t: Test, name: string, fn: (t: Test, ctx: Ctx) => Promise<void>, opts: { size?: number; hugetlb?: boolean } = {}): void {
  for (const backing of backingsFor(opts) as Backing[]) {
    t.test(`${name} [${backing}]`, async (t) => {
      let p: string;
      if (backing === 'hugetlbfs') {
        const h = await hugetlb(t, Math.ceil((opts.size ?? 64 << 20) / HUGE) + 8);
        if (typeof h === 'string') {
          t.skip(h, () => {});
          return;
        }
        p = h.file();
      } else {
        p = poolPath(backing);
      }
      const pool = await Pool.create(p, { size: opts.size ?? 64 << 20 });
      t.teardown(async () => {
        if (!pool.closed) await pool.close();
        fs.rmSync(p, { force: true });
      });
      await fn(t, { pool, path: p, backing });
      if (!pool.closed) await checkLockdep(t, pool);
    });
  }
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function runChild(script: string, args: string[], timeoutMs = 60000): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(FIXTURES, script), ...args], {
      env: { ...process.env, DAXMAP_SIGBUS_REPORT: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * write(2) from a mapping's page into a scratch file: the kernel reads the page, a
 * kernel-mode fault. A SIGBUS answer shows up as EFAULT here instead of killing the
 * process. Resolves to the error code, or null on success.
 */
export function kernelTouch(buf: Buffer, offset: number, length = PAGE): Promise<string | null> {
  const scratch = path.join('/dev/shm', `daxmap-scratch-${process.pid}-${n++}`);
  const fd = fs.openSync(scratch, 'w');
  return new Promise((res) => {
    fs.write(fd, buf, offset, length, 0, (e) => {
      fs.closeSync(fd);
      fs.rmSync(scratch, { force: true });
      res(e ? (e.code ?? 'E?') : null);
    });
  });
}

/** Whether this process runs under AddressSanitizer (npm run test:asan preloads its runtime). */
export function underAsan(): boolean {
  return /\/libasan\.so/.test(fs.readFileSync('/proc/self/maps', 'utf8'));
}

export function rss(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

export { Pool };
