// The argument checks every layer shares: an integer in range, and the one rule for
// a file name (the pool's, the client API's and daxmapd's requests'). Each throws a
// daxmap Error with code EINVAL that says what was wrong with what.
import { daxError } from '../errors';

/** The longest file name, in bytes of UTF-8 (the pool's on-media limit). */
export const MAX_NAME_BYTES = 255;

/** A value as an error message shows it: short, never the whole of a large one. */
export function show(v: unknown): string {
  if (typeof v === 'string') return `'${v.length > 40 ? `${v.slice(0, 40)}…` : v}'`;
  if (typeof v === 'bigint') return `${v}n`;
  if (v === null || typeof v !== 'object') return String(v);
  return Array.isArray(v) ? 'an array' : `an object (${v.constructor?.name ?? 'Object'})`;
}

/** An integer in [min, max]. */
export function int(what: string, v: unknown, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw daxError('EINVAL', `${what} must be an integer in [${min}, ${max}], got ${show(v)}`);
  }
  return v;
}

/**
 * A file name: 1-255 bytes of UTF-8 without '/' or NUL. It must be well-formed
 * UTF-16 too: a lone surrogate has no UTF-8 form (it would reach the disk as U+FFFD
 * and come back as another name), so it is refused.
 */
export function checkName(v: unknown, what = 'file name'): string {
  if (typeof v !== 'string') throw daxError('EINVAL', `${what} must be a string, got ${show(v)}`);
  if (/\p{Surrogate}/u.test(v)) throw daxError('EINVAL', `${what} ${show(v)} is not valid UTF-8: it holds a lone surrogate`);
  const bytes = Buffer.byteLength(v, 'utf8');
  if (bytes < 1 || bytes > MAX_NAME_BYTES || v.includes('/') || v.includes('\0')) {
    throw daxError('EINVAL', `${what} ${show(v)} must be 1-${MAX_NAME_BYTES} bytes of UTF-8 without '/' or NUL`);
  }
  return v;
}
