// The lock validator ("lockdep"): tracks, per async operation, which lock classes are
// held, records the order in which classes are taken, and reports order cycles,
// self-deadlocks and locks still held when the operation that took them ended.

import { AsyncLocalStorage } from 'node:async_hooks';

export type ViolationKind = 'order' | 'self-deadlock' | 'nesting' | 'leak';

export interface Violation {
  kind: ViolationKind;
  /** The operation that triggered the report. */
  operation: string;
  message: string;
}

/** What the validator knows about one granted (or pending) acquisition. */
export interface HeldLock {
  readonly cls: string;
  readonly lock: object;
  readonly lockName: string;
  readonly op: Operation | null;
  /** The byte range and mode held ([0,1) for mutexes and rwlocks). */
  readonly start: number;
  readonly end: number;
  readonly exclusive: boolean;
}

/** An async operation: a public call, a fault, a test body. Nested operations see their parents' locks. */
export interface Operation {
  readonly name: string;
  readonly parent: Operation | null;
  readonly held: Set<HeldLock>;
  ended: boolean;
}

const als = new AsyncLocalStorage<Operation>();

class LockValidator {
  /** Read on every acquire: keep the disabled path to this one check. */
  enabled = process.env['DAXMAP_LOCKDEP'] === '1' || process.env['DAXMAP_LOCKDEP'] === 'true';
  /** class -> classes that have been taken while it was held. */
  private readonly edges = new Map<string, Set<string>>();
  /** "a -> b" -> the operation that first took b under a, for reports. */
  private readonly edgeOrigin = new Map<string, string>();
  private readonly list: Violation[] = [];
  /** Called for every new violation (default: nothing; tests assert on the list). */
  onViolation: ((v: Violation) => void) | null = null;

  enable(): void { this.enabled = true; }
  disable(): void { this.enabled = false; }

  private readonly declared: string[][] = [];

  /**
   * Seed the order graph with a documented order (outermost first), so the first
   * inversion is caught even before the right order has ever been observed.
   */
  declareOrder(classes: readonly string[]): void {
    this.declared.push([...classes]);
    for (let i = 0; i + 1 < classes.length; i++) this.addDeclared(classes[i]!, classes[i + 1]!);
  }

  private addDeclared(a: string, b: string): void {
    let set = this.edges.get(a);
    if (!set) { set = new Set(); this.edges.set(a, set); }
    set.add(b);
    this.edgeOrigin.set(`${a} -> ${b}`, 'the declared lock order');
  }

  /** Forget observed edges and violations (tests that provoke violations on purpose); declared orders stay. */
  reset(): void {
    this.edges.clear();
    this.edgeOrigin.clear();
    this.list.length = 0;
    for (const o of this.declared) for (let i = 0; i + 1 < o.length; i++) this.addDeclared(o[i]!, o[i + 1]!);
  }

  violations(): Violation[] { return this.list.slice(); }

  /** Throws one Error listing every violation so far. */
  assertClean(): void {
    if (this.list.length === 0) return;
    const text = this.list.map((v) => `  [${v.kind}] in ${v.operation}: ${v.message}`).join('\n');
    throw new Error(`lockdep: ${this.list.length} violation(s)\n${text}`);
  }

  /** The recorded class order graph, as "a -> b" strings (for docs and tests). */
  orderEdges(): string[] {
    const out: string[] = [];
    for (const [a, bs] of this.edges) for (const b of bs) out.push(`${a} -> ${b}`);
    return out.sort();
  }

  current(): Operation | null {
    return als.getStore() ?? null;
  }

  report(kind: ViolationKind, op: Operation | null, message: string): Violation {
    const v: Violation = { kind, operation: op ? opPath(op) : '(no operation)', message };
    this.list.push(v);
    if (this.onViolation) this.onViolation(v);
    return v;
  }

  /**
   * Called before waiting for a lock. Records order edges from every class held in
   * this operation chain, reports cycles. `conflictsWithHeld` says whether one of
   * this operation's own holds of the same lock would block the request: that is a
   * certain self-deadlock, reported and thrown rather than left to hang.
   */
  willAcquire(lock: object, cls: string, lockName: string, nested: boolean,
    start: number, end: number, exclusive: boolean, trylock = false): HeldLock {
    const op = this.current();
    const rec: HeldLock = { cls, lock, lockName, op, start, end, exclusive };
    if (op === null || trylock) return rec;
    for (let o: Operation | null = op; o; o = o.parent) {
      for (const h of o.held) {
        // Any overlapping re-request of a lock this operation holds can hang: an
        // exclusive one at once, a shared one as soon as a writer queues between.
        if (h.lock === lock && h.start < end && start < h.end) {
          const v = this.report('self-deadlock', op, `${lockName} (class ${cls}) [${start}, ${end}) requested while this operation already holds [${h.start}, ${h.end})`);
          throw new Error(`lockdep: ${v.message}`);
        }
        if (h.cls === cls) {
          if (!nested && h.lock !== lock) {
            this.report('nesting', op, `two locks of class ${cls} held at once (${h.lockName}, then ${lockName}) without a nesting annotation`);
          }
          continue;
        }
        this.addEdge(h.cls, cls, op);
      }
    }
    return rec;
  }

  acquired(rec: HeldLock): void {
    if (rec.op) rec.op.held.add(rec);
  }

  released(rec: HeldLock): void {
    if (rec.op) rec.op.held.delete(rec);
  }

  private addEdge(a: string, b: string, op: Operation): void {
    let set = this.edges.get(a);
    if (set?.has(b)) return;
    const path = this.path(b, a);
    if (path) {
      const origins = [];
      for (let i = 0; i + 1 < path.length; i++) origins.push(`${path[i]} -> ${path[i + 1]} (first in ${this.edgeOrigin.get(`${path[i]} -> ${path[i + 1]}`)})`);
      this.report('order', op, `lock order inversion: taking ${b} while holding ${a}, but the recorded order is ${origins.join(', ')}`);
      return;
    }
    if (!set) { set = new Set(); this.edges.set(a, set); }
    set.add(b);
    this.edgeOrigin.set(`${a} -> ${b}`, opPath(op));
  }

  /** A path from `from` to `to` in the order graph, or null. */
  private path(from: string, to: string): string[] | null {
    const prev = new Map<string, string>();
    const queue = [from];
    const seen = new Set([from]);
    while (queue.length) {
      const x = queue.shift()!;
      if (x === to) {
        const out = [to];
        for (let y = to; y !== from;) { y = prev.get(y)!; out.unshift(y); }
        return out;
      }
      for (const n of this.edges.get(x) ?? []) {
        if (!seen.has(n)) { seen.add(n); prev.set(n, x); queue.push(n); }
      }
    }
    return null;
  }

  endOperation(op: Operation): void {
    op.ended = true;
    if (op.held.size === 0) return;
    const names = [...op.held].map((h) => `${h.lockName} (class ${h.cls})`).join(', ');
    this.report('leak', op, `operation ended with lock(s) still held: ${names}`);
  }
}

function opPath(op: Operation): string {
  const parts: string[] = [];
  for (let o: Operation | null = op; o; o = o.parent) parts.unshift(o.name);
  return parts.join(' > ');
}

/** The process-wide validator. `DAXMAP_LOCKDEP=1` enables it at load; `lockdep.enable()` at run time. */
export const lockdep = new LockValidator();

/**
 * Run `fn` as one operation. With the validator on, the locks it takes are tracked
 * and any still held when it settles are reported as leaked. With it off this is a
 * plain call.
 */
/**
 * Run `fn` outside any operation: the operations it starts (and what they schedule)
 * have no parent, so they do not see the locks of the operation that happened to call
 * it. For work that is new, not a part of its caller: a batch of fault events that a
 * channel delivers synchronously inside some other operation.
 */
export function outsideOperation<T>(fn: () => T): T {
  if (!lockdep.enabled || als.getStore() === undefined) return fn();
  return als.exit(fn);
}

export async function withOperation<T>(name: string, fn: () => T | Promise<T>): Promise<T> {
  if (!lockdep.enabled) return fn();
  const op: Operation = { name, parent: als.getStore() ?? null, held: new Set(), ended: false };
  return als.run(op, async () => {
    try {
      return await fn();
    } finally {
      lockdep.endOperation(op);
    }
  });
}
