// Argument checks of the public client API (Pool, PoolFile, Mapping), in one place.
// Every check throws a daxmap Error with code EINVAL; the public async methods run
// them inside the async body, so a bad argument is a rejection, never a synchronous
// throw.
import { constants as bufferConstants } from 'node:buffer';
import { daxError } from '../errors';

export const PAGE = 4096;
const MAX_NAME = 255;
/** The largest file the pool holds (lib/pool/format.ts): offsets and ends stop here. */
export const MAX_FILE_SIZE = 2 ** 44;
/** The largest Buffer this runtime makes: a mapping's buffer is one Buffer. */
export const MAX_MAPPING = bufferConstants.MAX_LENGTH;

function show(v: unknown): string {
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

/** A file offset or length: an integer in [min, 16 TiB]. */
export function fileInt(what: string, v: unknown, min = 0): number {
  return int(what, v, min, MAX_FILE_SIZE);
}

/** A file name: 1-255 bytes of UTF-8 without '/' or NUL. */
export function name(v: unknown, what = 'file name'): string {
  if (typeof v !== 'string') throw daxError('EINVAL', `${what} must be a string, got ${show(v)}`);
  const bytes = Buffer.byteLength(v, 'utf8');
  if (bytes < 1 || bytes > MAX_NAME || v.includes('/') || v.includes('\0')) {
    throw daxError('EINVAL', `${what} ${show(v)} must be 1-${MAX_NAME} bytes of UTF-8 without '/' or NUL`);
  }
  return v;
}

/** A non-empty path string without NUL. */
export function pathString(what: string, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0 || v.includes('\0')) {
    throw daxError('EINVAL', `${what} must be a non-empty string without NUL, got ${show(v)}`);
  }
  return v;
}

/** True when `v`'s memory was detached (transferred, or a mapping's buffer after unmap). */
export function isDetached(v: ArrayBufferView): boolean {
  const ab = v.buffer as ArrayBuffer & { detached?: boolean };
  if (typeof ab.detached === 'boolean') return ab.detached;
  if (v.byteLength !== 0) return false;
  try {
    // Node 20 has no ArrayBuffer.prototype.detached; a view over a detached buffer
    // cannot be constructed.
    void new Uint8Array(ab, 0, 0);
    return false;
  } catch {
    return true;
  }
}

/** A Buffer or Uint8Array whose memory is still there. */
export function bytes(what: string, v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) throw daxError('EINVAL', `${what} must be a Buffer or Uint8Array, got ${show(v)}`);
  if (isDetached(v)) {
    throw daxError('EINVAL', `${what} is detached (a mapping's buffer kept after unmap() or after its pool went away, or a transferred ArrayBuffer)`);
  }
  return v;
}

type Kind = 'boolean' | 'integer';

/**
 * An options object: undefined is {}; anything else must be a plain object whose keys
 * are all in `spec`, each of its kind (or undefined). A misspelt option is EINVAL, not
 * silently ignored (`{ privat: true }` must not map the file shared).
 */
export function options<S extends Record<string, Kind>>(what: string, v: unknown, spec: S): { [K in keyof S]?: S[K] extends 'boolean' ? boolean : number } {
  if (v === undefined) return {};
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw daxError('EINVAL', `${what} must be an object, got ${show(v)}`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    const kind = spec[k];
    if (kind === undefined) throw daxError('EINVAL', `${what}: unknown option '${k}' (known: ${Object.keys(spec).join(', ')})`);
    const x = o[k];
    if (x === undefined) continue;
    if (kind === 'boolean' && typeof x !== 'boolean') throw daxError('EINVAL', `${what}: option ${k} must be a boolean, got ${show(x)}`);
    if (kind === 'integer' && (typeof x !== 'number' || !Number.isSafeInteger(x))) throw daxError('EINVAL', `${what}: option ${k} must be an integer, got ${show(x)}`);
  }
  return o as { [K in keyof S]?: S[K] extends 'boolean' ? boolean : number };
}
