// daxmapd: one pool and its fault policy, served to many client processes over a
// UNIX socket. Each client opens two connections: a control connection (requests,
// framed JSON — lib/protocol/control.ts) and a fault connection (the binary wire
// protocol of docs/wire.md, spoken natively by the client's agent). The first byte
// tells them apart: "D" (DXC1) for control, 0x04 (a wire HELLO) for faults.
import fs from 'node:fs';

import type http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { daxError, isDaxError } from '../errors';
import { native } from '../native/addon';
import { openDevice } from '../device/device';
import { Service, permBits, type Conn, type Peer } from '../service/service';
import type { Request, Response, Notice } from '../protocol/messages';
import { errorInfo } from '../protocol/errors';
import { DAEMON_OPS } from '../protocol/ops';
import { EV_NOTE, type FaultEvent } from '../native/frames';
import { monotonicNow } from '../native/engine';
import { ControlReader, encodeFrame, restorePayload } from '../protocol/control';
import { RemoteClient, readFaultHello } from './remote-client';
import type { DeviceIdentity } from '../pool/index';
import { WindowBudget } from '../fault/budget';
import { metricsRegistry, serveMetrics } from './metrics';

export interface DaemonOptions {
  device: string;
  socket: string;
  /** Size of the device when daxmapd creates it (missing device). */
  size: number;
  log: Logger;
  /** Mode of the socket file (default 0o660). */
  socketMode?: number;
  /** An answer a client does not acknowledge within this long counts it as gone. */
  answerTimeoutMs?: number;
  /** Serve Prometheus metrics over HTTP here (docs/daemon.md); none when absent or null. */
  metrics?: { host: string; port: number } | null;
}

/** Client traffic refused or failed, counted for the metrics endpoint. */
export interface DaemonErrors {
  /** a fault event the policy failed on unexpectedly (logged at error) */
  fault_handling: number;
  /** a control connection dropped for malformed traffic */
  malformed_control: number;
  /** a fault connection dropped for malformed traffic */
  malformed_fault: number;
  /** a fault connection refused at its hello */
  fault_connection_refused: number;
}

interface Session {
  token: bigint;
  conn: Conn;
  client: RemoteClient;
  peer: Peer;
  control: net.Socket;
}

const HANDSHAKE_MS = 10000;
const PAGE = 4096;
/**
 * Fault events of one client being handled at once. A client's agent has at most one
 * live event per faulting page and thread (each blocked in its fault); far more than
 * this is a client flooding the daemon.
 */
const MAX_EVENTS_IN_FLIGHT = 1 << 16;
/** An event's time older than this (or in the future) is not the client agent's: the daemon's clock stands in. */
const MAX_EVENT_AGE_NS = 60_000_000_000n;

/**
 * What a well-behaved agent never sends (docs/wire.md): an offset that is not a page
 * of its region. An event on a region the daemon does not know is fine (unmapped
 * meanwhile: it gets SIGBUS).
 */
function badEvent(conn: Conn, events: FaultEvent[]): string | null {
  const now = monotonicNow();
  for (const ev of events) {
    if (!Number.isSafeInteger(ev.offset) || ev.offset % PAGE !== 0) return `offset ${ev.offset} of region ${ev.region} is not a page offset`;
    const r = conn.regions.get(ev.region);
    if (r && ev.offset >= r.length) return `offset ${ev.offset} is past the ${r.length} bytes of region ${ev.region}`;
    // A note's time field carries a device offset (docs/wire.md); the policy checks it.
    if ((ev.flags & EV_NOTE) === 0 && (ev.timeNs > now || now - ev.timeNs > MAX_EVENT_AGE_NS)) ev.timeNs = now;
  }
  return null;
}

/**
 * The peer's supplementary groups. SO_PEERCRED has only the primary gid; the rest
 * comes from /proc, and only if that process is still the one that connected (same
 * uid and gid), else none: group access is then judged by the primary gid alone.
 */
export function peerGroups(peer: Peer): number[] {
  try {
    const st = fs.readFileSync(`/proc/${peer.pid}/status`, 'latin1');
    const ids = (name: string): number[] => (new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(st)?.[1] ?? '').trim().split(/\s+/).filter(Boolean).map(Number);
    const [, euid] = ids('Uid');
    const [, egid] = ids('Gid');
    if (euid !== peer.uid || egid !== peer.gid) return [];
    return ids('Groups').filter((g) => Number.isSafeInteger(g));
  } catch {
    return [];
  }
}

function socketFd(sock: net.Socket): number {
  const h = (sock as unknown as { _handle?: { fd?: number } })._handle;
  const fd = h?.fd;
  if (typeof fd !== 'number' || fd < 0) throw daxError('EBADF', 'no file descriptor behind the client socket');
  return fd;
}

/** Longest UNIX socket path Linux takes (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

/**
 * Can a socket be created at `socketPath`? Checked before the device is touched, so a
 * bad --socket costs nothing and says what is wrong: ENAMETOOLONG, ENOENT (no such
 * directory), ENOTDIR, EACCES (no write and search permission on the directory).
 */
export function checkSocketPath(socketPath: string): void {
  if (typeof socketPath !== 'string' || socketPath.length === 0) throw daxError('EINVAL', 'the socket path must be a non-empty string');
  const bytes = Buffer.byteLength(socketPath);
  if (bytes > MAX_SOCKET_PATH) {
    throw daxError('ENAMETOOLONG', `socket path '${socketPath}' is ${bytes} bytes; a UNIX socket path may have at most ${MAX_SOCKET_PATH}`);
  }
  const dir = path.dirname(path.resolve(socketPath));
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw daxError(code, code === 'ENOENT'
      ? `the socket's directory '${dir}' does not exist: create it first (mkdir -p ${dir}) or give another --socket`
      : `the socket's directory '${dir}' cannot be examined: ${(err as Error).message}`, { path: dir });
  }
  if (!st.isDirectory()) throw daxError('ENOTDIR', `the socket's directory '${dir}' is not a directory`, { path: dir });
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
  } catch {
    throw daxError('EACCES', `cannot create the socket in '${dir}': uid ${process.getuid?.()} has no write and search permission on it`, { path: dir });
  }
}

/** Remove a socket file left by a daemon that died; refuse to steal a live one. */
export async function claimSocketPath(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw daxError('EEXIST', `${path} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw daxError('EADDRINUSE', `a daxmapd is already serving ${path}`);
  fs.unlinkSync(path);
}

export class Daemon {
  private readonly server: net.Server;
  private readonly sessions = new Map<string, Session>();
  private stopping: Promise<void> | null = null;
  readonly started = Date.now();
  /** The device as clients must find it: the pool's UUID and fstat of our own descriptor. */
  private readonly identity: DeviceIdentity;
  readonly errors: DaemonErrors = { fault_handling: 0, malformed_control: 0, malformed_fault: 0, fault_connection_refused: 0 };
  private metricsServer: http.Server | null = null;
  /** The daemon's own connection to its service, for the figures only requests give (statfs, list). */
  private own: Conn | null = null;
  private readonly ownReplies = new Map<number, (r: Response) => void>();
  private ownId = 0;

  private constructor(readonly service: Service, private readonly opts: DaemonOptions) {
    this.identity = service.deviceIdentity();
    this.server = net.createServer((sock) => this.accept(sock));
    this.server.on('error', (err) => opts.log.error({ err }, 'listening socket error'));
  }

  /** Opens (or creates and formats) the device, then listens on the socket. */
  static async start(given: DaemonOptions): Promise<Daemon> {
    checkSocketPath(given.socket);
    // Clients open the device path we hand them, from their own cwd: it must be
    // absolute (they still prove it is the same device before mapping).
    const opts = { ...given, device: path.resolve(given.device) };
    await claimSocketPath(opts.socket);
    const exists = fs.existsSync(opts.device);
    const service = await Service.start(exists ? { device: opts.device, mode: 'open' } : { device: opts.device, mode: 'create', size: opts.size }, false);
    if (!exists) opts.log.info({ device: opts.device, size: opts.size }, 'created and formatted the pool device');
    let d: Daemon | undefined;
    try {
      // What the device is and its mapping granularity (2 MiB on devdax and hugetlbfs:
      // docs/native.md, "2 MiB-granular devices"), from a look that takes no lock;
      // said before 'daxmapd listening', which whoever waits for the daemon waits for.
      const look = openDevice(opts.device, { view: false, writable: false });
      opts.log.info({ device: look.path, kind: look.kind, granularity: look.align }, `pool device: ${look.kind}, ${look.align}-byte granular`);
      look.close();
      d = new Daemon(service, opts);
      await d.listen();
      if (opts.metrics) d.metricsServer = await serveMetrics(d.metricsRegistry(), opts.metrics, opts.log);
    } catch (err) {
      d?.server.close();
      await service.close();
      throw err;
    }
    return d;
  }

  /** Where the metrics endpoint listens (its port when 0 was asked), or null. */
  get metricsAddress(): { host: string; port: number } | null {
    const a = this.metricsServer?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : null;
  }

  /** A request to the service on the daemon's own connection (as the process itself: anything is allowed). */
  private ask<T>(op: string, args: unknown[] = []): Promise<T> {
    this.own ??= this.service.open({
      send: (msg) => {
        if ('id' in msg) {
          this.ownReplies.get(msg.id)?.(msg);
          this.ownReplies.delete(msg.id);
        }
      },
      close: () => {},
    }, { id: 'daxmapd', budget: new WindowBudget(), deviceId: -1, run: (answers) => answers.map(() => -6) }, null, false);
    const id = ++this.ownId;
    return new Promise<T>((resolve, reject) => {
      this.ownReplies.set(id, (r) => (r.ok ? resolve(r.value as T) : reject(daxError(r.error.code, r.error.message))));
      void this.service.dispatch(this.own!, { id, op, args } as unknown as Request);
    });
  }

  private metricsRegistry() {
    return metricsRegistry({
      faults: () => this.service.policy.snapshot(),
      pool: async () => {
        const [fs, names] = await Promise.all([this.ask<{ size: number; free: number }>('statfs'), this.ask<string[]>('list')]);
        return { usedBytes: fs.size - fs.free, freeBytes: fs.free, files: names.length };
      },
      mappedBytes: () => this.service.policy.allMappings().reduce((n, m) => n + m.length, 0),
      clients: () => this.clients,
      errors: () => ({ ...this.errors }),
    });
  }

  private listen(): Promise<void> {
    const mode = this.opts.socketMode ?? 0o660;
    return new Promise((resolve, reject) => {
      // The socket file is born with the mode it keeps: no window in which anyone
      // else could connect.
      const old = process.umask(0o777 & ~mode);
      this.server.once('error', reject);
      this.server.listen(this.opts.socket, () => {
        process.umask(old);
        this.server.removeListener('error', reject);
        try {
          fs.chmodSync(this.opts.socket, mode);
        } catch (err) {
          reject(err);
          return;
        }
        this.opts.log.info({ socket: this.opts.socket, device: this.opts.device, mode: mode.toString(8) }, 'daxmapd listening');
        resolve();
      });
    });
  }

  get clients(): number {
    return this.sessions.size;
  }

  private accept(sock: net.Socket): void {
    if (this.stopping) {
      sock.destroy();
      return;
    }
    sock.on('error', () => {});
    const timer = setTimeout(() => sock.destroy(), HANDSHAKE_MS);
    sock.once('data', (first: Buffer) => {
      clearTimeout(timer);
      sock.pause();
      let peer: Peer;
      try {
        peer = native().peerCred(socketFd(sock));
        peer.groups = peerGroups(peer);
      } catch (err) {
        this.opts.log.warn({ err }, 'no peer credentials; connection dropped');
        sock.destroy();
        return;
      }
      if (first[0] === 0x44) this.control(sock, first, peer);
      else if (first[0] === 0x04) void this.fault(sock, first, peer);
      else sock.destroy();
      sock.resume();
    });
  }

  /** Can this peer open the device read-write itself? Only then may it map. */
  private mayMap(peer: Peer): boolean {
    if (peer.uid === 0) return true;
    try {
      // The device itself (our descriptor), not whatever its path names now.
      const st = this.service.deviceOwner();
      return (permBits(peer, st.uid, st.gid, st.mode) & 6) === 6;
    } catch {
      return false;
    }
  }

  private control(sock: net.Socket, first: Buffer, peer: Peer): void {
    const log = this.opts.log;
    const reader = new ControlReader({ expectMagic: true });
    let session: Session | null = null;
    const send = (msg: Response | Notice): void => {
      if (sock.destroyed) return;
      try {
        sock.write(encodeFrame(msg as unknown as Record<string, unknown>));
      } catch (err) {
        log.warn({ err }, 'could not encode a reply; dropping the client');
        sock.destroy();
      }
    };
    const fail = (id: unknown, code: string, message: string): void => {
      send({ id: typeof id === 'number' ? id : -1, ok: false, error: errorInfo(daxError(code, message)) });
    };
    const onFrame = (json: Record<string, unknown>, payload: Buffer | null): void => {
      const { id, op, args } = json;
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || typeof op !== 'string' || !Array.isArray(args)) {
        throw daxError('EPROTO', 'a request needs a numeric id, a string op and an args array');
      }
      const a = args.map((x) => restorePayload(x, payload));
      if (session === null) {
        if (op !== 'hello') return fail(id, 'EPROTO', 'the first request must be hello');
        const token = crypto.randomBytes(8).readBigUInt64LE(0);
        const client = new RemoteClient(`c${token.toString(16)}`, token, peer.pid, log, this.opts.answerTimeoutMs);
        const mayMap = this.mayMap(peer);
        const conn = this.service.open({ send, close: () => sock.destroy() }, client, peer, mayMap);
        let inFlight = 0;
        client.onEvents = (c, events) => {
          if (c.gone) return;
          // Checked before the policy sees them; a client that breaks the protocol loses its fault connection.
          const bad = badEvent(conn, events);
          if (bad !== null || inFlight + events.length > MAX_EVENTS_IN_FLIGHT) {
            const why = bad ?? `more than ${MAX_EVENTS_IN_FLIGHT} fault events in flight`;
            this.errors.malformed_fault++;
            log.warn({ clientPid: peer.pid, why }, 'malformed fault traffic; fault connection dropped');
            c.die(`malformed fault traffic: ${why}`);
            return;
          }
          inFlight += events.length;
          this.service.policy.handle(c, events).catch((err: unknown) => {
            this.errors.fault_handling++;
            log.error({ err, clientPid: peer.pid }, 'fault handling failed');
          }).finally(() => {
            inFlight -= events.length;
          });
        };
        client.onGone = (c) => void this.service.policy.dropClient(c); // it logs its own failures
        session = { token, conn, client, peer, control: sock };
        this.sessions.set(token.toString(), session);
        log.info({ clientPid: peer.pid, uid: peer.uid, gid: peer.gid, mayMap }, 'client connected');
        send({ id, ok: true, value: { session: token.toString(), device: this.opts.device, identity: this.identity, daemonPid: process.pid, mayMap } });
        return;
      }
      if (op === 'attachDevice') {
        let dev: number;
        try {
          [dev] = DAEMON_OPS.attachDevice.args(a, { remote: true });
        } catch (err) {
          return send({ id, ok: false, error: errorInfo(err) });
        }
        session.client.deviceId = dev;
        return send({ id, ok: true, value: null });
      }
      void this.service.dispatch(session.conn, { id, op, args: a } as Request);
    };
    const onData = (chunk: Buffer): void => {
      try {
        for (const f of reader.push(chunk)) onFrame(f.json as Record<string, unknown>, f.payload);
      } catch (err) {
        this.errors.malformed_control++;
        log.warn({ clientPid: peer.pid, err: isDaxError(err) ? err.message : String(err) }, 'malformed control traffic; client dropped');
        sock.destroy();
      }
    };
    sock.on('data', onData);
    sock.on('close', () => {
      if (session) {
        this.sessions.delete(session.token.toString());
        this.service.disconnect(session.conn);
        session.client.die('control connection closed');
        log.info({ clientPid: peer.pid }, 'client disconnected');
      }
    });
    onData(first);
  }

  private async fault(sock: net.Socket, first: Buffer, peer: Peer): Promise<void> {
    try {
      const h = await readFaultHello(sock, first, HANDSHAKE_MS);
      const s = this.sessions.get(h.session.toString());
      // The fault connection must come from the same user as its control connection.
      if (!s || s.peer.uid !== peer.uid || s.client.connected || s.client.gone) throw daxError('EPERM', 'no such session');
      s.client.attach(sock, h.reader, h.rest);
    } catch (err) {
      this.errors.fault_connection_refused++;
      this.opts.log.warn({ clientPid: peer.pid, err: (err as Error).message }, 'fault connection refused');
      sock.destroy();
    }
  }

  /**
   * Stop: no new clients; every mapping of every client is revoked (each client
   * acknowledges, or is dropped after the answer timeout) so later touches get
   * SIGBUS, in-flight faults are answered, clients are told, the pool is flushed and
   * closed, the socket file removed.
   */
  stop(): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopping = (async () => {
      this.server.close();
      this.metricsServer?.close();
      this.metricsServer?.closeAllConnections();
      if (this.own) this.service.disconnect(this.own);
      await this.service.close();
      for (const s of this.sessions.values()) {
        s.client.die('daxmapd is stopping');
        s.control.end();
      }
      try {
        fs.unlinkSync(this.opts.socket);
      } catch {
        // already gone
      }
      this.opts.log.info('daxmapd stopped');
    })();
    return this.stopping;
  }
}
