// Lock primitives and the lock validator (see docs/locking.md for the lock order).
export { RangeLock, RwLock, Mutex, KeyedMutex, RANGE_END, type LockHandle, type AcquireOptions } from './range-lock';
import { lockdep } from './lockdep';
export { lockdep, withOperation, outsideOperation, type Violation, type ViolationKind, type Operation } from './lockdep';

/**
 * The documented lock order, outermost first. Every path takes a prefix-respecting
 * subsequence of it; the validator enforces it in tests.
 */
export const LOCK_ORDER = ['range', 'entry', 'alloc', 'log'] as const;

lockdep.declareOrder(LOCK_ORDER);
