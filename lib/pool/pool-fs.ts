// The pool's filesystem as handles: PoolFs (an open pool) and PoolFsFile (a file
// in it), over PoolCore. The service (lib/service) is their user; the package's
// API is lib/client's Pool / PoolFile. Every call is async and runs as one
// lock-validator operation; argument checks happen here or in the core before any
// lock is taken.

import { existsSync, rmSync, statSync } from 'node:fs';
import { daxError, isDaxError } from '../errors';
import type { Storage, StorageKind } from '../device/storage';
import { openDevice } from '../device/device';
import { withOperation } from '../lock/index';
import { logger } from '../log';
import { PoolCore, type CleanSpace, type ExtentInfo, type Inode } from './core';
import { BLOCK_SIZE, formatStorage, readSuperblock, type FormatOptions } from './format';
import { DEFAULT_CLEAN_TARGET, cleanTargetFromEnv } from './zeroer';

export interface PoolFsCreateOptions {
  /** Bytes for a new regular/tmpfs device file (default 1 GiB). An existing file keeps its size. */
  size?: number;
  /** Format over an existing pool. */
  force?: boolean;
}

/** How an opened pool converts the blocks of write faults (docs/pool.md, "Durability"). */
export interface PoolFsOpenOptions {
  /** Record them unwritten and convert later (default: on for a disk-file pool only). */
  deferConversion?: boolean;
  /** Period of the writeback that converts them, ms (default 5000). */
  writebackMs?: number;
  /**
   * Free space kept zeroed in the background, bytes (docs/pool.md, "Clean free
   * space"): default DAXMAP_CLEAN_TARGET, else 256 MiB; at most the data area; 0
   * turns the zeroer off.
   */
  cleanTarget?: number;
}

export const WRITEBACK_MS = 5000;

export interface PoolFsFileStat {
  name: string;
  size: number;
  /** Bytes of blocks mapped (written and unwritten). */
  allocated: number;
  extents: ExtentInfo[];
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
}

export interface PoolFsStatFs {
  /** Bytes in the data area. */
  size: number;
  /** Bytes not owned by any file (the reserve's stock counts as free: allocations take it back). */
  free: number;
  blockSize: number;
  /** Bytes in the reserve of pre-zeroed blocks, those handed out to mappings included (docs/pool.md, "Reserve"). */
  reserved?: number;
  /** Free space kept zeroed in the background (docs/pool.md, "Clean free space"). */
  clean?: CleanSpace;
}

/** What the pool is and where it stands (`daxmap mkfs` and `daxmap stat` print it). */
export interface PoolFsInfo {
  /** The device path, its kind and size in bytes. */
  device: string;
  kind: StorageKind;
  deviceBytes: number;
  /** The device's mapping granularity: 2 MiB on devdax and hugetlbfs, else 4096. */
  granularity: number;
  uuid: string;
  formatVersion: number;
  /** When the pool was formatted, ms since the epoch. */
  createdMs: number;
  files: number;
  maxFiles: number;
  /** Bytes of metadata log in use, and its capacity. */
  logBytesUsed: number;
  logBytes: number;
  checkpointGeneration: number;
  /** Log records replayed when the pool was opened. */
  replayedRecords: number;
}

export const DEFAULT_POOL_SIZE = 1 << 30;

const log = logger('pool');
const cores = new WeakMap<PoolFs, PoolCore>();
const inodes = new WeakMap<PoolFsFile, Inode>();

/** The core behind a PoolFs (internal: the fault policy, through internal.ts, and the tests). */
export function coreOf(pool: PoolFs): PoolCore {
  const c = cores.get(pool);
  if (!c) throw daxError('EINVAL', 'not a PoolFs');
  return c;
}

/** The inode behind a PoolFsFile (internal). */
export function inodeOf(file: PoolFsFile): Inode {
  const i = inodes.get(file);
  if (!i) throw daxError('EINVAL', 'not a PoolFsFile');
  return i;
}

function busy(path: string, cause: unknown): Error {
  return daxError('EBUSY', `pool '${path}' is in use by another service (another process, or another thread of this one). ` +
    `A pool has one owner at a time: to share it, run the daemon (daxmapd --device ${path}) and connect to it with Pool.connect(socketPath)`, { cause, path });
}

function openStorage(path: string, create: boolean, size: number): Storage {
  try {
    return openDevice(path, { create, size, exclusive: true });
  } catch (e) {
    if (isDaxError(e, 'EBUSY')) throw busy(path, e);
    if (isDaxError(e, 'ENOENT')) throw daxError('ENOENT', `no pool device at '${path}'`, { cause: e, path });
    // Anything else (EISDIR, EACCES, ENODEV, ...) says why the path cannot be opened
    // as a device, before any byte of it was read: it keeps its code. EBADF is kept
    // for a device that was read and is not a sound pool.
    throw e;
  }
}

export class PoolFs {
  /** Operations in flight: close() waits for them. */
  private readonly inflight = new Set<Promise<unknown>>();
  private closing = false;
  private writebackTimer: NodeJS.Timeout | null = null;
  private writebackSoon = false;

  private constructor(core: PoolCore, opts: PoolFsOpenOptions) {
    cores.set(this, core);
    if (opts.deferConversion !== undefined) core.deferConversion = opts.deferConversion;
    core.zeroer.setTarget(opts.cleanTarget ?? cleanTargetFromEnv() ?? DEFAULT_CLEAN_TARGET);
    if (!core.deferConversion) return;
    this.writebackTimer = setInterval(() => this.writeback(), opts.writebackMs ?? WRITEBACK_MS);
    this.writebackTimer.unref();
    core.onBacklog = () => {
      if (this.writebackSoon) return;
      this.writebackSoon = true;
      setImmediate(() => {
        this.writebackSoon = false;
        this.writeback();
      });
    };
  }

  /** Convert every queued block now (data, then log); a failure is logged, and the next fsync or sync reports it. */
  private writeback(): void {
    if (this.closing || coreOf(this).closed) return;
    this.call('pool.writeback', (core) => core.writeback()).catch((e: unknown) => {
      log.warn({ path: this.path, err: e }, 'writeback of deferred conversions failed');
    });
  }

  /** Format a device (creating a regular/tmpfs file of `size` if missing), then open it. */
  static async create(device: string, opts: PoolFsCreateOptions = {}): Promise<PoolFs> {
    return withOperation('pool.create', () => {
      if (typeof device !== 'string' || device.length === 0) throw daxError('EINVAL', 'device path must be a non-empty string');
      const size = opts.size ?? DEFAULT_POOL_SIZE;
      if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) throw daxError('EINVAL', `pool size must be a positive multiple of 4096, got ${String(opts.size)}`);
      if (opts.size !== undefined && existsSync(device)) {
        const st = statSync(device);
        if (st.isFile() && st.size !== 0 && st.size !== size) {
          throw daxError('EINVAL', `'${device}' exists with ${st.size} bytes, not the ${size} asked for: remove it first or leave out the size`, { path: device });
        }
      }
      const existed = existsSync(device);
      const storage = openStorage(device, true, size);
      try {
        return PoolFs.createOn(storage, opts);
      } catch (e) {
        storage.close();
        if (!existed) rmSync(device, { force: true }); // do not leave a half-made file behind
        throw e;
      }
    });
  }

  /** Open an existing pool: ENOENT if missing, EBADF if it is not a sound daxmap pool, EBUSY if owned. */
  static async open(device: string, opts: PoolFsOpenOptions = {}): Promise<PoolFs> {
    return withOperation('pool.open', () => {
      if (typeof device !== 'string' || device.length === 0) throw daxError('EINVAL', 'device path must be a non-empty string');
      const storage = openStorage(device, false, 0);
      try {
        return PoolFs.openOn(storage, opts);
      } catch (e) {
        storage.close();
        throw e;
      }
    });
  }

  /** Internal: format a Storage (MemoryStorage in tests) and open it. */
  static createOn(storage: Storage, opts: { force?: boolean } & FormatOptions & PoolFsOpenOptions = {}): PoolFs {
    if (!opts.force && isPool(storage)) {
      throw daxError('EEXIST', `'${storage.path}' already holds a daxmap pool (use force to format over it)`, { path: storage.path });
    }
    formatStorage(storage, opts);
    return PoolFs.openOn(storage, opts);
  }

  /** Internal: open a pool on a Storage. */
  static openOn(storage: Storage, opts: PoolFsOpenOptions = {}): PoolFs {
    return new PoolFs(PoolCore.open(storage), opts);
  }

  /** Run a public call: one lock-validator operation, refused after close, waited for by close. */
  private call<T>(name: string, fn: (core: PoolCore) => T | Promise<T>): Promise<T> {
    const core = coreOf(this);
    if (this.closing || core.closed) return Promise.reject(daxError('EBADF', `pool '${core.storage.path}' is closed`));
    const p = withOperation(name, () => fn(core));
    this.inflight.add(p);
    const done = (): void => { this.inflight.delete(p); };
    p.then(done, done);
    return p;
  }

  /** @internal used by PoolFsFile */
  fileCall<T>(name: string, fn: (core: PoolCore) => T | Promise<T>): Promise<T> {
    return this.call(name, fn);
  }

  openFile(name: string, opts: { create?: boolean; exclusive?: boolean; mode?: number; uid?: number; gid?: number } = {}): Promise<PoolFsFile> {
    return this.call('pool.openFile', async (core) => {
      const inode = await core.createOrOpen(name, opts.create === true, opts);
      return new PoolFsFile(this, inode);
    });
  }

  unlink(name: string): Promise<void> {
    return this.call('pool.unlink', (core) => core.unlink(name));
  }

  rename(from: string, to: string): Promise<void> {
    return this.call('pool.rename', (core) => core.rename(from, to));
  }

  list(): Promise<string[]> {
    return this.call('pool.list', (core) => [...core.state.names.keys()].sort());
  }

  statfs(): Promise<PoolFsStatFs> {
    return this.call('pool.statfs', (core) => core.statfs());
  }

  info(): Promise<PoolFsInfo> {
    return this.call('pool.info', (core) => {
      const { storage, geometry: g, sb } = core;
      return {
        device: storage.path, kind: storage.kind, deviceBytes: storage.size, granularity: storage.align ?? 4096, uuid: sb.uuid, formatVersion: sb.version,
        createdMs: sb.createdMs, files: core.state.files.size, maxFiles: g.maxFiles, logBytesUsed: core.txn.log.used,
        logBytes: g.logBlocks * BLOCK_SIZE, checkpointGeneration: sb.ckptGen, replayedRecords: core.openInfo.replay.records,
      };
    });
  }

  /**
   * Resolves once the pool's background work is idle: the zeroer of free space and
   * the reserve's refill (benchmarks wait for it, so that nothing runs beside what
   * they time).
   */
  settled(): Promise<void> {
    return this.call('pool.settled', async (core) => {
      for (;;) {
        await core.zeroer.settled();
        await core.reserve.settled();
        if (!core.zeroer.busy && !core.reserve.busy) return;
      }
    });
  }

  /** Set the target of clean free space, bytes (0: off); see PoolFsOpenOptions.cleanTarget. */
  setCleanTarget(bytes: number): void {
    coreOf(this).zeroer.setTarget(bytes);
  }

  /** Make every file's data and all metadata durable. */
  sync(): Promise<void> {
    return this.call('pool.sync', (core) => core.sync(false));
  }

  get path(): string {
    return coreOf(this).storage.path;
  }

  get closed(): boolean {
    return this.closing || coreOf(this).closed;
  }

  /** Wait for calls in flight, flush, checkpoint, release the device. Idempotent. */
  async close(): Promise<void> {
    const core = coreOf(this);
    if (this.closing) return;
    this.closing = true;
    if (this.writebackTimer) clearInterval(this.writebackTimer);
    await withOperation('pool.close', async () => {
      while (this.inflight.size) await Promise.allSettled([...this.inflight]);
      try {
        const zeroing = core.zeroer.stop();
        if (zeroing) await zeroing;
        await core.reserve.close();
        await core.sync(true);
      } finally {
        core.release();
      }
    });
  }
}

/** True when the storage carries a daxmap superblock (valid or not). */
export function isPool(storage: Storage): boolean {
  try {
    readSuperblock(storage);
    return true;
  } catch (e) {
    return !(isDaxError(e, 'EBADF') && /not a daxmap pool|too small/.test(e.message));
  }
}

export class PoolFsFile {
  private closed = false;

  /** @internal created by PoolFs.openFile */
  constructor(private readonly pool: PoolFs, inode: Inode) {
    inodes.set(this, inode);
  }

  /** The name the file had when opened or last renamed. */
  get name(): string {
    return inodeOf(this).name;
  }

  private call<T>(op: string, fn: (core: PoolCore, f: Inode) => T | Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(daxError('EBADF', `file '${this.name}' is closed`));
    const f = inodeOf(this);
    return this.pool.fileCall(op, (core) => fn(core, f));
  }

  stat(): Promise<PoolFsFileStat> {
    return this.call('file.stat', (core, f) => {
      core.checkLive(f);
      return { name: f.name, ...core.statFile(f), mode: f.mode, uid: f.uid, gid: f.gid, mtimeMs: f.mtimeMs };
    });
  }

  truncate(size: number): Promise<void> {
    return this.call('file.truncate', (core, f) => core.truncate(f, size));
  }

  fallocate(offset: number, length: number, opts: { keepSize?: boolean } = {}): Promise<void> {
    return this.call('file.fallocate', (core, f) => core.fallocate(f, offset, length, opts.keepSize === true));
  }

  punchHole(offset: number, length: number): Promise<void> {
    return this.call('file.punchHole', (core, f) => core.punchHole(f, offset, length));
  }

  zeroRange(offset: number, length: number, opts: { keepSize?: boolean } = {}): Promise<void> {
    return this.call('file.zeroRange', (core, f) => core.zeroRange(f, offset, length, opts.keepSize === true));
  }

  write(data: Uint8Array, offset: number): Promise<number> {
    return this.call('file.write', (core, f) => core.write(f, data, offset));
  }

  read(into: Uint8Array, offset: number): Promise<number> {
    return this.call('file.read', (core, f) => core.read(f, into, offset));
  }

  fsync(): Promise<void> {
    return this.call('file.fsync', (core, f) => core.fsync(f));
  }

  /** Release the handle (data is not flushed: fsync first when it matters). Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
  }
}
