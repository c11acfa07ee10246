// The on-media layout of a pool: geometry, the two superblock copies and the two
// checkpoint slots, and formatting an empty pool. docs/pool-format.md describes
// every field.

import { randomBytes } from 'node:crypto';
import { daxError } from '../errors';
import type { Storage } from '../device/storage';
import { crc32c } from './crc32c';
import { fillBytes, readBytes, readU64, writeBytes, writeU64 } from './io';

export const BLOCK_SIZE = 4096;
export const BLOCK_SHIFT = 12;
/** Blocks per 2 MiB group: the PMD size the fault policy installs when it can. */
export const GROUP_BLOCKS = 512;
export const FORMAT_VERSION = 1;
export const SB_MAGIC = 'DAXMAPFS';
export const CKPT_MAGIC = 'DXCKPT01';
export const MIN_POOL_SIZE = 4 << 20;
/** Largest file: 16 TiB (file block numbers stay far inside safe integers). */
export const MAX_FILE_SIZE = 2 ** 44;
export { MAX_NAME_BYTES } from '../util/check';

export const CKPT_HEADER = 64;
/** Worst-case bytes of one file record in a checkpoint (without its extents). */
export const CKPT_FILE_MAX = 40 + 256;
export const CKPT_EXTENT = 24;

export interface Geometry {
  totalBlocks: number;
  /** First block of checkpoint slot 0; slot 1 follows it. */
  ckptStart: number;
  ckptBlocks: number;
  logStart: number;
  logBlocks: number;
  /** Data area [dataStart, dataEnd), dataStart 2 MiB aligned. */
  dataStart: number;
  dataEnd: number;
  maxFiles: number;
}

export interface FormatOptions {
  /** Bytes of metadata log (default size/64 clamped to [1 MiB, 64 MiB]). */
  logBytes?: number;
  /** File limit (default one per 64 KiB of device, at least 64). */
  maxFiles?: number;
}

export function computeGeometry(size: number, opts: FormatOptions = {}): Geometry {
  if (!Number.isSafeInteger(size) || size < MIN_POOL_SIZE) {
    throw daxError('EINVAL', `pool size ${size} is below the minimum of ${MIN_POOL_SIZE} bytes`);
  }
  const totalBlocks = Math.floor(size / BLOCK_SIZE);
  if (totalBlocks >= 2 ** 40) throw daxError('EINVAL', `pool size ${size} is too large`);
  const maxFiles = opts.maxFiles ?? Math.max(64, Math.floor(totalBlocks / 16));
  if (!Number.isSafeInteger(maxFiles) || maxFiles < 1 || maxFiles >= 2 ** 31) throw daxError('EINVAL', `bad maxFiles ${maxFiles}`);
  const logBytes = opts.logBytes ?? Math.min(64 << 20, Math.max(1 << 20, Math.floor(size / 64)));
  if (!Number.isSafeInteger(logBytes) || logBytes < 64 * 1024) throw daxError('EINVAL', `bad log size ${logBytes}`);
  // A checkpoint must always fit: every file at its longest name, every data block its own extent.
  const ckptBytes = CKPT_HEADER + maxFiles * CKPT_FILE_MAX + totalBlocks * CKPT_EXTENT;
  const ckptBlocks = Math.ceil(ckptBytes / BLOCK_SIZE);
  const ckptStart = 2;
  const logStart = ckptStart + 2 * ckptBlocks;
  const logBlocks = Math.ceil(logBytes / BLOCK_SIZE);
  const dataStart = Math.ceil((logStart + logBlocks) / GROUP_BLOCKS) * GROUP_BLOCKS;
  const dataEnd = totalBlocks;
  if (dataEnd - dataStart < GROUP_BLOCKS / 2) {
    throw daxError('EINVAL', `pool size ${size} leaves no room for data after ${dataStart * BLOCK_SIZE} bytes of metadata`);
  }
  return { totalBlocks, ckptStart, ckptBlocks, logStart, logBlocks, dataStart, dataEnd, maxFiles };
}

export interface Superblock {
  version: number;
  uuid: string;
  geometry: Geometry;
  createdMs: number;
  /** The checkpoint in force: its generation; its slot is gen % 2. */
  ckptGen: number;
  /** The header CRC of that checkpoint, a cross-check against a stale slot. */
  ckptCrc: number;
}

// Superblock field offsets (bytes within block 0 / block 1).
const SB = {
  magic: 0, version: 8, blockSize: 12, uuid: 16, totalBlocks: 32, ckptStart: 40, ckptBlocks: 48,
  logStart: 56, logBlocks: 64, dataStart: 72, dataEnd: 80, maxFiles: 88, copy: 92, ckptGen: 96,
  ckptCrc: 104, createdMs: 112, crc: BLOCK_SIZE - 4,
} as const;

export function encodeSuperblock(sb: Superblock, copy: number): Buffer {
  const b = Buffer.alloc(BLOCK_SIZE);
  b.write(SB_MAGIC, SB.magic, 'latin1');
  b.writeUInt32LE(sb.version, SB.version);
  b.writeUInt32LE(BLOCK_SIZE, SB.blockSize);
  Buffer.from(sb.uuid.replace(/-/g, ''), 'hex').copy(b, SB.uuid);
  const g = sb.geometry;
  writeU64(b, SB.totalBlocks, g.totalBlocks);
  writeU64(b, SB.ckptStart, g.ckptStart);
  writeU64(b, SB.ckptBlocks, g.ckptBlocks);
  writeU64(b, SB.logStart, g.logStart);
  writeU64(b, SB.logBlocks, g.logBlocks);
  writeU64(b, SB.dataStart, g.dataStart);
  writeU64(b, SB.dataEnd, g.dataEnd);
  b.writeUInt32LE(g.maxFiles, SB.maxFiles);
  b.writeUInt32LE(copy, SB.copy);
  writeU64(b, SB.ckptGen, sb.ckptGen);
  b.writeUInt32LE(sb.ckptCrc, SB.ckptCrc);
  b.writeDoubleLE(sb.createdMs, SB.createdMs);
  b.writeUInt32LE(crc32c(b, 0, 0, SB.crc), SB.crc);
  return b;
}

export type SuperblockResult =
  | { ok: true; sb: Superblock }
  | { ok: false; reason: 'no-magic' | 'bad-crc' | 'bad-version' | 'bad-geometry'; detail: string };

export function decodeSuperblock(b: Buffer, deviceSize: number): SuperblockResult {
  if (b.toString('latin1', SB.magic, SB.magic + 8) !== SB_MAGIC) return { ok: false, reason: 'no-magic', detail: 'no daxmap magic' };
  const crc = crc32c(b, 0, 0, SB.crc);
  if (crc !== b.readUInt32LE(SB.crc)) return { ok: false, reason: 'bad-crc', detail: `checksum ${crc.toString(16)} != stored ${b.readUInt32LE(SB.crc).toString(16)}` };
  const version = b.readUInt32LE(SB.version);
  if (version !== FORMAT_VERSION) return { ok: false, reason: 'bad-version', detail: `format version ${version}, this build reads ${FORMAT_VERSION}` };
  if (b.readUInt32LE(SB.blockSize) !== BLOCK_SIZE) return { ok: false, reason: 'bad-geometry', detail: `block size ${b.readUInt32LE(SB.blockSize)}` };
  const g: Geometry = {
    totalBlocks: readU64(b, SB.totalBlocks), ckptStart: readU64(b, SB.ckptStart), ckptBlocks: readU64(b, SB.ckptBlocks),
    logStart: readU64(b, SB.logStart), logBlocks: readU64(b, SB.logBlocks), dataStart: readU64(b, SB.dataStart),
    dataEnd: readU64(b, SB.dataEnd), maxFiles: b.readUInt32LE(SB.maxFiles),
  };
  const problem = checkGeometry(g, deviceSize);
  if (problem) return { ok: false, reason: 'bad-geometry', detail: problem };
  return {
    ok: true,
    sb: {
      version, uuid: formatUuid(b.subarray(SB.uuid, SB.uuid + 16)), geometry: g,
      createdMs: b.readDoubleLE(SB.createdMs), ckptGen: readU64(b, SB.ckptGen), ckptCrc: b.readUInt32LE(SB.ckptCrc),
    },
  };
}

/** A reason the geometry is impossible for this device, or null. */
export function checkGeometry(g: Geometry, deviceSize: number): string | null {
  const devBlocks = Math.floor(deviceSize / BLOCK_SIZE);
  if (g.totalBlocks > devBlocks) return `pool of ${g.totalBlocks} blocks on a device of ${devBlocks} blocks (truncated device?)`;
  if (g.ckptStart !== 2) return `checkpoint area at block ${g.ckptStart}`;
  if (g.ckptBlocks < 1 || g.logStart !== g.ckptStart + 2 * g.ckptBlocks) return 'checkpoint/log areas inconsistent';
  if (g.logBlocks < 16 || g.dataStart < g.logStart + g.logBlocks || g.dataStart - (g.logStart + g.logBlocks) >= GROUP_BLOCKS) return 'log/data areas inconsistent';
  if (g.dataStart % GROUP_BLOCKS !== 0) return `data area at block ${g.dataStart} is not 2 MiB aligned`;
  if (g.dataEnd !== g.totalBlocks || g.dataEnd <= g.dataStart) return 'data area inconsistent';
  if (g.maxFiles < 1) return 'maxFiles is zero';
  const need = CKPT_HEADER + g.maxFiles * CKPT_FILE_MAX + g.totalBlocks * CKPT_EXTENT;
  if (g.ckptBlocks * BLOCK_SIZE < need) return 'checkpoint slots too small for the geometry';
  return null;
}

export function newUuid(): string {
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return formatUuid(b);
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Write both superblock copies, each persisted before the next (copy 0 first). */
export function writeSuperblocks(storage: Storage, sb: Superblock): void {
  for (const copy of [0, 1]) {
    writeBytes(storage, copy * BLOCK_SIZE, encodeSuperblock(sb, copy));
    storage.persist(copy * BLOCK_SIZE, BLOCK_SIZE);
  }
}

/** Read the superblock copies: the valid one with the newest checkpoint, or a clear EBADF. */
export function readSuperblock(storage: Storage): { sb: Superblock; stale: boolean; notes: string[] } {
  const B = BLOCK_SIZE;
  if (storage.size < 2 * B) throw daxError('EBADF', `'${storage.path}' (${storage.size} bytes) is too small to be a daxmap pool`);
  const r0 = decodeSuperblock(readBytes(storage, 0, B, true), storage.size);
  const r1 = decodeSuperblock(readBytes(storage, B, B, true), storage.size);
  const notes: string[] = [];
  if (!r0.ok) notes.push(`superblock copy 0: ${r0.detail}`);
  if (!r1.ok) notes.push(`superblock copy 1: ${r1.detail}`);
  if (!r0.ok && !r1.ok) {
    if (r0.reason === 'no-magic' && r1.reason === 'no-magic') throw daxError('EBADF', `'${storage.path}' is not a daxmap pool (no superblock)`);
    throw daxError('EBADF', `'${storage.path}': bad superblock (${notes.join('; ')})`);
  }
  if (r0.ok && r1.ok) {
    const a = r0.sb.geometry;
    const b = r1.sb.geometry;
    if (r0.sb.uuid !== r1.sb.uuid || JSON.stringify(a) !== JSON.stringify(b)) {
      throw daxError('EBADF', `'${storage.path}': the two superblock copies describe different pools`);
    }
    const sb = r0.sb.ckptGen >= r1.sb.ckptGen ? r0.sb : r1.sb;
    return { sb, stale: r0.sb.ckptGen !== r1.sb.ckptGen, notes };
  }
  return { sb: r0.ok ? r0.sb : (r1 as { ok: true; sb: Superblock }).sb, stale: true, notes };
}

// ---- checkpoint slots ----

export interface CkptFile {
  id: number;
  name: string;
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
  size: number;
  /** fb, dev, len, state, flattened in fours. */
  extents: number[];
}

export interface Checkpoint {
  gen: number;
  logSeed: number;
  nextFileId: number;
  usedBlocks: number;
  files: CkptFile[];
}

export interface CkptHeader {
  gen: number;
  logSeed: number;
  nextFileId: number;
  fileCount: number;
  extentCount: number;
  bodyBytes: number;
  usedBlocks: number;
  bodyCrc: number;
  headerCrc: number;
}

export function slotOffset(g: Geometry, gen: number): number {
  return (g.ckptStart + (gen % 2) * g.ckptBlocks) * BLOCK_SIZE;
}

/** Serialise a checkpoint body + header into one buffer; returns it and the header CRC. */
export function encodeCheckpoint(c: Checkpoint): { bytes: Buffer; headerCrc: number } {
  let bodyBytes = 0;
  let extentCount = 0;
  const names: Buffer[] = [];
  for (const f of c.files) {
    const nb = Buffer.from(f.name, 'utf8');
    names.push(nb);
    bodyBytes += 40 + ((nb.length + 7) & ~7) + (f.extents.length / 4) * CKPT_EXTENT;
    extentCount += f.extents.length / 4;
  }
  const b = Buffer.alloc(CKPT_HEADER + bodyBytes);
  let o = CKPT_HEADER;
  c.files.forEach((f, i) => {
    const nb = names[i]!;
    b.writeUInt32LE(f.id, o);
    b.writeUInt32LE(f.mode, o + 4);
    b.writeUInt32LE(f.uid, o + 8);
    b.writeUInt32LE(f.gid, o + 12);
    b.writeDoubleLE(f.mtimeMs, o + 16);
    writeU64(b, o + 24, f.size);
    b.writeUInt32LE(f.extents.length / 4, o + 32);
    b.writeUInt16LE(nb.length, o + 36);
    nb.copy(b, o + 40);
    o += 40 + ((nb.length + 7) & ~7);
    const e = f.extents;
    for (let k = 0; k < e.length; k += 4) {
      writeU64(b, o, e[k]!);
      writeU64(b, o + 8, e[k + 1]!);
      b.writeUInt32LE(e[k + 2]!, o + 16);
      b.writeUInt32LE(e[k + 3]!, o + 20);
      o += CKPT_EXTENT;
    }
  });
  b.write(CKPT_MAGIC, 0, 'latin1');
  writeU64(b, 8, c.gen);
  b.writeUInt32LE(c.logSeed, 16);
  b.writeUInt32LE(c.nextFileId, 20);
  b.writeUInt32LE(c.files.length, 24);
  writeU64(b, 32, extentCount);
  writeU64(b, 40, bodyBytes);
  writeU64(b, 48, c.usedBlocks);
  b.writeUInt32LE(crc32c(b, 0, CKPT_HEADER), 56);
  const headerCrc = crc32c(b, 0, 0, 60);
  b.writeUInt32LE(headerCrc, 60);
  return { bytes: b, headerCrc };
}

export function writeCheckpoint(s: Storage, g: Geometry, c: Checkpoint): number {
  const { bytes, headerCrc } = encodeCheckpoint(c);
  if (bytes.length > g.ckptBlocks * BLOCK_SIZE) throw daxError('EIO', `checkpoint of ${bytes.length} bytes exceeds its slot`);
  const off = slotOffset(g, c.gen);
  writeBytes(s, off, bytes);
  s.persist(off, bytes.length);
  return headerCrc;
}

export type CkptResult = { ok: true; ckpt: Checkpoint; header: CkptHeader } | { ok: false; detail: string };

/** Read and verify the checkpoint `gen` (its slot is gen % 2); `expectCrc` is the superblock's cross-check. */
export function readCheckpoint(s: Storage, g: Geometry, gen: number, expectCrc: number): CkptResult {
  const off = slotOffset(g, gen);
  const hb = readBytes(s, off, CKPT_HEADER, true);
  if (hb.toString('latin1', 0, 8) !== CKPT_MAGIC) return { ok: false, detail: `checkpoint slot ${gen % 2} has no checkpoint magic` };
  const h: CkptHeader = {
    gen: readU64(hb, 8), logSeed: hb.readUInt32LE(16), nextFileId: hb.readUInt32LE(20), fileCount: hb.readUInt32LE(24),
    extentCount: readU64(hb, 32), bodyBytes: readU64(hb, 40), usedBlocks: readU64(hb, 48), bodyCrc: hb.readUInt32LE(56),
    headerCrc: hb.readUInt32LE(60),
  };
  if (crc32c(hb, 0, 0, 60) !== h.headerCrc) return { ok: false, detail: `checkpoint slot ${gen % 2} header checksum mismatch` };
  if (h.headerCrc !== expectCrc || h.gen !== gen) return { ok: false, detail: `checkpoint slot ${gen % 2} holds generation ${h.gen}, the superblock expects ${gen}` };
  if (h.bodyBytes > g.ckptBlocks * BLOCK_SIZE - CKPT_HEADER || h.fileCount > g.maxFiles) return { ok: false, detail: 'checkpoint header sizes out of range' };
  const body = readBytes(s, off + CKPT_HEADER, h.bodyBytes);
  if (crc32c(body) !== h.bodyCrc) return { ok: false, detail: `checkpoint generation ${gen} body checksum mismatch` };
  const files: CkptFile[] = [];
  let o = 0;
  for (let i = 0; i < h.fileCount; i++) {
    if (o + 40 > body.length) return { ok: false, detail: 'checkpoint body truncated' };
    const n = body.readUInt32LE(o + 32);
    const nameLen = body.readUInt16LE(o + 36);
    const next = o + 40 + ((nameLen + 7) & ~7) + n * CKPT_EXTENT;
    if (next > body.length) return { ok: false, detail: 'checkpoint body truncated' };
    const f: CkptFile = {
      id: body.readUInt32LE(o), mode: body.readUInt32LE(o + 4), uid: body.readUInt32LE(o + 8), gid: body.readUInt32LE(o + 12),
      mtimeMs: body.readDoubleLE(o + 16), size: readU64(body, o + 24), name: body.toString('utf8', o + 40, o + 40 + nameLen),
      extents: new Array<number>(n * 4),
    };
    let e = o + 40 + ((nameLen + 7) & ~7);
    for (let k = 0; k < n; k++) {
      f.extents[k * 4] = readU64(body, e);
      f.extents[k * 4 + 1] = readU64(body, e + 8);
      f.extents[k * 4 + 2] = body.readUInt32LE(e + 16);
      f.extents[k * 4 + 3] = body.readUInt32LE(e + 20);
      e += CKPT_EXTENT;
    }
    files.push(f);
    o = next;
  }
  return { ok: true, header: h, ckpt: { gen: h.gen, logSeed: h.logSeed, nextFileId: h.nextFileId, usedBlocks: h.usedBlocks, files } };
}

// ---- an empty pool ----

/** Format `storage` as an empty pool: an empty log, checkpoint generation 1, both superblocks. */
export function formatStorage(storage: Storage, opts: FormatOptions = {}): Superblock {
  const B = BLOCK_SIZE;
  const g = computeGeometry(storage.size, opts);
  const seed = randomBytes(4).readUInt32LE(0);
  const ckpt: Checkpoint = { gen: 1, logSeed: seed, nextFileId: 1, usedBlocks: 0, files: [] };
  // an empty first log record: the log reads as cleanly ended
  fillBytes(storage, g.logStart * B, 64);
  storage.persist(g.logStart * B, 64);
  const crc = writeCheckpoint(storage, g, ckpt);
  const sb: Superblock = { version: 1, uuid: newUuid(), geometry: g, createdMs: Date.now(), ckptGen: 1, ckptCrc: crc };
  writeSuperblocks(storage, sb);
  return sb;
}
