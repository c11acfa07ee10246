// Argument checks of the protocol, in one place: the public client API (Pool,
// PoolFile, Mapping) runs them before anything is sent, and the service's op table
// (./ops.ts) runs them on every request, whoever sent it (a daxmapd client may send
// anything JSON can say). Every check throws a daxmap Error with code EINVAL; the
// public async methods run them inside the async body, so a bad argument is a
// rejection, never a synchronous throw.
import { daxError } from '../errors';
import { checkName, int, show } from '../util/check';
import { MAX_FILE_SIZE } from '../pool/index';

export { int, show, MAX_FILE_SIZE };

export const PAGE = 4096;

/** A file offset or length: an integer in [min, 16 TiB]. */
export function fileInt(what: string, v: unknown, min = 0): number {
  return int(what, v, min, MAX_FILE_SIZE);
}

/** A file name (lib/util/check.ts: 1-255 bytes of UTF-8 without '/' or NUL, no lone surrogate). */
export const name = checkName;

/** A page-aligned integer in [min, max]. */
export function pages(what: string, v: unknown, min: number, max: number): number {
  const n = int(what, v, min, max);
  if (n % PAGE !== 0) throw daxError('EINVAL', `${what} ${n} is not a multiple of the page size ${PAGE}`);
  return n;
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
