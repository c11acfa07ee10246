// What the parts of the fault policy share: the mappings of every client, the pool,
// the entry locks, statistics and the answer path. The parts are `Resolver`
// (resolve.ts: what a fault becomes), `Revoker` (revoke.ts: taking pages back when
// the file changes) and `Evictor` (evict.ts: keeping installed windows within the
// budget); `FaultPolicy` (policy.ts) is what the service sees.
import { KeyedMutex, type LockHandle } from '../lock/index';
import { logger } from '../log';
import type { AnswerSpec } from '../native/frames';
import type { Inode, PoolInternals } from '../pool/internal';
import type { WindowBudget } from './budget';
import type { DirectPieces } from './decide';
import type { PageStates } from './states';
import { FaultStats, type CounterName } from './stats';

export const ENOMEM = -12;
export const ENXIO = -6;
export const ENOENT = -2;

/** Who executes answers for a set of regions: this process (embedded) or a client process (daemon). */
export interface Client {
  readonly id: string;
  /**
   * Executes answers on the client's regions, in order; one result per answer (0,
   * RESULT_RACED, -errno). A client that is gone answers -ENXIO for every one (its
   * regions are gone with it).
   */
  run(answers: AnswerSpec[]): number[] | Promise<number[]>;
  /** Installed-window budget of the client's process. */
  readonly budget: WindowBudget;
  /** The client's id for the pool's device (installs name it). */
  readonly deviceId: number;
  /**
   * Another process (a daxmapd client): its results and notes are checked, not
   * trusted, and one that does not add up is the client's doing, so it is logged as
   * a warning; in the pool's own process it would be a bug of ours (an error).
   */
  readonly untrusted?: boolean;
  /**
   * An untrusted client whose staging memfd this process can take (daxmapd's clients,
   * docs/fault-policy.md, "Staged ranges"): this process's descriptor of the client's
   * descriptor `fd` of at least `length` bytes (stageAdopt, through the client's
   * pidfd). Absent or null: such a client is not staged.
   */
  stageFrom?: ((fd: number, length: number) => number) | null;
}

export interface MapRequest {
  region: number;
  inode: Inode;
  fileOffset: number;
  length: number;
  private: boolean;
  sync: boolean;
  faultAround: boolean;
  /** Mapping may write the device (shared, writable). */
  writable: boolean;
}

export interface Mapping extends MapRequest {
  readonly key: string;
  readonly client: Client;
  /**
   * What each page is. For a private mapping the states are exact: its pages are
   * anonymous copies in its own trapped region (never windows of the device), and
   * every first store to one traps, so Copy marks precisely the pages it owns.
   */
  readonly states: PageStates;
  /**
   * Where recent write faults of this mapping ended (file offsets, newest last, at
   * most WRITE_STREAMS): a write that starts where one ended continues a sequential
   * stream, and only those get whole 2 MiB windows allocated (resolve.ts).
   */
  readonly writeStreams: number[];
  /** Its ranges set direct in the client's agent (decide.ts); cleared before any revoke over them. */
  readonly direct: DirectPieces;
  dead: boolean;
}

/** Sequential write streams remembered per mapping (a few writer threads). */
export const WRITE_STREAMS = 8;

/** A fault that must be retried after the locks are dropped (e.g. to evict windows). */
export class RetryAfterEvict extends Error {}

export const roundUp = (x: number, a: number): number => Math.ceil(x / a) * a;

/**
 * Where a mapping's SIGBUS region starts: the page after EOF; for a shared mapping of
 * a 2 MiB-granular device (`align` above a page), the end of the 2 MiB unit holding
 * EOF, as that unit is mapped whole (docs/pool.md, "2 MiB-granular devices").
 */
export function mappedEof(m: MapRequest, align: number | undefined): number {
  return roundUp(m.inode.size, !m.private && (align ?? 4096) > 4096 ? 2 << 20 : 4096);
}

export class FaultContext {
  readonly mappings = new Map<string, Mapping>();
  readonly byInode = new Map<number, Set<Mapping>>();
  readonly entryLocks = new KeyedMutex<string>('entry');
  /** Entry keys held right now (eviction skips those instead of waiting). */
  readonly busy = new Set<string>();
  readonly stats = new FaultStats();
  /** Per file (inode id), each feeding the pool-wide `stats`. */
  readonly perFile = new Map<number, { name: () => string; stats: FaultStats }>();
  readonly log = logger('fault');

  constructor(readonly pool: PoolInternals) {}

  mappingsOf(inode: Inode): Mapping[] {
    return [...(this.byInode.get(inode.id) ?? [])];
  }

  fileStats(m: Mapping): FaultStats {
    let e = this.perFile.get(m.inode.id);
    if (!e) {
      const ino = m.inode;
      e = { name: () => ino.name, stats: new FaultStats(this.stats) };
      this.perFile.set(ino.id, e);
    }
    return e.stats;
  }

  bump(m: Mapping, counter: CounterName, n = 1): void {
    this.fileStats(m).bump(counter, n);
  }

  async lockEntry(key: string): Promise<LockHandle> {
    const h = await this.entryLocks.acquire(key);
    this.busy.add(key);
    const busy = this.busy;
    return {
      get held() { return h.held; },
      release() {
        busy.delete(key);
        h.release();
      },
    };
  }

  async answer(client: Client, specs: AnswerSpec[]): Promise<number[]> {
    return client.run(specs);
  }

}
