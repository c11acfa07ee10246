// Errors shaped like Node's fs errors: an Error whose `code` is the errno name and
// whose message says what was being done, to what.

/**
 * The codes daxmap's errors carry: every code lib/ throws (checked by
 * test/client/error-codes.test.ts), and the system errors the addon reports by their
 * errno names. `ABORT_ERR` is Node's, for an aborted Pool.connect().
 */
export type ErrorCode =
  | 'EUFFD' | 'ENOENT' | 'EEXIST' | 'EINVAL' | 'EBADF' | 'EBUSY' | 'ENOSPC'
  | 'ENOMEM' | 'EAGAIN' | 'EIO' | 'EPERM' | 'EACCES' | 'ENOTDIR' | 'EISDIR'
  | 'ENAMETOOLONG' | 'EFBIG' | 'ENXIO' | 'ENODEV' | 'EOPNOTSUPP' | 'ECLOSED'
  | 'ESRCH' | 'EPROTO' | 'ECONNREFUSED' | 'ETIMEDOUT' | 'EFAULT' | 'ESTALE' | 'EXDEV'
  | 'EADDRINUSE' | 'EMSGSIZE' | 'ABORT_ERR';

/** An Error with a code; a system error's errno (negative, as Node's), syscall and path when it has them; the error it wraps as `cause`. */
export interface DaxmapError extends Error {
  code: ErrorCode | (string & {});
  errno?: number;
  syscall?: string;
  path?: string;
  cause?: unknown;
}

/** Build an Error with a code; created here so it carries a JS stack. */
export function daxError(
  code: ErrorCode | (string & {}),
  message: string,
  extra: { errno?: number; syscall?: string; path?: string; cause?: unknown } = {},
): DaxmapError {
  const err = new Error(`${code}: ${message}`, extra.cause === undefined ? undefined : { cause: extra.cause }) as DaxmapError;
  err.code = code;
  if (extra.errno !== undefined) err.errno = extra.errno;
  if (extra.syscall !== undefined) err.syscall = extra.syscall;
  if (extra.path !== undefined) err.path = extra.path;
  return err;
}

export function isDaxError(e: unknown, code?: string): e is DaxmapError {
  return e instanceof Error && typeof (e as DaxmapError).code === 'string' &&
    (code === undefined || (e as DaxmapError).code === code);
}
