// The one request/response core of a Pool and its two transports' common part:
// numbered requests, one pending entry per request until its response comes, errors
// rebuilt with their code and message (lib/protocol/errors.ts), notices passed on,
// every pending request failed at once when the service goes away. The transports
// are a MessagePort to the service's worker (here) and daxmapd's control connection
// (./socket-rpc.ts). While a request is pending the transport keeps the event loop
// alive; when idle it does not, so an application that forgets pool.close() can
// still exit.
import type { MessagePort, Worker } from 'node:worker_threads';
import { daxError, type DaxmapError } from '../errors';
import { isNotice, type Notice, type Request, type Response } from '../protocol/messages';
import { rebuildError } from '../protocol/errors';
import type { OpArgs, OpName, OpResult } from '../protocol/ops';

/** How requests leave and what keeps the event loop alive; responses come back through Rpc.receive(). */
export interface RpcTransport {
  /** Sends one request, or throws the error its call rejects with. */
  send(req: Request, transfer: (ArrayBuffer | MessagePort)[]): void;
  /** A request is pending: keep the event loop alive. */
  busy(): void;
  /** None is: let it exit. */
  idle(): void;
  /** Let go of the service (in turn, the transport reports it gone). */
  close(): void;
  /** Drop the connection now. */
  destroy(): void;
}

export class Rpc {
  private nextId = 1;
  private pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: DaxmapError) => void }>();
  private dead: DaxmapError | null = null;
  private transport: RpcTransport | null = null;
  onNotice: ((n: Notice) => void) | null = null;
  /** The service went away (its thread or process died, or the connection closed): every call fails from now on. */
  onGone: ((err: DaxmapError) => void) | null = null;

  /** Called by the transport's constructor, once. */
  attach(transport: RpcTransport): void {
    this.transport = transport;
    transport.idle();
  }

  /** An operation of lib/protocol/ops.ts, its arguments and its answer typed as the service checks and gives them. */
  call<K extends OpName>(op: K, args: OpArgs<K>, transfer: (ArrayBuffer | MessagePort)[] = []): Promise<OpResult<K>> {
    return this.request<OpResult<K>>(op, args, transfer);
  }

  /** Any request, untyped: daxmapd's own (hello, attachDevice), and tools and tests (Pool.request). */
  request<T>(op: string, args: unknown[] = [], transfer: (ArrayBuffer | MessagePort)[] = []): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    try {
      this.transport!.send({ id, op, args }, transfer);
    } catch (err) {
      return Promise.reject(err as DaxmapError);
    }
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      if (this.pending.size === 1) this.transport!.busy();
    });
  }

  close(): void {
    this.transport!.close();
  }

  /** Drops the connection now (a connect that failed half-way): pending calls reject with ECLOSED. */
  destroy(): void {
    this.transport!.destroy();
  }

  /** A response or notice from the service. */
  receive(m: Response | Notice): void {
    if (isNotice(m)) {
      this.onNotice?.(m);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.transport!.idle();
    if (m.ok) p.resolve(m.value);
    else p.reject(rebuildError(m.error));
  }

  /** The service is gone: every pending and later call fails with `err`. */
  fail(err: DaxmapError): void {
    if (this.dead) return;
    this.dead = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.transport!.idle();
    this.onGone?.(err);
  }
}

/** An Rpc over a MessagePort: to the service's worker (`worker` given: its exit is the service's death), or shared by another thread. */
export function portRpc(port: MessagePort, worker: Worker | null): Rpc {
  const rpc = new Rpc();
  /** An uncaught exception that ended the service's worker ('error' comes before 'exit'). */
  let crash: Error | null = null;
  port.on('message', (m: Response | Notice) => rpc.receive(m));
  port.on('close', () => rpc.fail(daxError('ECLOSED', 'the pool service is gone')));
  // A Worker reports its end with 'exit', not 'close'.
  worker?.on('error', (err: Error) => {
    crash = err;
  });
  worker?.on('exit', (code) => {
    const why = crash ? `: ${crash.message}` : '';
    rpc.fail(daxError('ECLOSED', `the pool service exited (code ${code}${why})`, crash ? { cause: crash } : {}));
  });
  rpc.attach({
    send: (req, transfer) => {
      try {
        port.postMessage(req, transfer);
      } catch (err) {
        throw daxError('EINVAL', `cannot send ${req.op}: ${(err as Error).message}`);
      }
    },
    busy: () => {
      port.ref();
      worker?.ref();
    },
    idle: () => {
      port.unref();
      worker?.unref();
    },
    close: () => port.close(),
    destroy: () => port.close(),
  });
  return rpc;
}
