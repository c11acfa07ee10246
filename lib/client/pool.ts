// The public API: Pool, PoolFile, Mapping. A Pool is a client of a service that owns
// the pool and answers faults; in embedded mode the service runs in a worker thread
// this Pool started (Pool.create/open) or that another thread shares with it
// (Pool.attach). Every call is async. Arguments are checked here, before anything is
// sent.
import { EventEmitter } from 'node:events';
import { constants as bufferConstants } from 'node:buffer';
import path from 'node:path';
import { MessageChannel, MessagePort, Worker } from 'node:worker_threads';
import { daxError, isDaxError, type DaxmapError } from '../errors';
import * as arg from '../protocol/args';
import { PAGE } from '../protocol/args';
import { TrappedRegion } from '../native/region';
import type { FaultStatsSnapshot } from '../fault/stats';
import type { CleanSpace } from '../pool/index';

export type { CleanSpace };
import type { Hello, MapOptions, StartReply, StartRequest } from '../protocol/messages';
import { portRpc, type Rpc } from './rpc';
import { connectSocketRpc } from './socket-rpc';
import { rebuildError } from '../protocol/errors';
import type { FileOpArgs, FileOpName, OpResult } from '../protocol/ops';
import type { DeviceStorage } from '../device/device';
import { openVerifiedDevice, parseIdentity } from '../pool/index';
import { DEFAULT_CONNECT_TIMEOUT_MS, SocketFaultChannel, type ConnectTimeoutOptions } from '../native/socket-channel';
import { Deadline, checkSignal, checkTimeout } from '../deadline';
import { checkLoggerOption, levelOf, loggerFor, relayLine, type LoggerOption } from '../log';
import type { Logger } from 'pino';

// `await using` needs Symbol.asyncDispose: Node 20 has it from 20.4 on (as
// Symbol(nodejs.asyncDispose)); before that, the same registered symbol.
const asyncDispose: typeof Symbol.asyncDispose =
  (Symbol as { asyncDispose?: typeof Symbol.asyncDispose }).asyncDispose ??
  ((Symbol as unknown as { asyncDispose: symbol }).asyncDispose = Symbol.for('nodejs.asyncDispose')) as typeof Symbol.asyncDispose;

/** Options of Pool.open() (and of Pool.create(), Pool.connect(), Pool.attach()). */
export interface PoolOptions {
  /**
   * A pino logger of the application's: it gets this Pool's own lines and, for an
   * embedded Pool, its service worker's (relayed at their level; the worker logs at
   * the logger's level). Or a level name for daxmap's own logger (JSON on stderr),
   * for this Pool and its worker. Default: daxmap's logger at DAXMAP_LOG_LEVEL, else
   * 'warn'. daxmapd logs its own lines.
   */
  logger?: LoggerOption;
}

export interface CreateOptions extends PoolOptions {
  /** Size of a new regular/tmpfs device file, bytes (default 1 GiB). */
  size?: number;
  /** Format even over an existing pool. */
  force?: boolean;
}

export interface FileStat {
  /** The file's name. */
  name: string;
  /** Size in bytes. */
  size: number;
  /** Bytes of blocks the file owns (written and unwritten extents). */
  allocated: number;
  /** The file's extents in file order; holes are the gaps. */
  extents: { offset: number; length: number; state: 'written' | 'unwritten' }[];
  /** Permission bits (0o644 unless set at creation). */
  mode: number;
  /** Owner: the creating process's (or daxmapd client's) uid and gid. */
  uid: number;
  gid: number;
  /** Last change of the file's data or size, ms since the epoch. */
  mtimeMs: number;
}

export interface StatFs {
  size: number;
  free: number;
  blockSize: number;
  /** Bytes in the reserve of pre-zeroed blocks (docs/pool.md, "Reserve"). */
  reserved?: number;
  /** Free space kept zeroed in the background (docs/pool.md, "Clean free space"). */
  clean?: CleanSpace;
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
  /** PROT_READ: a store to the mapping is SIGSEGV, as on a kernel mapping without PROT_WRITE (default false). */
  readOnly?: boolean;
}

/** Pool.connect(): `timeoutMs` (default 10 000, Infinity for none) bounds the whole connect; `signal` aborts it. */
export type ConnectOptions = ConnectTimeoutOptions & PoolOptions;

export interface OpenFileOptions {
  /** Create the file when it does not exist (default false). */
  create?: boolean;
  /** With create: fail with EEXIST when the file exists (default false). */
  exclusive?: boolean;
  /** Permission bits of a file created here (default 0o644). */
  mode?: number;
}

/** A value that can be posted to a worker thread: `worker.postMessage(shared, shared.transferList)`. */
export interface SharedPool {
  readonly kind: 'daxmap.shared-pool';
  readonly port: MessagePort;
  readonly transferList: MessagePort[];
}

/** The steps of PoolFile.map() a test may make fail (testHooks.failMapAt). */
export type MapStep = 'reserve' | 'register' | 'bind' | 'buffer';

/** @internal Test seams of the client. */
export const testHooks: { failMapAt: MapStep | null } = { failMapAt: null };

function mapStep(step: MapStep): void {
  if (testHooks.failMapAt === step) throw daxError('EIO', `failure injected after the '${step}' step of map()`);
}

const SERVICE_ENTRY = path.join(__dirname, '..', 'service', 'worker.js');

/** The events of a Pool. */
export interface PoolEvents {
  /**
   * The pool is closed, once: by close() (`reason` undefined, emitted when close()
   * settles), or because its service is gone or its owner closed it (`reason` says
   * which; emitted when this Pool notices).
   */
  close: [reason: DaxmapError | undefined];
  /** The pool's service died: its worker thread (embedded) or daxmapd (or the connection to it). Emitted only when a listener is attached, before 'close'. */
  error: [err: DaxmapError];
}

/** Splits a Pool's options: the logger option, checked here, and the rest, for arg.options(). */
function poolOptions<T extends PoolOptions>(what: string, v: T | undefined): { rest: Omit<T, 'logger'> | undefined; logger: LoggerOption | undefined } {
  if (v === null || typeof v !== 'object' || Array.isArray(v) || !('logger' in v)) return { rest: v, logger: undefined };
  const { logger, ...rest } = v;
  try {
    return { rest, logger: checkLoggerOption(logger) };
  } catch (err) {
    throw daxError('EINVAL', `${what}: ${(err as Error).message.replace(/^EINVAL: /, '')}`);
  }
}

export class Pool extends EventEmitter<PoolEvents> {
  private readonly files = new Set<PoolFile>();
  private isClosed = false;
  private closing: Promise<void> | null = null;
  /** Why the pool closed without close(): the service died, or its owner closed it. */
  private gone: DaxmapError | null = null;
  private closeEmitted = false;
  private readonly log: Logger;

  private constructor(
    /** @internal */ readonly rpc: Rpc,
    /** @internal */ readonly hello: Hello,
    private readonly worker: Worker | null,
    /** daemon mode: this process's own handle on the device, and its fault connection */
    private readonly remote: { device: DeviceStorage | null; channel: SocketFaultChannel | null; mapError: DaxmapError | null } | null = null,
    logOption?: LoggerOption,
  ) {
    super();
    this.log = loggerFor(logOption, 'client');
    rpc.onNotice = (n) => {
      if (n.notice === 'closed') this.lost(daxError('ECLOSED', 'its owner closed it'), false);
    };
    // The service's thread died (embedded), or the daemon's connection closed.
    rpc.onGone = (err) => this.lost(err, true);
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
  static async connect(socketPath: string, options: ConnectOptions = {}): Promise<Pool> {
    if (typeof socketPath !== 'string' || socketPath.length === 0) throw daxError('EINVAL', 'socket path must be a non-empty string');
    if (typeof options !== 'object' || options === null) throw daxError('EINVAL', 'connect options must be an object');
    const { rest: opts = {}, logger: logOption } = poolOptions('connect options', options);
    const dl = new Deadline(`connect to daxmapd at '${socketPath}'`, checkTimeout(opts.timeoutMs, DEFAULT_CONNECT_TIMEOUT_MS), checkSignal(opts.signal));
    dl.check('connection');
    const rpc = await connectSocketRpc(socketPath, dl);
    let device: DeviceStorage | null = null;
    let channel: SocketFaultChannel | null = null;
    try {
      const h = await dl.race(rpc.request<{ session: string; device: string; identity?: unknown; mayMap: boolean }>('hello', [{ pid: process.pid }]), 'answer to hello');
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
        await dl.race(rpc.request('attachDevice', [device.deviceId]), 'answer to attachDevice');
        channel = await SocketFaultChannel.connectWithin(socketPath, {
          session: BigInt(h.session),
          ref: false,
          onClose: () => pool?.lost(daxError('ECLOSED', `the fault connection to daxmapd at '${socketPath}' closed`), true),
        }, dl);
        dl.check('fault channel');
      }
      const granular = device !== null && device.align > PAGE ? { granularity: device.align } : {};
      pool = new Pool(rpc, { channel: channel ? channel.id : 0, deviceId: device ? device.deviceId : 0, path: h.device, ...granular }, null, { device, channel, mapError }, logOption);
      rpc.onGone = (err) => pool?.lost(daxError('ECLOSED', `daxmapd at '${socketPath}' is gone: ${err.message.replace(/^ECLOSED: /, '')}`, { cause: err }), true);
      return pool;
    } catch (err) {
      channel?.close();
      device?.close();
      rpc.destroy();
      throw err;
    }
  }

  /** Formats the device (creating a regular/tmpfs file at `size`), then opens it. EEXIST over an existing pool unless `force`. */
  static async create(device: string, opts?: CreateOptions): Promise<Pool> {
    arg.pathString('device path', device);
    const { rest, logger: logOption } = poolOptions('create options', opts);
    const o = arg.options('create options', rest, { size: 'integer', force: 'boolean' });
    if (o.size !== undefined) arg.int('size', o.size, 1);
    return Pool.start({ device, mode: 'create', ...(o.size !== undefined ? { size: o.size } : {}), force: o.force === true }, logOption);
  }

  /** Opens an existing pool: ENOENT, EBADF (not a pool), EBUSY (another service holds it). */
  static async open(device: string, opts?: PoolOptions): Promise<Pool> {
    arg.pathString('device path', device);
    const { rest, logger: logOption } = poolOptions('open options', opts);
    arg.options('open options', rest, {});
    return Pool.start({ device, mode: 'open' }, logOption);
  }

  /** In a worker thread: a Pool on the service another thread shared with `share()`. */
  static async attach(shared: SharedPool, opts?: PoolOptions): Promise<Pool> {
    if (typeof shared !== 'object' || shared === null || shared.kind !== 'daxmap.shared-pool' || !(shared.port instanceof MessagePort)) {
      throw daxError('EINVAL', 'Pool.attach() takes the value of pool.share(), posted to this thread with its transferList');
    }
    const { rest, logger: logOption } = poolOptions('attach options', opts);
    arg.options('attach options', rest, {});
    const rpc = portRpc(shared.port, null);
    const hello = await rpc.call('hello', []);
    return new Pool(rpc, hello, null, null, logOption);
  }

  private static async start(req: StartRequest, logOption: LoggerOption | undefined): Promise<Pool> {
    // A clean execArgv: the service runs compiled JS only, and must not pay for loader
    // hooks (--import/--require) the application's main thread was started with.
    // An errno-style code is ours (or the system's); the runtime's ERR_* codes are not.
    const failed = (err: unknown): DaxmapError => isDaxError(err) && /^E[A-Z0-9]+$/.test(err.code) ? err
      : daxError('EIO', `the pool service could not start: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    // The worker logs at the level asked; to an application's logger through a port.
    const level = levelOf(logOption);
    if (level !== undefined) req.logLevel = level;
    let relay: MessageChannel | null = null;
    if (logOption !== undefined && typeof logOption !== 'string') {
      const to = logOption;
      relay = new MessageChannel();
      relay.port1.on('message', (line: string) => relayLine(to, line));
      relay.port1.unref();
      req.logPort = relay.port2;
    }
    let worker: Worker;
    try {
      worker = new Worker(SERVICE_ENTRY, { workerData: req, execArgv: [], transferList: relay ? [relay.port2] : [] });
    } catch (err) {
      relay?.port1.close();
      throw failed(err);
    }
    // The relay lives as long as the worker (registered again below, after start-up's listeners go).
    if (relay) worker.once('exit', () => setImmediate(() => relay!.port1.close()));
    const reply = await new Promise<StartReply>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', (err) => reject(failed(err)));
      worker.once('exit', (code) => reject(daxError('EIO', `the pool service exited (${code}) before it started`)));
    });
    if (!reply.ok) {
      await worker.terminate();
      throw rebuildError(reply.error);
    }
    worker.removeAllListeners('exit');
    worker.removeAllListeners('error');
    worker.on('error', () => {});
    if (relay) worker.once('exit', () => setImmediate(() => relay!.port1.close()));
    const rpc = portRpc(worker as unknown as MessagePort, worker);
    return new Pool(rpc, reply.hello, worker, null, logOption);
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
    // No reply to wait for: if the service is gone, Pool.attach() in the other thread says so.
    this.rpc.call('attach', [port1], [port1]).catch(() => {});
    return { kind: 'daxmap.shared-pool', port: port2, transferList: [port2] };
  }

  async openFile(name: string, opts?: OpenFileOptions): Promise<PoolFile> {
    this.check();
    arg.name(name);
    const o = arg.options('openFile options', opts, { create: 'boolean', exclusive: 'boolean', mode: 'integer' });
    if (o.mode !== undefined) arg.int('mode', o.mode, 0, 0o777);
    const r = await this.rpc.call('openFile', [name, {
      create: o.create === true, exclusive: o.create === true && o.exclusive === true, ...(o.mode !== undefined ? { mode: o.mode } : {}),
    }]);
    const f = PoolFile.opened(this, r.handle, r.name);
    this.files.add(f);
    return f;
  }

  async unlink(name: string): Promise<void> {
    this.check();
    await this.rpc.call('unlink', [arg.name(name)]);
  }

  async rename(from: string, to: string): Promise<void> {
    this.check();
    await this.rpc.call('rename', [arg.name(from, 'rename source'), arg.name(to, 'rename target')]);
  }

  async list(): Promise<string[]> {
    this.check();
    return this.rpc.call('list', []);
  }

  async statfs(): Promise<StatFs> {
    this.check();
    return this.rpc.call('statfs', []);
  }

  /**
   * Resolves once the pool's background work is idle: the zeroing of free space
   * (docs/pool.md, "Clean free space") and the reserve's refill. For benchmarks, so
   * that nothing of the pool's runs beside what they time.
   */
  async settled(): Promise<void> {
    this.check();
    await this.rpc.call('settled', []);
  }

  /** Makes every file's data and all metadata durable. */
  async sync(): Promise<void> {
    this.check();
    await this.rpc.call('sync', []);
  }

  /** Fault counters by kind and latency percentiles (µs). */
  async stats(): Promise<FaultStatsSnapshot> {
    this.check();
    return this.rpc.call('stats', []);
  }

  /**
   * Closes the pool. The pool that created/opened it closes the service: every
   * mapping in every thread is revoked first (this thread's buffers are detached;
   * other threads' mappings get SIGBUS on touch until they notice), the pool is
   * flushed and released. An attached pool only lets go of its own files and
   * mappings. Rejects when the service's final flush or checkpoint fails (the device
   * is released all the same; reopening replays the log). Idempotent: every call
   * returns the same promise.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      for (const f of [...this.files]) await f.closeLocal();
      this.isClosed = true;
      let failure = null as Error | null;
      if (this.worker) {
        // The service's final flush and checkpoint: if they fail, so does close(),
        // once the service is gone and the device released all the same.
        if (this.gone) {
          failure = daxError('ECLOSED', `close '${this.hello.path}': the pool was not closed cleanly, its service died first ` +
            `(${this.gone.message}); what it had not synced is replayed from the log when the pool is opened again`, { cause: this.gone });
        } else {
          await this.rpc.call('close', []).catch((err: Error) => {
            failure = err; // the service's own error (a DaxmapError)
          });
        }
        await this.worker.terminate();
      } else {
        this.rpc.close();
      }
      this.remote?.channel?.close();
      this.remote?.device?.close();
      this.emitClose(undefined);
      if (failure !== null) throw failure;
    })();
    return this.closing;
  }

  /** `await using pool = await Pool.open(...)`: close() at the end of the scope. */
  async [asyncDispose](): Promise<void> {
    await this.close();
  }

  private emitClose(reason: DaxmapError | undefined): void {
    if (this.closeEmitted) return;
    this.closeEmitted = true;
    this.emit('close', reason);
  }

  /** @internal a request to the service (tests, tools). */
  async request<T>(op: string, args: unknown[] = []): Promise<T> {
    this.check();
    return this.rpc.request<T>(op, args);
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

  /**
   * @internal The owner closed the pool, or the service died (its worker thread, or
   * the daemon): the mappings were revoked or lost their handler, so touching them is
   * SIGBUS; detach them here. Every later call fails with ECLOSED.
   */
  lost(why: DaxmapError, died: boolean): void {
    if (this.isClosed) return;
    this.gone = why;
    for (const f of this.files) f.detachAll();
    this.isClosed = true;
    if (died) {
      this.log.warn({ err: why, pool: this.hello.path }, 'the pool service is gone: its mappings are detached, calls fail with ECLOSED');
      // 'error' only for a listener: an application that does not listen learns of it
      // from 'close' and ECLOSED, never from an uncaught exception.
      if (this.listenerCount('error') > 0) this.emit('error', why);
    }
    this.emitClose(why);
  }

  /** @internal The error of a call on this closed pool. */
  closedError(): DaxmapError {
    const why = this.gone ? `: ${this.gone.message.replace(/^ECLOSED: /, '')}` : '';
    return daxError('ECLOSED', `the pool '${this.hello.path}' is closed${why}`, this.gone ? { cause: this.gone } : {});
  }

  private check(): void {
    if (this.isClosed) throw this.closedError();
  }
}

export class PoolFile {
  private readonly mappings = new Set<Mapping>();
  private isClosed = false;

  private constructor(readonly pool: Pool, /** @internal */ readonly handle: number, readonly name: string) {}

  /** @internal A handle the service opened (Pool.openFile). */
  static opened(pool: Pool, handle: number, name: string): PoolFile {
    return new PoolFile(pool, handle, name);
  }

  /** An operation on this file (lib/protocol/ops.ts): its handle first, then `args`. */
  private call<K extends FileOpName>(op: K, args: FileOpArgs<K>): Promise<OpResult<K>> {
    if (this.pool.closed) return Promise.reject(this.pool.closedError());
    if (this.isClosed) return Promise.reject(daxError('EBADF', `file '${this.name}' is closed`));
    return this.pool.request<OpResult<K>>(op, [this.handle, ...args]);
  }

  async stat(): Promise<FileStat> {
    return this.call('stat', []);
  }

  async truncate(size: number): Promise<void> {
    arg.fileInt('size', size);
    return this.call('truncate', [size]);
  }

  async fallocate(offset: number, length: number, opts?: { keepSize?: boolean }): Promise<void> {
    arg.fileInt('offset', offset);
    arg.fileInt('length', length, 1);
    const o = arg.options('fallocate options', opts, { keepSize: 'boolean' });
    return this.call('fallocate', [offset, length, { keepSize: o.keepSize === true }]);
  }

  async punchHole(offset: number, length: number): Promise<void> {
    arg.fileInt('offset', offset);
    arg.fileInt('length', length, 1);
    return this.call('punchHole', [offset, length]);
  }

  async zeroRange(offset: number, length: number, opts?: { keepSize?: boolean }): Promise<void> {
    arg.fileInt('offset', offset);
    arg.fileInt('length', length, 1);
    const o = arg.options('zeroRange options', opts, { keepSize: 'boolean' });
    return this.call('zeroRange', [offset, length, { keepSize: o.keepSize === true }]);
  }

  /** Writes all of `data` at `offset`; resolves to the bytes written. */
  async write(data: Uint8Array, offset: number): Promise<number> {
    arg.bytes('data', data);
    arg.fileInt('offset', offset);
    // A copy: `data` may be a trapped mapping, whose pages must be faulted here, on
    // this thread, never by the service.
    return this.call('write', [Uint8Array.prototype.slice.call(data), offset]);
  }

  /** Reads into `into` from `offset`; resolves to the bytes read (short at EOF). */
  async read(into: Uint8Array, offset: number): Promise<number> {
    arg.bytes('into', into);
    arg.fileInt('offset', offset);
    if (into.length === 0) return 0;
    const got = await this.call('read', [into.length, offset]);
    into.set(got);
    return got.length;
  }

  async fsync(): Promise<void> {
    return this.call('fsync', []);
  }

  /**
   * Maps [offset, offset+length) of the file. See MapRequestOptions. A failure at any
   * step undoes the steps before it: the reserved region, the service's record of the
   * mapping (and with it its window budget).
   */
  async map(opts?: MapRequestOptions): Promise<Mapping> {
    const req = arg.options('map options', opts, {
      offset: 'integer', length: 'integer', private: 'boolean', sync: 'boolean', faultAround: 'boolean', readOnly: 'boolean',
    });
    const offset = arg.fileInt('offset', req.offset ?? 0);
    if (offset % PAGE !== 0) throw daxError('EINVAL', `mapping offset ${offset} is not a multiple of the page size ${PAGE}`);
    if (req.length !== undefined) arg.fileInt('length', req.length, 1);
    if (this.pool.closed) throw this.pool.closedError();
    if (this.isClosed) throw daxError('EBADF', `file '${this.name}' is closed`);
    let length = req.length;
    if (length === undefined) {
      const st = await this.stat();
      length = st.size - offset;
      if (length <= 0) throw daxError('EINVAL', `file '${this.name}' has no bytes at offset ${offset} to map; give a length`);
    }
    const o: MapOptions = { private: req.private === true, sync: req.sync === true, faultAround: req.faultAround !== false, readOnly: req.readOnly === true };
    if (this.pool.hello.channel === 0) throw this.pool.cannotMap(this.name);
    // Whole pages; for a shared mapping of a 2 MiB-granular device whole units, so the
    // unit holding EOF can be installed whole (the Buffer stays `length` long).
    const unit = o.private ? PAGE : Math.max(PAGE, this.pool.hello.granularity ?? PAGE);
    const regionLength = Math.ceil(length / unit) * unit;
    if (offset + regionLength > arg.MAX_FILE_SIZE) throw daxError('EINVAL', `map '${this.name}': [${offset}, +${length}) passes the largest file size ${arg.MAX_FILE_SIZE}`);
    // Each step is undone, last first, if a later one fails.
    let region: TrappedRegion | null = null;
    let registered = false;
    try {
      region = new TrappedRegion(regionLength, o.readOnly);
      mapStep('reserve');
      await this.call('map', [region.id, offset, region.length, o]);
      registered = true;
      mapStep('register');
      region.bind({ id: this.pool.hello.channel });
      mapStep('bind');
      const m = Mapping.over(this, region, offset, length, o);
      mapStep('buffer');
      // The handle or the pool may have closed while the service was asked.
      if (this.pool.closed) throw this.pool.closedError();
      if (this.isClosed) throw daxError('EBADF', `file '${this.name}' was closed while it was being mapped`);
      this.mappings.add(m);
      return m;
    } catch (err) {
      // As unmap(): the region is retired first, then the service forgets it. Its
      // memory never left this function, so its address range goes back at once.
      region?.discard();
      if (registered) await this.pool.rpc.call('unmap', [region!.id]).catch(() => {});
      throw err;
    }
  }

  /** Unmaps this handle's mappings (their buffers are detached), then closes the handle. Idempotent. */
  async close(): Promise<void> {
    await this.closeLocal();
  }

  /** `await using f = await pool.openFile(...)`: close() at the end of the scope. */
  async [asyncDispose](): Promise<void> {
    await this.close();
  }

  /** @internal */
  async closeLocal(): Promise<void> {
    if (this.isClosed) return;
    // Closed from here on: a map() still waiting for the service undoes itself.
    this.isClosed = true;
    for (const m of [...this.mappings]) await m.unmap().catch(() => {});
    await this.pool.rpc.call('closeFile', [this.handle]).catch(() => {});
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

/** The largest Buffer of this runtime (4 GiB on Node 20): a view is at most this long. */
const MAX_VIEW = bufferConstants.MAX_LENGTH;
/** Windows of a mapping larger than one ArrayBuffer: a window starts at every multiple of SPAN and is 2 SPAN long, so every view of at most SPAN bytes lies in one. */
const SPAN = Math.floor(MAX_VIEW / 2 / PAGE) * PAGE;

export class Mapping {
  /** The whole region, when one ArrayBuffer can hold it (always on Node 22+; up to 4 GiB on Node 20). */
  private whole: ArrayBuffer | null = null;
  /** Otherwise: the windows made so far, by index (see SPAN). */
  private windows = new Map<number, ArrayBuffer>();
  private buf: Buffer | null = null;
  private isMapped = true;

  private constructor(
    readonly file: PoolFile,
    private readonly region: TrappedRegion,
    /** File offset of the first byte. */
    readonly offset: number,
    /** Bytes mapped (as asked; the region behind it is whole pages). */
    readonly length: number,
    private readonly opts: MapOptions,
  ) {
    if (region.length <= MAX_VIEW) {
      this.whole = region.arrayBuffer(0, region.length);
      this.buf = Buffer.from(this.whole, 0, length);
    }
  }

  /** @internal A mapping of `file` over a region the service registered (PoolFile.map). */
  static over(file: PoolFile, region: TrappedRegion, offset: number, length: number, opts: MapOptions): Mapping {
    return new Mapping(file, region, offset, length, opts);
  }

  /**
   * The mapping's memory as one Buffer: loads and stores go to the pool. Throws
   * ECLOSED once the mapping is unmapped or its pool is gone (closed, or its service
   * died), and EINVAL when the mapping is larger than the largest Buffer of this
   * runtime (`buffer.constants.MAX_LENGTH`: 4 GiB on Node 20): use `view()` there. A
   * Buffer kept from before the mapping went is detached: it reads `undefined`, has
   * length 0 and drops stores silently — JavaScript's rule for detached buffers, no
   * error. Read `mapping.buffer` afresh rather than keeping it, or use the checked
   * `load()` and `store()`.
   */
  get buffer(): Buffer {
    this.live();
    if (this.buf === null) {
      throw daxError('EINVAL', `the mapping of '${this.file.name}' is ${this.length} bytes, more than one Buffer holds on this runtime ` +
        `(${MAX_VIEW} bytes, buffer.constants.MAX_LENGTH): take windows of it with view(offset, length)`);
    }
    return this.buf;
  }

  /**
   * The mapping's whole memory as one ArrayBuffer (external, over the trapped region;
   * `byteLength` is the length rounded up to whole pages, as the kernel maps whole
   * pages). Detached, like `buffer`, once the mapping is gone. ECLOSED once unmapped;
   * EINVAL on Node 20 for a mapping over 4 GiB: Node-API makes an ArrayBuffer over
   * external memory as a Buffer there, so it stops at 4 GiB (use `view()`).
   */
  get arrayBuffer(): ArrayBuffer {
    this.live();
    if (this.whole === null) {
      throw daxError('EINVAL', `the mapping of '${this.file.name}' is ${this.length} bytes; this runtime makes an ArrayBuffer over external memory ` +
        `of at most ${MAX_VIEW} bytes (Node-API makes it as a Buffer): take windows of it with view(offset, length)`);
    }
    return this.whole;
  }

  /**
   * A Buffer over [offset, offset+length) of the mapping (default: to its end):
   * loads and stores through it go to the pool, as through `buffer`, and it is
   * detached in the same way once the mapping is gone. Any part of a mapping of any
   * size, at most `buffer.constants.MAX_LENGTH` bytes at once. ECLOSED once unmapped;
   * EINVAL outside the mapping or longer than that.
   */
  view(offset = 0, length?: number): Buffer {
    this.live();
    arg.int('view offset', offset, 0, this.length);
    const len = length === undefined ? this.length - offset : arg.int('view length', length, 0, this.length - offset);
    if (len > MAX_VIEW) {
      throw daxError('EINVAL', `a view of ${len} bytes is more than one Buffer holds on this runtime (${MAX_VIEW} bytes, buffer.constants.MAX_LENGTH)`);
    }
    return this.window(offset, len);
  }

  /** A Buffer over [offset, +length) of the region, checked by the caller. */
  private window(offset: number, length: number): Buffer {
    if (this.whole !== null) return Buffer.from(this.whole, offset, length);
    if (length === 0) return Buffer.alloc(0);
    if (length > SPAN) return Buffer.from(this.region.arrayBuffer(offset, length));
    const k = Math.floor(offset / SPAN);
    let ab = this.windows.get(k);
    if (ab === undefined) {
      ab = this.region.arrayBuffer(k * SPAN, Math.min(2 * SPAN, this.region.length - k * SPAN));
      this.windows.set(k, ab);
    }
    return Buffer.from(ab, offset - k * SPAN, length);
  }

  /** Checked read: a copy of [offset, offset+length) of the mapping. ECLOSED once unmapped or the pool is gone; EINVAL outside the mapping. */
  load(offset: number, length: number): Buffer {
    this.live();
    arg.int('offset', offset, 0, this.length);
    arg.int('length', length, 0, Math.min(this.length - offset, MAX_VIEW));
    return Buffer.from(this.window(offset, length));
  }

  /** Checked write: all of `data` at `offset` of the mapping. ECLOSED once unmapped or the pool is gone; EINVAL outside the mapping. */
  store(data: Uint8Array, offset: number): void {
    this.live();
    arg.bytes('data', data);
    arg.int('offset', offset, 0, this.length);
    if (data.length > this.length - offset) {
      throw daxError('EINVAL', `store of ${data.length} bytes at ${offset} passes the mapping's ${this.length} bytes`);
    }
    this.window(offset, data.length).set(data);
  }

  private live(): void {
    if (!this.isMapped) {
      if (this.file.pool.closed) throw this.file.pool.closedError();
      throw daxError('ECLOSED', `the mapping of '${this.file.name}' at ${this.offset} is unmapped`);
    }
  }

  get private(): boolean {
    return this.opts.private;
  }

  get sync(): boolean {
    return this.opts.sync;
  }

  get readOnly(): boolean {
    return this.opts.readOnly;
  }

  get mapped(): boolean {
    return this.isMapped;
  }

  /**
   * Makes the data stored in [offset, offset+length) of the mapping (default: all of
   * it), and the metadata that reaches it, durable. Resolves at once for a private
   * mapping (nothing of it is in the pool) or an empty range. ECLOSED once unmapped;
   * EINVAL outside the mapping.
   */
  async flush(offset = 0, length = this.length - offset): Promise<void> {
    arg.int('offset', offset);
    arg.int('length', length);
    this.live();
    if (offset + length > this.length) throw daxError('EINVAL', `flush range [${offset}, +${length}) passes the mapping's ${this.length} bytes`);
    if (this.opts.private || length === 0) return;
    await this.file.pool.rpc.call('flush', [this.region.id, offset, length]);
  }

  /** Unmaps: every Buffer and ArrayBuffer over it is detached, then the service forgets the mapping. Idempotent. */
  async unmap(): Promise<void> {
    if (!this.isMapped) return;
    this.detach();
    this.file.forget(this);
    await this.file.pool.rpc.call('unmap', [this.region.id]).catch(() => {});
  }

  /** `await using m = await file.map()`: unmap() at the end of the scope. */
  async [asyncDispose](): Promise<void> {
    await this.unmap();
  }

  /** @internal */
  detach(): void {
    this.isMapped = false;
    this.buf = null;
    this.whole = null;
    this.windows.clear();
    this.region.close();
  }
}
