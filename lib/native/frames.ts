// The binary frames of native/frames.h: 32-byte fault events out of the agent,
// 48-byte answers (plus payload) back in. The same bytes cross a UNIX socket in
// daemon mode. Keep in step with native/frames.h (test/native/layout-mirror.test.ts
// compares the two as compiled).
import { readU64, writeU64 } from '../util/u64';

export const EVENT_SIZE = 32;
export const ANSWER_SIZE = 48;

export const EV_WRITE = 1;
export const EV_WP = 2;
/**
 * Not a fault: the agent answered a write fault from the region's reserve
 * (docs/native.md, "Reserves"). `offset` is the page; `timeNs` carries the device
 * offset of the block installed there (see noteDevOffset).
 */
export const EV_NOTE = 8;
/**
 * On a note only: that install took the reserve down to its low-water mark (the
 * `devOffset` of its set / top-up reserve answer); this note woke the handler, which
 * may top the reserve up (Op.TopUpReserve).
 */
export const EV_LOW = 16;
/**
 * On a note only: a reserve window's upgrade installed `count` pages from `offset`
 * over a run's blocks from the device offset in `timeNs` (docs/native.md, "Reserve
 * windows"); the policy records them as written.
 */
export const EV_RUN = 32;

export const Op = {
  Install: 1,
  Zero: 2,
  Copy: 3,
  Poison: 4,
  Revoke: 5,
  Wake: 6,
  Unprotect: 7,
  /** Decide a range ahead: the agent answers its faults itself (docs/native.md, "Decided ranges"). */
  SetDirect: 8,
  /** Forget decided ranges over the range; send it before the revoke that takes the pages back. */
  ClearDirect: 9,
  /**
   * Add [offset, +length) to the region's reserve ranges and the payload's u64 device
   * offsets (zeroed 4 KiB blocks of `device`) to its reserve: the agent answers a
   * missing write fault there with a block, alone, and sends a note (EV_NOTE).
   */
  SetReserve: 10,
  /** Stop answering from the reserve; once it has run every note is queued. Result: blocks left unused. */
  ClearReserve: 11,
  /**
   * Add the payload's u64 device offsets (zeroed 4 KiB blocks of `device`) to the
   * region's live reserve, its ranges untouched; ENOENT when none is set. Set and
   * top-up reserve carry the low-water mark (blocks) in `devOffset`.
   */
  TopUpReserve: 12,
  /**
   * Add the payload's u64 pairs [start, end) (region offsets) to the live reserve's
   * ranges, its blocks untouched; ENOENT when none is set. A grant's ranges after the
   * first go in one frame (reserveRangesPayload), however many there are.
   */
  AddReserveRanges: 13,
  /**
   * Add upgradable windows and runs to the live reserve (reserveWindowsPayload): after
   * `threshold` native installs in such a window the agent installs the rest of it from
   * a run and sends EV_RUN notes. ENOENT when none is set.
   */
  ReserveWindows: 14,
  /**
   * Stage [offset, +length): the agent maps the same range of the memfd whose
   * descriptor (in its process) is `devOffset` over it, writable, not populated, and
   * takes it out of the live reserve's ranges and windows; wakes the range
   * (docs/native.md, "Staged ranges"). `devOffset` STAGE_OWN_FD: the region's own
   * memfd (StagePrepare; ENOENT if it has none).
   */
  Stage: 15,
  /**
   * Create the region's own staging memfd (as long as the region) if it has none; the
   * result is its descriptor in the client's process, which daxmapd takes with
   * pidfd_getfd before staging any range with it. Maps and wakes nothing.
   */
  StagePrepare: 16,
} as const;
/** Stage's `devOffset` naming the region's own memfd (Op.StagePrepare). */
export const STAGE_OWN_FD = 0xffffffff;
export type OpCode = (typeof Op)[keyof typeof Op];

export const A_WRITABLE = 1 << 0;
export const A_PRIVATE = 1 << 1;
export const A_POPULATE = 1 << 2;
export const A_WP = 1 << 3;
export const A_NOWAKE = 1 << 4;
export const A_FROM_DEVICE = 1 << 5;
export const A_ADOPT = 1 << 6;
/** Set reserve, with A_WP: a hole read zeroes the run of holes around it in its 2 MiB window (fault-around). */
export const A_WINDOW = 1 << 7;

/** Second flag word. */
export const A2_POPULATE_READ = 1 << 0;

/** Result of an answer beside 0 and -errno: a write raced a zero-page answer. */
export const RESULT_RACED = 1;

export interface FaultEvent {
  region: number;
  /** EV_WRITE | EV_WP */
  flags: number;
  /** faults on this page merged into this event */
  count: number;
  /** page-aligned offset in the region */
  offset: number;
  tid: number;
  seq: number;
  /** CLOCK_MONOTONIC ns when the agent read it (comparable with process.hrtime.bigint()) */
  timeNs: bigint;
}

export function decodeEvent(b: Buffer, at: number): FaultEvent {
  return {
    region: b.readUInt32LE(at),
    flags: b.readUInt16LE(at + 4),
    count: b.readUInt16LE(at + 6),
    offset: readU64(b, at + 8),
    tid: b.readUInt32LE(at + 16),
    seq: b.readUInt32LE(at + 20),
    timeNs: b.readBigUInt64LE(at + 24),
  };
}

/** The device offset of the block a note (EV_NOTE) says was installed. */
export function noteDevOffset(ev: FaultEvent): number {
  const t = ev.timeNs;
  // Below 2^31 as an int32: a small integer, in optimised code too, where Number() of
  // a bigint is a double; the notes' objects would otherwise hold a boxed double for
  // some blocks and a small integer for others, and deoptimise their readers.
  return t < 0x8000_0000n ? Number(t) | 0 : Number(t);
}

/** A SetReserve payload: the blocks' device offsets as u64s. */
export function reservePayload(devOffsets: readonly number[]): Uint8Array {
  const b = Buffer.alloc(devOffsets.length * 8);
  for (let i = 0; i < devOffsets.length; i++) writeU64(b, i * 8, devOffsets[i]!);
  return b;
}

/** An AddReserveRanges payload: [start, end) pairs as u64s. */
export function reserveRangesPayload(ranges: readonly (readonly [number, number])[]): Uint8Array {
  const b = Buffer.alloc(ranges.length * 16);
  for (let i = 0; i < ranges.length; i++) {
    writeU64(b, i * 16, ranges[i]![0]);
    writeU64(b, i * 16 + 8, ranges[i]![1]);
  }
  return b;
}

/** A reserve window: its region offset and, if some of its pages are not holes, which (page indices 0..511). */
export interface ReserveWindow {
  offset: number;
  notHoles?: readonly number[];
}

/**
 * A ReserveWindows payload (u64s): the threshold, the number of windows, each window
 * (its region offset, then a 512-bit bitmap of its pages that are holes), the runs'
 * device offsets.
 */
export function reserveWindowsPayload(threshold: number, windows: readonly ReserveWindow[], runs: readonly number[]): Uint8Array {
  const b = Buffer.alloc((2 + windows.length * 9 + runs.length) * 8);
  writeU64(b, 0, threshold);
  writeU64(b, 8, windows.length);
  for (let i = 0; i < windows.length; i++) {
    const at = 16 + i * 72;
    writeU64(b, at, windows[i]!.offset);
    b.fill(0xff, at + 8, at + 72);
    for (const p of windows[i]!.notHoles ?? []) b[at + 8 + (p >> 3)] = b[at + 8 + (p >> 3)]! & ~(1 << (p & 7));
  }
  for (let i = 0; i < runs.length; i++) writeU64(b, 16 + windows.length * 72 + i * 8, runs[i]!);
  return b;
}

export function decodeEvents(b: Buffer, count: number): FaultEvent[] {
  // Pushed, not preallocated: a packed array (a holey one gives every loop over the
  // events another elements kind to handle).
  const out: FaultEvent[] = [];
  for (let i = 0; i < count; i++) out.push(decodeEvent(b, i * EVENT_SIZE));
  return out;
}

export function encodeEvent(b: Buffer, at: number, ev: FaultEvent): void {
  b.writeUInt32LE(ev.region, at);
  b.writeUInt16LE(ev.flags, at + 4);
  b.writeUInt16LE(ev.count, at + 6);
  writeU64(b, at + 8, ev.offset);
  b.writeUInt32LE(ev.tid, at + 16);
  b.writeUInt32LE(ev.seq, at + 20);
  b.writeBigUInt64LE(ev.timeNs, at + 24);
}

export interface AnswerSpec {
  op: OpCode;
  flags?: number;
  flags2?: number;
  region: number;
  offset: number;
  length: number;
  device?: number;
  devOffset?: number;
  tag?: number;
  /** literal bytes for Op.Copy (length >= the answer's length) */
  payload?: Uint8Array;
}

/** A growable buffer of answer frames, executed in one native call. */
export class AnswerBatch {
  private buf: Buffer;
  private used = 0;
  private n = 0;

  constructor(initialAnswers = 64) {
    this.buf = Buffer.alloc(initialAnswers * ANSWER_SIZE);
  }

  get count(): number {
    return this.n;
  }

  add(a: AnswerSpec): this {
    const plen = a.payload ? a.payload.length : 0;
    const padded = (plen + 7) & ~7;
    this.reserve(ANSWER_SIZE + padded);
    const b = this.buf;
    const at = this.used;
    b.writeUInt8(a.op, at);
    b.writeUInt8(a.flags ?? 0, at + 1);
    b.writeUInt16LE(a.flags2 ?? 0, at + 2);
    b.writeUInt32LE(a.region, at + 4);
    writeU64(b, at + 8, a.offset);
    writeU64(b, at + 16, a.length);
    b.writeUInt32LE(a.device ?? 0, at + 24);
    b.writeUInt32LE(plen, at + 28);
    writeU64(b, at + 32, a.devOffset ?? 0);
    writeU64(b, at + 40, a.tag ?? 0);
    if (a.payload) {
      b.set(a.payload, at + ANSWER_SIZE);
      b.fill(0, at + ANSWER_SIZE + plen, at + ANSWER_SIZE + padded);
    }
    this.used += ANSWER_SIZE + padded;
    this.n++;
    return this;
  }

  bytes(): Buffer {
    return this.buf.subarray(0, this.used);
  }

  reset(): void {
    this.used = 0;
    this.n = 0;
  }

  private reserve(extra: number): void {
    if (this.used + extra <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.used + extra));
    this.buf.copy(next, 0, 0, this.used);
    this.buf = next;
  }
}

/** Decode one answer frame (for the daemon's wire and for tests). */
export function decodeAnswer(b: Buffer, at: number): AnswerSpec & { payloadLength: number } {
  return {
    op: b.readUInt8(at) as OpCode,
    flags: b.readUInt8(at + 1),
    flags2: b.readUInt16LE(at + 2),
    region: b.readUInt32LE(at + 4),
    offset: readU64(b, at + 8),
    length: readU64(b, at + 16),
    device: b.readUInt32LE(at + 24),
    payloadLength: b.readUInt32LE(at + 28),
    devOffset: readU64(b, at + 32),
    tag: readU64(b, at + 40),
  };
}
