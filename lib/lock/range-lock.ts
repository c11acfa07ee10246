// Async lock primitives with owner handles: RangeLock (reader/writer over byte ranges),
// RwLock and Mutex built on it. Releasing a handle that is not held throws; every
// acquisition is reported to the lock validator when it is on.

import { daxError } from '../errors';
import { lockdep, type HeldLock } from './lockdep';

/** End of a range that runs to the end of the file. */
export const RANGE_END = Number.MAX_SAFE_INTEGER;

export interface LockHandle {
  /** True from the grant until release. */
  readonly held: boolean;
  /** Release the lock; throws if this handle is not held (never granted, or released already). */
  release(): void;
}

export interface AcquireOptions {
  /** Annotate an intended nesting of two locks of the same class (lockdep's nested annotation). */
  nested?: boolean;
}

class Grant implements LockHandle {
  held = false;
  constructor(
    readonly owner: RangeLockBase,
    readonly start: number,
    readonly end: number,
    readonly exclusive: boolean,
    readonly rec: HeldLock | null,
  ) {}

  release(): void {
    this.owner.releaseGrant(this);
  }
}

interface Waiter {
  grant: Grant;
  resolve: (g: Grant) => void;
}

function conflicts(a: { start: number; end: number; exclusive: boolean }, b: { start: number; end: number; exclusive: boolean }): boolean {
  return a.start < b.end && b.start < a.end && (a.exclusive || b.exclusive);
}

/**
 * The engine: granted ranges plus a FIFO queue. A request is granted when it
 * conflicts with no holder and with no request queued before it, so a waiting
 * exclusive request is never overtaken by later overlapping shared ones.
 */
class RangeLockBase {
  private readonly holders = new Set<Grant>();
  private readonly queue: Waiter[] = [];

  constructor(readonly cls: string, readonly name: string) {}

  protected acquireRange(start: number, end: number, exclusive: boolean, opts?: AcquireOptions): Promise<LockHandle> {
    const rec = lockdep.enabled
      ? lockdep.willAcquire(this, this.cls, this.name, opts?.nested === true, start, end, exclusive)
      : null;
    const g = new Grant(this, start, end, exclusive, rec);
    if (this.compatible(g) && !this.conflictsWithQueue(g)) {
      this.grant(g);
      return Promise.resolve(g);
    }
    return new Promise((resolve) => {
      this.queue.push({ grant: g, resolve });
    });
  }

  protected tryAcquireRange(start: number, end: number, exclusive: boolean): LockHandle | null {
    const r = { start, end, exclusive };
    if (!this.compatible(r) || this.conflictsWithQueue(r)) return null;
    const rec = lockdep.enabled ? lockdep.willAcquire(this, this.cls, this.name, true, start, end, exclusive, true) : null;
    const g = new Grant(this, start, end, exclusive, rec);
    this.grant(g);
    return g;
  }

  private compatible(r: { start: number; end: number; exclusive: boolean }): boolean {
    for (const h of this.holders) if (conflicts(h, r)) return false;
    return true;
  }

  private conflictsWithQueue(r: { start: number; end: number; exclusive: boolean }): boolean {
    for (const w of this.queue) if (conflicts(w.grant, r)) return true;
    return false;
  }

  private grant(g: Grant): void {
    g.held = true;
    this.holders.add(g);
    if (g.rec) lockdep.acquired(g.rec);
  }

  /** Release a handle of this lock. Throws (and changes nothing) if it is not held here. */
  release(handle: LockHandle): void {
    if (!(handle instanceof Grant) || handle.owner !== this) {
      throw daxError('EINVAL', `release of a handle that does not belong to lock ${this.name}`);
    }
    this.releaseGrant(handle);
  }

  releaseGrant(g: Grant): void {
    if (!g.held || !this.holders.has(g)) {
      throw daxError('EINVAL', `release of lock ${this.name} (class ${this.cls}) [${g.start}, ${g.end}) that is not held`);
    }
    g.held = false;
    this.holders.delete(g);
    if (g.rec) lockdep.released(g.rec);
    this.drain();
  }

  private drain(): void {
    if (this.queue.length === 0) return;
    const still: Waiter[] = [];
    for (const w of this.queue) {
      let ok = this.compatible(w.grant);
      if (ok) for (const e of still) if (conflicts(e.grant, w.grant)) { ok = false; break; }
      if (ok) {
        this.grant(w.grant);
        w.resolve(w.grant);
      } else {
        still.push(w);
      }
    }
    this.queue.length = 0;
    this.queue.push(...still);
  }

  /** Number of granted holds (for tests and stats). */
  get holdCount(): number { return this.holders.size; }
  /** Number of queued requests. */
  get waiterCount(): number { return this.queue.length; }
}

function checkRange(name: string, start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end <= start) {
    throw daxError('EINVAL', `range lock ${name}: bad range [${start}, ${end})`);
  }
}

/**
 * Reader/writer lock over byte ranges [start, end) of one file. Shared ranges may
 * overlap each other; an exclusive range conflicts with any overlap. FIFO-fair.
 */
export class RangeLock extends RangeLockBase {
  constructor(cls = 'range', name = cls) { super(cls, name); }

  acquire(start: number, end: number, mode: 'shared' | 'exclusive', opts?: AcquireOptions): Promise<LockHandle> {
    checkRange(this.name, start, end);
    return this.acquireRange(start, end, mode === 'exclusive', opts);
  }

  acquireShared(start: number, end: number, opts?: AcquireOptions): Promise<LockHandle> {
    return this.acquire(start, end, 'shared', opts);
  }

  acquireExclusive(start: number, end: number, opts?: AcquireOptions): Promise<LockHandle> {
    return this.acquire(start, end, 'exclusive', opts);
  }

  /** Grant now or return null; never waits (so it records no order edge). */
  tryAcquire(start: number, end: number, mode: 'shared' | 'exclusive'): LockHandle | null {
    checkRange(this.name, start, end);
    return this.tryAcquireRange(start, end, mode === 'exclusive');
  }
}

/** A FIFO-fair reader/writer lock. */
export class RwLock extends RangeLockBase {
  constructor(cls: string, name = cls) { super(cls, name); }
  acquireRead(opts?: AcquireOptions): Promise<LockHandle> { return this.acquireRange(0, 1, false, opts); }
  acquireWrite(opts?: AcquireOptions): Promise<LockHandle> { return this.acquireRange(0, 1, true, opts); }
  tryAcquireRead(): LockHandle | null { return this.tryAcquireRange(0, 1, false); }
  tryAcquireWrite(): LockHandle | null { return this.tryAcquireRange(0, 1, true); }
}

/** A FIFO mutex. */
export class Mutex extends RangeLockBase {
  constructor(cls: string, name = cls) { super(cls, name); }
  acquire(opts?: AcquireOptions): Promise<LockHandle> { return this.acquireRange(0, 1, true, opts); }
  tryAcquire(): LockHandle | null { return this.tryAcquireRange(0, 1, true); }
  get locked(): boolean { return this.holdCount > 0; }
}

/**
 * Mutexes created on demand per key (for example the fault policy's entry locks,
 * one per page index or 2 MiB chunk) and dropped when nobody holds or waits.
 */
export class KeyedMutex<K> {
  private readonly locks = new Map<K, { m: Mutex; users: number }>();
  constructor(readonly cls: string) {}

  async acquire(key: K, opts?: AcquireOptions): Promise<LockHandle> {
    let e = this.locks.get(key);
    if (!e) { e = { m: new Mutex(this.cls, `${this.cls}[${String(key)}]`), users: 0 }; this.locks.set(key, e); }
    e.users++;
    const entry = e;
    let h: LockHandle;
    try {
      h = await entry.m.acquire(opts);
    } catch (err) {
      this.drop(key, entry);
      throw err;
    }
    return this.wrap(key, entry, h);
  }

  /** The lock for `key` now, or null if it is held; never waits. */
  tryAcquire(key: K): LockHandle | null {
    let e = this.locks.get(key);
    if (!e) { e = { m: new Mutex(this.cls, `${this.cls}[${String(key)}]`), users: 0 }; this.locks.set(key, e); }
    const h = e.m.tryAcquire();
    if (!h) return null;
    e.users++;
    return this.wrap(key, e, h);
  }

  private wrap(key: K, entry: { m: Mutex; users: number }, h: LockHandle): LockHandle {
    let done = false;
    return {
      get held() { return h.held; },
      release: () => {
        if (done) throw daxError('EINVAL', `release of ${this.cls}[${String(key)}] that is not held`);
        h.release();
        done = true;
        this.drop(key, entry);
      },
    };
  }

  private drop(key: K, e: { m: Mutex; users: number }): void {
    if (--e.users === 0) this.locks.delete(key);
  }

  /** Keys with a holder or a waiter. */
  get size(): number { return this.locks.size; }
}
