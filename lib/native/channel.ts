// A fault channel: where the agent delivers a region's fault events, and the JS
// handler that answers them. Lives in the thread that handles faults (never the
// thread that faults). The handler must answer every event it is given, with
// execute(); if it throws or its promise rejects, the events it had not answered
// get SIGBUS, so no thread is ever left waiting.
import { native } from './addon';
import { decodeEvents, EVENT_SIZE, type FaultEvent } from './frames';

export type FaultHandler = (events: FaultEvent[]) => void | Promise<void>;

const BATCH = 256;

export class FaultChannel {
  readonly id: number;
  private readonly scratch = Buffer.alloc(BATCH * EVENT_SIZE);
  private isClosed = false;
  private onError: ((err: unknown, events: FaultEvent[]) => void) | undefined;

  constructor(private readonly handler: FaultHandler, opts: { ref?: boolean; onError?: (err: unknown, events: FaultEvent[]) => void } = {}) {
    this.onError = opts.onError;
    this.id = native().channelOpen(() => this.drain());
    if (opts.ref === false) native().channelRef(this.id, false);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  ref(): void {
    if (!this.isClosed) native().channelRef(this.id, true);
  }

  unref(): void {
    if (!this.isClosed) native().channelRef(this.id, false);
  }

  /** Stop handling: events not yet answered, and later faults of bound regions, get SIGBUS. */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    native().channelClose(this.id);
  }

  /**
   * Hand every event and note queued by now to the handler, synchronously (it is
   * called for them before this returns). After a ClearReserve answer has run, this
   * delivers every note of that reserve (docs/native.md, "Reserves").
   */
  drainNow(): void {
    if (!this.isClosed) this.drain();
  }

  private drain(): void {
    const n0 = native();
    for (;;) {
      const n = n0.channelTake(this.id, this.scratch);
      if (n === 0) return;
      const raw = Buffer.from(this.scratch.subarray(0, n * EVENT_SIZE));
      const events = decodeEvents(raw, n);
      try {
        const r = this.handler(events);
        if (r !== undefined && typeof (r as Promise<void>).then === 'function') {
          (r as Promise<void>).catch((err: unknown) => this.abandon(err, raw, events));
        }
      } catch (err) {
        this.abandon(err, raw, events);
      }
    }
  }

  private abandon(err: unknown, raw: Buffer, events: FaultEvent[]): void {
    if (!this.isClosed) native().channelAbandon(this.id, raw, events.length);
    if (this.onError) this.onError(err, events);
  }
}
