// Errors shaped like Node's fs errors: an Error whose `code` is the errno name and
// whose message says what was being done, to what.

export type ErrorCode =
  | 'EUFFD' | 'ENOENT' | 'EEXIST' | 'EINVAL' | 'EBADF' | 'EBUSY' | 'ENOSPC'
  | 'ENOMEM' | 'EAGAIN' | 'EIO' | 'EPERM' | 'EACCES' | 'ENOTDIR' | 'EISDIR'
  | 'ENAMETOOLONG' | 'EFBIG' | 'ENXIO' | 'ENODEV' | 'EOPNOTSUPP' | 'ECLOSED'
  | 'ESRCH' | 'EPROTO' | 'ECONNREFUSED' | 'ETIMEDOUT' | 'EFAULT' | 'ESTALE' | 'EXDEV';

export interface DaxmapError extends Error {
  code: string;
  errno?: number;
  syscall?: string;
  path?: string;
}

/** Build an Error with a code; created here so it carries a JS stack. */
export function daxError(
  code: string,
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
