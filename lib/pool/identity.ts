// Which device is this? A daemon client maps ranges of its *own* descriptor of the
// pool's device, so before any mapping it must prove that descriptor is the daemon's
// device, not a same-named file elsewhere (a relative path resolved in another cwd,
// another mount namespace, a copy of the image). Identity = the pool's UUID read
// from the superblock through that very descriptor, plus what fstat says of it:
// st_dev/st_ino for a file, st_rdev for a device-dax node. docs/daemon.md.
import { daxError, type DaxmapError } from '../errors';
import { native } from '../native/addon';
import { BLOCK_SIZE, decodeSuperblock } from './format';
import { openDevice, type DeviceStorage } from '../device/device';

/** What the daemon says of its device (hello), and what a client finds behind its descriptor. */
export interface DeviceIdentity {
  /** The pool's UUID (superblock), or null if neither superblock copy is valid. */
  uuid: string | null;
  /** st_dev, st_ino, st_rdev as decimal strings (u64). */
  dev: string;
  ino: string;
  rdev: string;
  /** A character device (device-dax): the node names the device by st_rdev. */
  charDevice: boolean;
}

/** fstat of `dev`'s own descriptor; `uuid` as given (the daemon knows its pool's). */
export function statIdentity(dev: { deviceId: number }, uuid: string | null): DeviceIdentity {
  const s = native().deviceIdentify(dev.deviceId, 0);
  return { uuid, dev: s.dev.toString(), ino: s.ino.toString(), rdev: s.rdev.toString(), charDevice: s.charDevice };
}

/** Mode and owner of `dev`'s own descriptor (fstat), whatever its path names now. */
export function statOwner(dev: { deviceId: number }): { mode: number; uid: number; gid: number } {
  const s = native().deviceIdentify(dev.deviceId, 0);
  return { mode: s.mode, uid: s.uid, gid: s.gid };
}

/** fstat of `dev`'s own descriptor and the pool UUID in the superblock bytes read through it. */
export function readIdentity(dev: DeviceStorage): DeviceIdentity {
  const len = Math.min(2 * BLOCK_SIZE, dev.size);
  const s = native().deviceIdentify(dev.deviceId, len);
  let uuid: string | null = null;
  for (let copy = 0; copy * BLOCK_SIZE + BLOCK_SIZE <= len && uuid === null; copy++) {
    const r = decodeSuperblock(s.head.subarray(copy * BLOCK_SIZE, (copy + 1) * BLOCK_SIZE), dev.size);
    if (r.ok) uuid = r.sb.uuid;
  }
  return { uuid, dev: s.dev.toString(), ino: s.ino.toString(), rdev: s.rdev.toString(), charDevice: s.charDevice };
}

/** Why `mine` is not the device `theirs` describes, or null when it is. */
export function identityMismatch(mine: DeviceIdentity, theirs: DeviceIdentity): string | null {
  if (mine.uuid === null) return 'it is not a daxmap pool (no valid superblock)';
  if (theirs.uuid !== mine.uuid) return `it holds another pool (uuid ${mine.uuid}, daxmapd's is ${String(theirs.uuid)})`;
  if (mine.charDevice !== theirs.charDevice) return `it is ${mine.charDevice ? 'a character device' : 'a file'}, daxmapd's is ${theirs.charDevice ? 'a character device' : 'a file'}`;
  if (mine.charDevice) {
    if (mine.rdev !== theirs.rdev) return `it is device ${mine.rdev}, daxmapd's is device ${theirs.rdev} (the same pool image on another device)`;
  } else if (mine.dev !== theirs.dev || mine.ino !== theirs.ino) {
    return `it is file ${mine.dev}:${mine.ino}, daxmapd's is ${theirs.dev}:${theirs.ino} (a copy of the same pool image)`;
  }
  return null;
}

/** Parses a DeviceIdentity from untrusted JSON (the daemon's hello), or null. */
export function parseIdentity(v: unknown): DeviceIdentity | null {
  if (typeof v !== 'object' || v === null) return null;
  const o = v as Record<string, unknown>;
  const num = (x: unknown): x is string => typeof x === 'string' && /^[0-9]{1,20}$/.test(x);
  if (!(o.uuid === null || typeof o.uuid === 'string') || !num(o.dev) || !num(o.ino) || !num(o.rdev) || typeof o.charDevice !== 'boolean') return null;
  return { uuid: o.uuid, dev: o.dev, ino: o.ino, rdev: o.rdev, charDevice: o.charDevice };
}

/**
 * The coded error (`EXDEV`) for a descriptor that is not the daemon's device,
 * naming both paths: the one this process opened and the daemon's.
 */
export function deviceMismatchError(openedPath: string, daemonPath: string, why: string): DaxmapError {
  return daxError('EXDEV', `the device this process opened at '${openedPath}' is not daxmapd's device '${daemonPath}': ${why}; ` +
    `refusing to map (stores would go to another file). Is daxmapd's device visible at the same path here (same mount namespace)?`, { path: openedPath });
}

/**
 * A daemon client's device: opens `path` read-write (no view: only the descriptor,
 * for installs) and proves through that descriptor that it is the device `theirs`
 * describes, served by daxmapd at `daemonPath` (normally the same path). Throws the
 * open's error (ENOENT, EACCES, ...) naming the path, or EXDEV naming both paths;
 * the descriptor is closed then.
 */
export function openVerifiedDevice(path: string, theirs: DeviceIdentity, daemonPath = path): DeviceStorage {
  let dev: DeviceStorage;
  try {
    dev = openDevice(path, { view: false });
  } catch (err) {
    const e = err as DaxmapError;
    throw daxError(e.code ?? 'EIO', `this process cannot open daxmapd's device '${path}' itself (${e.message}), so it may not map`, { path, cause: err });
  }
  try {
    const why = identityMismatch(readIdentity(dev), theirs);
    if (why !== null) throw deviceMismatchError(path, daemonPath, why);
    return dev;
  } catch (err) {
    dev.close();
    throw err;
  }
}
