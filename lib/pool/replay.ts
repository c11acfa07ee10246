// Open-time recovery: load the checkpoint in force into a fresh in-memory state,
// then replay the log after it, transaction by transaction, through the same
// apply() that run time uses (docs/pool-format.md, "Metadata log" and
// "Checkpoint slot"). A record that verifies but cannot be applied, or a
// checkpoint that does not add up, makes the open fail with EBADF; nothing is
// written here.

import { daxError } from '../errors';
import type { Storage } from '../device/storage';
import { BLOCK_SIZE, checkGeometry, readCheckpoint, type Superblock } from './format';
import { readBytes } from './io';
import { MetaLog, RecType, STATE_UNWRITTEN, STATE_WRITTEN, recordName, scanLog, type ReplayEnd } from './log';
import { FsState, ReplayError, corrupt } from './state';

const B = BLOCK_SIZE;

/** What open found: the superblock in force, the checkpoint it names, where the log replay stopped. */
export interface OpenInfo {
  sb: Superblock;
  replay: ReplayEnd;
  ckptFiles: number;
  ckptExtents: number;
  ckptUsedBlocks: number;
}

export interface Replayed {
  state: FsState;
  /** The log, positioned to append after the last replayed transaction. */
  log: MetaLog;
  info: OpenInfo;
}

/**
 * Rebuild the state of the pool `sb` describes: checkpoint, then log. Throws EBADF
 * for anything that is not a sound pool.
 */
export function replay(storage: Storage, sb: Superblock, progress?: (done: number, total: number) => void): Replayed {
  try {
    return load(storage, sb, progress);
  } catch (e) {
    if (e instanceof ReplayError) throw daxError('EBADF', `'${storage.path}': damaged pool metadata: ${e.message} (run daxmap fsck)`, { cause: e });
    if (e instanceof RangeError || e instanceof TypeError) throw daxError('EBADF', `'${storage.path}': unreadable pool metadata: ${e.message}`, { cause: e });
    throw e;
  }
}

function load(storage: Storage, sb: Superblock, progress?: (done: number, total: number) => void): Replayed {
  const g = sb.geometry;
  const problem = checkGeometry(g, storage.size);
  if (problem) corrupt(problem);
  const state = new FsState(g);
  const r = readCheckpoint(storage, g, sb.ckptGen, sb.ckptCrc);
  if (!r.ok) corrupt(r.detail);
  const c = r.ckpt;
  state.nextFileId = c.nextFileId;
  let used = 0;
  let extents = 0;
  for (const f of c.files) {
    state.apply({ t: RecType.Create, id: f.id, mode: f.mode, uid: f.uid, gid: f.gid, mtimeMs: f.mtimeMs, name: f.name }, true);
    const e = f.extents;
    for (let k = 0; k < e.length; k += 4) {
      const st = e[k + 3]!;
      if (st !== STATE_UNWRITTEN && st !== STATE_WRITTEN) corrupt(`checkpoint: file ${f.id} extent with state ${st}`);
      state.apply({ t: RecType.Map, id: f.id, fb: e[k]!, dev: e[k + 1]!, len: e[k + 2]!, state: st }, true);
      used += e[k + 2]!;
      extents++;
    }
    state.apply({ t: RecType.SetSize, id: f.id, size: f.size, mtimeMs: f.mtimeMs }, true);
  }
  if (used !== c.usedBlocks) corrupt(`checkpoint says ${c.usedBlocks} blocks used, its extents hold ${used}`);
  if (c.nextFileId <= Math.max(0, ...[...state.files.keys()])) corrupt(`checkpoint next file id ${c.nextFileId} is not above every file id`);
  const area = readBytes(storage, g.logStart * B, g.logBlocks * B);
  const end = scanLog(area, c.logSeed, (txn, off) => {
    try {
      for (const rec of txn) state.apply(rec, true);
    } catch (e) {
      if (e instanceof ReplayError) corrupt(`log transaction at log offset ${off} (${txn.map((x) => recordName(x.t)).join('+')}): ${e.message}`);
      throw e;
    }
  }, progress);
  const log = new MetaLog(storage, g.logStart * B, g.logBlocks * B, end.tail, end.chain, true);
  return { state, log, info: { sb, replay: end, ckptFiles: c.files.length, ckptExtents: extents, ckptUsedBlocks: c.usedBlocks } };
}
