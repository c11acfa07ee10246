// The service: one pool and its fault policy, serving any number of clients (the
// thread that opened the pool, and threads it shared the pool with) over
// MessagePorts. In embedded mode it runs in its own worker thread, so the threads
// that fault never have to answer their own faults. It never touches a trapped
// region itself.
import { constants as osConstants } from 'node:os';
import type { MessagePort } from 'node:worker_threads';
import { isDaxError, daxError } from '../errors';
import { errorInfo } from '../protocol/errors';
import { FaultChannel } from '../native/channel';
import { execute } from '../native/engine';
import { AnswerBatch, Op, type AnswerSpec, type FaultEvent } from '../native/frames';
import { logger } from '../log';
import { lockdep } from '../lock/index';
import { PoolFs as LocalPool, PoolFsFile as LocalFile } from '../pool/index';
import { poolInternals, type PoolInternals } from '../pool/internal';
import { statIdentity, statOwner, type DeviceIdentity } from '../pool/index';
import { FaultPolicy, type Client } from '../fault/policy';
import { WindowBudget } from '../fault/budget';
import type { Hello, MapOptions, Notice, Request, Response, StartRequest } from '../protocol/messages';
import { opSpec, type OpArgs, type OpName, type OpResult } from '../protocol/ops';
import { int } from '../util/check';

const log = logger('service');

/** Answers for regions of this very process: executed here, by the native agent. */
class LocalClient implements Client {
  readonly id = 'local';
  readonly budget = new WindowBudget();
  private readonly batch = new AnswerBatch();
  /** Hands every event and note queued so far to the policy (the service's fault channel). */
  drain: (() => void) | null = null;
  constructor(readonly deviceId: number) {}
  run(answers: AnswerSpec[]): number[] {
    this.batch.reset();
    for (const a of answers) this.batch.add(a);
    const results = Array.from(execute(this.batch));
    // After a ClearReserve every note of that reserve is queued on the channel:
    // delivered now, so that the policy has them all when these results return
    // (as a daemon client sends them ahead of its RESULTS: docs/wire.md).
    if (answers.some((a) => a.op === Op.ClearReserve)) this.drain?.();
    return results;
  }
}

/** Operations that neither read nor change files: they need no reserve taken back first. */
const NO_RESERVE_RECLAIM: ReadonlySet<string> = new Set([
  'hello', 'attach', 'list', 'statfs', 'settled', 'stats', 'statsByFile', 'lockdep', 'testInject', 'testState', 'testAhead', 'configure', 'map', 'unmap',
]);

/** Who is on the other end of a connection (daemon mode). */
export interface Peer {
  pid: number;
  uid: number;
  gid: number;
  /** Supplementary groups (daemon: from /proc/<pid>/status at connect). */
  groups?: readonly number[];
}

/** The permission bits of `mode` that apply to the peer: owner, group (primary or supplementary), other. */
export function permBits(p: Peer, uid: number, gid: number, mode: number): number {
  if (p.uid === uid) return (mode >> 6) & 7;
  if (p.gid === gid || (p.groups?.includes(gid) ?? false)) return (mode >> 3) & 7;
  return mode & 7;
}

/** How replies and notices reach a client. */
export interface Transport {
  send(msg: Response | Notice, transfer?: ArrayBuffer[]): void;
  close(): void;
}

export interface Conn {
  transport: Transport;
  /** Executes answers on this connection's regions. */
  client: Client;
  /** null: the same process (embedded mode), which may do anything. */
  peer: Peer | null;
  /** The client may map the device (it could open the device itself). */
  mayMap: boolean;
  files: Map<number, LocalFile>;
  /** region id → the file handle it maps */
  regions: Map<number, { handle: number; fileOffset: number; length: number }>;
  closed: boolean;
}

const R_OK = 4;
const W_OK = 2;

type Reply<T = unknown> = { value: T; transfer?: ArrayBuffer[] };
type Handlers = { [K in OpName]: (conn: Conn, ...args: OpArgs<K>) => Promise<Reply<OpResult<K>>> | Reply<OpResult<K>> };
function done(): Reply<void>;
function done<T>(value: T): Reply<T>;
function done(value?: unknown): Reply {
  return { value };
}

export class Service {
  private readonly internals: PoolInternals;
  readonly policy: FaultPolicy;
  private readonly local: LocalClient;
  /** In-process faults (embedded mode). A daemon has none: its clients fault in their own processes. */
  private readonly channel: FaultChannel | null;
  private readonly conns = new Set<Conn>();
  private nextHandle = 1;
  private closing: Promise<void> | null = null;

  private constructor(private readonly pool: LocalPool, inProcessFaults: boolean) {
    this.internals = poolInternals(pool);
    this.policy = new FaultPolicy(this.internals);
    this.local = new LocalClient(this.internals.storage.deviceId);
    this.channel = inProcessFaults
      ? new FaultChannel((events: FaultEvent[]) => this.policy.handle(this.local, events), {
        onError: (err) => log.error({ err }, 'fault handler failed; its unanswered faults got SIGBUS'),
      })
      : null;
    const ch = this.channel;
    if (ch) this.local.drain = () => ch.drainNow();
  }

  /** Starts a service on a pool. `inProcessFaults`: this process's threads map (embedded mode). */
  static async start(req: StartRequest, inProcessFaults = true): Promise<Service> {
    const pool = req.mode === 'create'
      ? await LocalPool.create(req.device, { ...(req.size !== undefined ? { size: req.size } : {}), force: req.force === true })
      : await LocalPool.open(req.device);
    try {
      return new Service(pool, inProcessFaults);
    } catch (err) {
      await pool.close();
      throw err;
    }
  }

  get path(): string {
    return this.pool.path;
  }

  /** The pool's UUID and what fstat says of the service's own device descriptor (daxmapd tells its clients). */
  deviceIdentity(): DeviceIdentity {
    return statIdentity(this.internals.storage, this.internals.core.sb.uuid);
  }

  /** Mode and owner of the service's own device descriptor (fstat): who may open that device. */
  deviceOwner(): { mode: number; uid: number; gid: number } {
    return statOwner(this.internals.storage);
  }

  hello(): Hello {
    if (this.channel === null) throw daxError('EINVAL', 'no in-process fault channel in this service');
    const align = this.internals.storage.align ?? 4096;
    return { channel: this.channel.id, deviceId: this.local.deviceId, path: this.pool.path, ...(align > 4096 ? { granularity: align } : {}) };
  }

  /** Serve a thread of this process on this port until it closes (embedded mode). */
  connect(port: MessagePort): void {
    const conn = this.open({
      send: (msg, transfer) => port.postMessage(msg, transfer ?? []),
      close: () => port.close(),
    }, this.local, null, true);
    port.on('message', (msg: Request) => {
      void this.dispatch(conn, msg);
    });
    port.on('close', () => this.disconnect(conn));
    port.start?.();
  }

  /** A connection over any transport (the daemon's sockets). */
  open(transport: Transport, client: Client, peer: Peer | null, mayMap: boolean): Conn {
    const conn: Conn = { transport, client, peer, mayMap, files: new Map(), regions: new Map(), closed: false };
    this.conns.add(conn);
    return conn;
  }

  /** The client is gone (or let go of the pool): forget its mappings, close its files. */
  disconnect(conn: Conn): void {
    if (conn.closed) return;
    conn.closed = true;
    this.conns.delete(conn);
    // The mappings' reserves are taken back before their files are closed.
    const unmapped = Promise.all([...conn.regions.keys()].map((region) => this.policy.unmap(conn.client, region).catch(() => {})));
    conn.regions.clear();
    const files = [...conn.files.values()];
    conn.files.clear();
    void unmapped.then(() => Promise.all(files.map((f) => f.close().catch(() => {}))));
  }

  get connections(): number {
    return this.conns.size;
  }

  private reply(conn: Conn, r: Response, transfer: ArrayBuffer[] = []): void {
    if (conn.closed) return;
    try {
      conn.transport.send(r, transfer);
    } catch (err) {
      log.warn({ err }, 'could not reply to a client');
    }
  }

  /** Does the peer have `want` (R_OK/W_OK) on the file? Root and embedded callers always do. */
  private allowed(conn: Conn, f: LocalFile, want: number): boolean {
    const p = conn.peer;
    if (p === null || p.uid === 0) return true;
    const ino = this.internals.inode(f);
    return (permBits(p, ino.uid, ino.gid, ino.mode) & want) === want;
  }

  private check(conn: Conn, f: LocalFile, want: number, what: string): void {
    if (!this.allowed(conn, f, want)) {
      throw daxError('EACCES', `${what} '${f.name}': permission denied for uid ${conn.peer?.uid} (mode ${this.internals.inode(f).mode.toString(8)})`);
    }
  }

  /** Unlink or rename: the owner (or root) only, as in a sticky shared directory. */
  private async checkOwner(conn: Conn, name: string, what: string): Promise<void> {
    const p = conn.peer;
    if (p === null || p.uid === 0) return;
    const f = await this.pool.openFile(name).catch(() => null);
    if (f === null) return; // ENOENT comes from the operation itself
    const owner = this.internals.inode(f).uid;
    await f.close();
    if (owner !== p.uid) throw daxError('EPERM', `${what} '${name}': only its owner (uid ${owner}) may`);
  }

  /** Handle one request from a connection; the reply goes back over its transport. */
  async dispatch(conn: Conn, req: Request): Promise<void> {
    try {
      const { value, transfer } = await this.run(conn, req.op, req.args);
      this.reply(conn, { id: req.id, ok: true, value }, transfer);
    } catch (err) {
      if (!isDaxError(err)) log.error({ err, op: req.op }, 'unexpected error in a pool operation');
      this.reply(conn, { id: req.id, ok: false, error: errorInfo(err) });
    }
  }

  private file(conn: Conn, handle: number, want = 0, what = 'use'): LocalFile {
    const f = conn.files.get(handle);
    if (!f) throw daxError('EBADF', `file handle ${String(handle)} is not open`);
    if (want) this.check(conn, f, want, what);
    return f;
  }

  /** An operation that needs write permission and may grow the file: the policy hears of the growth. */
  private async resizing<T>(conn: Conn, handle: number, what: string, op: (f: LocalFile) => Promise<T>): Promise<T> {
    const f = this.file(conn, handle, W_OK, what);
    const before = this.internals.inode(f).size;
    const result = await op(f);
    const ino = this.internals.inode(f);
    if (ino.size > before) await this.policy.grown(ino);
    return result;
  }

  private async run(conn: Conn, op: string, a: unknown[]): Promise<Reply> {
    if (this.closing && op !== 'close') throw daxError('ECLOSED', 'the pool is closed');
    const spec = opSpec(op);
    if (spec.access !== undefined) {
      if (conn.peer !== null && conn.peer.uid !== 0) throw daxError('EPERM', `${op}: root only`);
      if (spec.access === 'test' && process.env.DAXMAP_TEST_HOOKS !== '1') throw daxError('EPERM', 'test hooks are disabled');
    }
    const args = spec.args(a, { remote: conn.peer !== null });
    // Reserves are taken back (their notes adopted) before anything reads or changes
    // files: no operation may see a block the policy has not recorded (docs/fault-policy.md, "Reserves").
    if (this.policy.reservesLive && !NO_RESERVE_RECLAIM.has(spec.name)) await this.policy.reclaimReserves();
    // The one place the op's name and its checked arguments are matched up: OPS[op] made `args`.
    return (this.handlers[spec.name] as (conn: Conn, ...args: unknown[]) => Promise<Reply> | Reply)(conn, ...args);
  }

  /** One handler per operation of lib/protocol/ops.ts, its arguments checked and typed there. */
  private readonly handlers: Handlers = {
    hello: () => done(this.hello()),
    attach: (_conn, port) => {
      this.connect(port);
      return done();
    },
    openFile: async (conn, name, o) => {
      const opts: { create: boolean; exclusive: boolean; mode?: number; uid?: number; gid?: number } = { ...o };
      if (conn.peer) {
        opts.uid = conn.peer.uid;
        opts.gid = conn.peer.gid;
      }
      const f = await this.pool.openFile(name, opts);
      if (!this.allowed(conn, f, R_OK) && !this.allowed(conn, f, W_OK)) {
        await f.close();
        throw daxError('EACCES', `open '${name}': permission denied`);
      }
      const handle = this.nextHandle++;
      conn.files.set(handle, f);
      return done({ handle, name: f.name });
    },
    unlink: async (conn, name) => {
      await this.checkOwner(conn, name, 'unlink');
      await this.pool.unlink(name);
      return done();
    },
    rename: async (conn, from, to) => {
      await this.checkOwner(conn, from, 'rename');
      await this.checkOwner(conn, to, 'rename over');
      await this.pool.rename(from, to);
      return done();
    },
    list: async () => done(await this.pool.list()),
    statfs: async () => done(await this.pool.statfs()),
    settled: async () => done(await this.pool.settled()),
    // Anyone may make the pool durable, as anyone may call sync(2).
    sync: async () => done(await this.pool.sync()),
    stats: () => done(this.policy.snapshot()),
    statsByFile: () => done(this.policy.fileSnapshots()),
    lockdep: () => done(lockdep.enabled ? lockdep.violations().map((x) => ({ ...x })) : null),
    testInject: (_conn, { where, code, delayMs }) => {
      // 'adopt': each batch of a reserve's notes waits delayMs before it is adopted.
      // 'adopted': each adoption holds its locks delayMs longer once done.
      const wait = (): Promise<void> => new Promise<void>((res) => setTimeout(res, delayMs ?? 0));
      this.policy.beforeAdopt = where === 'adopt' ? wait : null;
      this.policy.afterAdopt = where === 'adopted' ? wait : null;
      if (where === 'adopt' || where === 'adopted') return done();
      this.policy.inject = where === null ? null : (w) => {
        if (where !== 'any' && where !== w) return;
        if (delayMs !== null) return new Promise<void>((res) => setTimeout(res, delayMs));
        throw daxError(code, `failure injected on the ${w} path`);
      };
      return done();
    },
    testExit: (_conn, o) => {
      setImmediate(() => {
        if (o.crash) throw new Error('crash of the pool service (injected)');
        process.exit(3);
      });
      if (!o.reply) return new Promise<never>(() => {});
      return done();
    },
    testFailPersist: (_conn, { code }) => {
      const storage = this.internals.storage as { persist(o: number, l: number): void; persistAll(): void };
      // As a real failure reads: the system error's number, call and path, and its cause.
      const errno = (osConstants.errno as Record<string, number>)[code];
      const fail = (): never => {
        throw daxError(code, `persist of '${this.pool.path}' failed (injected)`, {
          ...(errno !== undefined ? { errno: -errno } : {}), syscall: 'msync', path: this.pool.path, cause: new Error('testFailPersist'),
        });
      };
      storage.persist = fail;
      storage.persistAll = fail;
      return done();
    },
    testState: (conn) => {
      const mine = this.policy.allMappings().filter((m) => m.client === conn.client).length;
      return done({ mappings: mine, regions: conn.regions.size, files: conn.files.size, windows: conn.client.budget.count });
    },
    testAhead: () => done(this.policy.aheadRunning),
    configure: (conn, o) => {
      if (o.windowBudget !== undefined) conn.client.budget.limit = o.windowBudget;
      if (o.decided !== undefined) this.policy.decideMode = o.decided;
      if (o.reserve !== undefined) this.policy.reserveMode = o.reserve;
      if (o.ahead !== undefined) this.policy.aheadWindows = o.ahead;
      if (o.reserveWindow !== undefined) this.policy.reserveWindow = o.reserveWindow;
      if (o.stage !== undefined) this.policy.stage = o.stage === 'on';
      if (o.cleanTarget !== undefined) this.pool.setCleanTarget(o.cleanTarget);
      return done();
    },
    stat: async (conn, h) => done(await this.file(conn, h, R_OK, 'stat').stat()),
    truncate: async (conn, h, size) => done(await this.resizing(conn, h, 'truncate', (f) => f.truncate(size))),
    fallocate: async (conn, h, offset, length, o) => done(await this.resizing(conn, h, 'fallocate', (f) => f.fallocate(offset, length, o))),
    punchHole: async (conn, h, offset, length) => done(await this.file(conn, h, W_OK, 'punch hole in').punchHole(offset, length)),
    zeroRange: async (conn, h, offset, length, o) => done(await this.resizing(conn, h, 'zero range of', (f) => f.zeroRange(offset, length, o))),
    write: async (conn, h, data, offset) => done(await this.resizing(conn, h, 'write', async (f) => {
      const n = await f.write(data, offset);
      await this.policy.written(this.internals.inode(f), offset, n);
      return n;
    })),
    read: async (conn, h, length, offset) => {
      const f = this.file(conn, h, R_OK, 'read');
      const buf = Buffer.alloc(length);
      const n = await f.read(buf, offset);
      const out = new Uint8Array(buf.buffer, buf.byteOffset, n);
      return { value: out, transfer: buf.byteOffset === 0 && buf.buffer.byteLength === buf.length ? [buf.buffer as ArrayBuffer] : [] };
    },
    fsync: async (conn, h) => done(await this.file(conn, h, R_OK, 'fsync').fsync()),
    closeFile: async (conn, h) => {
      if (h === null) return done();
      const f = conn.files.get(h);
      if (f) {
        conn.files.delete(h);
        await f.close();
      }
      return done();
    },
    map: async (conn, h, region, fileOffset, length, o) => done(await this.map(conn, h, region, fileOffset, length, o)),
    unmap: async (conn, region) => {
      if (region !== null) {
        conn.regions.delete(region);
        await this.policy.unmap(conn.client, region);
      }
      return done();
    },
    flush: async (conn, region, offset, length) => done(await this.flush(conn, region, offset, length)),
    close: async (conn) => {
      // Closing the pool is its owner's: the embedded Pool that started the service.
      // daxmapd's pool closes when the daemon stops (SIGTERM); a client lets go of
      // its own files and mappings by disconnecting (pool.close()).
      if (conn.peer !== null) throw daxError('EPERM', 'close: a daxmapd client cannot close the daemon\'s pool (stop daxmapd with SIGTERM); pool.close() lets go of this client\'s own files');
      await this.close(conn);
      return done();
    },
  };

  private async map(conn: Conn, handle: number, region: number, fileOffset: number, length: number, o: MapOptions): Promise<null> {
    if (!conn.mayMap) throw daxError('EACCES', 'map: this client cannot open the pool device, so it may not map it');
    const f = this.file(conn, handle, R_OK, 'map');
    // A read-only mapping (its region is PROT_READ in the client) gets nothing writable installed.
    const writable = !o.private && !o.readOnly && this.allowed(conn, f, W_OK);
    // sync governs write faults of the shared mapping only: as Linux ignores MAP_SYNC
    // on a private mapping (and a read-only one never takes a write fault), it is
    // accepted and has no effect there.
    const sync = o.sync && writable;
    if (conn.regions.has(region)) throw daxError('EEXIST', `region ${region} is already mapped`);
    const inode = this.internals.inode(f);
    if (!inode.live) throw daxError('ENOENT', `file '${inode.name}' was removed`);
    const dev = this.internals.storage;
    // One rule for every 2 MiB-granular device (device-DAX and its hugetlbfs stand-in):
    // private mappings copy pages and may start anywhere.
    const align = dev.align ?? 4096;
    if (align > 4096 && !o.private && fileOffset % align !== 0) {
      // its windows could never be installed (docs/pool.md, "2 MiB-granular devices")
      throw daxError('EINVAL', `on a ${align}-byte granular ${dev.kind} pool, a shared mapping must start at a ${align}-byte aligned file offset`);
    }
    // The mapping is registered at once; its written extents are then decided ahead
    // (answers to the client's agent) before the reply, so before the region is bound.
    const decided = this.policy.map(conn.client, {
      region, inode, fileOffset, length, private: o.private, sync, faultAround: o.faultAround, writable,
    });
    conn.regions.set(region, { handle, fileOffset, length });
    try {
      await decided;
    } catch (err) {
      if (!isDaxError(err, 'EEXIST')) {
        conn.regions.delete(region);
        await this.policy.unmap(conn.client, region).catch(() => {});
      }
      throw err;
    }
    return null;
  }

  /** Data (device ranges of the mapped extents) and metadata durable for the range. */
  private async flush(conn: Conn, region: number, offset: number, length: number): Promise<void> {
    const r = conn.regions.get(region);
    if (!r) throw daxError('EBADF', `region ${region} is not mapped`);
    int('flush offset', offset, 0, r.length);
    int('flush length', length, 0, r.length - offset);
    const f = this.file(conn, r.handle);
    const ino = this.internals.inode(f);
    const start = r.fileOffset + offset;
    const end = Math.min(r.fileOffset + offset + length, ino.size);
    const range = await ino.rangeLock.acquireShared(start, Math.max(start + 1, end));
    try {
      this.internals.persistWritten(ino, start, end - start);
    } finally {
      range.release();
    }
    await f.fsync();
  }

  /** Close the pool: every mapping in every thread is revoked (later touches get SIGBUS), clients are told, the pool is flushed and released. */
  close(from?: Conn): Promise<void> {
    if (this.closing) return this.closing;
    this.closing = (async () => {
      for (const m of this.policy.allMappings()) await this.policy.kill(m);
      for (const c of this.conns) {
        if (c !== from && !c.closed) {
          try {
            c.transport.send({ notice: 'closed' });
          } catch {
            // that client is gone already
          }
        }
      }
      this.channel?.close();
      for (const c of this.conns) {
        for (const f of c.files.values()) await f.close().catch(() => {});
        c.files.clear();
      }
      await this.pool.close();
    })();
    return this.closing;
  }
}
