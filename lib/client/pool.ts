// The public API: Pool, PoolFile, Mapping. A Pool is a client of a service that owns
// the pool and answers faults; in embedded mode the service runs in a worker thread
// this Pool started (Pool.create/open) or that another thread shares with it
// (Pool.attach). Every call is async. Arguments are checked here, before anything is
// sent.
import path from 'node:path';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { daxError, type DaxmapError } from '../errors';
import { TrappedRegion } from '../native/region';
import type { FaultStatsSnapshot } from '../fault/stats';
import type { Hello, MapOptions, StartReply, StartRequest } from '../service/protocol';
import { Rpc, type RpcChannel } from './rpc';
import { SocketRpc } from './socket-rpc';
import type { DeviceStorage } from '../device/device';
import { openVerifiedDevice, parseIdentity } from '../device/identity';
import { DEFAULT_CONNECT_TIMEOUT_MS, SocketFaultChannel, type ConnectTimeoutOptions } from '../native/socket-channel';
import { Deadline, checkSignal, checkTimeout } from '../deadline';

const PAGE = 4096;
const MAX_NAME = 255;

export interface CreateOptions {
  /** Size of a new regular/tmpfs device file, bytes (default 1 GiB). */
  size?: number;
  /** Format even over an existing pool. */
  force?: boolean;
}

export interface FileStat {
  size: number;
  allocated: number;
  extents: { offset: number; length: number; state: 'written' | 'unwritten' }[];
}

export interface StatFs {
  size: number;
  free: number;
  blockSize: number;
}

export interface MapRequestOptions {
  /** Page-aligned file offset (default 0). */
  offset?: number;
  /** Bytes (default: the rest of the file). May extend past EOF: touching past EOF is SIGBUS. */
  length?: number;
  /** Copy-on-write: reads see the file, writes stay in this mapping (default false). */
  private?: boolean;
  /** MAP_SYNC semantics: a write fault is answered only once its block's metadata is durable. */
  sync?: boolean;
  /** Answer whole aligned 2 MiB windows where the file allows (default true). */
  faultAround?: boolean;
}

/** Pool.connect(): `timeoutMs` (default 10 000, Infinity for none) bounds the whole connect; `signal` aborts it. */
export type ConnectOptions = ConnectTimeoutOptions;

/** A value that can be posted to a worker thread: `worker.postMessage(shared, shared.transferList)`. */
export interface SharedPool {
  readonly kind: 'daxmap.shared-pool';
  readonly port: MessagePort;
  readonly transferList: MessagePort[];
}

function checkInt(what: string, v: unknown, min = 0): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw daxError('EINVAL', `${what} must be an integer >= ${min}, got ${String(v)}`);
  }
  return v;
}

function checkName(name: unknown): string {
  if (typeof name !== 'string') throw daxError('EINVAL', `file name must be a string`);
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes < 1 || bytes > MAX_NAME || name.includes('/') || name.includes('\0')) {
    throw daxError('EINVAL', `file name '${name}' must be 1-${MAX_NAME} bytes of UTF-8 without '/' or NUL`);
  }
  return name;
}

function checkBytes(what: string, v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) throw daxError('EINVAL', `${what} must be a Buffer or Uint8Array`);
  return v;
}

const SERVICE_ENTRY = path.join(__dirname, '..', 'service', 'worker.js');

export class Pool {
  private readonly files = new Set<PoolFile>();
  private isClosed = false;
  private closing: Promise<void> | null = null;

  private constructor(
    /** @internal */ readonly rpc: RpcChannel,
    /** @internal */ readonly hello: Hello,
    private readonly worker: Worker | null,
    /** daemon mode: this process's own handle on the device, and its fault connection */
    private readonly remote: { device: DeviceStorage | null; channel: SocketFaultChannel | null; mapError: DaxmapError | null } | null = null,
  ) {
    rpc.onNotice = (n) => {
      if (n.notice === 'closed') this.lost();
    };
  }

  /**
   * A Pool served by the daemon daxmapd listening on `socketPath`, with exactly the
   * embedded API. Mapping needs this process to be able to open the pool's device
   * itself (read-write); faults are forwarded to the daemon natively, so a thread
   * blocked in a fault is answered whatever the JS threads do.
   *
   * `opts.timeoutMs` (default 10 000; Infinity: none) bounds the whole connect —
   * connection, hello, device check, fault channel — and rejects with ETIMEDOUT;
   * `opts.signal` aborts it (an AbortError, code ABORT_ERR). Nothing here blocks the
   * event loop: a full listen backlog is retried on a timer.
   */
  static async connect(socketPath: string, opts: ConnectOptions = {}): Promise<Pool> {
    if (typeof socketPath !== 'string' || socketPath.length === 0) throw daxError('EINVAL', 'socket path must be a non-empty string');
    if (typeof opts !== 'object' || opts === null) throw daxError('EINVAL', 'connect options must be an object');
    const dl = new Deadline(`connect to daxmapd at '${socketPath}'`, checkTimeout(opts.timeoutMs, DEFAULT_CONNECT_TIMEOUT_MS), checkSignal(opts.signal));
    dl.check('connection');
    const rpc = await SocketRpc.connect(socketPath, dl);
    let device: DeviceStorage | null = null;
    let channel: SocketFaultChannel | null = null;
    try {
      const h = await dl.race(rpc.call<{ session: string; device: string; identity?: unknown; mayMap: boolean }>('hello', [{ pid: process.pid }]), 'answer to hello');
      // Mapping installs ranges of this process's own descriptor of the device: it
      // must be daxmapd's device, proved through that descriptor (pool UUID, st_dev/
      // st_ino), or map() refuses with the reason (ENOENT, EACCES, EXDEV, ...).
      let mapError: DaxmapError | null = null;
      if (h.mayMap) {
        const theirs = parseIdentity(h.identity);
        try {
          if (theirs === null) throw daxError('EPROTO', `daxmapd did not say which device it serves (an older daemon?); cannot prove '${h.device}' is it`);
          device = openVerifiedDevice(h.device, theirs);
        } catch (err) {
          device = null;
          mapError = err as DaxmapError;
        }
      }
      let pool: Pool | null = null;
      if (device) {
        await dl.race(rpc.call('attachDevice', [device.deviceId]), 'answer to attachDevice');
        channel = await SocketFaultChannel.connectWithin(socketPath, {
          session: BigInt(h.session),
          ref: false,
          onClose: () => pool?.lost(),
        }, dl);
        dl.check('fault channel');
      }
      pool = new Pool(rpc, { channel: channel ? channel.id : 0, deviceId: device ? device.deviceId : 0, path: h.device }, null, { device, channel, mapError });
      rpc.onGone = () => pool?.lost();
      return pool;
    } catch (err) {
      channel?.close();
      device?.close();
      rpc.destroy();
      throw err;
    }
  }

  /** Formats the device (creating a regular/tmpfs file at `size`), then opens it. EEXIST over an existing pool unless `force`. */
  static async create(device: string, opts: CreateOptions = {}): Promise<Pool> {
    if (typeof device !== 'string' || device.length === 0) throw daxError('EINVAL', 'device path must be a non-empty string');
    if (opts.size !== undefined) checkInt('size', opts.size, 1);
    return Pool.start({ device, mode: 'create', ...(opts.size !== undefined ? { size: opts.size } : {}), force: opts.force === true });
  }

  /** Opens an existing pool: ENOENT, EBADF (not a pool), EBUSY (another service holds it). */
  static async open(device: string): Promise<Pool> {
    if (typeof device !== 'string' || device.length === 0) throw daxError('EINVAL', 'device path must be a non-empty string');
    return Pool.start({ device, mode: 'open' });
  }

  /** In a worker thread: a Pool on the service another thread shared with `share()`. */
  static async attach(shared: SharedPool): Promise<Pool> {
    if (!shared || shared.kind !== 'daxmap.shared-pool' || !shared.port) throw daxError('EINVAL', 'not a value from pool.share()');
    const rpc = new Rpc(shared.port, null);
    const hello = await rpc.call<Hello>('hello');
    return new Pool(rpc, hello, null);
  }

  private static async start(req: StartRequest): Promise<Pool> {
    // A clean execArgv: the service runs compiled JS only, and must not pay for loader
    // hooks (--import/--require) the application's main thread was started with.
    const worker = new Worker(SERVICE_ENTRY, { workerData: req, execArgv: [] });
    const reply = await new Promise<StartReply>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(daxError('EIO', `the pool service exited (${code}) before it started`)));
    });
    if (!reply.ok) {
      await worker.terminate();
      const e = new Error(reply.error.message) as Error & { code: string };
      e.code = reply.error.code;
      throw e;
    }
    worker.removeAllListeners('exit');
    worker.removeAllListeners('error');
    worker.on('error', () => {});
    const rpc = new Rpc(worker as unknown as MessagePort, worker);
    return new Pool(rpc, reply.hello, worker);
  }

  get path(): string {
    return this.hello.path;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** A value to post to a worker thread, where `Pool.attach()` turns it into a Pool on the same service. */
  share(): SharedPool {
    this.check();
    if (this.remote) throw daxError('EINVAL', 'a pool served by daxmapd is not shared between threads: call Pool.connect() in the other thread');
    const { port1, port2 } = new MessageChannel();
    void this.rpc.call('attach', [port1], [port1]);
    return { kind: 'daxmap.shared-pool', port: port2, transferList: [port2] };
  }

  async openFile(name: string, opts: { create?: boolean } = {}): Promise<PoolFile> {
    this.check();
    checkName(name);
    const r = await this.rpc.call<{ handle: number; name: string }>('openFile', [name, { create: opts.create === true }]);
    const f = new PoolFile(this, r.handle, r.name);
    this.files.add(f);
    return f;
  }

  async unlink(name: string): Promise<void> {
    this.check();
    await this.rpc.call('unlink', [checkName(name)]);
  }

  async rename(from: string, to: string): Promise<void> {
    this.check();
    await this.rpc.call('rename', [checkName(from), checkName(to)]);
  }

  async list(): Promise<string[]> {
    this.check();
    return this.rpc.call<string[]>('list');
  }

  async statfs(): Promise<StatFs> {
    this.check();
    return this.rpc.call<StatFs>('statfs');
  }

  /** Fault counters by kind and latency percentiles (µs). */
  async stats(): Promise<FaultStatsSnapshot> {
    this.check();
    return this.rpc.call<FaultStatsSnapshot>('stats');
  }

  /**
   * Closes the pool. The pool that created/opened it closes the service: every
   * mapping in every thread is revoked first (this thread's buffers are detached;
   * other threads' mappings get SIGBUS on touch until they notice), the pool is
   * flushed and released. An attached pool only lets go of its own files and
   * mappings. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      for (const f of [...this.files]) await f.closeLocal();
      this.isClosed = true;
      if (this.worker) {
        await this.rpc.call('close').catch(() => {});
        await this.worker.terminate();
      } else {
        this.rpc.close();
      }
      this.remote?.channel?.close();
      this.remote?.device?.close();
    })();
    return this.closing;
  }

  /** @internal a request to the service (tests, tools). */
  request<T>(op: string, args: unknown[] = []): Promise<T> {
    this.check();
    return this.rpc.call<T>(op, args);
  }

  /** @internal Why this process may not map (daemon mode): a fresh error per call. */
  cannotMap(name: string): DaxmapError {
    const e = this.remote?.mapError;
    if (!e) return daxError('EACCES', `map '${name}': this process cannot open the pool's device '${this.hello.path}' itself, so it may not map it`);
    return daxError(e.code, `map '${name}': ${e.message.replace(/^[A-Z_]+: /, '')}`, { ...(e.path !== undefined ? { path: e.path } : {}), cause: e });
  }

  /** @internal */
  forgetFile(f: PoolFile): void {
    this.files.delete(f);
  }

  /** @internal The owner closed the pool, or the daemon went away: our mappings were revoked; detach them here. */
  lost(): void {
    if (this.isClosed) return;
    for (const f of this.files) f.detachAll();
    this.isClosed = true;
  }

  private check(): void {
    if (this.isClosed) throw daxError('ECLOSED', `the pool '${this.hello.path}' is closed`);
  }
}

export class PoolFile {
  private readonly mappings = new Set<Mapping>();
  private isClosed = false;

  /** @internal */
  constructor(readonly pool: Pool, /** @internal */ readonly handle: number, readonly name: string) {}

  private call<T>(op: string, args: unknown[] = []): Promise<T> {
    if (this.pool.closed) return Promise.reject(daxError('ECLOSED', `the pool '${this.pool.path}' is closed`));
    if (this.isClosed) return Promise.reject(daxError('EBADF', `file '${this.name}' is closed`));
    return this.pool.request<T>(op, [this.handle, ...args]);
  }

  stat(): Promise<FileStat> {
    return this.call('stat');
  }

  truncate(size: number): Promise<void> {
    checkInt('size', size);
    return this.call('truncate', [size]);
  }

  fallocate(offset: number, length: number, opts: { keepSize?: boolean } = {}): Promise<void> {
    checkInt('offset', offset);
    checkInt('length', length, 1);
    return this.call('fallocate', [offset, length, { keepSize: opts.keepSize === true }]);
  }

  punchHole(offset: number, length: number): Promise<void> {
    checkInt('offset', offset);
    checkInt('length', length, 1);
    return this.call('punchHole', [offset, length]);
  }

  zeroRange(offset: number, length: number, opts: { keepSize?: boolean } = {}): Promise<void> {
    checkInt('offset', offset);
    checkInt('length', length, 1);
    return this.call('zeroRange', [offset, length, { keepSize: opts.keepSize === true }]);
  }

  /** Writes all of `data` at `offset`; resolves to the bytes written. */
  async write(data: Uint8Array, offset: number): Promise<number> {
    checkBytes('data', data);
    checkInt('offset', offset);
    // A copy: `data` may be a trapped mapping, whose pages must be faulted here, on
    // this thread, never by the service.
    return this.call<number>('write', [Uint8Array.prototype.slice.call(data), offset]);
  }

  /** Reads into `into` from `offset`; resolves to the bytes read (short at EOF). */
  async read(into: Uint8Array, offset: number): Promise<number> {
    checkBytes('into', into);
    checkInt('offset', offset);
    if (into.length === 0) return 0;
    const got = await this.call<Uint8Array>('read', [into.length, offset]);
    into.set(got);
    return got.length;
  }

  fsync(): Promise<void> {
    return this.call('fsync');
  }

  /** Maps [offset, offset+length) of the file. See MapRequestOptions. */
  async map(opts: MapRequestOptions = {}): Promise<Mapping> {
    if (this.isClosed) throw daxError('EBADF', `file '${this.name}' is closed`);
    const offset = checkInt('offset', opts.offset ?? 0);
    if (offset % PAGE !== 0) throw daxError('EINVAL', `mapping offset ${offset} is not a multiple of the page size ${PAGE}`);
    let length = opts.length;
    if (length === undefined) {
      const st = await this.stat();
      length = st.size - offset;
      if (length <= 0) throw daxError('EINVAL', `file '${this.name}' has no bytes at offset ${offset} to map; give a length`);
    }
    checkInt('length', length, 1);
    const o: MapOptions = { private: opts.private === true, sync: opts.sync === true, faultAround: opts.faultAround !== false };
    if (this.pool.hello.channel === 0) throw this.pool.cannotMap(this.name);
    const region = new TrappedRegion(Math.ceil(length / PAGE) * PAGE);
    try {
      await this.call('map', [region.id, offset, region.length, o]);
      region.bind({ id: this.pool.hello.channel });
    } catch (err) {
      region.close();
      throw err;
    }
    const m = new Mapping(this, region, offset, length, o);
    this.mappings.add(m);
    return m;
  }

  /** Unmaps this handle's mappings (their buffers are detached), then closes the handle. */
  async close(): Promise<void> {
    await this.closeLocal();
  }

  /** @internal */
  async closeLocal(): Promise<void> {
    if (this.isClosed) return;
    for (const m of [...this.mappings]) await m.unmap().catch(() => {});
    await this.pool.request('closeFile', [this.handle]).catch(() => {});
    this.isClosed = true;
    this.pool.forgetFile(this);
  }

  /** @internal the pool is gone: detach without telling the service. */
  detachAll(): void {
    for (const m of this.mappings) m.detach();
    this.mappings.clear();
    this.isClosed = true;
  }

  /** @internal */
  forget(m: Mapping): void {
    this.mappings.delete(m);
  }
}

export class Mapping {
  private buf: Buffer | null;

  /** @internal */
  constructor(
    readonly file: PoolFile,
    private readonly region: TrappedRegion,
    /** File offset of the first byte. */
    readonly offset: number,
    readonly length: number,
    private readonly opts: MapOptions,
  ) {
    this.buf = region.buffer.subarray(0, length);
  }

  /** The mapping's memory: loads and stores go to the pool. Detached after unmap: access throws, never reaches memory. */
  get buffer(): Buffer {
    if (this.buf === null) throw daxError('ECLOSED', 'the mapping is unmapped');
    return this.buf;
  }

  get private(): boolean {
    return this.opts.private;
  }

  get sync(): boolean {
    return this.opts.sync;
  }

  get mapped(): boolean {
    return this.buf !== null;
  }

  /** Makes the data stored in [offset, offset+length) of the mapping, and the metadata that reaches it, durable. */
  async flush(offset = 0, length = this.length - offset): Promise<void> {
    checkInt('offset', offset);
    checkInt('length', length);
    if (this.buf === null) throw daxError('ECLOSED', 'the mapping is unmapped');
    if (offset + length > this.length) throw daxError('EINVAL', `flush range [${offset}, +${length}) passes the mapping's ${this.length} bytes`);
    if (this.opts.private || length === 0) return;
    await this.file.pool.request('flush', [this.region.id, offset, length]);
  }

  /** Unmaps: the buffer is detached, then the service forgets the mapping. Idempotent. */
  async unmap(): Promise<void> {
    if (this.buf === null) return;
    this.detach();
    this.file.forget(this);
    await this.file.pool.request('unmap', [this.region.id]).catch(() => {});
  }

  /** @internal */
  detach(): void {
    this.buf = null;
    this.region.close();
  }
}
