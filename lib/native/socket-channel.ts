// A fault channel whose handler is the daemon at the other end of a UNIX socket
// (daemon mode). Forwarding is native (an I/O thread per channel), so a client whose
// main thread is blocked in a fault is still answered. Regions bind to it exactly
// like to a FaultChannel.
import { daxError, isDaxError, type DaxmapError } from '../errors';
import { Deadline, checkSignal, checkTimeout } from '../deadline';
import { native, type SocketChannelInfo } from './addon';
import { checkU64 } from '../util/u64';

export interface SocketChannelOptions {
  /** Token (u64) the daemon matches to this client's control connection; its HELLO must echo it. */
  session: bigint;
  /**
   * Called once if the channel dies on its own: the daemon closed the connection or
   * said BYE, or sent something malformed. Every fault then waiting, and every later
   * fault of the bound regions, has been answered with SIGBUS (EFAULT in a system
   * call). Not called after close().
   */
  onClose?: (err: DaxmapError) => void;
  /** Whether the open channel keeps the event loop alive (default true). */
  ref?: boolean;
}

export interface ConnectTimeoutOptions {
  /** Give up after this many ms with ETIMEDOUT (default 10 000; Infinity: never). */
  timeoutMs?: number;
  /** Abort: rejects with an AbortError (code ABORT_ERR). */
  signal?: AbortSignal;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

class ConnectTo {
  constructor(readonly path: string) {}
}

export class SocketFaultChannel {
  readonly id: number;
  private ownerClosed = false;
  private diedWith: string | undefined;

  /**
   * Opens a channel over a connected SOCK_STREAM socket. `fd` is duplicated: the
   * caller keeps and closes its own (the connection is shut down when the channel
   * stops, whoever still holds a descriptor).
   */
  constructor(fd: number, opts: SocketChannelOptions);
  constructor(target: number | ConnectTo, opts: SocketChannelOptions) {
    if (!(target instanceof ConnectTo) && (!Number.isSafeInteger(target) || target < 0 || target > 0x7fffffff)) {
      throw daxError('EBADF', `socket channel: fd must be a non-negative integer, got ${String(target)}`);
    }
    const session = checkU64('session', opts.session);
    const onClose = opts.onClose;
    const onClosed = (reason: string): void => {
      if (this.diedWith === undefined) this.diedWith = reason;
      if (this.ownerClosed || onClose === undefined) return;
      onClose(daxError('ECLOSED', `fault channel ${this.id} to the daemon closed: ${reason}`));
    };
    this.id = target instanceof ConnectTo
      ? native().channelConnectSocket(target.path, session, onClosed)
      : native().channelOpenSocket(target, session, onClosed);
    if (opts.ref === false) native().channelRefSocket(this.id, false);
  }

  /**
   * Connects to the daemon's socket at `path` and opens a channel over the
   * connection. Never waits: a listen backlog that is full throws `EAGAIN` (see
   * connectAsync, which retries).
   */
  static connect(path: string, opts: SocketChannelOptions): SocketFaultChannel {
    if (typeof path !== 'string' || path.length === 0 || path.includes('\0') || Buffer.byteLength(path) > 107) {
      throw daxError('EINVAL', `socket path must be a non-empty string of at most 107 bytes without NUL`);
    }
    return new (SocketFaultChannel as new (t: number | ConnectTo, o: SocketChannelOptions) => SocketFaultChannel)(new ConnectTo(path), opts);
  }

  /**
   * connect(), retried on a timer while the daemon's listen backlog is full, within
   * `timeoutMs` (default 10 s; `ETIMEDOUT` after) and until `signal` aborts
   * (`AbortError`, code `ABORT_ERR`). The event loop runs meanwhile.
   */
  static async connectAsync(path: string, opts: SocketChannelOptions & ConnectTimeoutOptions): Promise<SocketFaultChannel> {
    const dl = new Deadline(`connect a fault channel to '${path}'`, checkTimeout(opts.timeoutMs, DEFAULT_CONNECT_TIMEOUT_MS), checkSignal(opts.signal));
    return SocketFaultChannel.connectWithin(path, opts, dl);
  }

  /** @internal connectAsync within a caller's deadline (Pool.connect: one limit for every step). */
  static async connectWithin(path: string, opts: SocketChannelOptions, dl: Deadline): Promise<SocketFaultChannel> {
    for (let backoff = 1; ; backoff = Math.min(backoff * 2, 50)) {
      dl.check('connection');
      try {
        return SocketFaultChannel.connect(path, opts);
      } catch (err) {
        if (!isDaxError(err, 'EAGAIN')) throw err;
      }
      await dl.sleep(backoff, 'connection (the listen backlog stayed full)');
    }
  }

  /** Closed by close(), or died (see `reason`). */
  get closed(): boolean {
    return this.ownerClosed || this.state() === 'closed';
  }

  /** Why the channel stopped ("<CODE>: <text>"), or undefined while it runs. */
  get reason(): string | undefined {
    if (this.diedWith !== undefined) return this.diedWith;
    const r = this.ownerClosed ? undefined : native().channelSocketInfo(this.id)?.reason;
    return r === undefined || r === '' ? undefined : r;
  }

  /** State and counters; throws ECLOSED after close(). */
  info(): SocketChannelInfo {
    const i = this.ownerClosed ? undefined : native().channelSocketInfo(this.id);
    if (i === undefined) throw daxError('ECLOSED', `socket channel ${this.id} is closed`);
    return i;
  }

  ref(): void {
    if (!this.ownerClosed) native().channelRefSocket(this.id, true);
  }

  unref(): void {
    if (!this.ownerClosed) native().channelRefSocket(this.id, false);
  }

  /**
   * Says BYE if the socket takes it (waits at most ~100 ms), stops the I/O thread,
   * and answers every waiting and later fault of the bound regions with SIGBUS.
   * Idempotent.
   */
  close(): void {
    if (this.ownerClosed) return;
    this.ownerClosed = true;
    native().channelCloseSocket(this.id);
  }

  private state(): SocketChannelInfo['state'] {
    return native().channelSocketInfo(this.id)?.state ?? 'closed';
  }
}
