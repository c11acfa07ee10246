// Fault-ahead for sequential writers (docs/fault-policy.md, "Fault-ahead"): once a
// write fault that continues a sequential stream has been answered with a whole 2 MiB
// window, the next windows of the stream are allocated, zeroed, recorded and
// installed in the background, the way readahead reads ahead of a sequential reader.
// The writer then stores into them without a trap, while the policy prepares the
// ones after.
//
// Each window ahead is prepared exactly as its write fault would be (Resolver.ahead),
// under the same locks in the same order (the chunk's range lock shared → its entry
// lock), so a fault on it waits and then finds it installed, and a truncate, punch,
// zero range or unlink (range lock exclusive) revokes it like any installed window.
// Bounded: `windows` ahead of the last window the writer faulted in, inside the
// mapping and inside EOF only, while the client's window budget is below 3/4 of its
// limit and no reserve of the file is live.
import { isDaxError } from '../errors';
import { withOperation, type LockHandle } from '../lock/index';
import { RetryAfterEvict, type FaultContext, type Mapping } from './context';
import type { Resolver } from './resolve';
import { HUGE } from './states';

/** The most windows `configure({ ahead })` or DAXMAP_AHEAD may ask for. */
export const MAX_AHEAD = 16;

/**
 * Windows installed ahead of a sequential writer's last fault by default. One: with
 * two, the policy's install of the second window ahead ran while the writer made its
 * first stores into the first, and on this VM some of those windows then took about
 * 6 µs a page again in the next pass over them (bench row 7a 0.44-0.53× the kernel
 * with 2, 1.04-1.25× with 1; row 7c 0.57-1.11× against 1.03-1.13×; the first touch,
 * row 5, 0.49-0.51× against 0.51-0.54×; docs/faults.md, "Fault-ahead and the first
 * pass").
 */
export const DEFAULT_AHEAD = 1;

/** Windows installed ahead of a sequential writer's last fault; DAXMAP_AHEAD=n (0: off), else DEFAULT_AHEAD. */
function defaultAheadWindows(): number {
  const v = Number(process.env.DAXMAP_AHEAD ?? String(DEFAULT_AHEAD));
  return Number.isSafeInteger(v) && v >= 0 && v <= MAX_AHEAD ? v : DEFAULT_AHEAD;
}

export class FaultAhead {
  /** Windows allocated and installed ahead of the writer (0: fault-ahead off). */
  windows = defaultAheadWindows();
  /** Per mapping with a task running: the file offset the task goes up to. */
  private readonly targets = new Map<Mapping, number>();

  constructor(
    private readonly ctx: FaultContext,
    private readonly resolver: Resolver,
    /** Whether a reserve of the file is live (then nothing is done ahead: reserve.ts). */
    private readonly reserveLive: (m: Mapping) => boolean,
  ) {}

  /** Tasks running (tests wait for them to end). */
  get running(): number {
    return this.targets.size;
  }

  /** A sequential writer's fault was answered with the window at fileStart: prepare the next ones. */
  after(m: Mapping, fileStart: number): void {
    if (this.windows === 0) return;
    const want = fileStart + (1 + this.windows) * HUGE;
    const cur = this.targets.get(m);
    if (cur !== undefined) {
      // A task is running for this mapping: it goes on to the new end.
      if (want > cur) this.targets.set(m, want);
      return;
    }
    this.targets.set(m, want);
    this.run(m, fileStart + HUGE)
      .catch((err: unknown) => {
        // A mapping that went away meanwhile (unmapped, its client gone, the pool
        // closing) ends its task with whatever error that caused: nothing to report.
        if (!m.dead) this.ctx.log.warn({ err, file: m.inode.name }, 'fault-ahead failed');
      })
      .finally(() => this.targets.delete(m));
  }

  private async run(m: Mapping, next: number): Promise<void> {
    for (; next < (this.targets.get(m) ?? 0); next += HUGE) {
      if (m.dead || m.client.budget.aheadRoom < 1 || this.reserveLive(m)) return;
      const r = await withOperation('ahead', () => this.one(m, next));
      if (r === 'stop') return;
    }
  }

  /** One window, with the locks a fault on it takes (policy.ts `locked`). */
  private async one(m: Mapping, fileStart: number): Promise<'installed' | 'skip' | 'stop'> {
    const range = await m.inode.rangeLock.acquireShared(fileStart, fileStart + HUGE);
    let entry: LockHandle | undefined;
    try {
      if (this.reserveLive(m)) return 'stop';
      entry = await this.ctx.lockEntry(`${m.inode.id}:${fileStart / HUGE}`);
      return await this.resolver.ahead(m, fileStart);
    } catch (err) {
      // No room (space, or mappings: the install met vm.max_map_count): the writer's
      // own faults take over, with their fallbacks.
      if (isDaxError(err, 'ENOSPC') || err instanceof RetryAfterEvict) return 'stop';
      throw err;
    } finally {
      entry?.release();
      range.release();
    }
  }
}
