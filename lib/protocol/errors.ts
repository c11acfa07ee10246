// Errors across a transport (a MessagePort or a daxmapd control connection): an
// Error with a code travels as { code, message } and is rebuilt on the other side
// with the same code and message. Anything without a code is a bug where it was
// thrown and travels as EIO.
import { isDaxError, type DaxmapError } from '../errors';
import type { ErrorInfo } from './messages';

export function errorInfo(err: unknown): ErrorInfo {
  return isDaxError(err)
    ? { code: err.code, message: err.message }
    : { code: 'EIO', message: `EIO: ${(err as Error)?.message ?? String(err)}` };
}

export function rebuildError(info: ErrorInfo): DaxmapError {
  const e = new Error(info.message) as DaxmapError;
  e.code = info.code;
  return e;
}
