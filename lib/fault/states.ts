// What the policy has made of each page of a mapping, kept sparse (one 512-byte
// array per 2 MiB chunk touched) so a huge mapping costs nothing until used.

export const PAGE = 4096;
export const HUGE = 2 * 1024 * 1024;
export const PAGES_PER_HUGE = HUGE / PAGE;

export const enum PageState {
  /** Not answered: the next touch faults. */
  None = 0,
  /** The shared zero page, write-protected (a hole or unwritten block, read). */
  Zero = 1,
  /** A device range mapped directly (shared), or copy-on-write (private). */
  Installed = 2,
  /** A private mapping's own page: written through it (an anonymous page, writable). */
  Copy = 3,
  /** Poisoned: every access gets SIGBUS (beyond EOF). */
  Poison = 4,
  /**
   * Private mapping: a write-protected copy of the file's bytes (read, never
   * written). Its first store traps, so the policy always knows which pages a
   * private mapping has made its own (Copy) and which it may take back.
   */
  Clean = 5,
  /**
   * Shared mapping, decided ahead (decide.ts): a written block set direct in the
   * client's agent, which may have installed it without telling us. A fault on such a
   * page is one the agent did not answer (its table was busy, the install failed):
   * it is resolved as usual, not as spurious.
   */
  Direct = 6,
}

export class PageStates {
  private chunks = new Map<number, Uint8Array>();
  /** Pages in state Poison (so growth of the file knows when there is work). */
  poisoned = 0;

  get(page: number): PageState {
    const c = this.chunks.get(Math.floor(page / PAGES_PER_HUGE));
    return c === undefined ? PageState.None : (c[page % PAGES_PER_HUGE] as PageState);
  }

  /** Set pages [from, to) to `s`. */
  set(from: number, to: number, s: PageState): void {
    for (let p = from; p < to;) {
      const ci = Math.floor(p / PAGES_PER_HUGE);
      const end = Math.min(to, (ci + 1) * PAGES_PER_HUGE);
      let c = this.chunks.get(ci);
      if (c === undefined) {
        if (s === PageState.None) {
          p = end;
          continue;
        }
        c = new Uint8Array(PAGES_PER_HUGE);
        this.chunks.set(ci, c);
      }
      for (let q = p; q < end; q++) {
        const i = q % PAGES_PER_HUGE;
        if ((c[i] as PageState) === PageState.Poison) this.poisoned--;
        if (s === PageState.Poison) this.poisoned++;
        c[i] = s;
      }
      p = end;
    }
  }

  /** Set pages [from, to) that are in state `only` to `s`. */
  setWhere(from: number, to: number, only: PageState, s: PageState): void {
    for (let p = from; p < to; p++) if (this.get(p) === only) this.set(p, p + 1, s);
  }

  /** True if any page in [from, to) is in state `s`. */
  any(from: number, to: number, s: PageState): boolean {
    for (let p = from; p < to;) {
      const ci = Math.floor(p / PAGES_PER_HUGE);
      const end = Math.min(to, (ci + 1) * PAGES_PER_HUGE);
      const c = this.chunks.get(ci);
      if (c === undefined) {
        if (s === PageState.None) return true;
      } else {
        for (let q = p; q < end; q++) if ((c[q % PAGES_PER_HUGE] as PageState) === s) return true;
      }
      p = end;
    }
    return false;
  }

  /** True if every page in [from, to) is None or Zero (nothing but zeros was answered there). */
  allNoneOrZero(from: number, to: number): boolean {
    for (let p = from; p < to;) {
      const ci = Math.floor(p / PAGES_PER_HUGE);
      const end = Math.min(to, (ci + 1) * PAGES_PER_HUGE);
      const c = this.chunks.get(ci);
      if (c !== undefined) {
        for (let q = p; q < end; q++) {
          const s = c[q % PAGES_PER_HUGE] as PageState;
          if (s !== PageState.None && s !== PageState.Zero) return false;
        }
      }
      p = end;
    }
    return true;
  }

  /** True if every page in [from, to) is None. */
  allNone(from: number, to: number): boolean {
    for (let p = from; p < to;) {
      const ci = Math.floor(p / PAGES_PER_HUGE);
      const end = Math.min(to, (ci + 1) * PAGES_PER_HUGE);
      const c = this.chunks.get(ci);
      if (c !== undefined) for (let q = p; q < end; q++) if ((c[q % PAGES_PER_HUGE] as PageState) !== PageState.None) return false;
      p = end;
    }
    return true;
  }

  /** Runs [from, to) of pages in state `s`, within [lo, hi). */
  runs(lo: number, hi: number, s: PageState): [number, number][] {
    const out: [number, number][] = [];
    let start = -1;
    for (let p = lo; p <= hi; p++) {
      const hit = p < hi && this.get(p) === s;
      if (hit && start < 0) start = p;
      if (!hit && start >= 0) {
        out.push([start, p]);
        start = -1;
      }
    }
    return out;
  }

  /**
   * Maximal runs [from, to) of pages within [lo, hi) whose state satisfies `take`
   * (which must be false for None), visiting only the chunks that exist.
   */
  runsWhere(lo: number, hi: number, take: (s: PageState, page: number) => boolean): [number, number][] {
    const out: [number, number][] = [];
    const first = Math.floor(lo / PAGES_PER_HUGE);
    const last = Math.floor((hi - 1) / PAGES_PER_HUGE);
    const idx = [...this.chunks.keys()].filter((c) => c >= first && c <= last).sort((a, b) => a - b);
    let start = -1;
    let prev = -1;
    for (const ci of idx) {
      const c = this.chunks.get(ci)!;
      const from = Math.max(lo, ci * PAGES_PER_HUGE);
      const to = Math.min(hi, (ci + 1) * PAGES_PER_HUGE);
      if (start >= 0 && prev !== from) {
        out.push([start, prev]);
        start = -1;
      }
      for (let p = from; p < to; p++) {
        const hit = take(c[p % PAGES_PER_HUGE] as PageState, p);
        if (hit && start < 0) start = p;
        if (!hit && start >= 0) {
          out.push([start, p]);
          start = -1;
        }
      }
      prev = to;
    }
    if (start >= 0) out.push([start, prev]);
    return out;
  }

  clear(): void {
    this.chunks.clear();
    this.poisoned = 0;
  }
}
