// Reserves (docs/fault-policy.md, "Reserves"): a shared mapping taking sparse 4 KiB
// write faults on holes is granted zeroed blocks ahead, and the client's agent
// answers such faults alone (docs/native.md, "Reserves"), sending a note for each.
// The policy stays the authority: it says where (the file's holes), gives the blocks,
// and records each conversion from the notes, in batches. Before anything else
// touches the file's extents or page states the reserve is taken back: cleared in
// the agent (after which no native allocation happens and every note is on its way),
// every note processed, the unused blocks given back.
//
// Locks: the file's range lock, then the reserve's gate (one per file). A grant
// holds the range lock exclusive over the whole file, so no fault of the file is
// being resolved meanwhile; every other reserve step holds it shared (or is called
// by an operation that holds it exclusive: the pool's invalidator). A fault checks
// for a live reserve with its chunk's range lock held, and takes the reserve back
// before it resolves (policy.ts): so a fault is never resolved while a reserve of its
// file is live, and the ranges granted stay holes until the reserve is taken back.
import { RANGE_END, outsideOperation, withOperation, type LockHandle } from '../lock/index';
import { native } from '../native/addon';
import { monotonicNow } from '../native/engine';
import { A_WINDOW, A_WP, EV_LOW, EV_NOTE, EV_RUN, EV_WRITE, Op, STAGE_OWN_FD, noteDevOffset, reservePayload, reserveRangesPayload, reserveWindowsPayload, type AnswerSpec, type FaultEvent, type ReserveWindow } from '../native/frames';
import { daxError, isDaxError } from '../errors';
import type { Inode, PoolInternals, ReservedPair } from '../pool/internal';
import { ENOENT, ENXIO, type Client, type FaultContext, type Mapping } from './context';
import type { Revoker } from './revoke';
import { PAGE, PageState } from './states';

export const RESERVE_MODES = ['on', 'off'] as const;
export type ReserveMode = (typeof RESERVE_MODES)[number];

/** DAXMAP_RESERVE=off|on; on by default. */
export function defaultReserveMode(): ReserveMode {
  return process.env.DAXMAP_RESERVE === 'off' ? 'off' : 'on';
}

/**
 * Blocks a reserve holds at most (granted, or brought back up to by a top-up); each
 * native install can be one VMA: counted against the window budget from the grant.
 */
export const RESERVE_BLOCKS = 2048;
/**
 * The low-water mark the agent is given: the install that leaves this many blocks
 * (or fewer) wakes the policy, which tops the reserve up. The blocks left are the
 * top-up's time: 1,536 stores at about 10 µs each, 15 ms, against top-ups that took
 * up to 25 ms on a busy worker (docs/fault-policy.md, "Topped up, not taken back").
 */
export const RESERVE_LOW_WATER = 1536;
/**
 * The blocks a grant that staged ranges starts its reserve with. The reserve then
 * covers only what was not staged — the windows the writer had touched already, and
 * the file's partial windows — where a sparse writer rarely stores again: 2,048 stores
 * in 1 GiB put about eight there. Taking up to 2,048 blocks for them cost the pool a
 * refill's zeroing and the worker a grant's worth of work beside the writer (row 4a of
 * docs/bench.md). A writer that does store there has it topped up, four times larger
 * at each top-up, to RESERVE_BLOCKS.
 */
export const STAGED_RESERVE_BLOCKS = 64;
/**
 * Reserve windows (docs/fault-policy.md, "Reserve windows"): native installs in a
 * window that was a hole before the agent installs the rest of it from a run of 2 MiB
 * of zeroed blocks. DAXMAP_RESERVE_WINDOW=<1..512> sets it, `off` (or 0) turns
 * windows off; 16 by default.
 */
export function defaultWindowThreshold(): number {
  const v = process.env.DAXMAP_RESERVE_WINDOW;
  if (v === undefined || v === '') return 16;
  if (v === 'off') return 0;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 && n <= 512 ? n : 16;
}
/**
 * Staged ranges (docs/fault-policy.md, "Staged ranges"): DAXMAP_STAGE=off turns them
 * off; on by default.
 */
export function defaultStage(): boolean {
  return process.env.DAXMAP_STAGE !== 'off';
}
/** Bytes a grant stages at most (DAXMAP_STAGE_MAX, a multiple of 2 MiB; 4 GiB by default). */
function stageMax(): number {
  const n = Number(process.env.DAXMAP_STAGE_MAX);
  return Number.isSafeInteger(n) && n >= 0 ? Math.floor(n / (2 << 20)) * (2 << 20) : 4 * 1024 ** 3;
}
/** Staged pages copied per batch at a take-back: blocks taken, written, adopted. */
const COLLECT_BATCH = 512;

/**
 * Runs a reserve holds ahead for its windows (2 MiB each, counted in the budget as
 * blocks): INITIAL_RUNS with the grant, up to RUNS_AHEAD once windows are upgraded,
 * RUNS_BATCH at a time (a writer dense enough to upgrade one usually fills many at
 * once; a sparse one never uses them, and pays only for the first).
 */
const INITIAL_RUNS = 2;
const RUNS_AHEAD = 16;
/** Runs added per step once windows upgrade (each step's runs are sent as soon as they are zeroed). */
const RUNS_BATCH = 2;
const HUGE = 2 * 1024 * 1024;
const RUN_BLOCKS = HUGE / PAGE;
/** A grant smaller than this is not worth its round trips. */
const MIN_GRANT = 16;
/** Notes are adopted this long after the first of a batch arrived (or at the take-back). */
const BATCH_MS = 5;
/**
 * At most this many ranges per grant (16 bytes each in one AddReserveRanges frame).
 * Pages with a block that are not installed (evicted ones) cut the ranges: a file
 * written at random past the window budget has one per evicted page, and a cap that
 * left most of them out sent nearly every fault to the policy (docs/fault-policy.md,
 * "Reserves").
 */
const MAX_RANGES = 1 << 17;

interface Live {
  readonly m: Mapping;
  readonly client: Client;
  readonly key: string;
  /** device offsets given and not yet noted */
  readonly given: Set<number>;
  /**
   * Of those, the blocks given for single pages (the grant's and the top-ups'): the
   * agent's reserve as the policy counts it. `given` holds the runs' blocks too, which
   * a sparse writer never uses: a top-up sized from `given` found the reserve full
   * and never came, and the reserve ran dry (a take-back and a new grant, ms).
   */
  blocks: number;
  /**
   * Notes received and not yet adopted, as the pool adopts them: file block, device
   * offset. One array for the reserve's life (emptyListOf), emptied by each adoption:
   * a new empty array per batch started as one of small integers, and the optimised
   * `push` of a note into it deoptimised ("not a Smi").
   */
  readonly notes: ReservedPair[];
  /** region offsets of every page noted */
  readonly noted: Set<number>;
  /** a batch adoption is scheduled */
  scheduled: boolean;
  /** the top-up scheduled or running, if any (a dry fault waits for it: dryFault) */
  topping: Promise<void> | null;
  /** the grant's first runs are to be sent after it (sendInitialRuns) */
  initialRunsDue: boolean;
  /** the low-water mark last sent to the agent (blocks) */
  low: number;
  /** the blocks a top-up brings the reserve up to (STAGED_RESERVE_BLOCKS, growing, with staged ranges) */
  target: number;
  /** CLOCK_MONOTONIC (ns) just before the set reserve answers (or the last top-up) were sent */
  since: bigint;
  /** the ranges granted (region offsets, sorted) */
  readonly ranges: [number, number][];
  /** reserve windows given and not upgraded yet (region offsets) */
  readonly windows: Set<number>;
  /** window (region offset) → its run (device offset), for windows upgraded */
  readonly upgraded: Map<number, number>;
  /** runs given and not used yet (device offsets of their first block) */
  readonly runs: Set<number>;
  /** gaps of upgraded windows noted and not yet adopted: [region offset, length] */
  gaps: [number, number][];
  /** more runs are being added */
  addingRuns: boolean;
  /**
   * The last addRuns stopped short, windows still waiting: the budget had no room for a
   * run, or the pool no whole free group. The next adoption (room freed, time passed)
   * starts it again; a run's upgrade, which used to be its only start, may never come
   * once no run is left.
   */
  runsStarved: boolean;
  /**
   * Staged ranges (region offsets, sorted): mapped to the same range of `stageFd` in
   * the client, so stores there take no trap; what was stored is copied into blocks
   * at the take-back (collect()).
   */
  readonly staged: [number, number][];
  /** This process's descriptor of the staging memfd (made here for a client in this process; a daxmapd client's own, taken with pidfd_getfd); -1 when none. */
  stageFd: number;
  /** Blocks promised by the pool for the staged ranges' copies, not yet given back. */
  promised: number;
}

const isNote = (ev: FaultEvent): boolean => (ev.flags & EV_NOTE) !== 0;

/**
 * [lo, hi) after the ranges of `out` (sorted), merged with the last one when they
 * touch. A function of the module, not a closure made in each grant: the grant's
 * optimised loop deoptimised on each new closure ("wrong call target").
 */
function addRange(out: [number, number][], lo: number, hi: number): void {
  const n = out.length;
  if (n > 0 && out[n - 1]![1] === lo) out[n - 1]![1] = hi;
  else out.push([lo, hi]);
}

/**
 * An empty array that is already one of objects (`sample` is its kind's witness):
 * `[]` starts as an array of small integers, and the optimised `push` of the first
 * object into each new one deoptimised ("not a Smi", or a wrong map after it) —
 * for the note list of each new reserve, and for each grant's ranges.
 */
function emptyListOf<T extends object>(sample: T): T[] {
  const a: T[] = [sample];
  a.pop();
  return a;
}

/**
 * A reserve's background work (a batch adoption, a top-up, runs): an operation of its
 * own at the root, whoever starts it. Started inside another operation (an adoption
 * that restarts the runs, a grant that sends its first runs) it inherited that
 * operation's locks in the lock validator, which then saw the file's range requested
 * while held ("reserve > reserve") and threw, though the caller never waits for it.
 */
function background<T>(fn: () => Promise<T>): Promise<T> {
  return outsideOperation(() => withOperation('reserve', fn));
}

export class Reserves {
  mode: ReserveMode = defaultReserveMode();
  /** Native installs in a reserve window before the rest of it is installed from a run; 0: no windows. */
  windowThreshold = defaultWindowThreshold();
  /** Whether grants stage whole-hole windows (docs/fault-policy.md, "Staged ranges"). */
  stage = defaultStage();
  /** Test seam: called after the notes of a batch are received, before they are adopted. */
  beforeAdopt: (() => void | Promise<void>) | null = null;
  /** Test seam: called at the end of an adoption, its locks still held (a slow tail). */
  afterAdopt: (() => void | Promise<void>) | null = null;
  private readonly byInode = new Map<number, Live>();
  /** `${client.id}:${region}` → the live reserve (kept until its last note is in). */
  private readonly byRegion = new Map<string, Live>();
  private readonly gates = new Map<number, Promise<void>>();
  /** Test seam: DAXMAP_TEST_RESERVE_HOLD=1, read once (the worker's environment is fixed at its start). */
  private readonly hold = process.env.DAXMAP_TEST_RESERVE_HOLD === '1';
  /** Test seam (with DAXMAP_TEST_HOOKS=1): DAXMAP_TEST_NO_TOPUP=1, no top-up at the low-water mark: a reserve runs dry. */
  private readonly noTopUps = process.env.DAXMAP_TEST_HOOKS === '1' && process.env.DAXMAP_TEST_NO_TOPUP === '1';
  /** Region ranges [offset, length] adopted from upgraded windows' gaps, per mapping, until trim(). */
  private readonly gapsOf = new WeakMap<Mapping, [number, number][]>();

  constructor(private readonly ctx: FaultContext, private readonly revoker: Revoker) {}

  private get pool(): PoolInternals {
    return this.ctx.pool;
  }

  /** A reserve of this file is live (granted, not yet taken back). */
  live(ino: Inode): boolean {
    return this.byInode.has(ino.id);
  }

  get count(): number {
    return this.byInode.size;
  }

  /**
   * A fault that the agent read before the reserve of its file was set (or last topped
   * up), on a page the reserve covers, of a kind the agent answers from it: a store (on
   * a hole, or on a zero page: write-protect), or a read of a hole (the grant asks the
   * agent to answer those, with or without fault-around). The policy need not take the reserve
   * back for it, only wake the thread, whose retried access the agent then answers. (A
   * thread that stores after a load reads the next page while the grant its store
   * started is under way: taking that reserve back at once left each grant a few
   * pages.) A fault read after that (the reserve ran out, the install failed,
   * the page holds something else) is never retried this way, so this cannot loop.
   */
  retryable(m: Mapping, ev: FaultEvent): boolean {
    const r = this.byInode.get(m.inode.id);
    // A staged page takes no trap while staged: a fault there was read before its
    // range was staged, and its retried access meets the memfd.
    if (r !== undefined && r.m === m && inRanges(r.staged, ev.offset)) return true;
    if (!r || r.m !== m || ev.timeNs >= r.since || r.given.size === 0) return false;
    return inRanges(r.ranges, ev.offset) && !r.noted.has(ev.offset);
  }

  /** Runs fn alone among the reserve steps of this file. */
  private async gate<T>(ino: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.gates.get(ino) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((res) => (release = res));
    const tail = prev.then(() => mine);
    this.gates.set(ino, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.gates.get(ino) === tail) this.gates.delete(ino);
    }
  }

  /**
   * Notes and faults arrive together: take the notes out (each is queued on its
   * reserve, synchronously, so that a ClearReserve's result finds them all in) and
   * return the faults.
   *
   * The loop per note only checks and queues it; what is per reserve (the count in
   * the statistics, the top-up, the batch's timer) runs once per run of its notes,
   * in `afterNotes`. Every note is a turn of this loop, so it stays small: it is
   * optimised early, and a big one (the timer's and the statistics' code inlined)
   * cost the worker's JIT tens of ms per compile, several times over
   * (docs/faults.md, "The service worker's JIT").
   */
  takeNotes(client: Client, events: FaultEvent[]): FaultEvent[] {
    if (!events.some(isNote)) return events;
    const faults: FaultEvent[] = [];
    // The notes of a batch are mostly of one region: its reserve is looked up once.
    let region = -1;
    let r: Live | undefined;
    let noted = 0;
    let low = false;
    for (let i = 0; i < events.length; i++) {
      const ev = events[i]!;
      if ((ev.flags & EV_NOTE) === 0) {
        faults.push(ev);
        continue;
      }
      if (ev.region !== region) {
        if (r !== undefined && noted > 0) this.afterNotes(r, noted, low);
        noted = 0;
        low = false;
        region = ev.region;
        r = this.byRegion.get(`${client.id}:${region}`);
      }
      if (r === undefined) {
        this.inconsistent(client, { region: ev.region, offset: ev.offset }, 'a reserve note for no live reserve: ignored');
        continue;
      }
      if ((ev.flags & EV_RUN) !== 0) {
        noted += this.takeRunNote(client, r, ev);
        continue;
      }
      if ((ev.flags & EV_WRITE) === 0) {
        // A zero note: the agent answered a read of a hole in the ranges with
        // write-protected pages of zeros (asked for by the grant): `count` of them, the
        // run of holes around it in its window with fault-around. No block: the pages
        // are zero pages, as the policy's own answer would have made them. A page
        // outside the ranges was not the agent's to answer: ignored.
        if (!this.zeroNote(r, ev)) {
          this.inconsistent(client, { region: ev.region, offset: ev.offset, pages: ev.count }, 'a zero note outside the reserve\'s holes: ignored');
        }
        continue;
      }
      // Only a block this reserve gave, once: a daemon client's notes are not trusted
      // (a block it names that it was not given could be another file's).
      const dev = noteDevOffset(ev);
      if (!r.given.delete(dev)) {
        this.inconsistent(client, { region: ev.region, offset: ev.offset, dev }, 'a reserve note names a block the reserve did not give: ignored');
        continue;
      }
      r.blocks--;
      r.notes.push({ fb: (r.m.fileOffset + ev.offset) / PAGE, dev });
      r.noted.add(ev.offset);
      noted++;
      if ((ev.flags & EV_LOW) !== 0) low = true;
    }
    if (r !== undefined && noted > 0) this.afterNotes(r, noted, low);
    return faults;
  }

  /** A zero note's pages marked zero pages; false (nothing done) if any is not a hole the reserve had. */
  private zeroNote(r: Live, ev: FaultEvent): boolean {
    const n = ev.count;
    if (n < 1 || ev.offset + n * PAGE > r.m.length) return false;
    for (let i = 0; i < n; i++) {
      const off = ev.offset + i * PAGE;
      if (!inRanges(r.ranges, off) || r.noted.has(off)) return false;
    }
    const p = ev.offset / PAGE;
    r.m.states.setWhere(p, p + n, PageState.None, PageState.Zero);
    this.ctx.bump(r.m, 'zeroPage');
    return true;
  }

  /** `n` notes were queued on `r` (`low`: one of them reached the low-water mark). */
  private afterNotes(r: Live, n: number, low: boolean): void {
    this.ctx.bump(r.m, 'reserved', n);
    // The agent's reserve reached its low-water mark: add blocks before it runs dry,
    // so that no fault of the mapping has to come here for a take-back and a grant.
    if (low && !this.noTopUps) void this.startTopUp(r);
    // Test seam (DAXMAP_TEST_RESERVE_HOLD=1): no batch adoption, only take-backs
    // adopt; for the test of a process killed between native stores and adoption.
    if (!r.scheduled && !this.hold) {
      r.scheduled = true;
      // A few ms of notes per batch (one transaction each); a take-back adopts the rest.
      setTimeout(() => void this.batch(r), BATCH_MS).unref();
    }
  }

  /**
   * A gap of an upgraded reserve window (EV_RUN): `count` pages from `offset`,
   * installed over the window's run from the device offset the note carries. Checked
   * like any note (a daxmapd client is not trusted): inside a window given, over the
   * run given for it (the first gap of a window names its run), at the same place in
   * both, every block given and not noted before. Its pages are then noted like the
   * stores of single blocks: adopted as written (any of them may have been stored to,
   * without a fault), the gap one window of the budget.
   */
  private takeRunNote(client: Client, r: Live, ev: FaultEvent): number {
    const off = ev.offset;
    const win = off - (off % HUGE);
    const dev = noteDevOffset(ev);
    const run = dev - (off - win);
    const pages = ev.count;
    const known = r.upgraded.get(win);
    const ok = pages > 0 && off + pages * PAGE <= win + HUGE &&
      (known === undefined ? r.windows.has(win) && r.runs.has(run) : known === run);
    let all = ok;
    for (let i = 0; all && i < pages; i++) all = r.given.has(dev + i * PAGE) && !r.noted.has(off + i * PAGE);
    if (!all) {
      this.inconsistent(client, { region: ev.region, offset: off, dev, pages }, 'a reserve window note that does not match what was given: ignored');
      return 0;
    }
    if (known === undefined) {
      r.windows.delete(win);
      r.runs.delete(run);
      r.upgraded.set(win, run);
      this.ctx.bump(r.m, 'reserveUpgrades');
      // A run was used: another for the windows still waiting, if any.
      if (r.windows.size > r.runs.size && !r.addingRuns) {
        r.addingRuns = true;
        void this.addRuns(r);
      }
    }
    const fb0 = (r.m.fileOffset + off) / PAGE;
    for (let i = 0; i < pages; i++) {
      r.given.delete(dev + i * PAGE);
      r.notes.push({ fb: fb0 + i, dev: dev + i * PAGE });
      r.noted.add(off + i * PAGE);
    }
    r.gaps.push([off, pages * PAGE]);
    // The gap is one mapping of the process (one window of the budget once adopted),
    // not `pages` of them: its pages stop counting one each now, not at the adoption.
    // Counted one each, an upgrade's 496 pages kept the budget from room for the next
    // run until the batch was adopted, and a burst of upgrades starved the runs.
    r.client.budget.held -= pages - 1;
    return pages;
  }

  /** Adopt the notes received so far (the reserve stays live). */
  private async batch(r: Live): Promise<void> {
    r.scheduled = false;
    if (this.byInode.get(r.m.inode.id) !== r || r.notes.length === 0) return;
    const ino = r.m.inode;
    await background(async () => {
      const range = await ino.rangeLock.acquireShared(0, RANGE_END);
      try {
        await this.gate(ino.id, () => (this.byInode.get(ino.id) === r ? this.adopt(r) : Promise.resolve()));
      } finally {
        range.release();
      }
    }).catch((err: unknown) => this.ctx.log.warn({ err, file: ino.name }, 'adopting reserve notes failed'));
  }

  /**
   * The agent signalled the low-water mark: add blocks to the live reserve from the
   * pool's stock, bringing it back up to RESERVE_BLOCKS, within the window budget. The
   * ranges stay as they are: while the reserve is live nothing else touches the file
   * (every other path takes it back first) and the agent removes each page it fills
   * from them, so they are still exactly the pages it may fill. Nothing is zeroed
   * here: with the stock empty there is no top-up, and once the reserve runs dry its
   * faults come to the policy (take-back, grant) as without top-ups.
   *
   * Not behind the gate: a batch adoption holds it for milliseconds, and the top-up
   * must beat the last blocks. The range lock (shared) is enough: no grant (exclusive)
   * can set a new reserve on the region until the top-up answer has run, so the
   * answer adds to this reserve or, if a take-back cleared it first, is refused
   * (ENOENT) and changes nothing. The blocks are in `given` from before the answer
   * until whoever takes them out first gives them back: a take-back (they are unused
   * or noted), or this top-up when refused; never both.
   */
  private async topUp(r: Live): Promise<void> {
    const m = r.m;
    const ino = m.inode;
    await background(async () => {
      const budget = r.client.budget;
      if (m.dead || this.byInode.get(ino.id) !== r) return;
      // A reserve that started small (beside staged ranges) grows with its writer.
      if (r.target < RESERVE_BLOCKS) {
        r.target = Math.min(RESERVE_BLOCKS, r.target * 4);
        r.low = Math.min(RESERVE_LOW_WATER, Math.floor(r.target * 3 / 4));
      }
      const n = Math.min(r.target - r.blocks, budget.limit - budget.used);
      if (n < MIN_GRANT) return;
      // Taken before the lock: if the stock is short, the zeroing delays nobody else.
      // (Taking only what the stock held, to be quicker, left a writer that outran the
      // refill with less each time, until its reserve ran dry.)
      const devs = await this.take(n);
      if (devs.length === 0) return;
      const range = await ino.rangeLock.acquireShared(0, RANGE_END);
      try {
        // Still live, and within the budget (another mapping of the client may have taken some meanwhile)?
        const keep = this.byInode.get(ino.id) === r && !m.dead ? Math.max(0, Math.min(devs.length, budget.limit - budget.used)) : 0;
        if (keep < devs.length) this.pool.returnReserve(devs.splice(keep));
        if (devs.length > 0) await this.addBlocks(r, devs);
      } finally {
        range.release();
      }
    }).catch((err: unknown) => this.ctx.log.warn({ err, file: ino.name }, 'topping up a reserve failed'))
      .finally(() => { r.topping = null; });
  }

  /** The top-up of `r` under way, or a new one. */
  private startTopUp(r: Live): Promise<void> {
    r.topping ??= this.topUp(r);
    return r.topping;
  }

  /**
   * A fault of `m` on a hole of its live reserve that the agent could not answer: the
   * reserve ran dry (every block it was given is noted) before a top-up came. Top it
   * up (or wait for the top-up under way) and say whether the reserve has blocks
   * again: the fault, read before the top-up, is then retryable() and only woken. A
   * take-back instead (as until 2026-12-01) cost a new grant, and beside staged ranges
   * the copy of every staged page: a stall of tens of ms, then a trap per store into
   * windows staged before. Not the locks: the caller released them.
   */
  async dryFault(m: Mapping, ev: FaultEvent): Promise<boolean> {
    const r = this.byInode.get(m.inode.id);
    if (r === undefined || r.m !== m || r.blocks > 0 || !inRanges(r.ranges, ev.offset) || r.noted.has(ev.offset)) return false;
    this.ctx.bump(m, 'reserveDry');
    await this.startTopUp(r);
    return this.byInode.get(m.inode.id) === r && r.blocks > 0;
  }

  /**
   * What a client's agent reported does not add up. Handled the same either way (the
   * report is ignored, or the blocks are given back to be zeroed again); logged as an
   * error of ours for the pool's own agent, as a warning for a daxmapd client's.
   */
  private inconsistent(client: Client, what: object, msg: string): void {
    if (client.untrusted === true) this.ctx.log.warn(what, msg);
    else this.ctx.log.error(what, msg);
  }

  /** Up to n zeroed blocks from the pool; none when it has none to give (or is closing). */
  private async take(n: number): Promise<number[]> {
    try {
      return await this.pool.takeReserve(n);
    } catch (err) {
      if (['ENOSPC', 'EAGAIN', 'EOPNOTSUPP', 'EBADF'].some((code) => isDaxError(err, code))) return []; // the faults allocate as before
      throw err;
    }
  }

  /** Adds blocks to the live reserve `r` in its agent (the range lock held). */
  private async addBlocks(r: Live, devs: number[]): Promise<void> {
    const m = r.m;
    // Given before the answer runs: a note for one may come as soon as it has.
    this.give(r, devs);
    r.blocks += devs.length;
    const [res] = await this.ctx.answer(r.client, [{
      op: Op.TopUpReserve, region: m.region, offset: 0, length: PAGE, device: r.client.deviceId, devOffset: r.low, payload: reservePayload(devs),
    }]);
    if (res !== 0) {
      // Not added (the region is gone, or a take-back cleared the reserve first): no
      // store can be in them; those the take-back has not given back already go back.
      const back = devs.filter((d) => r.given.delete(d));
      r.blocks -= back.length;
      r.client.budget.held -= back.length;
      if (back.length > 0) this.pool.returnReserve(back);
      if (res !== ENXIO && res !== ENOENT) this.ctx.log.warn({ file: m.inode.name, result: res }, 'reserve top-up refused by the agent');
      return;
    }
    // A fault read before the top-up had run (the reserve was dry) and still to be
    // handled is only woken: its retried store takes one of these blocks
    // (retryable()). Taken after the answer: a fault the reader met the top-up in is
    // older than this.
    r.since = monotonicNow();
    this.ctx.bump(m, 'reserveTopUps');
  }

  /** Blocks handed to the reserve: each counts against the client's window budget until adopted or given back. */
  private give(r: Live, devs: number[]): void {
    for (const d of devs) r.given.add(d);
    r.client.budget.held += devs.length;
  }

  /** Record the notes received so far: the blocks become the file's, the pages Installed. Gate held. */
  private async adopt(r: Live): Promise<void> {
    if (r.notes.length === 0) return;
    const notes = r.notes.splice(0, r.notes.length);
    const gaps = r.gaps;
    r.gaps = [];
    // Each noted block leaves the reserve's hold on the budget: adopted, it becomes a
    // window below; refused, its page is taken back. A gap's pages but one left it
    // when the gap was noted (takeRunNote).
    let gapPages = 0;
    for (const [, len] of gaps) gapPages += len / PAGE - 1;
    r.client.budget.held -= notes.length - gapPages;
    await this.beforeAdopt?.();
    const m = r.m;
    const ino = m.inode;
    // One pass: the pool checks each pair (the file live, the page inside EOF and still
    // a hole, named once) and refuses the rest, whatever a note claims (a daemon client
    // is not trusted). While the reserve is live nothing else changed the file, so for
    // an honest agent nothing is refused. A refused pair has a block nobody will own
    // mapped at its page: the pool keeps it handed out (keepRefused) until the page is
    // taken back, and only then does it go back to be zeroed and handed out again, so
    // no store can reach it then.
    const { adopted, refused } = await this.pool.adoptReserved(ino, notes, { keepRefused: true });
    // Windows' gaps: recorded written whatever was stored; trimmed of their zero pages
    // once the mapping is gone (trim()).
    if (gaps.length > 0) {
      const mine = this.gapsOf.get(m) ?? [];
      for (const g of gaps) mine.push(g);
      this.gapsOf.set(m, mine);
    }
    if (!m.dead && adopted.length > 0) {
      // The page states in runs of adjacent pages; a window per page (each native
      // install is one mapping of the process).
      // In file order (adoptReserved). Pushed, not `adopted.map`: the builtin's result
      // and the optimised one's differed in elements kind, and the loop below and
      // `addPages` deoptimised on the other array map.
      const first = m.fileOffset / PAGE;
      const pages: number[] = [];
      for (const p of adopted) pages.push(p.fb - first);
      for (let i = 0; i < pages.length;) {
        let j = i + 1;
        while (j < pages.length && pages[j] === pages[j - 1]! + 1) j++;
        m.states.set(pages[i]!, pages[j - 1]! + 1, PageState.Installed);
        i = j;
      }
      // A window's gap is one mapping of the process: one window of the budget; the
      // other pages one each (both lists in order: one pass).
      let single = pages;
      if (gaps.length > 0) {
        gaps.sort((a, b) => a[0] - b[0]);
        for (const [off, len] of gaps) m.client.budget.add({ mapping: m.key, offset: off, length: len });
        single = [];
        let g = 0;
        for (const p of pages) {
          while (g < gaps.length && (gaps[g]![0] + gaps[g]![1]) / PAGE <= p) g++;
          if (g < gaps.length && gaps[g]![0] / PAGE <= p) continue;
          single.push(p);
        }
      }
      m.client.budget.addPages(m.key, single, PAGE);
    }
    if (refused.length > 0) {
      this.ctx.log.warn({ file: ino.name, pages: refused.length }, 'reserve notes for pages that are no longer holes inside EOF: taken back');
      await this.revokePages(m, refused.map((p) => p.fb * PAGE - m.fileOffset));
      this.pool.returnReserve(refused.map((p) => p.dev));
    }
    if (r.runsStarved && !r.addingRuns && this.byInode.get(ino.id) === r) {
      r.runsStarved = false;
      r.addingRuns = true;
      void this.addRuns(r);
    }
    await this.afterAdopt?.();
  }

  private async revokePages(m: Mapping, offsets: number[]): Promise<void> {
    if (m.dead) return; // its region is closed: nothing is mapped any more
    for (const off of offsets) await this.revoker.revokeRange(m, off, PAGE);
  }

  /**
   * Take the file's reserve back: clear it in the agent (once that has run no block
   * is installed from it and every note is in), adopt every note, give the unused
   * blocks back. `locked`: the caller holds the file's range lock exclusive (the
   * pool's invalidator); else it is taken shared over the whole file.
   */
  async reclaim(ino: Inode, locked = false): Promise<void> {
    if (!this.byInode.has(ino.id)) return;
    const run = (): Promise<void> => this.gate(ino.id, async () => {
      const r = this.byInode.get(ino.id);
      if (r) await this.takeBack(r);
    });
    if (locked) return run();
    return withOperation('reserve', async () => {
      const range = await ino.rangeLock.acquireShared(0, RANGE_END);
      try {
        await run();
      } finally {
        range.release();
      }
    });
  }

  /** Take back every live reserve (of one client, or all). */
  async reclaimAll(client?: Client): Promise<void> {
    const inos = [...this.byInode.values()].filter((r) => client === undefined || r.client === client).map((r) => r.m.inode);
    for (const ino of inos) await this.reclaim(ino);
  }

  /**
   * A mapping is gone (unmapped, or its client went away) and its reserve taken back:
   * the pages its windows' upgrades recorded as written that hold only zeros become
   * holes again (docs/fault-policy.md, "Reserve windows"), so what stays allocated is
   * what was stored. The file may be gone too: nothing to trim then.
   */
  async trim(m: Mapping): Promise<void> {
    const gaps = this.gapsOf.get(m);
    if (!gaps) return;
    this.gapsOf.delete(m);
    const freed = await this.trimRanges(m, gaps);
    if (freed > 0) this.ctx.log.debug({ file: m.inode.name, blocks: freed }, 'reserve windows trimmed of their zero pages');
  }

  /**
   * trimZeros over region ranges [offset, length] of `m`, adjacent ones in one call
   * (each call takes the range lock exclusive and runs the invalidator). The blocks
   * freed; stops at a file unlinked meanwhile (its blocks are freed anyway).
   */
  private async trimRanges(m: Mapping, ranges: [number, number][]): Promise<number> {
    ranges.sort((a, b) => a[0] - b[0]);
    const core = this.ctx.pool.core;
    let freed = 0;
    for (let i = 0; i < ranges.length;) {
      const lo = ranges[i]![0];
      let hi = lo + ranges[i]![1];
      let j = i + 1;
      while (j < ranges.length && ranges[j]![0] === hi) hi += ranges[j++]![1];
      i = j;
      try {
        freed += await core.trimZeros(m.inode, m.fileOffset + lo, hi - lo);
      } catch (err) {
        if (isDaxError(err, 'ENOENT')) return freed;
        throw err;
      }
    }
    return freed;
  }

  /**
   * After an eviction: the gaps of `m`'s upgraded windows that eviction took back
   * (their pages `None` again) are trimmed of their zero pages now, not when the
   * mapping goes. A gap's pages were recorded written whether stored to or not; left
   * so, each later first store to one of them is a fault on a written block, which
   * only the policy answers, taking the file's reserve back and granting it again each
   * time (0.3-1 ms a store in bench row 14 under a small budget). Trimmed, they are
   * holes, and their first stores the reserve's. Never with locks held.
   */
  async trimEvicted(m: Mapping): Promise<void> {
    const gaps = this.gapsOf.get(m);
    if (!gaps || m.dead) return;
    // The parts of each gap eviction took back (pages None) are trimmed; the rest of
    // the gap (installed again since, or in a chunk not evicted) waits for the unmap.
    const evicted: [number, number][] = [];
    const kept: [number, number][] = [];
    for (const [off, len] of gaps) {
      const lo = off / PAGE;
      const hi = lo + len / PAGE;
      let at = lo;
      for (const [a, b] of m.states.runs(lo, hi, PageState.None)) {
        if (a > at) kept.push([at * PAGE, (a - at) * PAGE]);
        evicted.push([a * PAGE, (b - a) * PAGE]);
        at = b;
      }
      if (at < hi) kept.push([at * PAGE, (hi - at) * PAGE]);
    }
    if (evicted.length === 0) return;
    if (kept.length > 0) this.gapsOf.set(m, kept);
    else this.gapsOf.delete(m);
    this.ctx.bump(m, 'trimmed', await this.trimRanges(m, evicted));
  }

  /**
   * At a 4 KiB write fault on a hole of `m` (the adaptive rule's sparse case): grant a
   * reserve over the file's holes, if `m` may have one. Never with locks held. `cue`:
   * the region offset of that fault when it is not resolved yet (policy.ts): its
   * window is not staged. The reserve answers it, and a writer that goes on in that
   * window — a dense one, mostly — meets the reserve's windows there, whose run is
   * installed whole after a few stores, where a staged window takes a kernel fault
   * per page and a copy per page at the take-back (row 10b of docs/bench.md: 3.1 µs a
   * store with the cue's window staged, 1.4 with it in the reserve). True if the
   * grant's answer woke the cue's thread (its page is in the reserve's ranges): its
   * retried store is the agent's, and the fault is not to be resolved.
   */
  async grant(m: Mapping, cue?: number): Promise<boolean> {
    if (!this.eligible(m)) return false;
    const ino = m.inode;
    const woke = await withOperation('reserve', async () => {
      const range: LockHandle = await ino.rangeLock.acquireExclusive(0, RANGE_END);
      try {
        return await this.gate(ino.id, () => this.grantLocked(m, cue));
      } finally {
        range.release();
      }
    });
    const r = this.byInode.get(ino.id);
    if (r !== undefined && r.initialRunsDue) {
      r.initialRunsDue = false;
      r.addingRuns = true;
      void this.sendInitialRuns(r);
    }
    return woke;
  }

  /** `mine`: the reserve of the file being granted, live already (its staged ranges). */
  private eligible(m: Mapping, mine?: Live): boolean {
    const live = this.byInode.get(m.inode.id);
    return this.mode === 'on' && this.pool.reserveStats().enabled && !m.dead && !m.private && !m.sync && m.writable &&
      (this.ctx.pool.storage.align ?? PAGE) <= PAGE && m.inode.live && (live === undefined || live === mine) &&
      this.ctx.mappingsOf(m.inode).length === 1;
  }

  private async grantLocked(m: Mapping, cue?: number): Promise<boolean> {
    // Checked again with the file's range lock held exclusive: the only mapping of
    // the file (two could each allocate the same file block), none live.
    if (!this.eligible(m)) return false;
    const budget = m.client.budget;
    const n = Math.min(RESERVE_BLOCKS, budget.limit - budget.used);
    if (n < MIN_GRANT) return false;
    const holes = this.holes(m);
    if (holes.ranges.length === 0) return false;
    // Whole-hole windows are staged (no trap at all); the reserve answers the rest.
    const { staged, promised } = this.stageable(m, holes.windows, cue === undefined ? -1 : cue - (cue % HUGE));
    let fd = -1;
    const own = m.client.untrusted === true;
    if (staged.length > 0) {
      try {
        // A client in this process maps this process's memfd; a daxmapd client its
        // own, taken into this process first (stageable()).
        fd = own ? await this.adoptStage(m) : native().stageCreate(m.length);
      } catch (err) {
        if (isDaxError(err, 'ENXIO')) this.ctx.log.debug({ err, file: m.inode.name }, 'no staging memfd (the client is gone): nothing staged');
        else this.ctx.log.warn({ err, file: m.inode.name }, 'no staging memfd: nothing staged');
        this.pool.releasePromise(promised);
        staged.length = 0;
      }
    }
    const ranges = staged.length > 0 ? subtractRanges(holes.ranges, staged) : holes.ranges;
    const windows = staged.length > 0 ? holes.windows.filter((w) => !inRanges(staged, w.offset)) : holes.windows;
    const key = `${m.client.id}:${m.region}`;
    const r: Live = {
      m, client: m.client, key, given: new Set(), blocks: 0, notes: emptyListOf<ReservedPair>({ fb: 0, dev: 0 }), noted: new Set(), scheduled: false, topping: null, initialRunsDue: false, low: 0, target: RESERVE_BLOCKS,
      since: monotonicNow(), ranges: [], windows: new Set(), upgraded: new Map(), runs: new Set(), gaps: [],
      addingRuns: false, runsStarved: false, staged: [...staged], stageFd: fd, promised: fd >= 0 ? promised : 0,
    };
    if (r.staged.length > 0) {
      // Staged first, in an answer of their own: the stores there go on (the answer
      // wakes the range) while the blocks for the rest are taken below. Each staged
      // range is one mapping of the process: one window of the budget, not evictable.
      budget.held += r.staged.length;
      this.byInode.set(m.inode.id, r);
      this.byRegion.set(key, r);
      const res = await this.ctx.answer(m.client, r.staged.map(([lo, hi]): AnswerSpec => ({ op: Op.Stage, region: m.region, offset: lo, length: hi - lo, devOffset: own ? STAGE_OWN_FD : fd })));
      if (res.some((x) => x !== 0)) {
        // A range not staged holds no stores: it is neither collected nor counted.
        if (!res.includes(ENXIO)) this.ctx.log.warn({ file: m.inode.name, results: res.filter((x) => x !== 0).slice(0, 4) }, 'ranges not staged');
        const ok = r.staged.filter((_, i) => res[i] === 0);
        budget.held -= r.staged.length - ok.length;
        r.staged.splice(0, r.staged.length, ...ok);
        if (res.includes(ENXIO)) {
          await this.takeBack(r); // the region is gone
          return false;
        }
      }
      // Counted once staged: a store from then on takes no trap there.
      this.ctx.bump(m, 'reserveGrants');
    }
    // No more blocks than the ranges have pages: with most of a file staged, the
    // reserve only has the windows that were not whole holes (a top-up adds more).
    let room = 0;
    for (const [lo, hi] of ranges) room += (hi - lo) / PAGE;
    // Beside staged ranges the reserve starts small (STAGED_RESERVE_BLOCKS) and grows by its top-ups.
    if (r.staged.length > 0) r.target = Math.min(n, STAGED_RESERVE_BLOCKS);
    const devs = ranges.length > 0 ? await this.take(Math.min(n, room, r.target)) : [];
    // Runs for reserve windows, within the budget (each block of a run counts until
    // it is adopted or given back). Beside staged ranges they come after the answer
    // (sendInitialRuns): the faults waiting for the grant, its cue's among them, need
    // the blocks, not the runs, and the windows left to the reserve are those the
    // writer had touched, which a sparse writer seldom fills. Without staged ranges
    // (a dense writer's, mostly) with the blocks, so its first stores meet them.
    const withWindows = devs.length > 0 && this.windowThreshold > 0 && windows.length > 0;
    const deferRuns = withWindows && r.staged.length > 0;
    const runs = withWindows && !deferRuns
      ? await this.takeRuns(Math.min(INITIAL_RUNS, windows.length, Math.floor((budget.limit - budget.used - devs.length) / RUN_BLOCKS)))
      : [];
    if (devs.length === 0 || !this.eligible(m, r.staged.length > 0 ? r : undefined)) {
      this.pool.returnReserve([...devs, ...runBlocks(runs)]);
      if (r.staged.length === 0 && r.stageFd < 0) return false; // nothing granted
      if (r.stageFd >= 0 && r.staged.length === 0) await this.takeBack(r); // nothing staged either
      return false;
    }
    const sendWindows = runs.length > 0 || deferRuns;
    // The agent wakes us when a store leaves `low` blocks: a top-up then comes before it runs dry.
    const low = Math.min(RESERVE_LOW_WATER, Math.floor(devs.length * 3 / 4));
    // The first range with the blocks; the rest in one frame, however many.
    const [lo0, hi0] = ranges[0]!;
    // The agent answers reads of holes in the ranges itself (A_WP), as the policy would:
    // one zero page without fault-around; with it (A_WINDOW), the run of holes around
    // the page in its 2 MiB window, as the policy's zero window. So a load followed by
    // a store (the store a write-protect fault) never takes the reserve back: with
    // fault-around each first read of a window did, and the store after it granted
    // the reserve again (docs/fault-policy.md, "Reserves").
    const flags = m.faultAround ? A_WP | A_WINDOW : A_WP;
    const specs: AnswerSpec[] = [{ op: Op.SetReserve, flags, region: m.region, offset: lo0, length: hi0 - lo0, device: m.client.deviceId, devOffset: low, payload: reservePayload(devs) }];
    if (ranges.length > 1) {
      specs.push({ op: Op.AddReserveRanges, region: m.region, offset: 0, length: PAGE, device: m.client.deviceId, payload: reserveRangesPayload(ranges.slice(1)) });
    }
    if (sendWindows) {
      specs.push({ op: Op.ReserveWindows, region: m.region, offset: 0, length: PAGE, device: m.client.deviceId, payload: reserveWindowsPayload(this.windowThreshold, windows, runs) });
    }
    // The cue (policy.ts: the fault that asked for this grant, not resolved): woken in
    // the same answer, its retried store the agent's; one trip to the client fewer.
    const wakeCue = cue !== undefined && inRanges(ranges, cue);
    if (wakeCue) specs.push({ op: Op.Wake, region: m.region, offset: cue, length: PAGE });
    r.blocks = devs.length;
    r.low = low;
    for (const x of ranges) r.ranges.push(x);
    if (sendWindows) for (const w of windows) r.windows.add(w.offset);
    for (const x of runs) r.runs.add(x);
    this.give(r, devs);
    this.give(r, runBlocks(runs));
    // Registered before the answers run: a note may come as soon as the first has.
    this.byInode.set(m.inode.id, r);
    this.byRegion.set(key, r);
    const results = await this.ctx.answer(m.client, specs);
    if (results.some((x) => x !== 0)) {
      if (results[0] !== ENXIO) this.ctx.log.warn({ file: m.inode.name, results: results.filter((x) => x !== 0).slice(0, 4) }, 'reserve not set');
      // Whatever part was set is cleared again, its notes adopted, the rest given back.
      await this.takeBack(r);
      return false;
    }
    // Counted once set in the agent (as staged ranges are): a store from then on is its.
    if (r.staged.length === 0) this.ctx.bump(m, 'reserveGrants');
    if (runs.length > 0) this.ctx.bump(m, 'reserveRuns', runs.length);
    // Faults read before now met no reserve, or one not set yet (retryable()): taken
    // after the answers ran, not before they were sent. A daxmapd client runs them
    // after a trip over its socket, and a store its agent read in between (before
    // the reserve was set there, after this time had been taken) came here and took
    // the new reserve back (seen under load in test/daemon/reserve.test.ts).
    r.since = monotonicNow();
    // Started by grant(), once out of this operation and its locks.
    r.initialRunsDue = deferRuns;
    return wakeCue;
  }

  /**
   * A new reserve's first runs for its windows (INITIAL_RUNS at most, within the
   * budget: each block of a run counts until it is adopted or given back), sent once
   * the grant has answered.
   */
  private async sendInitialRuns(r: Live): Promise<void> {
    try {
      await background(async () => {
        const budget = r.client.budget;
        const n = Math.min(INITIAL_RUNS, r.windows.size, Math.floor((budget.limit - budget.used) / RUN_BLOCKS));
        if (n <= 0 || r.m.dead || this.byInode.get(r.m.inode.id) !== r) return;
        const runs = await this.takeRuns(n);
        if (runs.length > 0) await this.sendRuns(r, runs);
      });
    } catch (err) {
      this.ctx.log.warn({ err, file: r.m.inode.name }, 'the first runs of a reserve failed');
    } finally {
      r.addingRuns = false;
    }
  }

  /**
   * A daxmapd client's own staging memfd (Op.StagePrepare), taken into this process
   * (Client.stageFrom) before any range is staged with it: what the client stores
   * there can then be collected even after it is gone. A client whose memfd cannot
   * be taken (a daemon without the right to ptrace it: EPERM) is not staged again.
   */
  private async adoptStage(m: Mapping): Promise<number> {
    const [theirs] = await this.ctx.answer(m.client, [{ op: Op.StagePrepare, region: m.region, offset: 0, length: PAGE }]);
    if (theirs === undefined || theirs < 0) throw daxError(theirs === ENXIO ? 'ENXIO' : 'EIO', `the client made no staging memfd (${String(theirs)})`);
    const from = m.client.stageFrom;
    if (!from) throw daxError('ENXIO', 'the client is gone');
    try {
      return from(theirs, m.length);
    } catch (err) {
      if (isDaxError(err, 'EPERM')) m.client.stageFrom = null;
      throw err;
    }
  }

  /**
   * The windows of a grant to stage (docs/fault-policy.md, "Staged ranges"), merged
   * into ranges, and the blocks the pool promised for their copies: whole 2 MiB holes
   * of the file that the mapping has not answered but with zero pages, within
   * DAXMAP_STAGE_MAX and the pool's free space (every page of them may be stored to).
   * Only for a client in this process (it maps this process's memfd) or one whose own
   * memfd this process can take (Client.stageFrom: daxmapd's clients), on a pool of
   * 4 KiB pages. Never the window at region offset `except` (grant()'s cue).
   */
  private stageable(m: Mapping, windows: readonly ReserveWindow[], except: number): { staged: [number, number][]; promised: number } {
    const none = { staged: [] as [number, number][], promised: 0 };
    if (!this.stage || (m.client.untrusted === true && !m.client.stageFrom) || this.pool.storage.huge === true) return none;
    const staged = emptyListOf<[number, number]>([0, 0]);
    let bytes = 0;
    const max = stageMax();
    for (const w of windows) {
      if (bytes + HUGE > max) break;
      if ((w.notHoles !== undefined && w.notHoles.length > 0) || w.offset === except) continue;
      if (!m.states.allNoneOrZero(w.offset / PAGE, w.offset / PAGE + RUN_BLOCKS)) continue;
      addRange(staged, w.offset, w.offset + HUGE);
      bytes += HUGE;
    }
    if (bytes === 0) return none;
    // Every page may be stored to: the pool promises a block for each, or the staged
    // ranges shrink (from their end) to what it promised.
    const promised = this.pool.promiseBlocks(bytes / PAGE);
    let keep = Math.floor(promised / RUN_BLOCKS) * HUGE;
    const out = emptyListOf<[number, number]>([0, 0]);
    for (const [lo, hi] of staged) {
      if (keep <= 0) break;
      const len = Math.min(hi - lo, keep);
      out.push([lo, lo + len]);
      keep -= len;
    }
    let used = 0;
    for (const [lo, hi] of out) used += (hi - lo) / PAGE;
    if (promised > used) this.pool.releasePromise(promised - used);
    return { staged: out, promised: used };
  }

  /**
   * Clear the reserve in the agent (once that has run every note is in: docs/native.md,
   * "Reserves"), adopt every note, give the unused blocks back. Gate held.
   */
  private async takeBack(r: Live): Promise<void> {
    const [unused] = await this.ctx.answer(r.client, [{ op: Op.ClearReserve, region: r.m.region, offset: 0, length: PAGE }]);
    this.byInode.delete(r.m.inode.id);
    this.byRegion.delete(r.key);
    await this.adopt(r);
    const rest = [...r.given];
    r.client.budget.held -= rest.length;
    r.given.clear();
    this.ctx.bump(r.m, 'reserveTakeBacks');
    // A client that is gone may have stored into blocks whose notes never came: the
    // pool zeroes every block given back before handing it out again.
    if (unused !== undefined && unused >= 0 && unused !== rest.length) {
      this.inconsistent(r.client, { file: r.m.inode.name, unused, unnoted: rest.length }, 'reserve: the agent and the notes disagree on the blocks left');
    }
    if (rest.length > 0) this.pool.returnReserve(rest);
    await this.collect(r);
  }

  /**
   * The take-back of staged ranges (docs/fault-policy.md, "Staged ranges"): revoked
   * in the client first, if its mapping is still there (from then on a store there
   * traps, and waits for the locks held), so nothing changes the memfd while it is
   * read; then every page of it that is not all zeros is copied into a block, and
   * the blocks adopted as the file's, in batches; the memfd is freed. Gate held.
   */
  private async collect(r: Live): Promise<void> {
    const fd = r.stageFd;
    if (fd < 0) return;
    r.stageFd = -1;
    const m = r.m;
    const staged = r.staged.splice(0, r.staged.length);
    let copied = 0;
    let lost = 0;
    try {
      if (staged.length > 0 && !m.dead) {
        // ENXIO: the region is gone meanwhile, and nothing is mapped any more.
        const res = await this.ctx.answer(r.client, staged.map(([lo, hi]): AnswerSpec => ({ op: Op.Revoke, region: m.region, offset: lo, length: hi - lo })));
        const bad = res.filter((x) => x !== 0 && x !== ENXIO);
        if (bad.length > 0) throw daxError('EIO', `staged ranges not revoked: ${bad.slice(0, 4).join(', ')}`);
        for (const [lo, hi] of staged) m.states.set(lo / PAGE, hi / PAGE, PageState.None);
      }
      r.client.budget.held -= staged.length;
      // A batch at a time: the pages that hold a byte that is not zero, read and
      // tested natively (a daxmapd client's memfd cut short reads as zeros).
      for (const [lo, hi] of staged) {
        for (let cur = lo; cur < hi;) {
          const got = native().stageCollect(fd, cur, hi - cur, COLLECT_BATCH);
          const out = await this.copyStaged(r, got.offsets, got.data);
          copied += out.copied;
          lost += out.lost;
          if (!(got.next > cur)) throw daxError('EIO', `staged range: no progress at ${cur}`);
          cur = got.next;
        }
      }
      try {
        for (const [lo, hi] of staged) native().stagePunch(fd, lo, hi - lo);
      } catch (err) {
        // A daxmapd client's memfd that it sealed: its memory is its own to free.
        if (r.client.untrusted !== true) throw err;
        this.inconsistent(r.client, { file: m.inode.name, err: (err as Error).message }, 'staged ranges of the client\'s memfd not punched');
      }
    } finally {
      if (r.promised > 0) this.pool.releasePromise(r.promised);
      r.promised = 0;
      native().stageClose(fd);
      if (copied > 0) this.ctx.bump(m, 'staged', copied);
      if (lost > 0) {
        this.ctx.bump(m, 'stagedLost', lost);
        this.ctx.log.error({ file: m.inode.name, pages: lost }, 'staged pages lost: no block for them');
      }
    }
  }

  /**
   * Staged pages (region offset, bytes; in order) into the file, as a write() of each
   * run of adjacent pages would put them (pool.writeStaged): the promise gives way to
   * them under the pool's locks. Pages that are no longer holes inside EOF (the file
   * is gone) are skipped; none is lost while the promise holds.
   */
  private async copyStaged(r: Live, offsets: Float64Array, data: Buffer): Promise<{ copied: number; lost: number }> {
    const n = offsets.length;
    if (n === 0) return { copied: 0, lost: 0 };
    const m = r.m;
    const runs: { fb: number; data: Uint8Array }[] = [];
    // Adjacent pages are adjacent in `data` too: a run is one slice of it.
    for (let i = 0; i < n;) {
      let j = i + 1;
      while (j < n && offsets[j] === offsets[j - 1]! + PAGE) j++;
      runs.push({ fb: (m.fileOffset + offsets[i]!) / PAGE, data: data.subarray(i * PAGE, j * PAGE) });
      i = j;
    }
    const k = Math.min(n, r.promised);
    r.promised -= k;
    try {
      return { copied: await this.pool.writeStaged(m.inode, runs, k), lost: 0 };
    } catch (err) {
      if (!isDaxError(err, 'ENOSPC')) throw err;
      return { copied: 0, lost: n };
    }
  }

  /**
   * Where the agent may allocate: the mapping's pages wholly inside EOF that are holes
   * of the file, and those installed in the mapping (they take no missing fault, and
   * counting them in keeps the ranges few: a hole list alone grows by one range per
   * page written at random, and a grant over 16,384 random pages sent thousands).
   * Never a page with a block that is not installed: a store there must reach its
   * block. Region ranges, sorted, merged.
   */
  private holes(m: Mapping): { ranges: [number, number][]; windows: ReserveWindow[] } {
    const ino = m.inode;
    const out = emptyListOf<[number, number]>([0, 0]);
    // Region runs of pages with a block, for the reserve windows below.
    const blocks: [number, number][] = [];
    // Region offsets; file blocks and pages are both 4 KiB and the mapping starts on a page.
    const base = m.fileOffset;
    const end = Math.min(base + m.length, Math.floor(ino.size / PAGE) * PAGE);
    let cur = base;
    // One pass over the file's extents in the mapping: the gaps are holes, and of the
    // blocks only the pages installed in the mapping are allowed.
    for (const [a, b] of this.pool.mappedRuns(ino, base, end)) {
      if (out.length >= MAX_RANGES) return { ranges: out, windows: [] };
      if (a > cur) addRange(out, cur - base, a - base);
      for (const [p, q] of m.states.runs((a - base) / PAGE, (b - base) / PAGE, PageState.Installed)) addRange(out, p * PAGE, q * PAGE);
      blocks.push([a - base, b - base]);
      cur = b;
    }
    if (cur < end && out.length < MAX_RANGES) addRange(out, cur - base, end - base);
    // The windows serve staging too (stageable()), reserve windows on or off.
    return { ranges: out, windows: reserveWindows(blocks, end - base) };
  }

  /** Up to n runs from the pool (device offsets), fewer when it has no whole 2 MiB group free. */
  private async takeRuns(n: number): Promise<number[]> {
    if (n <= 0) return [];
    try {
      return await this.pool.takeReserveRuns(n);
    } catch (err) {
      if (['ENOSPC', 'EAGAIN', 'EOPNOTSUPP', 'EBADF'].some((code) => isDaxError(err, code))) return [];
      throw err;
    }
  }

  /**
   * A window of the live reserve `r` was upgraded and others wait: add a run (as a
   * top-up adds blocks, the range lock shared; refused with ENOENT when a take-back
   * cleared the reserve first, and then given back).
   */
  private async addRuns(r: Live): Promise<void> {
    const m = r.m;
    const ino = m.inode;
    await background(async () => {
      // In batches of RUNS_BATCH, each sent as soon as it is zeroed: a writer that
      // upgrades one window is about to upgrade many, and fills single blocks meanwhile.
      for (;;) {
        const budget = r.client.budget;
        const room = Math.floor((budget.limit - budget.used) / RUN_BLOCKS);
        const want = Math.min(RUNS_BATCH, RUNS_AHEAD - r.runs.size, r.windows.size - r.runs.size, room);
        if (m.dead || this.byInode.get(ino.id) !== r) return;
        if (want <= 0) {
          // No room in the budget, with windows waiting and fewer runs than wanted:
          // the next adoption frees room and starts this again.
          if (room <= 0 && r.runs.size < Math.min(RUNS_AHEAD, r.windows.size)) r.runsStarved = true;
          return;
        }
        const runs = await this.takeRuns(want);
        if (runs.length === 0) {
          r.runsStarved = true; // no whole group free now: looked for again at the next adoption
          return;
        }
        if (!(await this.sendRuns(r, runs))) return;
      }
    }).catch((err: unknown) => this.ctx.log.warn({ err, file: ino.name }, 'adding runs to a reserve failed'))
      .finally(() => { r.addingRuns = false; });
  }

  /** Adds runs to the live reserve `r` in its agent; false (and the runs given back) if it is gone. */
  private async sendRuns(r: Live, runs: number[]): Promise<boolean> {
    const m = r.m;
    const ino = m.inode;
    const range = await ino.rangeLock.acquireShared(0, RANGE_END);
    try {
      if (this.byInode.get(ino.id) !== r || m.dead) {
        this.pool.returnReserve(runBlocks(runs));
        return false;
      }
      const blocks = runBlocks(runs);
      this.give(r, blocks);
      for (const x of runs) r.runs.add(x);
      const [res] = await this.ctx.answer(r.client, [{
        op: Op.ReserveWindows, region: m.region, offset: 0, length: PAGE, device: r.client.deviceId, payload: reserveWindowsPayload(this.windowThreshold, [], runs),
      }]);
      if (res === 0) {
        this.ctx.bump(m, 'reserveRuns', runs.length);
        return true;
      }
      // Not added (the region is gone, or a take-back cleared the reserve first).
      for (const x of runs) r.runs.delete(x);
      const back = blocks.filter((d) => r.given.delete(d));
      r.client.budget.held -= back.length;
      if (back.length > 0) this.pool.returnReserve(back);
      if (res !== ENXIO && res !== ENOENT) this.ctx.log.warn({ file: ino.name, result: res }, 'reserve runs refused by the agent');
      return false;
    } finally {
      range.release();
    }
  }
}

/** Sorted, disjoint ranges `a` less sorted, disjoint ranges `b`. */
function subtractRanges(a: readonly [number, number][], b: readonly [number, number][]): [number, number][] {
  const out = emptyListOf<[number, number]>([0, 0]);
  let j = 0;
  for (const [lo0, hi] of a) {
    let lo = lo0;
    while (j < b.length && b[j]![1] <= lo) j++;
    for (let k = j; k < b.length && b[k]![0] < hi; k++) {
      if (b[k]![0] > lo) out.push([lo, b[k]![0]]);
      lo = Math.max(lo, b[k]![1]);
    }
    if (lo < hi) out.push([lo, hi]);
  }
  return out;
}

/** Whether a region offset is in sorted, disjoint [start, end) ranges. */
function inRanges(ranges: [number, number][], off: number): boolean {
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ranges[mid]![1] <= off) lo = mid + 1;
    else hi = mid;
  }
  const hit = ranges[lo];
  return hit !== undefined && hit[0] <= off;
}

/** At most this many reserve windows per grant (72 bytes each in the answer). */
const MAX_WINDOWS = 4096;

/**
 * The reserve windows of a region of `length` bytes whose runs of pages with a block
 * are `blocks` (region offsets, sorted): each whole 2 MiB window with a hole, with the
 * pages that are not holes (they count toward its threshold and are never installed over).
 */
function reserveWindows(blocks: readonly [number, number][], length: number): ReserveWindow[] {
  const out: ReserveWindow[] = [];
  let k = 0;
  for (let w = 0; w + HUGE <= length && out.length < MAX_WINDOWS; w += HUGE) {
    while (k < blocks.length && blocks[k]![1] <= w) k++;
    const notHoles: number[] = [];
    for (let j = k; j < blocks.length && blocks[j]![0] < w + HUGE; j++) {
      const lo = Math.max(blocks[j]![0], w);
      const hi = Math.min(blocks[j]![1], w + HUGE);
      for (let o = lo; o < hi; o += PAGE) notHoles.push((o - w) / PAGE);
    }
    if (notHoles.length < RUN_BLOCKS) out.push(notHoles.length === 0 ? { offset: w } : { offset: w, notHoles });
  }
  return out;
}

/** Every block of the runs (device offsets of their first blocks): RUN_BLOCKS each. */
function runBlocks(runs: readonly number[]): number[] {
  const out: number[] = [];
  for (const run of runs) for (let i = 0; i < RUN_BLOCKS; i++) out.push(run + i * PAGE);
  return out;
}
