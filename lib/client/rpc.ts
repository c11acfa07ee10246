// Requests to the service over a MessagePort. While a request is pending the port
// (and the service worker, when we own it) keeps the event loop alive; when idle it
// does not, so an application that forgets pool.close() can still exit.
import type { MessagePort, Worker } from 'node:worker_threads';
import { daxError, type DaxmapError } from '../errors';
import { isNotice, type Notice, type Response } from '../protocol/messages';

/** What a Pool needs of its connection to a service: requests, notices, closing. */
export interface RpcChannel {
  onNotice: ((n: Notice) => void) | null;
  /** The service went away (its thread or process died, or the connection closed): every call fails from now on. */
  onGone: ((err: DaxmapError) => void) | null;
  call<T>(op: string, args?: unknown[], transfer?: (ArrayBuffer | MessagePort)[]): Promise<T>;
  close(): void;
}

export class Rpc implements RpcChannel {
  private nextId = 1;
  private pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: DaxmapError) => void }>();
  private dead: DaxmapError | null = null;
  /** An uncaught exception that ended the service's worker ('error' comes before 'exit'). */
  private crash: Error | null = null;
  onNotice: ((n: Notice) => void) | null = null;
  onGone: ((err: DaxmapError) => void) | null = null;

  constructor(private readonly port: MessagePort, private readonly worker: Worker | null) {
    port.on('message', (m: Response | Notice) => this.receive(m));
    port.on('close', () => this.fail(daxError('ECLOSED', 'the pool service is gone')));
    // A Worker reports its end with 'exit', not 'close'.
    worker?.on('error', (err: Error) => {
      this.crash = err;
    });
    worker?.on('exit', (code) => {
      const why = this.crash ? `: ${this.crash.message}` : '';
      this.fail(daxError('ECLOSED', `the pool service exited (code ${code}${why})`, this.crash ? { cause: this.crash } : {}));
    });
    this.idle();
  }

  call<T>(op: string, args: unknown[] = [], transfer: (ArrayBuffer | MessagePort)[] = []): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      if (this.pending.size === 1) this.busy();
      try {
        this.port.postMessage({ id, op, args }, transfer);
      } catch (err) {
        this.pending.delete(id);
        if (this.pending.size === 0) this.idle();
        reject(daxError('EINVAL', `cannot send ${op}: ${(err as Error).message}`));
      }
    });
  }

  close(): void {
    this.port.close();
  }

  private receive(m: Response | Notice): void {
    if (isNotice(m)) {
      this.onNotice?.(m);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.idle();
    if (m.ok) {
      p.resolve(m.value);
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
    this.idle();
    this.onGone?.(err);
  }

  private busy(): void {
    this.port.ref();
    this.worker?.ref();
  }

  private idle(): void {
    this.port.unref();
    this.worker?.unref();
  }
}
