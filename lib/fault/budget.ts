// The per-process budget of installed windows. Every install of a device range is a
// mapping (VMA) in the faulting process, and a process may hold only
// vm.max_map_count of them (65530 here) — mremap, which revoke needs, refuses within
// 3 of the limit. So installs are counted, least recently installed first, and the
// policy revokes the oldest windows when the budget is reached.
import fs from 'node:fs';

export interface Window {
  /** mapping key */
  readonly mapping: string;
  /** region offset */
  readonly offset: number;
  readonly length: number;
}

/** The budget for this machine: half of what is left of the limit after room for the rest of the process. */
export function defaultWindowBudget(): number {
  const env = Number(process.env.DAXMAP_WINDOW_BUDGET);
  if (Number.isSafeInteger(env) && env > 0) return env;
  let limit = 65530;
  try {
    limit = Number(fs.readFileSync('/proc/sys/vm/max_map_count', 'utf8').trim()) || limit;
  } catch {
    // not Linux /proc: keep the kernel default
  }
  // An install can split a trapped mapping in two: up to 2 VMAs per window. Keep
  // 8192 for the process's own mappings (heap, libraries, thread stacks).
  return Math.max(64, Math.floor((limit - 8192) / 2));
}

export class WindowBudget {
  private windows = new Map<string, Window>();

  constructor(public limit: number = defaultWindowBudget()) {}

  get count(): number {
    return this.windows.size;
  }

  get over(): boolean {
    return this.windows.size > this.limit;
  }

  add(w: Window): void {
    const k = `${w.mapping}@${w.offset}`;
    this.windows.delete(k);
    this.windows.set(k, w);
  }

  /** Forget windows of a mapping overlapping [offset, offset+length) (they were revoked). */
  dropRange(mapping: string, offset: number, length: number): void {
    for (const [k, w] of this.windows) {
      if (w.mapping === mapping && w.offset < offset + length && offset < w.offset + w.length) this.windows.delete(k);
    }
  }

  dropMapping(mapping: string): void {
    for (const [k, w] of this.windows) if (w.mapping === mapping) this.windows.delete(k);
  }

  /** Least recently installed first. */
  oldest(n: number): Window[] {
    const out: Window[] = [];
    for (const w of this.windows.values()) {
      if (out.length >= n) break;
      out.push(w);
    }
    return out;
  }
}
