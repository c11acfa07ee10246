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

const PAGE = 4096;
const HUGE = 2 * 1024 * 1024;

export class WindowBudget {
  /** Insertion order is recency: the first entries are the least recently installed. */
  private windows = new Map<string, Window>();
  /** mapping → offset → key, so a range of one mapping is found without a scan. */
  private byMapping = new Map<string, Map<number, string>>();

  /**
   * Reserve blocks given to this client's agent and not yet adopted or given back
   * (lib/fault/reserve.ts): each can become a window without the policy seeing the
   * fault, so it is counted against the limit from the moment it is given.
   */
  held = 0;

  constructor(public limit: number = defaultWindowBudget()) {}

  /** Windows installed and known to the policy. */
  get count(): number {
    return this.windows.size;
  }

  /** Windows, and reserve blocks that may become windows without a fault reaching the policy. */
  get used(): number {
    return this.windows.size + this.held;
  }

  /**
   * Windows that may still be installed ahead of any fault (decided ranges, fault-ahead):
   * those work within 3/4 of the limit, so that faults and eviction keep the rest.
   */
  get aheadRoom(): number {
    return Math.floor(this.limit * 3 / 4) - this.used;
  }

  get over(): boolean {
    return this.used > this.limit;
  }

  add(w: Window): void {
    const k = `${w.mapping}@${w.offset}`;
    this.windows.delete(k);
    this.windows.set(k, w);
    let m = this.byMapping.get(w.mapping);
    if (!m) this.byMapping.set(w.mapping, (m = new Map<number, string>()));
    m.set(w.offset, k);
  }

  /** A window of the mapping starts at this offset. */
  has(mapping: string, offset: number): boolean {
    return this.byMapping.get(mapping)?.has(offset) === true;
  }

  private drop(mapping: string, offset: number): void {
    const m = this.byMapping.get(mapping);
    const k = m?.get(offset);
    if (k === undefined || !m) return;
    m.delete(offset);
    if (m.size === 0) this.byMapping.delete(mapping);
    this.windows.delete(k);
  }

  /** Forget windows of a mapping overlapping [offset, offset+length) (they were revoked). */
  dropRange(mapping: string, offset: number, length: number): void {
    const m = this.byMapping.get(mapping);
    if (!m) return;
    // Windows are page-aligned and at most 2 MiB long: one overlapping the range
    // starts less than 2 MiB before it. Probe those offsets, or scan this mapping's
    // windows when that is fewer.
    const lo = Math.max(0, offset - HUGE + PAGE);
    const probes = (offset + length - lo) / PAGE;
    if (probes < m.size) {
      for (let o = lo; o < offset + length; o += PAGE) {
        const k = m.get(o);
        if (k === undefined) continue;
        const w = this.windows.get(k);
        if (w && w.offset + w.length > offset) this.drop(mapping, o);
      }
      return;
    }
    for (const [o, k] of [...m]) {
      const w = this.windows.get(k);
      if (w && w.offset < offset + length && offset < w.offset + w.length) this.drop(mapping, o);
    }
  }

  dropMapping(mapping: string): void {
    const m = this.byMapping.get(mapping);
    if (!m) return;
    for (const k of m.values()) this.windows.delete(k);
    this.byMapping.delete(mapping);
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
