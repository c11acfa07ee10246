// The native-backed Storage: a device file mapped MAP_SHARED (see native/device.cc).
// Independent of userfaultfd, so pool tools work without it.
import { daxError } from '../errors';
import { native, type DeviceInfo } from '../native/addon';
import { CHUNK_SIZE, chunkLengths, viewOf, type Storage, type StorageKind } from './storage';

export interface OpenDeviceOptions {
  /** Create a regular or tmpfs file of `size` bytes if it does not exist (or is empty). */
  create?: boolean;
  size?: number;
  /** Take an exclusive lock on the device; a second holder gets EBUSY. */
  exclusive?: boolean;
  /** Map the device for direct access (default true). A daemon client needs only the fd, for installs. */
  view?: boolean;
  /** Open read-write (default true). */
  writable?: boolean;
}

export class DeviceStorage implements Storage {
  readonly path: string;
  readonly kind: StorageKind;
  readonly size: number;
  readonly deviceId: number;
  readonly mapSync: boolean;
  /** Install granularity: 2 MiB on device-dax and hugetlbfs, else 4096. */
  readonly align: number;
  /** A tmpfs mounted with huge pages: aligned 2 MiB windows map as one PMD. */
  readonly huge: boolean;
  private chunks: Buffer[] | undefined;
  private isClosed = false;

  constructor(path: string, info: DeviceInfo) {
    this.path = path;
    this.kind = info.kind;
    this.size = info.size;
    this.deviceId = info.id;
    this.mapSync = info.mapSync;
    this.align = info.align;
    this.huge = info.huge === true;
    if (this.kind === 'file') {
      this.persistAsync = async (offset, length) => {
        this.checkPersist(offset, length);
        await native().devicePersistAsync(this.deviceId, offset, length);
      };
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  view(offset: number, length: number): Buffer {
    if (this.isClosed) throw daxError('ECLOSED', `device '${this.path}' is closed`);
    if (this.chunks === undefined) {
      const n = native();
      this.chunks = chunkLengths(this.size).map((len, i) => n.deviceView(this.deviceId, i * CHUNK_SIZE, len));
    }
    return viewOf(this.chunks, this.size, offset, length);
  }

  persist(offset: number, length: number): void {
    this.checkPersist(offset, length);
    native().devicePersist(this.deviceId, offset, length);
  }

  /** Only on a disk file (Storage.persistAsync); set in the constructor. */
  persistAsync?(offset: number, length: number): Promise<void>;

  private checkPersist(offset: number, length: number): void {
    if (this.isClosed) throw daxError('ECLOSED', `device '${this.path}' is closed`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw daxError('EINVAL', `persist [${offset}, +${length}) outside device '${this.path}' of ${this.size} bytes`);
    }
  }

  persistAll(): void {
    this.persist(0, this.size);
  }

  zero(offset: number, length: number, resident = false): void {
    if (this.isClosed) throw daxError('ECLOSED', `device '${this.path}' is closed`);
    native().deviceZero(this.deviceId, offset, length, resident);
  }

  async zeroPersistAsync(zero: Float64Array, persist: Float64Array, background = false): Promise<void> {
    if (this.isClosed) throw daxError('ECLOSED', `device '${this.path}' is closed`);
    for (let i = 0; i < zero.length; i += 2) this.checkPage(zero[i]!, zero[i + 1]!, 'zero');
    for (let i = 0; i < persist.length; i += 2) this.checkPersist(persist[i]!, persist[i + 1]!);
    await native().deviceZeroPersistAsync(this.deviceId, zero, persist, background);
  }

  private checkPage(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size ||
      offset % 4096 !== 0 || length % 4096 !== 0) {
      throw daxError('EINVAL', `${what} [${offset}, +${length}) is not page-aligned inside device '${this.path}' of ${this.size} bytes`);
    }
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.chunks = undefined;
    native().deviceClose(this.deviceId);
  }
}

/** Opens (and with `create`, creates) a device; throws ENOENT, EBUSY, ENODEV, EINVAL... with the path in the message. */
export function openDevice(path: string, opts: OpenDeviceOptions = {}): DeviceStorage {
  if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) {
    throw daxError('EINVAL', `device path must be a non-empty string without NUL`);
  }
  if (opts.create) {
    const s = opts.size;
    if (s === undefined || !Number.isSafeInteger(s) || s <= 0 || s % 4096 !== 0) {
      throw daxError('EINVAL', `device size must be a positive multiple of 4096, got ${String(s)}`);
    }
  }
  const info = native().deviceOpen(path, {
    create: opts.create === true,
    size: opts.size ?? 0,
    exclusive: opts.exclusive === true,
    view: opts.view !== false,
    writable: opts.writable !== false,
  });
  return new DeviceStorage(path, info);
}
