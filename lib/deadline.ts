// A time limit and an AbortSignal over a sequence of asynchronous steps (connecting
// to daxmapd): each step is raced against both, and a retry waits on a timer, so
// nothing blocks the event loop. Errors: ETIMEDOUT naming the step, or an AbortError
// (`name: 'AbortError'`, `code: 'ABORT_ERR'`, `cause`: the signal's reason), as
// Node's own APIs do.
import { daxError, type DaxmapError } from './errors';
import { show } from './util/check';

export function abortError(signal: AbortSignal): DaxmapError {
  const e = new Error('The operation was aborted', { cause: signal.reason }) as DaxmapError;
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}

/** Checks a `timeoutMs` option: a number > 0 (Infinity: no limit). */
export function checkTimeout(v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || Number.isNaN(v) || v <= 0) throw daxError('EINVAL', `timeoutMs must be a number > 0 (Infinity for none), got ${show(v)}`);
  return v;
}

export function checkSignal(v: unknown): AbortSignal | undefined {
  if (v === undefined) return undefined;
  if (!(v instanceof AbortSignal)) throw daxError('EINVAL', 'signal must be an AbortSignal');
  return v;
}

export class Deadline {
  private readonly end: number;

  constructor(
    /** What is being done, for the ETIMEDOUT message ("connect to daxmapd at '…'"). */
    readonly what: string,
    readonly timeoutMs: number,
    readonly signal?: AbortSignal,
  ) {
    this.end = Number.isFinite(timeoutMs) ? performance.now() + timeoutMs : Infinity;
  }

  /** Milliseconds left (Infinity without a limit; 0 once passed). */
  remaining(): number {
    return Math.max(0, this.end - performance.now());
  }

  /** Throws the AbortError or ETIMEDOUT if the signal has fired or the time is up. */
  check(step: string): void {
    if (this.signal?.aborted) throw abortError(this.signal);
    if (this.remaining() === 0) throw this.timeout(step);
  }

  timeout(step: string): DaxmapError {
    return daxError('ETIMEDOUT', `${this.what}: no ${step} within ${this.timeoutMs} ms (the timeoutMs option)`);
  }

  /**
   * `p`, unless the time runs out or the signal fires first: then rejects at once
   * (`p` is left to settle on its own; the caller cleans up what it started).
   */
  race<T>(p: Promise<T>, step: string): Promise<T> {
    this.check(step);
    return new Promise<T>((resolve, reject) => {
      const signal = this.signal;
      const left = this.remaining();
      const timer = Number.isFinite(left) ? setTimeout(() => finish(() => reject(this.timeout(step))), left) : null;
      const onAbort = (): void => finish(() => reject(abortError(signal!)));
      let settled = false;
      const finish = (f: () => void): void => {
        if (settled) return;
        settled = true;
        if (timer !== null) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        f();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      p.then((v) => finish(() => resolve(v)), (e: unknown) => finish(() => reject(e)));
    });
  }

  /** Waits `ms` (a retry's back-off), within the limit and abortable. */
  sleep(ms: number, step: string): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.min(ms, this.remaining()));
    });
    return this.race(wait, step).finally(() => clearTimeout(timer)).then(() => this.check(step));
  }
}
