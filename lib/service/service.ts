// The service: one pool and its fault policy, serving any number of clients (the
// thread that opened the pool, and threads it shared the pool with) over
// MessagePorts. In embedded mode it runs in its own worker thread, so the threads
// that fault never have to answer their own faults. It never touches a trapped
// region itself.
import type { MessagePort } from 'node:worker_threads';
import { isDaxError, daxError } from '../errors';
import { errorInfo } from '../protocol/errors';
import { FaultChannel } from '../native/channel';
import { execute } from '../native/engine';
import { AnswerBatch, type AnswerSpec, type FaultEvent } from '../native/frames';
import { logger } from '../log';
import { lockdep } from '../lock/index';
import { Pool as LocalPool, PoolFile as LocalFile } from '../pool/pool';
import { poolInternals, type PoolInternals } from '../pool/internal';
import { statIdentity, statOwner, type DeviceIdentity } from '../device/identity';
import { FaultPolicy, type Client } from '../fault/policy';
import { WindowBudget } from '../fault/budget';
import { PAGE } from '../fault/states';
import type { Hello, MapOptions, Notice, Request, Response, StartRequest } from '../protocol/messages';

const log = logger('service');

/** Answers for regions of this very process: executed here, by the native agent. */
class LocalClient implements Client {
  readonly id = 'local';
  readonly budget = new WindowBudget();
  private readonly batch = new AnswerBatch();
  constructor(readonly deviceId: number) {}
  run(answers: AnswerSpec[]): number[] {
    this.batch.reset();
    for (const a of answers) this.batch.add(a);
    return Array.from(execute(this.batch));
  }
}

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
/** Largest file.read through a socket: its reply must fit one control frame (lib/protocol/control.ts MAX_PAYLOAD). */
const REMOTE_MAX_READ = 32 << 20;
/** Mappings end at or below this file offset (the pool's largest file, lib/pool/format.ts). */
const MAX_MAP_END = 2 ** 44;

// Arguments from a daxmapd client are untrusted: anything JSON can say. These turn a
// wrong type or range into EINVAL before it reaches the pool or the fault policy.
function intArg(what: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw daxError('EINVAL', `${what} must be an integer in [${min}, ${max}], got ${typeof v === 'string' ? `'${v.slice(0, 40)}'` : String(v)}`);
  }
  return v;
}

function pagesArg(what: string, v: unknown, min: number, max: number): number {
  const n = intArg(what, v, min, max);
  if (n % PAGE !== 0) throw daxError('EINVAL', `${what} ${n} is not a multiple of the page size ${PAGE}`);
  return n;
}

function mapOptionsArg(v: unknown): MapOptions {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw daxError('EINVAL', 'map options must be an object');
  const o = v as Record<string, unknown>;
  for (const k of ['private', 'sync', 'faultAround'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'boolean') throw daxError('EINVAL', `map option ${k} must be a boolean`);
  }
  return { private: o.private === true, sync: o.sync === true, faultAround: o.faultAround !== false };
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
    return { channel: this.channel.id, deviceId: this.local.deviceId, path: this.pool.path };
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
    for (const region of conn.regions.keys()) this.policy.unmap(conn.client, region);
    conn.regions.clear();
    for (const f of conn.files.values()) void f.close().catch(() => {});
    conn.files.clear();
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

  private rootOnly(conn: Conn, what: string): void {
    if (conn.peer !== null && conn.peer.uid !== 0) throw daxError('EPERM', `${what}: root only`);
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

  private file(conn: Conn, handle: unknown, want = 0, what = 'use'): LocalFile {
    const f = conn.files.get(handle as number);
    if (!f) throw daxError('EBADF', `file handle ${String(handle)} is not open`);
    if (want) this.check(conn, f, want, what);
    return f;
  }

  private async afterResize(f: LocalFile, before: number): Promise<void> {
    const ino = this.internals.inode(f);
    if (ino.size > before) await this.policy.grown(ino);
  }

  private async run(conn: Conn, op: string, a: unknown[]): Promise<{ value: unknown; transfer?: ArrayBuffer[] }> {
    if (this.closing && op !== 'close') throw daxError('ECLOSED', 'the pool is closed');
    const v = (value: unknown = undefined): { value: unknown } => ({ value });
    switch (op) {
      case 'hello':
        return v(this.hello());
      case 'attach': {
        // A MessagePort, from a thread of this process: nothing a socket can carry.
        if (conn.peer !== null) throw daxError('EINVAL', 'attach: only threads of the service\'s own process attach');
        this.connect(a[0] as MessagePort);
        return v();
      }
      case 'openFile': {
        const o = (a[1] ?? {}) as { create?: boolean; exclusive?: boolean; mode?: unknown };
        const opts: { create: boolean; exclusive: boolean; mode?: number; uid?: number; gid?: number } = { create: o.create === true, exclusive: o.exclusive === true };
        if (o.mode !== undefined) opts.mode = intArg('mode', o.mode, 0, 0o7777) & 0o777;
        if (conn.peer) {
          opts.uid = conn.peer.uid;
          opts.gid = conn.peer.gid;
        }
        const f = await this.pool.openFile(a[0] as string, opts);
        if (!this.allowed(conn, f, R_OK) && !this.allowed(conn, f, W_OK)) {
          await f.close();
          throw daxError('EACCES', `open '${String(a[0])}': permission denied`);
        }
        const handle = this.nextHandle++;
        conn.files.set(handle, f);
        return v({ handle, name: f.name });
      }
      case 'unlink':
        await this.checkOwner(conn, a[0] as string, 'unlink');
        await this.pool.unlink(a[0] as string);
        return v();
      case 'rename':
        await this.checkOwner(conn, a[0] as string, 'rename');
        await this.checkOwner(conn, a[1] as string, 'rename over');
        await this.pool.rename(a[0] as string, a[1] as string);
        return v();
      case 'list':
        return v(await this.pool.list());
      case 'statfs':
        return v(await this.pool.statfs());
      case 'sync':
        // Anyone may make the pool durable, as anyone may call sync(2).
        await this.pool.sync();
        return v();
      case 'stats':
        return v(this.policy.snapshot());
      case 'statsByFile':
        return v(this.policy.fileSnapshots());
      case 'lockdep':
        this.rootOnly(conn, 'lockdep');
        return v(lockdep.enabled ? lockdep.violations().map((x) => ({ ...x })) : null);
      case 'testInject': {
        this.rootOnly(conn, 'testInject');
        // Test hook (DAXMAP_TEST_HOOKS=1 only): make faults on a path fail after their
        // locks are taken, or with `delayMs` take that long there (a fault in flight).
        if (process.env.DAXMAP_TEST_HOOKS !== '1') throw daxError('EPERM', 'test hooks are disabled');
        const o = (a[0] ?? {}) as { where?: 'huge' | 'page' | 'any' | null; code?: string; delayMs?: unknown };
        const where = o.where ?? null;
        const delayMs = o.delayMs === undefined ? null : intArg('delayMs', o.delayMs, 0, 60000);
        this.policy.inject = where === null ? null : (w) => {
          if (where !== 'any' && where !== w) return;
          if (delayMs !== null) return new Promise<void>((res) => setTimeout(res, delayMs));
          throw daxError(o.code ?? 'EIO', `failure injected on the ${w} path`);
        };
        return v();
      }
      case 'testExit': {
        this.rootOnly(conn, 'testExit');
        // Test hook (DAXMAP_TEST_HOOKS=1 only): the service thread dies abruptly.
        if (process.env.DAXMAP_TEST_HOOKS !== '1') throw daxError('EPERM', 'test hooks are disabled');
        // { crash: true }: an uncaught exception instead of process.exit(3);
        // { reply: false }: die without answering this request.
        const o = (a[0] ?? {}) as { crash?: boolean; reply?: boolean };
        setImmediate(() => {
          if (o.crash === true) throw new Error('crash of the pool service (injected)');
          process.exit(3);
        });
        if (o.reply === false) return new Promise<never>(() => {});
        return v();
      }
      case 'testFailPersist': {
        this.rootOnly(conn, 'testFailPersist');
        // Test hook (DAXMAP_TEST_HOOKS=1 only): from now on every persist of the device fails.
        if (process.env.DAXMAP_TEST_HOOKS !== '1') throw daxError('EPERM', 'test hooks are disabled');
        const o = (a[0] ?? {}) as { code?: string };
        const storage = this.internals.storage as { persist(o: number, l: number): void; persistAll(): void };
        const fail = (): never => {
          throw daxError(o.code ?? 'EIO', `persist of '${this.pool.path}' failed (injected)`);
        };
        storage.persist = fail;
        storage.persistAll = fail;
        return v();
      }
      case 'testState': {
        this.rootOnly(conn, 'testState');
        // Test hook (DAXMAP_TEST_HOOKS=1 only): what the service holds for this connection.
        if (process.env.DAXMAP_TEST_HOOKS !== '1') throw daxError('EPERM', 'test hooks are disabled');
        const mine = this.policy.allMappings().filter((m) => m.client === conn.client).length;
        return v({ mappings: mine, regions: conn.regions.size, files: conn.files.size, windows: conn.client.budget.count });
      }
      case 'configure': {
        this.rootOnly(conn, 'configure');
        const o = (a[0] ?? {}) as { windowBudget?: unknown };
        if (o.windowBudget !== undefined) conn.client.budget.limit = intArg('windowBudget', o.windowBudget, 1, 2 ** 31);
        return v();
      }
      case 'stat':
        return v(await this.file(conn, a[0], R_OK, 'stat').stat());
      case 'truncate': {
        const f = this.file(conn, a[0], W_OK, 'truncate');
        const before = this.internals.inode(f).size;
        await f.truncate(a[1] as number);
        await this.afterResize(f, before);
        return v();
      }
      case 'fallocate': {
        const f = this.file(conn, a[0], W_OK, 'fallocate');
        const before = this.internals.inode(f).size;
        await f.fallocate(a[1] as number, a[2] as number, (a[3] ?? {}) as { keepSize?: boolean });
        await this.afterResize(f, before);
        return v();
      }
      case 'punchHole':
        await this.file(conn, a[0], W_OK, 'punch hole in').punchHole(a[1] as number, a[2] as number);
        return v();
      case 'zeroRange': {
        const f = this.file(conn, a[0], W_OK, 'zero range of');
        const before = this.internals.inode(f).size;
        await f.zeroRange(a[1] as number, a[2] as number, (a[3] ?? {}) as { keepSize?: boolean });
        await this.afterResize(f, before);
        return v();
      }
      case 'write': {
        const f = this.file(conn, a[0], W_OK, 'write');
        const before = this.internals.inode(f).size;
        const n = await f.write(a[1] as Uint8Array, a[2] as number);
        await this.policy.written(this.internals.inode(f), a[2] as number, n);
        await this.afterResize(f, before);
        return v(n);
      }
      case 'read': {
        const f = this.file(conn, a[0], R_OK, 'read');
        const buf = Buffer.alloc(intArg('read length', a[1], 0, conn.peer === null ? MAX_MAP_END : REMOTE_MAX_READ));
        const n = await f.read(buf, a[2] as number);
        const out = new Uint8Array(buf.buffer, buf.byteOffset, n);
        return { value: out, transfer: buf.byteOffset === 0 && buf.buffer.byteLength === buf.length ? [buf.buffer as ArrayBuffer] : [] };
      }
      case 'fsync':
        await this.file(conn, a[0], R_OK, 'fsync').fsync();
        return v();
      case 'closeFile': {
        const f = conn.files.get(a[0] as number);
        if (f) {
          conn.files.delete(a[0] as number);
          await f.close();
        }
        return v();
      }
      case 'map': {
        const region = intArg('region', a[1], 1, 0xffffffff);
        const fileOffset = pagesArg('mapping offset', a[2], 0, MAX_MAP_END - PAGE);
        const length = pagesArg('mapping length', a[3], PAGE, MAX_MAP_END - fileOffset);
        return v(this.map(conn, a[0] as number, region, fileOffset, length, mapOptionsArg(a[4])));
      }
      case 'unmap': {
        const region = a[0] as number;
        conn.regions.delete(region);
        this.policy.unmap(conn.client, region);
        return v();
      }
      case 'flush':
        await this.flush(conn, a[0] as number, a[1] as number, a[2] as number);
        return v();
      case 'close':
        // Closing the pool is its owner's: the embedded Pool that started the service.
        // daxmapd's pool closes when the daemon stops (SIGTERM); a client lets go of
        // its own files and mappings by disconnecting (pool.close()).
        if (conn.peer !== null) throw daxError('EPERM', 'close: a daxmapd client cannot close the daemon\'s pool (stop daxmapd with SIGTERM); pool.close() lets go of this client\'s own files');
        await this.close(conn);
        return v();
      default:
        throw daxError('EINVAL', `unknown pool operation '${op}'`);
    }
  }

  private map(conn: Conn, handle: number, region: number, fileOffset: number, length: number, o: MapOptions): null {
    if (!conn.mayMap) throw daxError('EACCES', 'map: this client cannot open the pool device, so it may not map it');
    const f = this.file(conn, handle, R_OK, 'map');
    const writable = !o.private && this.allowed(conn, f, W_OK);
    // sync governs write faults of the shared mapping only: as Linux ignores MAP_SYNC
    // on a private mapping (and a read-only one never takes a write fault), it is
    // accepted and has no effect there.
    const sync = o.sync && writable;
    if (conn.regions.has(region)) throw daxError('EEXIST', `region ${region} is already mapped`);
    const inode = this.internals.inode(f);
    if (!inode.live) throw daxError('ENOENT', `file '${inode.name}' was removed`);
    const dev = this.internals.storage;
    if (dev.kind === 'devdax' && fileOffset % (2 << 20) !== 0) {
      throw daxError('EINVAL', 'on a device-dax pool, mappings must start at a 2 MiB aligned file offset');
    }
    this.policy.map(conn.client, {
      region, inode, fileOffset, length, private: o.private, sync, faultAround: o.faultAround, writable,
    });
    conn.regions.set(region, { handle, fileOffset, length });
    return null;
  }

  /** Data (device ranges of the mapped extents) and metadata durable for the range. */
  private async flush(conn: Conn, region: number, offset: number, length: number): Promise<void> {
    const r = conn.regions.get(region);
    if (!r) throw daxError('EBADF', `region ${region} is not mapped`);
    intArg('flush offset', offset, 0, r.length);
    intArg('flush length', length, 0, r.length - offset);
    const f = this.file(conn, r.handle);
    const ino = this.internals.inode(f);
    const start = r.fileOffset + offset;
    const end = Math.min(r.fileOffset + offset + length, ino.size);
    const range = await ino.rangeLock.acquireShared(start, Math.max(start + 1, end));
    try {
      for (let off = start; off < end;) {
        const x = this.internals.lookup(ino, off);
        const xEnd = Math.min(end, x.offset + x.length);
        if (x.state === 'written') {
          const d0 = (x.deviceOffset as number) + (off - x.offset);
          const d1 = Math.ceil(((x.deviceOffset as number) + (xEnd - x.offset)) / PAGE) * PAGE;
          this.internals.storage.persist(Math.floor(d0 / PAGE) * PAGE, d1 - Math.floor(d0 / PAGE) * PAGE);
        }
        off = xEnd;
      }
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
