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

/**
 * A window in the budget: an entry of the recency list (least recently installed
 * first) and of its mapping's table. Numeric keys, no key strings: the reserve's
 * adoptions add thousands of 4 KiB windows a second.
 */
class Slot implements Window {
  prev: Slot | null = null;
  next: Slot | null = null;
  constructor(readonly mapping: string, readonly offset: number, public length: number) {}
}

export class WindowBudget {
  /** The recency list: `head` is the least recently installed window, `tail` the newest. */
  private head: Slot | null = null;
  private tail: Slot | null = null;
  private size = 0;
  /** mapping → region offset → its window, so a range of one mapping is found without a scan. */
  private byMapping = new Map<string, Map<number, Slot>>();

  /**
   * Reserve blocks given to this client's agent and not yet adopted or given back
   * (lib/fault/reserve.ts): each can become a window without the policy seeing the
   * fault, so it is counted against the limit from the moment it is given.
   */
  held = 0;

  constructor(public limit: number = defaultWindowBudget()) {}

  /** Windows installed and known to the policy. */
  get count(): number {
    return this.size;
  }

  /** Windows, and reserve blocks that may become windows without a fault reaching the policy. */
  get used(): number {
    return this.size + this.held;
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

  /** A window installed (again: it becomes the newest, with this length). */
  add(w: Window): void {
    this.put(this.slotsOf(w.mapping), w.mapping, w.offset, w.length);
  }

  /** add() of a window of `pageSize` bytes at page × pageSize for each page, in order (the last the newest). */
  addPages(mapping: string, pages: readonly number[], pageSize: number): void {
    if (pages.length === 0) return;
    const slots = this.slotsOf(mapping);
    for (const pg of pages) this.put(slots, mapping, pg * pageSize, pageSize);
  }

  private slotsOf(mapping: string): Map<number, Slot> {
    let slots = this.byMapping.get(mapping);
    if (!slots) this.byMapping.set(mapping, (slots = new Map<number, Slot>()));
    return slots;
  }

  private put(slots: Map<number, Slot>, mapping: string, offset: number, length: number): void {
    const s = slots.get(offset);
    if (s) {
      s.length = length;
      if (s !== this.tail) {
        this.unlink(s);
        this.append(s);
      }
      return;
    }
    const n = new Slot(mapping, offset, length);
    slots.set(offset, n);
    this.append(n);
    this.size++;
  }

  private append(s: Slot): void {
    s.prev = this.tail;
    s.next = null;
    if (this.tail) this.tail.next = s;
    else this.head = s;
    this.tail = s;
  }

  private unlink(s: Slot): void {
    if (s.prev) s.prev.next = s.next;
    else this.head = s.next;
    if (s.next) s.next.prev = s.prev;
    else this.tail = s.prev;
    s.prev = null;
    s.next = null;
  }

  /** A window of the mapping starts at this offset. */
  has(mapping: string, offset: number): boolean {
    return this.byMapping.get(mapping)?.has(offset) === true;
  }

  private drop(mapping: string, slots: Map<number, Slot>, s: Slot): void {
    slots.delete(s.offset);
    if (slots.size === 0) this.byMapping.delete(mapping);
    this.unlink(s);
    this.size--;
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
        const s = m.get(o);
        if (s && s.offset + s.length > offset) this.drop(mapping, m, s);
      }
      return;
    }
    for (const s of [...m.values()]) {
      if (s.offset < offset + length && offset < s.offset + s.length) this.drop(mapping, m, s);
    }
  }

  dropMapping(mapping: string): void {
    const m = this.byMapping.get(mapping);
    if (!m) return;
    for (const s of m.values()) this.unlink(s);
    this.size -= m.size;
    this.byMapping.delete(mapping);
  }

  /** Least recently installed first. */
  oldest(n: number): Window[] {
    const out: Window[] = [];
    for (let s = this.head; s !== null && out.length < n; s = s.next) out.push({ mapping: s.mapping, offset: s.offset, length: s.length });
    return out;
  }
}
