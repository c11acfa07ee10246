// Fault counters by kind and a latency histogram over fixed microsecond buckets
// (LATENCY_BOUNDS_US): the same buckets `daxmap stat` prints and daxmapd's metrics
// endpoint exposes (in seconds); percentiles interpolate within their bucket.

export interface FaultStatsSnapshot {
  faults: number;
  read: number;
  write: number;
  writeProtect: number;
  hole: number;
  unwritten: number;
  written: number;
  beyondEof: number;
  pmd: number;
  pte: number;
  zeroPage: number;
  copy: number;
  sigbus: number;
  spurious: number;
  raced: number;
  evictions: number;
  revokes: number;
  /** pages poisoned by a failed fault and taken back afterwards */
  recovered: number;
  /** 2 MiB write faults that fell back to 4 KiB for lack of space */
  fallback: number;
  /** written pieces decided at map(): set direct in the client's agent, or installed ahead */
  decided: number;
  /** write faults on holes answered by the client's agent from a reserve (counted as their notes arrive; not in `faults`) */
  reserved: number;
  /** 2 MiB windows allocated and installed ahead of a sequential writer (fault-ahead; not in `faults`) */
  ahead: number;
  /** sync write faults on holes given a pre-zeroed block from the pool's stock (no zeroing on the fault path) */
  stock: number;
  /** reserves granted (each after a fault reached the policy: the set reserve answers, the ranges computed) */
  reserveGrants: number;
  /** blocks added to a live reserve after its agent signalled the low-water mark (no take-back, no new ranges) */
  reserveTopUps: number;
  /** reserves taken back (cleared in the agent, every note adopted, the unused blocks given back) */
  reserveTakeBacks: number;
  /** faults that found their reserve dry (every block noted) and waited for a top-up instead of a take-back */
  reserveDry: number;
  /** reserve windows the agent installed whole from a run after their threshold (docs/fault-policy.md, "Reserve windows") */
  reserveUpgrades: number;
  /** pages of evicted reserve-window gaps that held only zeros, made holes again (docs/fault-policy.md, "Reserve windows") */
  trimmed: number;
  /** runs (2 MiB of zeroed blocks) given to reserves for their windows' upgrades, with the grants and added later */
  reserveRuns: number;
  /** pages stored to in staged ranges, copied into blocks when the reserve was taken back (docs/fault-policy.md, "Staged ranges") */
  staged: number;
  /** staged pages that found no block (the pool full despite the promise): lost, and logged as an error */
  stagedLost: number;
  installedWindows: number;
  /** Pool-wide (0 per file): persists of the pool's metadata log since open (group commit shares one among concurrent commits). */
  logPersists: number;
  /** Pool-wide (0 per file): commits that waited for the log to be durable (sync faults, fsync): with logPersists, the group commit's sharing. */
  syncCommits: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number; count: number };
  /** Faults per latency bucket: counts[i] took at most LATENCY_BOUNDS_US[i] µs (and more than the bound before); the last, more than every bound. */
  latencyHistogram: { boundsUs: number[]; counts: number[]; sumUs: number };
}

/** Upper bounds (µs, inclusive) of the latency buckets; one more bucket holds the rest. */
export const LATENCY_BOUNDS_US: readonly number[] = Object.freeze([
  5, 10, 15, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 750,
  1000, 2000, 5000, 10_000, 50_000, 100_000, 500_000, 1_000_000,
]);
const BUCKETS = LATENCY_BOUNDS_US.length + 1;

export type CounterName =
  | 'faults' | 'read' | 'write' | 'writeProtect' | 'hole' | 'unwritten' | 'written' | 'beyondEof'
  | 'pmd' | 'pte' | 'zeroPage' | 'copy' | 'sigbus' | 'spurious' | 'raced' | 'evictions' | 'revokes'
  | 'recovered' | 'fallback' | 'decided' | 'reserved' | 'ahead' | 'stock' | 'reserveGrants' | 'reserveTopUps' | 'reserveTakeBacks' | 'reserveDry' | 'reserveUpgrades' | 'reserveRuns' | 'trimmed' | 'staged' | 'stagedLost';

/** Counters and a latency histogram; a child (one file's) also feeds its parent (the pool's). */
export class FaultStats {
  constructor(private readonly parent: FaultStats | null = null) {}

  bump(k: CounterName, n = 1): void {
    this[k] += n;
    this.parent?.bump(k, n);
  }

  faults = 0;
  read = 0;
  write = 0;
  writeProtect = 0;
  hole = 0;
  unwritten = 0;
  written = 0;
  beyondEof = 0;
  pmd = 0;
  pte = 0;
  zeroPage = 0;
  copy = 0;
  sigbus = 0;
  spurious = 0;
  raced = 0;
  evictions = 0;
  revokes = 0;
  recovered = 0;
  fallback = 0;
  decided = 0;
  reserved = 0;
  ahead = 0;
  stock = 0;
  reserveGrants = 0;
  reserveTopUps = 0;
  reserveTakeBacks = 0;
  reserveDry = 0;
  reserveUpgrades = 0;
  reserveRuns = 0;
  trimmed = 0;
  staged = 0;
  stagedLost = 0;
  private hist = new Array<number>(BUCKETS).fill(0);
  private maxUs = 0;
  private sumUs = 0;
  private samples = 0;

  latency(us: number): void {
    this.parent?.latency(us);
    let b = 0;
    while (b < LATENCY_BOUNDS_US.length && us > LATENCY_BOUNDS_US[b]!) b++;
    this.hist[b]!++;
    this.samples++;
    this.sumUs += us;
    if (us > this.maxUs) this.maxUs = us;
  }

  /** The p-quantile, interpolated linearly within its bucket (the last bucket reaches the maximum seen). */
  private percentile(p: number): number {
    if (this.samples === 0) return 0;
    const want = this.samples * p;
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      const n = this.hist[b]!;
      if (n > 0 && seen + n >= want) {
        const lo = b === 0 ? 0 : LATENCY_BOUNDS_US[b - 1]!;
        const hi = Math.min(b < LATENCY_BOUNDS_US.length ? LATENCY_BOUNDS_US[b]! : this.maxUs, this.maxUs);
        return Math.min(lo + (hi - lo) * Math.max(0, want - seen) / n, this.maxUs);
      }
      seen += n;
    }
    return this.maxUs;
  }

  snapshot(installedWindows: number, log: { logPersists: number; syncCommits: number } = { logPersists: 0, syncCommits: 0 }): FaultStatsSnapshot {
    return {
      faults: this.faults, read: this.read, write: this.write, writeProtect: this.writeProtect,
      hole: this.hole, unwritten: this.unwritten, written: this.written, beyondEof: this.beyondEof,
      pmd: this.pmd, pte: this.pte, zeroPage: this.zeroPage, copy: this.copy, sigbus: this.sigbus,
      spurious: this.spurious, raced: this.raced, evictions: this.evictions, revokes: this.revokes, recovered: this.recovered, fallback: this.fallback,
      decided: this.decided, reserved: this.reserved, ahead: this.ahead, stock: this.stock, reserveGrants: this.reserveGrants,
      reserveTopUps: this.reserveTopUps, reserveTakeBacks: this.reserveTakeBacks, reserveDry: this.reserveDry, reserveUpgrades: this.reserveUpgrades, reserveRuns: this.reserveRuns, trimmed: this.trimmed, staged: this.staged, stagedLost: this.stagedLost, installedWindows, ...log,
      latencyUs: { p50: this.percentile(0.5), p90: this.percentile(0.9), p99: this.percentile(0.99), max: Math.round(this.maxUs), count: this.samples },
      latencyHistogram: { boundsUs: [...LATENCY_BOUNDS_US], counts: [...this.hist], sumUs: this.sumUs },
    };
  }
}
