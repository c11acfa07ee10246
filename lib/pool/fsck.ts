// fsck: a read-only check of a pool's superblocks, checkpoint, log and the state
// they replay to. Used by `daxmap fsck` and by the crash tests.

import { openDevice } from '../device/device';
import type { Storage } from '../device/storage';
import { isDaxError } from '../errors';
import { PoolCore } from './core';
import { BLOCK_SIZE, readSuperblock } from './format';

export interface FsckReport {
  clean: boolean;
  /** Problems that make the pool unsound (non-zero exit). */
  errors: string[];
  /** Damage the pool recovers from by itself (a torn superblock copy, for example). */
  warnings: string[];
  /** What was found, line by line, for the report. */
  info: string[];
  summary?: {
    uuid: string;
    blocks: number;
    dataBlocks: number;
    files: number;
    usedBlocks: number;
    freeBlocks: number;
    pendingBlocks: number;
    /** Blocks of the reserve left by the log (a crash); the next open frees them. */
    reservedBlocks: number;
    logRecords: number;
    logBytes: number;
    logCapacity: number;
    checkpointGeneration: number;
  };
}

export type Progress = (phase: string, done: number, total: number) => void;

/** Check a pool on `storage` without changing a byte. */
export function fsckStorage(storage: Storage, progress?: Progress): FsckReport {
  const rep: FsckReport = { clean: false, errors: [], warnings: [], info: [] };
  progress?.('superblock', 0, 1);
  let sbInfo;
  try {
    sbInfo = readSuperblock(storage);
  } catch (e) {
    rep.errors.push((e as Error).message);
    return rep;
  }
  for (const n of sbInfo.notes) rep.warnings.push(`${n}; the other copy is in force and opening the pool rewrites this one`);
  if (sbInfo.stale && sbInfo.notes.length === 0) rep.warnings.push('the superblock copies differ by one checkpoint (a crash between their writes); opening the pool rewrites the older');
  const sb = sbInfo.sb;
  const g = sb.geometry;
  rep.info.push(`superblock: uuid ${sb.uuid}, format ${sb.version}, ${BLOCK_SIZE}-byte blocks, ${g.totalBlocks} blocks (${g.totalBlocks * BLOCK_SIZE} bytes)`);
  rep.info.push(`layout: checkpoint slots at block ${g.ckptStart} (2 x ${g.ckptBlocks}), log at block ${g.logStart} (${g.logBlocks}), data [${g.dataStart}, ${g.dataEnd}), up to ${g.maxFiles} files`);
  progress?.('replay', 0, 1);
  let core: PoolCore;
  try {
    core = PoolCore.open(storage, { readOnly: true, progress: (done, total) => progress?.('replay', done, total) });
  } catch (e) {
    rep.errors.push(isDaxError(e) ? e.message : `open failed: ${(e as Error).message}`);
    return rep;
  }
  const oi = core.openInfo;
  rep.info.push(`checkpoint: generation ${sb.ckptGen}, ${oi.ckptFiles} files, ${oi.ckptExtents} extents, ${oi.ckptUsedBlocks} blocks used`);
  const r = oi.replay;
  const why = r.stop === 'end' ? 'clean end' : r.stop === 'partial-txn' ? 'an incomplete transaction (ignored)' :
    r.stop === 'bad-type' ? 'a record with a valid checksum but impossible contents' : 'the first record that does not verify (torn or stale tail)';
  rep.info.push(`log: ${r.records} records in ${r.transactions} transactions replayed, ${r.tail} of ${g.logBlocks * BLOCK_SIZE} bytes; replay stopped at offset ${r.stopOffset}: ${why}`);
  if (r.stop === 'bad-type') rep.errors.push(`log record at offset ${r.stopOffset} has a valid checksum but an unknown type or bad length`);
  const problems = core.checkState((done, total) => progress?.('blocks', done, total));
  rep.errors.push(...problems);
  const a = core.state.alloc;
  const reserved = core.state.reserved.size;
  rep.info.push(`files: ${core.state.files.size}; blocks: ${a.used - reserved} used, ${a.free} free, ${a.pendingCount} freed since the checkpoint, ${reserved} reserved (freed at the next open)`);
  rep.summary = {
    uuid: sb.uuid, blocks: g.totalBlocks, dataBlocks: g.dataEnd - g.dataStart, files: core.state.files.size, usedBlocks: a.used - reserved,
    freeBlocks: a.free, pendingBlocks: a.pendingCount, reservedBlocks: reserved, logRecords: r.records, logBytes: r.tail, logCapacity: g.logBlocks * BLOCK_SIZE,
    checkpointGeneration: sb.ckptGen,
  };
  rep.clean = rep.errors.length === 0;
  return rep;
}

/** Check the pool on the device at `path`: opened exclusively (EBUSY while a service owns it), never written. */
export function fsckDevice(path: string, progress?: Progress): FsckReport {
  const storage = openDevice(path, { exclusive: true });
  try {
    return fsckStorage(storage, progress);
  } finally {
    storage.close();
  }
}
