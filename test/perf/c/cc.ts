// Compile a C program of test/perf/c with the system's `cc -O2` into a private
// directory, for the perf tests that run differential experiments in plain C
// (docs/faults.md). No compiler: null and the reason, for the test to skip with.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export type Compiled = { bin: string; cleanup: () => void } | { skip: string };

export function compileC(name: string): Compiled {
  const probe = spawnSync('cc', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) return { skip: `no C compiler (cc) on PATH: ${probe.error?.message ?? probe.stderr}` };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-perf-c-'));
  const bin = path.join(dir, name);
  execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-pthread', '-o', bin, path.join(__dirname, `${name}.c`)], { stdio: 'pipe' });
  return { bin, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** `key=value` pairs of one output line (values that read as numbers become numbers). */
export function parsePairs(line: string): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const w of line.trim().split(/\s+/)) {
    const i = w.indexOf('=');
    if (i <= 0) continue;
    const v = w.slice(i + 1);
    out[w.slice(0, i)] = v !== '' && !Number.isNaN(Number(v)) ? Number(v) : v;
  }
  return out;
}

/** Run a compiled program; its stdout's lines as key=value records. Throws with its stderr on failure. */
export function runC(bin: string, args: string[], timeoutMs = 600_000): Record<string, string | number>[] {
  const r = spawnSync(bin, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 16 << 20 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${path.basename(bin)} ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr}`);
  return r.stdout.split('\n').filter((l) => l.includes('=')).map(parsePairs);
}
