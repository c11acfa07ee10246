// The operations a Pool asks its service for, one entry each: who may call it and
// how its arguments are checked and typed. The service (lib/service/service.ts) runs
// the entry of every request before its handler, whoever sent it: a thread of this
// process, or a daxmapd client that may send anything JSON can say. A handler gets
// its arguments typed (OpArgs) and never casts. daxmapd's own requests, `hello` first
// and `attachDevice`, are in DAEMON_OPS.
import { MessagePort } from 'node:worker_threads';
import { daxError } from '../errors';
import { show } from '../util/check';
import { MAX_FILE_SIZE, PAGE, bytes, fileInt, int, name, pages } from './args';
import type { Hello, MapOptions } from './messages';
import type { PoolFsFileStat as FileStat, PoolFsStatFs as StatFs } from '../pool/index';
import type { FaultStatsSnapshot } from '../fault/stats';
import { DECIDE_MODES, type DecideMode } from '../fault/decide';
import { MAX_AHEAD } from '../fault/ahead';
import { RESERVE_MODES, type ReserveMode } from '../fault/reserve';

/** Largest file.read through a socket: its reply must fit one control frame (./control.ts MAX_PAYLOAD). */
export const REMOTE_MAX_READ = 32 << 20;

export interface ArgContext {
  /** The request came over a socket (daxmapd), not from a thread of the service's process. */
  remote: boolean;
}

interface OpSpec<A extends unknown[]> {
  /** root: uid 0 (or the service's own process); test: the same, and DAXMAP_TEST_HOOKS=1 in the service's environment. */
  access?: 'root' | 'test';
  /** Checks the request's arguments (extra ones are ignored); throws EINVAL, or EBADF for what cannot name a handle or region. */
  args(a: unknown[], ctx: ArgContext): A;
}

function spec<A extends unknown[]>(s: OpSpec<A>): OpSpec<A> {
  return s;
}

/** A field of an options argument that may be anything: absent when it is not an object (as `(v ?? {}).key`). */
function field(v: unknown, key: string): unknown {
  return v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[key] : undefined;
}

/** A file handle: a number; anything else is no handle of this connection's. */
function handle(v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw daxError('EBADF', `file handle ${String(v)} is not open`);
  return v;
}

/** A handle or region to let go of: what is not a number names nothing (null), which is let go of at once. */
function maybeId(v: unknown): number | null {
  return typeof v === 'number' && Number.isSafeInteger(v) ? v : null;
}

function keepSize(v: unknown): { keepSize: boolean } {
  return { keepSize: field(v, 'keepSize') === true };
}

function mapOptions(v: unknown): MapOptions {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw daxError('EINVAL', 'map options must be an object');
  for (const k of ['private', 'sync', 'faultAround', 'readOnly'] as const) {
    const x = field(v, k);
    if (x !== undefined && typeof x !== 'boolean') throw daxError('EINVAL', `map option ${k} must be a boolean`);
  }
  return {
    private: field(v, 'private') === true, sync: field(v, 'sync') === true, faultAround: field(v, 'faultAround') !== false, readOnly: field(v, 'readOnly') === true,
  };
}

const none = spec({ args: (): [] => [] });

export const OPS = {
  hello: none,
  /** A MessagePort from a thread of the service's own process: nothing a socket can carry. */
  attach: spec({
    args: (a): [MessagePort] => {
      if (!(a[0] instanceof MessagePort)) throw daxError('EINVAL', 'attach: only threads of the service\'s own process attach');
      return [a[0]];
    },
  }),
  openFile: spec({
    args: (a): [string, { create: boolean; exclusive: boolean; mode?: number }] => {
      const mode = field(a[1], 'mode');
      return [name(a[0]), {
        create: field(a[1], 'create') === true,
        exclusive: field(a[1], 'exclusive') === true,
        ...(mode !== undefined ? { mode: int('mode', mode, 0, 0o7777) & 0o777 } : {}),
      }];
    },
  }),
  unlink: spec({ args: (a): [string] => [name(a[0])] }),
  rename: spec({ args: (a): [string, string] => [name(a[0], 'rename source'), name(a[1], 'rename target')] }),
  list: none,
  statfs: none,
  /** Resolves once the pool's background work (the zeroer of free space, the reserve's refill) is idle. */
  settled: none,
  sync: none,
  stats: none,
  statsByFile: none,
  lockdep: spec({ access: 'root', args: (): [] => [] }),
  /** Faults on a path fail after their locks are taken, or with delayMs take that long there (a fault in flight). */
  testInject: spec({
    access: 'test',
    args: (a): [{ where: 'huge' | 'page' | 'any' | 'adopt' | 'adopted' | null; code: string; delayMs: number | null }] => {
      const delayMs = field(a[0], 'delayMs');
      return [{
        where: (field(a[0], 'where') ?? null) as 'huge' | 'page' | 'any' | 'adopt' | 'adopted' | null,
        code: (field(a[0], 'code') ?? 'EIO') as string,
        delayMs: delayMs === undefined ? null : int('delayMs', delayMs, 0, 60000),
      }];
    },
  }),
  /** The service dies: { crash: true } by an uncaught exception, else process.exit(3); { reply: false } without answering. */
  testExit: spec({
    access: 'test',
    args: (a): [{ crash: boolean; reply: boolean }] => [{ crash: field(a[0], 'crash') === true, reply: field(a[0], 'reply') !== false }],
  }),
  /** From now on every persist of the device fails with `code`. */
  testFailPersist: spec({ access: 'test', args: (a): [{ code: string }] => [{ code: (field(a[0], 'code') ?? 'EIO') as string }] }),
  /** What the service holds for this connection. */
  testState: spec({ access: 'test', args: (): [] => [] }),
  /** Fault-ahead tasks running in the policy (ahead.ts): tests wait for none. */
  testAhead: spec({ access: 'test', args: (): [] => [] }),
  /**
   * windowBudget: this client's window budget; decided: how the pool decides written extents at map();
   * reserve: whether sparse hole writes are answered natively from reserves; ahead: the 2 MiB
   * windows installed ahead of a sequential writer, 0 to 16; reserveWindow: the pages of a reserve
   * window filled before the rest of it is installed, 0 (off) to 512 (docs/fault-policy.md);
   * stage: whether grants stage whole-hole windows in a memfd (docs/fault-policy.md, "Staged ranges");
   * cleanTarget: bytes of free space kept zeroed in the background, 0 turns it off (docs/pool.md).
   */
  configure: spec({
    access: 'root',
    args: (a): [{ windowBudget?: number; decided?: DecideMode; reserve?: ReserveMode; ahead?: number; reserveWindow?: number; stage?: 'on' | 'off'; cleanTarget?: number }] => {
      const rw = field(a[0], 'reserveWindow');
      const sg = field(a[0], 'stage');
      if (sg !== undefined && sg !== 'on' && sg !== 'off') throw daxError('EINVAL', `stage must be one of on, off, got ${show(sg)}`);
      const w = field(a[0], 'windowBudget');
      const ct = field(a[0], 'cleanTarget');
      const ah = field(a[0], 'ahead');
      const d = field(a[0], 'decided');
      const r = field(a[0], 'reserve');
      if (d !== undefined && !DECIDE_MODES.includes(d as DecideMode)) {
        throw daxError('EINVAL', `decided must be one of ${DECIDE_MODES.join(', ')}, got ${show(d)}`);
      }
      if (r !== undefined && !RESERVE_MODES.includes(r as ReserveMode)) {
        throw daxError('EINVAL', `reserve must be one of ${RESERVE_MODES.join(', ')}, got ${show(r)}`);
      }
      return [{
        ...(w === undefined ? {} : { windowBudget: int('windowBudget', w, 1, 2 ** 31) }),
        ...(d === undefined ? {} : { decided: d as DecideMode }),
        ...(r === undefined ? {} : { reserve: r as ReserveMode }),
        ...(ah === undefined ? {} : { ahead: int('ahead', ah, 0, MAX_AHEAD) }),
        ...(rw === undefined ? {} : { reserveWindow: int('reserveWindow', rw, 0, 512) }),
        ...(sg === undefined ? {} : { stage: sg as 'on' | 'off' }),
        ...(ct === undefined ? {} : { cleanTarget: int('cleanTarget', ct, 0, Number.MAX_SAFE_INTEGER) }),
      }];
    },
  }),
  stat: spec({ args: (a): [number] => [handle(a[0])] }),
  truncate: spec({ args: (a): [number, number] => [handle(a[0]), fileInt('size', a[1])] }),
  fallocate: spec({
    args: (a): [number, number, number, { keepSize: boolean }] => [handle(a[0]), fileInt('offset', a[1]), fileInt('length', a[2], 1), keepSize(a[3])],
  }),
  punchHole: spec({ args: (a): [number, number, number] => [handle(a[0]), fileInt('offset', a[1]), fileInt('length', a[2], 1)] }),
  zeroRange: spec({
    args: (a): [number, number, number, { keepSize: boolean }] => [handle(a[0]), fileInt('offset', a[1]), fileInt('length', a[2], 1), keepSize(a[3])],
  }),
  write: spec({ args: (a): [number, Uint8Array, number] => [handle(a[0]), bytes('data', a[1]), fileInt('offset', a[2])] }),
  read: spec({
    args: (a, ctx): [number, number, number] => [handle(a[0]), int('read length', a[1], 0, ctx.remote ? REMOTE_MAX_READ : MAX_FILE_SIZE), fileInt('offset', a[2])],
  }),
  fsync: spec({ args: (a): [number] => [handle(a[0])] }),
  closeFile: spec({ args: (a): [number | null] => [maybeId(a[0])] }),
  /** A trapped region of the client's (its id) maps [fileOffset, +length) of the file. */
  map: spec({
    args: (a): [number, number, number, number, MapOptions] => {
      const h = handle(a[0]);
      const region = int('region', a[1], 1, 0xffffffff);
      const fileOffset = pages('mapping offset', a[2], 0, MAX_FILE_SIZE - PAGE);
      const length = pages('mapping length', a[3], PAGE, MAX_FILE_SIZE - fileOffset);
      return [h, region, fileOffset, length, mapOptions(a[4])];
    },
  }),
  unmap: spec({ args: (a): [number | null] => [maybeId(a[0])] }),
  /** [offset, +length) of a mapped region (checked against the mapping by the service). */
  flush: spec({
    args: (a): [number, number, number] => {
      const region = maybeId(a[0]);
      if (region === null) throw daxError('EBADF', `region ${String(a[0])} is not mapped`);
      return [region, int('flush offset', a[1]), int('flush length', a[2])];
    },
  }),
  close: none,
};

export type OpName = keyof typeof OPS;
export type OpArgs<K extends OpName> = ReturnType<(typeof OPS)[K]['args']>;

/** What each operation answers (the service's handlers are typed by it, and so are the client's calls). */
export interface OpResults {
  hello: Hello;
  attach: void;
  openFile: { handle: number; name: string };
  unlink: void;
  rename: void;
  list: string[];
  statfs: StatFs;
  settled: void;
  sync: void;
  stats: FaultStatsSnapshot;
  statsByFile: { file: string; stats: FaultStatsSnapshot }[];
  lockdep: unknown[] | null;
  testInject: void;
  testExit: void;
  testFailPersist: void;
  testState: { mappings: number; regions: number; files: number; windows: number };
  testAhead: number;
  configure: void;
  stat: FileStat;
  truncate: void;
  fallocate: void;
  punchHole: void;
  zeroRange: void;
  write: number;
  read: Uint8Array;
  fsync: void;
  closeFile: void;
  map: null;
  unmap: void;
  flush: void;
  close: void;
}
export type OpResult<K extends OpName> = OpResults[K];

/** The operations on an open file: their first argument is its handle. */
export type FileOpName = { [K in OpName]: OpArgs<K> extends [number, ...unknown[]] ? (K extends 'closeFile' ? never : K) : never }[OpName];
/** A file operation's arguments after the handle. */
export type FileOpArgs<K extends FileOpName> = OpArgs<K> extends [number, ...infer R] ? R : never;

/** daxmapd's own requests on a control connection, answered by the daemon rather than the service. */
export const DAEMON_OPS = {
  /** The first request of a connection: the session, the device and whether this client may map it. */
  hello: none,
  /** The id of the pool's device in the client's own device table (answers install ranges of it). */
  attachDevice: spec({ args: (a): [number] => [int('device id', a[0], 1, 0xffffffff)] }),
};

/** The entry of `op`; EINVAL for a name that is none (nor anything inherited: `__proto__`, `toString`). */
export function opSpec(op: string): OpSpec<unknown[]> & { name: OpName } {
  if (!Object.hasOwn(OPS, op)) throw daxError('EINVAL', `unknown pool operation '${op}'`);
  return { ...(OPS[op as OpName] as OpSpec<unknown[]>), name: op as OpName };
}
