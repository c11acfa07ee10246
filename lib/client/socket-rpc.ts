// Requests to daxmapd over its control connection (lib/protocol/control.ts). Like the
// in-process Rpc, the socket keeps the event loop alive only while a request is
// pending.
import net from 'node:net';
import { daxError, type DaxmapError } from '../errors';
import { CONTROL_MAGIC, ControlReader, encodeFrame, restorePayload } from '../protocol/control';
import type { Notice, Response } from '../protocol/messages';
import type { RpcChannel } from './rpc';
import type { Deadline } from '../deadline';

export class SocketRpc implements RpcChannel {
  private nextId = 1;
  private pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: DaxmapError) => void }>();
  private dead: DaxmapError | null = null;
  private readonly reader = new ControlReader({ expectMagic: false });
  onNotice: ((n: Notice) => void) | null = null;
  onGone: ((err: DaxmapError) => void) | null = null;

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = this.reader.push(chunk);
      } catch (err) {
        this.fail(daxError('EPROTO', `malformed reply from daxmapd: ${(err as Error).message}`));
        sock.destroy();
        return;
      }
      for (const f of frames) this.receive(f.json as Response | Notice, f.payload);
    });
    sock.on('close', () => this.fail(daxError('ECLOSED', 'the connection to daxmapd closed')));
    sock.on('error', () => {});
    this.idle();
  }

  /**
   * Connects within `dl` (its time limit and signal): a full listen backlog
   * (EAGAIN) is retried on a timer; ETIMEDOUT or an AbortError when `dl` runs out.
   */
  static async connect(path: string, dl: Deadline): Promise<SocketRpc> {
    for (let backoff = 1; ; backoff = Math.min(backoff * 2, 50)) {
      const sock = net.connect(path);
      sock.on('error', () => {});
      const r = await dl.race(new Promise<NodeJS.ErrnoException | null>((resolve) => {
        sock.once('connect', () => resolve(null));
        sock.once('error', (err: NodeJS.ErrnoException) => resolve(err));
      }), 'connection').catch((err: unknown) => {
        sock.destroy();
        throw err;
      });
      if (r === null) {
        sock.removeAllListeners('error');
        sock.write(CONTROL_MAGIC);
        return new SocketRpc(sock);
      }
      sock.destroy();
      if (r.code !== 'EAGAIN') {
        const code = r.code === 'ENOENT' || r.code === 'ECONNREFUSED' ? r.code : (r.code ?? 'EIO');
        throw daxError(code, `cannot connect to daxmapd at '${path}': ${r.message}. Is daxmapd running (npm start)?`);
      }
      await dl.sleep(backoff, 'connection (the listen backlog stayed full)');
    }
  }

  call<T>(op: string, args: unknown[] = []): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    let frame: Buffer;
    try {
      frame = encodeFrame({ id, op, args });
    } catch (err) {
      return Promise.reject(err as DaxmapError);
    }
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      if (this.pending.size === 1) this.sock.ref();
      this.sock.write(frame);
    });
  }

  close(): void {
    this.sock.end();
  }

  /** Drops the connection now (a connect that failed half-way): pending calls reject with ECLOSED. */
  destroy(): void {
    this.sock.destroy();
  }

  private receive(m: Response | Notice, payload: Buffer | null): void {
    if ('notice' in m) {
      this.onNotice?.(m);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.idle();
    if (m.ok) {
      try {
        p.resolve(restorePayload(m.value, payload));
      } catch (err) {
        p.reject(err as DaxmapError);
      }
    } else {
      const e = new Error(m.error.message) as DaxmapError;
      e.code = m.error.code;
      p.reject(e);
    }
  }

  private fail(err: DaxmapError): void {
    if (this.dead) return;
    this.dead = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.onGone?.(err);
  }

  private idle(): void {
    this.sock.unref();
  }
}
