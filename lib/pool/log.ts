// The metadata log: checksummed records appended after the checkpoint in force and
// replayed at open. Each record's CRC32C is chained from the previous one (the
// first from the checkpoint's log seed), so a torn, corrupt or stale record ends
// the replay and nothing after it is applied.

import { randomBytes } from 'node:crypto';
import type { Storage } from '../device/storage';
import { crc32c } from './crc32c';
import { align8, readBytes, readU64, writeBytes, writeU64 } from './io';

export const REC_HEADER = 8;
/** Record flag: more records of the same transaction follow. */
export const F_CONT = 1;

export enum RecType {
  Session = 1,
  Create = 2,
  Unlink = 3,
  Rename = 4,
  Map = 5,
  Unmap = 6,
  SetSize = 7,
  SetAttr = 8,
  /** Device blocks taken into the reserve of pre-zeroed blocks (docs/pool-format.md, "Reserve"). */
  Reserve = 9,
  /** Reserved device blocks released: held back like any freed block. */
  Unreserve = 10,
}

export const STATE_UNWRITTEN = 1;
export const STATE_WRITTEN = 2;
export type ExtentStateCode = typeof STATE_UNWRITTEN | typeof STATE_WRITTEN;

export type LogRecord =
  | { t: RecType.Session; nonce: number }
  | { t: RecType.Create; id: number; mode: number; uid: number; gid: number; mtimeMs: number; name: string }
  | { t: RecType.Unlink; id: number }
  | { t: RecType.Rename; id: number; replaced: number; name: string }
  | { t: RecType.Map; id: number; fb: number; len: number; dev: number; state: ExtentStateCode }
  | { t: RecType.Unmap; id: number; fb: number; len: number }
  | { t: RecType.SetSize; id: number; size: number; mtimeMs: number }
  | { t: RecType.SetAttr; id: number; mode: number; uid: number; gid: number; mtimeMs: number }
  | { t: RecType.Reserve | RecType.Unreserve; dev: number; len: number };

export function recordName(t: number): string {
  return ['?', 'session', 'create', 'unlink', 'rename', 'map', 'unmap', 'setsize', 'setattr', 'reserve', 'unreserve'][t] ?? `type ${t}`;
}

function payloadSize(r: LogRecord): number {
  switch (r.t) {
    case RecType.Session: return 8;
    case RecType.Create: return 24 + Buffer.byteLength(r.name, 'utf8');
    case RecType.Unlink: return 8;
    case RecType.Rename: return 12 + Buffer.byteLength(r.name, 'utf8');
    case RecType.Map: return 32;
    case RecType.Unmap: return 24;
    case RecType.SetSize: return 24;
    case RecType.SetAttr: return 24;
    case RecType.Reserve: case RecType.Unreserve: return 16;
  }
}

export function recordBytes(r: LogRecord): number {
  return align8(REC_HEADER + payloadSize(r));
}

/** Encode one record at b[o]; the CRC is filled in by the caller (it is chained). */
function encodePayload(r: LogRecord, b: Buffer, o: number): void {
  const p = o + REC_HEADER;
  switch (r.t) {
    case RecType.Session:
      writeU64(b, p, r.nonce);
      break;
    case RecType.Create: {
      b.writeUInt32LE(r.id, p);
      b.writeUInt32LE(r.mode, p + 4);
      b.writeUInt32LE(r.uid, p + 8);
      b.writeUInt32LE(r.gid, p + 12);
      b.writeDoubleLE(r.mtimeMs, p + 16);
      b.write(r.name, p + 24, 'utf8');
      break;
    }
    case RecType.Unlink:
      b.writeUInt32LE(r.id, p);
      break;
    case RecType.Rename:
      b.writeUInt32LE(r.id, p);
      b.writeUInt32LE(r.replaced, p + 4);
      b.write(r.name, p + 12, 'utf8');
      break;
    case RecType.Map:
      b.writeUInt32LE(r.id, p);
      b.writeUInt32LE(r.state, p + 4);
      writeU64(b, p + 8, r.fb);
      writeU64(b, p + 16, r.len);
      writeU64(b, p + 24, r.dev);
      break;
    case RecType.Unmap:
      b.writeUInt32LE(r.id, p);
      writeU64(b, p + 8, r.fb);
      writeU64(b, p + 16, r.len);
      break;
    case RecType.SetSize:
      b.writeUInt32LE(r.id, p);
      writeU64(b, p + 8, r.size);
      b.writeDoubleLE(r.mtimeMs, p + 16);
      break;
    case RecType.SetAttr:
      b.writeUInt32LE(r.id, p);
      b.writeUInt32LE(r.mode, p + 4);
      b.writeUInt32LE(r.uid, p + 8);
      b.writeUInt32LE(r.gid, p + 12);
      b.writeDoubleLE(r.mtimeMs, p + 16);
      break;
    case RecType.Reserve:
    case RecType.Unreserve:
      writeU64(b, p, r.dev);
      writeU64(b, p + 8, r.len);
      break;
  }
}

/** Decode a record whose checksum has been verified; null if its type or length is impossible. */
export function decodeRecord(b: Buffer, o: number, type: number, len: number): LogRecord | null {
  const p = o + REC_HEADER;
  switch (type as RecType) {
    case RecType.Session:
      return len === 8 ? { t: RecType.Session, nonce: readU64(b, p) } : null;
    case RecType.Create:
      if (len < 25 || len > 24 + 255) return null;
      return { t: RecType.Create, id: b.readUInt32LE(p), mode: b.readUInt32LE(p + 4), uid: b.readUInt32LE(p + 8), gid: b.readUInt32LE(p + 12), mtimeMs: b.readDoubleLE(p + 16), name: b.toString('utf8', p + 24, p + len) };
    case RecType.Unlink:
      return len === 8 ? { t: RecType.Unlink, id: b.readUInt32LE(p) } : null;
    case RecType.Rename:
      if (len < 13 || len > 12 + 255) return null;
      return { t: RecType.Rename, id: b.readUInt32LE(p), replaced: b.readUInt32LE(p + 4), name: b.toString('utf8', p + 12, p + len) };
    case RecType.Map: {
      if (len !== 32) return null;
      const state = b.readUInt32LE(p + 4);
      if (state !== STATE_UNWRITTEN && state !== STATE_WRITTEN) return null;
      return { t: RecType.Map, id: b.readUInt32LE(p), state, fb: readU64(b, p + 8), len: readU64(b, p + 16), dev: readU64(b, p + 24) };
    }
    case RecType.Unmap:
      return len === 24 ? { t: RecType.Unmap, id: b.readUInt32LE(p), fb: readU64(b, p + 8), len: readU64(b, p + 16) } : null;
    case RecType.SetSize:
      return len === 24 ? { t: RecType.SetSize, id: b.readUInt32LE(p), size: readU64(b, p + 8), mtimeMs: b.readDoubleLE(p + 16) } : null;
    case RecType.SetAttr:
      return len === 24 ? { t: RecType.SetAttr, id: b.readUInt32LE(p), mode: b.readUInt32LE(p + 4), uid: b.readUInt32LE(p + 8), gid: b.readUInt32LE(p + 12), mtimeMs: b.readDoubleLE(p + 16) } : null;
    case RecType.Reserve:
    case RecType.Unreserve:
      return len === 16 ? { t: type as RecType.Reserve | RecType.Unreserve, dev: readU64(b, p), len: readU64(b, p + 8) } : null;
    default:
      return null;
  }
}

/** Where and why a replay stopped. */
export interface ReplayEnd {
  /** Byte offset (within the log) where the next record goes. */
  tail: number;
  /** The chain CRC to continue from. */
  chain: number;
  records: number;
  transactions: number;
  /** Why the scan stopped: clean end of the written log, or a damaged/stale record. */
  stop: 'end' | 'torn' | 'bad-type' | 'partial-txn';
  /** Offset of the first record not applied. */
  stopOffset: number;
}

/**
 * Scan the log from its start, verifying each record against the chain; calls
 * `apply` once per complete transaction (the records of a transaction are applied
 * together or not at all). `apply` may throw to reject a semantically impossible
 * transaction; the caller decides what that means.
 */
export function scanLog(buf: Buffer, seed: number, apply: (txn: LogRecord[], offset: number) => void,
  progress?: (pos: number, capacity: number) => void): ReplayEnd {
  let pos = 0;
  let chain = seed;
  let txnStart = 0;
  let txnChain = seed;
  const txn: LogRecord[] = [];
  let records = 0;
  let transactions = 0;
  let stop: ReplayEnd['stop'] = 'end';
  const cap = buf.length;
  while (pos + REC_HEADER <= cap) {
    const stored = buf.readUInt32LE(pos);
    const len = buf.readUInt16LE(pos + 4);
    const type = buf[pos + 6]!;
    const flags = buf[pos + 7]!;
    const size = align8(REC_HEADER + len);
    if (pos + size > cap) { stop = stored === 0 && len === 0 ? 'end' : 'torn'; break; }
    const crc = crc32c(buf, chain, pos + 4, pos + size);
    if (crc !== stored) {
      // an all-zero header where nothing was ever written is the normal end
      stop = stored === 0 && len === 0 && type === 0 ? 'end' : 'torn';
      break;
    }
    const rec = decodeRecord(buf, pos, type, len);
    if (rec === null || (flags & ~F_CONT) !== 0) { stop = 'bad-type'; break; }
    if (txn.length === 0) { txnStart = pos; txnChain = chain; }
    txn.push(rec);
    chain = crc;
    pos += size;
    if ((flags & F_CONT) === 0) {
      apply(txn, txnStart); // apply must not keep the array: it is reused
      records += txn.length;
      transactions++;
      txn.length = 0;
      if (progress && (transactions & 0xffff) === 0) progress(pos, cap);
    }
  }
  if (txn.length > 0) {
    // a transaction whose last record never made it: none of it happened
    return { tail: txnStart, chain: txnChain, records, transactions, stop: 'partial-txn', stopOffset: txnStart };
  }
  return { tail: pos, chain, records, transactions, stop, stopOffset: pos };
}

/**
 * The append side. Records go to storage at once; they are durable after
 * `persist()` (fsync, sync ensureWritten, close). The caller holds the log lock.
 */
export class MetaLog {
  /** Byte offset of the log area in the device. */
  readonly base: number;
  readonly capacity: number;
  tail = 0;
  chain: number;
  private persistedTo = 0;
  /**
   * Log sequence numbers (LSNs) count the bytes appended since open, across
   * checkpoints: `endLsn` is where the next record goes, `durableLsn` how far the log
   * is durable. A checkpoint makes everything before it durable (reset).
   */
  private epochLsn = 0;
  /** persist() calls that wrote something to the medium (group commit shares them). */
  persists = 0;
  /** After an open the area past the tail may hold old records of this epoch: start with a fresh nonce. */
  private needSession: boolean;
  appended = 0;
  private scratch = Buffer.alloc(64 * 1024);

  constructor(private readonly storage: Storage, base: number, capacity: number, tail: number, chain: number, afterReplay: boolean) {
    this.base = base;
    this.capacity = capacity;
    this.tail = tail;
    this.chain = chain;
    this.persistedTo = tail;
    this.needSession = afterReplay;
  }

  /** Bytes a transaction of these records takes (including a pending session record). */
  bytesFor(recs: LogRecord[]): number {
    let n = this.needSession ? recordBytes({ t: RecType.Session, nonce: 0 }) : 0;
    for (const r of recs) n += recordBytes(r);
    return n;
  }

  fits(recs: LogRecord[]): boolean {
    return this.tail + this.bytesFor(recs) <= this.capacity;
  }

  get used(): number { return this.tail; }

  /** Append one transaction (the caller checked fits()). */
  append(recs: LogRecord[]): void {
    if (recs.length === 0) return;
    const all: LogRecord[] = this.needSession
      ? [{ t: RecType.Session, nonce: randomBytes(6).readUIntLE(0, 6) }, ...recs]
      : recs;
    this.needSession = false;
    let total = 0;
    for (const r of all) total += recordBytes(r);
    if (this.scratch.length < total) this.scratch = Buffer.alloc(Math.max(total, this.scratch.length * 2));
    const b = this.scratch;
    b.fill(0, 0, total);
    let o = 0;
    let chain = this.chain;
    // the session record stands alone; the caller's records form one transaction
    for (let i = 0; i < all.length; i++) {
      const r = all[i]!;
      const size = recordBytes(r);
      b.writeUInt16LE(payloadSize(r), o + 4);
      b[o + 6] = r.t;
      const isSession = r.t === RecType.Session && all !== recs && i === 0;
      b[o + 7] = !isSession && i < all.length - 1 ? F_CONT : 0;
      encodePayload(r, b, o);
      chain = crc32c(b, chain, o + 4, o + size);
      b.writeUInt32LE(chain, o);
      o += size;
    }
    writeBytes(this.storage, this.base + this.tail, b, 0, total);
    this.tail += total;
    this.chain = chain;
    this.appended += recs.length;
  }

  get dirty(): boolean { return this.persistedTo < this.tail; }

  get endLsn(): number { return this.epochLsn + this.tail; }

  get durableLsn(): number { return this.epochLsn + this.persistedTo; }

  /** Make every appended record durable. */
  persist(): void {
    if (this.persistedTo >= this.tail) return;
    this.storage.persist(this.base + this.persistedTo, this.tail - this.persistedTo);
    this.persistedTo = this.tail;
    this.persists++;
  }

  /**
   * persist() done off the thread where the storage can (Storage.persistAsync: a disk
   * file), else at once. Resolves once every record appended before the call is
   * durable; records appended meanwhile are not covered (durableLsn says how far the
   * log is durable). No lock: the positions are read, and written back, synchronously.
   */
  async persistAsync(): Promise<void> {
    const from = this.persistedTo;
    const to = this.tail;
    if (from >= to) return;
    if (!this.storage.persistAsync) return this.persist();
    const epoch = this.epochs;
    await this.storage.persistAsync(this.base + from, to - from);
    this.persists++;
    // a checkpoint meanwhile made all of it durable, and restarted the positions
    if (this.epochs === epoch && this.persistedTo < to) this.persistedTo = to;
  }

  /** Checkpoints since open (reset calls). */
  private epochs = 0;

  /**
   * Start a new epoch after a checkpoint: the old records no longer chain from `seed`.
   * The checkpoint holds everything they said, durably: their LSNs count as durable.
   */
  reset(seed: number): void {
    this.epochLsn += this.tail;
    this.epochs++;
    this.tail = 0;
    this.persistedTo = 0;
    this.chain = seed;
    this.needSession = false;
  }
}

/** Read the whole log area (a view when it lies in one device chunk). */
export function readLogArea(s: Storage, base: number, capacity: number): Buffer {
  return readBytes(s, base, capacity);
}
