// Errors across a transport (a MessagePort or a daxmapd control connection): an
// Error with a code travels as { code, message, errno?, syscall?, path?, cause? } and
// is rebuilt on the other side with the same fields, its cause rebuilt the same way
// (a chain of at most MAX_CAUSES). Anything without a code is a bug where it was
// thrown and travels as EIO, with itself as the cause.
import { isDaxError, type DaxmapError } from '../errors';
import type { ErrorInfo } from './messages';

/** How many causes deep an error travels; deeper ones are dropped. */
export const MAX_CAUSES = 4;

function describe(err: unknown, depth: number): ErrorInfo {
  const e = err instanceof Error ? err as DaxmapError : null;
  const info: ErrorInfo = {
    code: e !== null && typeof e.code === 'string' ? e.code : '',
    message: e !== null ? e.message : String(err),
  };
  if (e !== null) {
    if (typeof e.errno === 'number') info.errno = e.errno;
    if (typeof e.syscall === 'string') info.syscall = e.syscall;
    if (typeof e.path === 'string') info.path = e.path;
    if (e.cause !== undefined && depth < MAX_CAUSES) info.cause = describe(e.cause, depth + 1);
  }
  return info;
}

export function errorInfo(err: unknown): ErrorInfo {
  if (isDaxError(err)) return describe(err, 0);
  return { code: 'EIO', message: `EIO: ${(err as Error)?.message ?? String(err)}`, cause: describe(err, 1) };
}

/** The error `info` describes: an Error with its code (none when it had none), errno, syscall, path and cause. */
export function rebuildError(info: ErrorInfo): DaxmapError {
  const cause = info.cause !== undefined && info.cause !== null && typeof info.cause === 'object' ? rebuildError(info.cause) : undefined;
  const e = new Error(String(info.message), cause !== undefined ? { cause } : undefined) as DaxmapError;
  if (typeof info.code === 'string' && info.code !== '') e.code = info.code;
  if (typeof info.errno === 'number') e.errno = info.errno;
  if (typeof info.syscall === 'string') e.syscall = info.syscall;
  if (typeof info.path === 'string') e.path = info.path;
  return e;
}
