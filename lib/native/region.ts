// Internal API over trapped regions: reserved address space whose every first touch
// is trapped, exported to JS as a Buffer that is detached when the region closes.
// Not the public API: lib/fault builds mappings on top of it.
import { constants as bufferConstants } from 'node:buffer';
import { daxError } from '../errors';
import { native } from './addon';
import type { FaultChannel } from './channel';
import { A_POPULATE, A_PRIVATE, A_WRITABLE } from './frames';

export const PAGE_SIZE = 4096;
export const HUGE_SIZE = 2 * 1024 * 1024;

function checkPages(what: string, offset: number, length: number, limit: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 ||
      offset % PAGE_SIZE !== 0 || length % PAGE_SIZE !== 0 || offset + length > limit) {
    throw daxError('EINVAL', `${what}: [${offset}, +${length}) must be page-aligned and inside the region of ${limit} bytes`);
  }
}

export interface DirectOptions {
  writable?: boolean;
  private?: boolean;
  populate?: boolean;
  /** bytes installed per fault: 4096 or 2 MiB (default 4096) */
  window?: number;
}

let sigbusChecked = false;

export class TrappedRegion {
  readonly id: number;
  readonly length: number;
  readonly address: bigint;
  readonly readOnly: boolean;
  private buf: Buffer | undefined;
  private isClosed = false;

  /**
   * Reserves `length` bytes (a page multiple; the start is 2 MiB aligned) and registers
   * them with userfaultfd. `readOnly`: PROT_READ, as a kernel mapping without
   * PROT_WRITE (a store is SIGSEGV; installs must be read-only).
   */
  constructor(length: number, readOnly = false) {
    if (!Number.isSafeInteger(length) || length <= 0 || length % PAGE_SIZE !== 0) {
      throw daxError('EINVAL', `region length must be a positive multiple of ${PAGE_SIZE}, got ${String(length)}`);
    }
    if (!sigbusChecked) {
      sigbusChecked = true;
      if (process.env.DAXMAP_SIGBUS_REPORT === '1') native().sigbusReport(true);
    }
    const info = native().regionCreate(length, readOnly);
    this.readOnly = readOnly;
    this.id = info.id;
    this.length = info.length;
    this.address = info.address;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * An external ArrayBuffer over [offset, +length) of the region. Touching it faults.
   * At most buffer.constants.MAX_LENGTH bytes: on Node 20 an external ArrayBuffer is
   * made as a Buffer, 4 GiB at most (EINVAL beyond). Every one is detached when the
   * region closes; each costs a reference until then, so callers keep them.
   */
  arrayBuffer(offset: number, length: number): ArrayBuffer {
    if (this.isClosed) throw daxError('ECLOSED', `region ${this.id} is closed`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.length) {
      throw daxError('EINVAL', `region ${this.id}: [${offset}, +${length}) is empty or passes its ${this.length} bytes`);
    }
    if (length > bufferConstants.MAX_LENGTH) {
      throw daxError('EINVAL', `region ${this.id}: an ArrayBuffer over external memory of ${length} bytes is more than this runtime makes ` +
        `(${bufferConstants.MAX_LENGTH} bytes: Node-API makes it as a Buffer)`);
    }
    return native().regionArrayBuffer(this.id, offset, length);
  }

  /** The Buffer over the whole region (one per region per thread). Touching it faults. EINVAL past buffer.constants.MAX_LENGTH. */
  get buffer(): Buffer {
    if (this.isClosed) throw daxError('ECLOSED', `region ${this.id} is closed`);
    if (this.buf === undefined) this.buf = Buffer.from(this.arrayBuffer(0, this.length));
    return this.buf;
  }

  /** Route this region's faults to a channel (null: unbound, faults get SIGBUS). */
  bind(channel: Pick<FaultChannel, 'id'> | null): void {
    this.checkOpen('bind');
    native().regionBind(this.id, channel === null ? 0 : channel.id);
  }

  /** Let the agent answer faults in [offset, +length) itself by installing the device range. */
  setDirect(offset: number, length: number, deviceId: number, devOffset: number, opts: DirectOptions = {}): void {
    this.checkOpen('setDirect');
    checkPages('direct range', offset, length, this.length);
    const window = opts.window ?? PAGE_SIZE;
    if (window !== PAGE_SIZE && window !== HUGE_SIZE) throw daxError('EINVAL', `direct window must be ${PAGE_SIZE} or ${HUGE_SIZE}`);
    if (!Number.isSafeInteger(devOffset) || devOffset < 0 || devOffset % PAGE_SIZE !== 0) {
      throw daxError('EINVAL', `device offset ${devOffset} must be a page-aligned non-negative integer`);
    }
    const flags = (opts.writable ? A_WRITABLE : 0) | (opts.private ? A_PRIVATE : 0) | (opts.populate ? A_POPULATE : 0);
    native().regionSetDirect(this.id, offset, length, deviceId, devOffset, flags, window);
  }

  clearDirect(offset: number, length: number): void {
    this.checkOpen('clearDirect');
    checkPages('direct range', offset, length, this.length);
    native().regionClearDirect(this.id, offset, length);
  }

  /**
   * Retires the region: the Buffer is detached (later JS access throws or reads
   * nothing, never reaches memory), the address range becomes inaccessible, and any
   * thread still waiting on a fault in it is woken (EFAULT in a system call).
   * Idempotent. Only the thread that created the region may close it.
   */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.buf = undefined;
    native().regionClose(this.id);
  }

  /**
   * Closes the region and gives its address range back at once, skipping the 30 s
   * graveyard. Only for a region whose memory never reached anyone: no Buffer of it
   * handed out, no system call given a pointer into it (a map() that failed).
   */
  discard(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.buf = undefined;
    native().regionClose(this.id, true);
  }

  private checkOpen(what: string): void {
    if (this.isClosed) throw daxError('ECLOSED', `${what}: region ${this.id} is closed`);
  }
}
