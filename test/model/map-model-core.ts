// The engine of the fsx-style model test of mappings (xfstests generic/075 in spirit):
// one file, two mappings of it (one shared, one private), random operations through
// the mappings and through the file API, each checked at once against a shadow model
// of the file (bytes, size) and of the private mapping's own pages.
//
// Generation and execution are separate: an operation is a plain object (`MapOp`),
// generated from a seeded PRNG and the model's state, recorded in the log, and
// executed against pool and model. An operation list can be replayed as is (`script`),
// which is what reduction of a failing run uses (map-model-replay.ts).
//
// Nothing here touches a page past EOF from JavaScript (that would SIGBUS the test):
// every range is first read by the kernel (write(2) from the mapping into a scratch
// file), which gets EFAULT where a page is poisoned; only then is it compared or
// stored to. Pages wholly past EOF are probed that way and must give EFAULT.
//
// The model is Linux's: holes and unwritten blocks read zero; the shared mapping is
// coherent with file.read/write at once; a page the private mapping stores to becomes
// its own (a copy of what it read then); punch hole and zero range keep its own pages,
// truncate drops those wholly past the new EOF (the page holding EOF stays). Mapped
// stores never reach past EOF: the file is extended first, as fsx does.
//
// One difference from Linux, documented in docs/fault-policy.md: a private mapping's
// page is a copy of the file's bytes taken at its first touch. file.write, punch,
// zero range and truncate over it are followed (the copy is taken back), but a store
// through the shared mapping may or may not be: the model keeps, per private page
// read but not owned, the contents it may show (`snap`), and narrows them to what
// the mapping is seen to hold.
//
// Bugs this model found, all fixed and now checked (regression tests in
// test/fault/revoke.test.ts): stale zero pages after a hole got data through
// file.write or another mapping (refreshZeros); a 2 MiB zero window over a chunk split
// into several VMAs failing with ENOENT → SIGBUS inside EOF; a 2 MiB install window in
// a private mapping discarding the mapping's own pages; and a private page kept by a
// punch or zero range surviving a later truncate (readable past EOF instead of SIGBUS).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Pool, PoolFile, Mapping } from '../../dist/client/pool';

export const PAGE = 4096;
export const HUGE = 2 << 20;
/** File offsets of operations stay below this. */
export const MAXFILE = HUGE + HUGE / 2;
/** Mappings may reach this far (past any EOF the operations make). */
export const CAP = MAXFILE + HUGE / 2;

const roundUp = (x: number, a: number): number => Math.ceil(x / a) * a;

export type Which = 'S' | 'P';
export type MapOp =
  | { k: 'mapwrite'; m: Which; off: number; len: number }
  | { k: 'mapread'; m: Which; off: number; len: number }
  | { k: 'write'; off: number; len: number }
  | { k: 'read'; off: number; len: number }
  | { k: 'truncate'; size: number }
  | { k: 'fallocate'; off: number; len: number; keep: boolean }
  | { k: 'punch'; off: number; len: number }
  | { k: 'zero'; off: number; len: number; keep: boolean }
  | { k: 'map'; m: Which; off: number; len: number; faultAround: boolean; sync: boolean }
  | { k: 'unmap'; m: Which }
  | { k: 'flush'; fsync: boolean };

export function fmtOp(n: number, o: MapOp): string {
  const r = (off: number, len: number): string => `[0x${off.toString(16)}, +0x${len.toString(16)}) (${off}+${len})`;
  switch (o.k) {
    case 'mapwrite': case 'mapread': return `${n}: ${o.k} ${o.m === 'S' ? 'shared' : 'private'} ${r(o.off, o.len)}`;
    case 'write': case 'read': case 'punch': return `${n}: ${o.k} ${r(o.off, o.len)}`;
    case 'truncate': return `${n}: truncate to 0x${o.size.toString(16)} (${o.size})`;
    case 'fallocate': case 'zero': return `${n}: ${o.k} ${r(o.off, o.len)}${o.keep ? ' keepSize' : ''}`;
    case 'map': return `${n}: map ${o.m === 'S' ? 'shared' : 'private'} ${r(o.off, o.len)}${o.faultAround ? '' : ' faultAround=false'}${o.sync ? ' sync' : ''}`;
    case 'unmap': return `${n}: unmap ${o.m === 'S' ? 'shared' : 'private'}`;
    case 'flush': return `${n}: flush${o.fsync ? ' + fsync' : ''}`;
  }
}

/** mulberry32: small, fast, reproducible. */
export function rng(seed: number): { next(): number; int(n: number): number; chance(p: number): boolean } {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n) => Math.floor(next() * n), chance: (p) => next() < p };
}

/** The byte operation `op` stores at file offset `pos`: never zero, differs from op to op (fsx's stamp). */
export function stampByte(op: number, pos: number): number {
  return ((op * 131 + pos * 7 + (pos >>> 8)) % 255) + 1;
}

export function stamp(op: number, fileOffset: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  const k = (op * 131) % 255;
  for (let i = 0, pos = fileOffset; i < len; i++, pos++) b[i] = ((k + pos * 7 + (pos >>> 8)) % 255) + 1;
  return b;
}

/** A model/library disagreement: the message says what, where, and what the bytes look like. */
export class ModelMismatch extends Error {}

interface Live {
  m: Mapping;
  off: number;
  len: number;
  faultAround: boolean;
  sync: boolean;
}

export interface RunOptions {
  pool: Pool;
  /** The file the run creates (default 'map-model'); unlinked at the end of a run that passed. */
  file?: string;
  /** Operations to generate (ignored when `script` is given). */
  ops: number;
  seed: number;
  /** Replay these operations instead of generating. Operations that make no sense in the state reached are skipped. */
  script?: MapOp[];
  /** Every executed operation, formatted, as it starts. */
  log: string[];
  /** Also append each formatted operation to this file as it starts (survives a hard crash). */
  logFile?: string;
  /** Executed operations as objects (for replay and reduction). */
  trace?: MapOp[];
  /** Operation weights (0 turns a kind off). */
  weights?: Partial<Record<Kind, number>>;
  /** Per-process budget of installed windows for the run (small: eviction pressure). */
  windowBudget?: number;
  /**
   * The device's mapping granularity when above a page (2 MiB on the hugetlbfs
   * stand-in: docs/pool.md, "2 MiB-granular devices"): the shared mapping then starts
   * at a multiple of it and maps the unit holding EOF whole (zeros past EOF there,
   * SIGBUS from the unit's end).
   */
  granule?: number;
  /** Time spent per operation kind (executing, checking), ms. */
  profile?: Record<string, { n: number; exec: number; check: number }>;
}

export interface RunResult {
  ops: number;
  skipped: number;
  efaultProbes: number;
  eofPagesChecked: number;
  bytesCompared: number;
  privatePagesMax: number;
}

export const DEFAULT_WEIGHTS = {
  mapwrite: 22, mapread: 6, write: 16, read: 5, truncate: 9, fallocate: 7, punch: 8, zero: 8, map: 5, unmap: 1, flush: 2,
} as const;
export type Kind = keyof typeof DEFAULT_WEIGHTS;

export async function runMapModel(o: RunOptions): Promise<RunResult> {
  const r = rng(o.seed);
  const granule = o.granule ?? PAGE;
  const weights = { ...DEFAULT_WEIGHTS, ...(o.weights ?? {}) } as Record<Kind, number>;
  const total = Object.values(weights).reduce((a, b) => a + b, 0);
  const pickKind = (): Kind => {
    let x = r.next() * total;
    for (const [k, w] of Object.entries(weights)) {
      if ((x -= w) < 0) return k as Kind;
    }
    return 'mapwrite';
  };

  // ---- the model ----
  const bytes = Buffer.alloc(CAP); // the file's bytes; always zero at and past `size`
  const owner = new Int32Array(CAP); // which operation last stored each byte (0: none, -n: zeroed by op n)
  let size = 0;
  /** The private mapping's own pages (file page index → its 4 KiB), dropped when it is unmapped. */
  const priv = new Map<number, Buffer>();
  const privOwner = new Map<number, number>();
  /**
   * Private pages not its own whose copy may be older than the file: the contents
   * (whole pages) it may hold. Absent: the file's current bytes.
   */
  const snap = new Map<number, Buffer[]>();
  const pageOf = (p: number): Buffer => Buffer.from(bytes.subarray(p * PAGE, (p + 1) * PAGE));
  /** The file's bytes changed through the file API over file [from, to): the private copies there were taken back. */
  const resetSnaps = (from: number, to: number): void => {
    for (const p of [...snap.keys()]) if (p * PAGE < to && (p + 1) * PAGE > from) snap.delete(p);
  };
  const writes: { n: number; off: number; len: number; how: string }[] = [];
  const live: Record<Which, Live | null> = { S: null, P: null };
  const dropPrivate = (p: number): void => {
    priv.delete(p);
    privOwner.delete(p);
  };
  const forgetMapping = (w: Which): void => {
    if (w === 'P') { priv.clear(); privOwner.clear(); snap.clear(); }
  };

  // ---- the scratch file the kernel copies mapped ranges into (the EFAULT probe) ----
  const scratch = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `daxmap-map-model-${process.pid}-${o.seed}-${Date.now()}`);
  const sfd = fs.openSync(scratch, 'w');
  fs.unlinkSync(scratch);
  const logFd = o.logFile ? fs.openSync(o.logFile, 'w') : -1;

  const res: RunResult = { ops: 0, skipped: 0, efaultProbes: 0, eofPagesChecked: 0, bytesCompared: 0, privatePagesMax: 0 };
  let n = 0;
  const fail: (msg: string) => never = (msg) => { throw new ModelMismatch(`after op ${n}: ${msg}`); };

  /** Kernel-mode read of buf[off, off+len): null if all of it was readable, else the first failing offset and code. */
  const kread = (buf: Buffer, off: number, len: number): { at: number; code: string } | null => {
    let done = 0;
    while (done < len) {
      try {
        const w = fs.writeSync(sfd, buf, off + done, Math.min(len - done, 8 << 20), 0);
        if (w <= 0) return { at: off + done, code: 'short write' };
        done += w;
      } catch (e) {
        return { at: off + done, code: (e as NodeJS.ErrnoException).code ?? String(e) };
      }
    }
    return null;
  };

  const hex = (b: Uint8Array, from: number, k = 16): string => Buffer.from(b.subarray(from, from + k)).toString('hex').replace(/(..)/g, '$1 ').trim();

  /** Which earlier write stored `actual` at file offset pos (fsx's "bad data from op N"). */
  const whoWrote = (actual: Uint8Array, at: number, pos: number): string => {
    const k = Math.min(8, actual.length - at);
    if (k <= 0) return '';
    let allZero = true;
    for (let i = 0; i < k; i++) if (actual[at + i] !== 0) allZero = false;
    if (allZero) return 'the bytes read are zeros';
    for (let i = writes.length - 1; i >= 0; i--) {
      const w = writes[i]!;
      let ok = true;
      for (let j = 0; j < k && ok; j++) if (stampByte(w.n, pos + j) !== actual[at + j]) ok = false;
      if (ok) {
        const covers = w.off <= pos && pos < w.off + w.len;
        return `the bytes read are op ${w.n}'s stamp for this offset (${w.how} ${covers ? 'covering it' : 'NOT covering it'})`;
      }
    }
    return 'the bytes read are not any write\'s stamp for this offset (stale or foreign data?)';
  };

  const describeDiff: (what: string, actual: Uint8Array, expected: Uint8Array, fileBase: number, privView: boolean) => never = (what, actual, expected, fileBase, privView) => {
    let i = 0;
    while (i < actual.length && actual[i] === expected[i]) i++;
    let j = i;
    while (j < actual.length && actual[j] !== expected[j]) j++;
    const pos = fileBase + i;
    const page = Math.floor(pos / PAGE);
    const own = privView && priv.has(page) ? `private page written by op ${privOwner.get(page)}` : ((): string => {
      const w = owner[pos]!;
      return w > 0 ? `file byte stored by op ${w}` : w < 0 ? `file byte zeroed by op ${-w}` : 'file byte never written';
    })();
    fail(`${what}: first difference at file offset 0x${pos.toString(16)} (${pos}; page ${page}, ${pos % PAGE} into it), ` +
      `${j - i} differing bytes from there; size 0x${size.toString(16)} (${size}).\n` +
      `  expected ${hex(expected, i)}  (${own})\n` +
      `  actual   ${hex(actual, i)}  (${whoWrote(actual, i, pos)})`);
    throw new Error('unreachable');
  };

  const mapLive = async (w: Which, off: number, len: number, faultAround: boolean, sync: boolean): Promise<void> => {
    const m = await f.map({ offset: off, length: len, private: w === 'P', faultAround, sync });
    if (m.buffer.length !== len) fail(`mapping buffer has ${m.buffer.length} bytes, asked for ${len}`);
    live[w] = { m, off, len, faultAround, sync };
  };
  /** The kernel reads file [from, to) of mapping w (inside EOF): every page must be readable. */
  const ensureReadable = (w: Which, from: number, to: number, what: string): void => {
    const l = live[w]!;
    const bad = kread(l.m.buffer, from - l.off, to - from);
    if (bad) fail(`${what}: a page inside EOF is not readable: ${bad.code} at file offset 0x${(l.off + bad.at).toString(16)} (size 0x${size.toString(16)})`);
  };

  /** Compare a mapping's bytes for file [from, to) (inside EOF) with the model, the kernel reading them first. */
  const compareMapped = async (w: Which, from: number, to: number, what: string): Promise<void> => {
    if (to <= from) return;
    ensureReadable(w, from, to, what);
    const l = live[w]!;
    const act = l.m.buffer.subarray(from - l.off, to - l.off);
    res.bytesCompared += to - from;
    if (w === 'P') {
      // Pages with several possible contents: keep those the mapping is seen to hold.
      for (let p = Math.floor(from / PAGE); p * PAGE < to; p++) {
        if (priv.has(p)) continue;
        const s = Math.max(from, p * PAGE);
        const e = Math.min(to, (p + 1) * PAGE);
        const seen = act.subarray(s - from, e - from);
        const cands = snap.get(p) ?? [pageOf(p)];
        const fit = cands.filter((c) => Buffer.compare(c.subarray(s - p * PAGE, e - p * PAGE), seen) === 0);
        if (fit.length === 0) {
          // Report against the newest possible content.
          const exp = Buffer.from(cands[cands.length - 1]!.subarray(s - p * PAGE, e - p * PAGE));
          describeDiff(what, seen, exp, s, true);
        }
        // Once seen, the page is a copy: later stores through the shared mapping may not show.
        snap.set(p, fit);
      }
      for (let p = Math.floor(from / PAGE); p * PAGE < to; p++) {
        const pg = priv.get(p);
        if (!pg) continue;
        const s = Math.max(from, p * PAGE);
        const e = Math.min(to, (p + 1) * PAGE);
        const exp = pg.subarray(s - p * PAGE, e - p * PAGE);
        if (Buffer.compare(act.subarray(s - from, e - from), exp) !== 0) describeDiff(what, act.subarray(s - from, e - from), exp, s, true);
      }
      return;
    }
    const exp = bytes.subarray(from, to);
    if (Buffer.compare(act, exp) !== 0) describeDiff(what, act, exp, from, false);
  };
  const fileName = o.file ?? 'map-model';
  const f: PoolFile = await o.pool.openFile(fileName, { create: true });
  if (o.windowBudget !== undefined) await o.pool.request('configure', [{ windowBudget: o.windowBudget }]);

  /** After every operation: size, the whole file through file.read, both mappings whole, pages past EOF. */
  const check = async (): Promise<void> => {
    const st = await f.stat();
    if (st.size !== size) fail(`file size ${st.size}, model ${size}`);
    const buf = Buffer.alloc(size + PAGE, 0xee);
    const got = await f.read(buf, 0);
    if (got !== size) fail(`file.read of the whole file returned ${got} bytes, model size ${size}`);
    res.bytesCompared += size;
    if (Buffer.compare(buf.subarray(0, size), bytes.subarray(0, size)) !== 0) describeDiff('file.read', buf.subarray(0, size), bytes.subarray(0, size), 0, false);
    for (const w of ['S', 'P'] as const) {
      const l = live[w];
      if (!l) continue;
      const name = w === 'S' ? 'shared mapping' : 'private mapping';
      // (a shared mapping of a granular device maps the unit holding EOF whole)
      const eofPage = roundUp(size, w === 'S' ? granule : PAGE);
      // Everything inside EOF (the page or unit holding EOF included: zeros past EOF there).
      const visEnd = Math.min(l.off + l.len, eofPage);
      await compareMapped(w, l.off, visEnd, name);
      // Pages wholly past EOF: a kernel read gets EFAULT (SIGBUS for a user access).
      const first = Math.max(l.off, eofPage);
      const last = l.off + l.len - PAGE;
      if (first <= last) {
        const probes = new Set([first, last, first + r.int((last - first) / PAGE + 1) * PAGE]);
        for (const p of probes) {
          const bad = kread(live[w]!.m.buffer, p - l.off, PAGE); // (mapped again if zero-window-enoent was hit)
          res.eofPagesChecked++;
          if (!bad) fail(`${name}: page at file offset 0x${p.toString(16)} is wholly past EOF (size 0x${size.toString(16)}) but readable`);
          if (bad.code !== 'EFAULT') fail(`${name}: reading the page past EOF at 0x${p.toString(16)} gave ${bad.code}, not EFAULT`);
          res.efaultProbes++;
        }
      }
    }
  };

  // ---- generation ----
  const pickLen = (room: number): number => {
    if (room <= 1) return 1;
    const x = r.next();
    let len: number;
    if (x < 0.6) len = 1 + r.int(3 * PAGE);
    else if (x < 0.9) len = 1 + r.int(256 * 1024);
    else len = 1 + r.int(HUGE + PAGE);
    if (r.chance(0.03)) len = HUGE; // a whole 2 MiB chunk, if the offset is aligned: the PMD paths
    return Math.max(1, Math.min(len, room));
  };
  const pickOff = (): number => {
    // fsx: mostly around the current size, sometimes anywhere; sometimes page/2 MiB aligned.
    const x = r.next();
    let off: number;
    if (x < 0.15) off = r.int(MAXFILE);
    else off = r.int(Math.min(MAXFILE, Math.max(size, PAGE) + 4 * PAGE));
    if (r.chance(0.15)) off = Math.floor(off / PAGE) * PAGE;
    if (r.chance(0.05)) off = Math.floor(off / HUGE) * HUGE;
    return Math.min(off, MAXFILE - 1);
  };

  const generate = (): MapOp => {
    for (;;) {
      const k = pickKind();
      switch (k) {
        case 'mapwrite': case 'mapread': {
          const m: Which = r.chance(0.5) ? 'S' : 'P';
          const l = live[m];
          if (!l) return genMapOf(m);
          // Inside the mapping and below MAXFILE; a write may reach past EOF (the file
          // is extended first, as fsx does); a read stays inside EOF.
          const hi = Math.min(l.off + l.len, k === 'mapread' ? roundUp(size, PAGE) : MAXFILE);
          if (hi <= l.off) continue;
          let off = l.off + r.int(hi - l.off);
          if (k === 'mapwrite' && size > l.off && r.chance(0.6)) off = l.off + r.int(Math.min(size, hi) - l.off);
          if (r.chance(0.1)) off = Math.floor(off / PAGE) * PAGE;
          return { k, m, off, len: pickLen(hi - off) };
        }
        case 'write': case 'read': case 'punch': {
          // now and then exactly the first 2 MiB chunk: aligned allocation, PMD windows
          const whole = r.chance(0.2);
          const off = whole ? 0 : pickOff();
          return { k, off, len: whole ? HUGE : pickLen(MAXFILE - off) };
        }
        case 'fallocate': case 'zero': {
          const whole = r.chance(0.2);
          const off = whole ? 0 : pickOff();
          return { k, off, len: whole ? HUGE : pickLen(MAXFILE - off), keep: r.chance(0.5) };
        }
        case 'truncate': {
          const x = r.next();
          let s: number;
          if (x < 0.08) s = 0; // everything goes: whole 2 MiB holes again (PMD zero windows, aligned allocation)
          else if (x < 0.45) s = r.int(Math.max(1, size)); // down
          else if (x < 0.9) s = size + 1 + r.int(Math.max(1, MAXFILE - size)); // up
          else s = r.int(MAXFILE + 1);
          if (r.chance(0.2)) s = Math.floor(s / PAGE) * PAGE;
          s = Math.min(s, MAXFILE);
          return { k, size: s };
        }
        case 'map':
          return genMapOf(r.chance(0.5) ? 'S' : 'P');
        case 'unmap': {
          const m: Which = r.chance(0.5) ? 'S' : 'P';
          if (!live[m]) continue;
          return { k, m };
        }
        case 'flush':
          return { k, fsync: r.chance(0.5) };
      }
    }
  };
  function genMap(m: Which): { off: number; len: number; faultAround: boolean; sync: boolean } {
    const x = r.next();
    let off = x < 0.5 ? 0 : x < 0.6 ? HUGE : r.int(MAXFILE / PAGE) * PAGE;
    if (m === 'S') off = Math.floor(off / granule) * granule;
    const room = (CAP - off) / PAGE;
    const y = r.next();
    let pages: number;
    if (y < 0.35) pages = Math.max(1, roundUp(size, PAGE) / PAGE - off / PAGE + r.int(4)); // to about EOF
    else if (y < 0.6) pages = room; // as far as the model goes
    else pages = 1 + r.int(room);
    pages = Math.max(1, Math.min(pages, room));
    // sync (MAP_SYNC) only for the shared mapping: the service refuses it on a private
    // one (EACCES; Linux ignores MAP_SYNC without MAP_SHARED_VALIDATE).
    return { off, len: pages * PAGE, faultAround: !r.chance(0.2), sync: m === 'S' && r.chance(0.1) };
  }
  const genMapOf = (m: Which): MapOp => ({ k: 'map', m, ...genMap(m) });

  // ---- execution ----
  const modelStore = (at: number, data: Buffer, op: number): void => {
    data.copy(bytes, at);
    owner.fill(op, at, at + data.length);
  };
  const modelZero = (from: number, to: number, op: number): void => {
    to = Math.min(to, CAP);
    if (to <= from) return;
    bytes.fill(0, from, to);
    owner.fill(-op, from, to);
  };
  const setSize = (ns: number, op: number): void => {
    if (ns < size) {
      modelZero(ns, size, op);
      resetSnaps(Math.floor(ns / PAGE) * PAGE, CAP);
      // truncate discards the private mapping's pages wholly past the new EOF (the page holding EOF stays)
      for (const p of [...priv.keys()]) if (p * PAGE >= roundUp(ns, PAGE)) dropPrivate(p);
    }
    size = ns;
  };
  const extendFor = async (end: number): Promise<void> => {
    if (end <= size) return;
    await f.truncate(end);
    setSize(end, n);
  };

  const exec = async (op: MapOp): Promise<boolean> => {
    switch (op.k) {
      case 'mapwrite': {
        const l0 = live[op.m];
        if (!l0 || op.off < l0.off || op.off + op.len > l0.off + l0.len || op.off + op.len > MAXFILE) return false;
        await extendFor(op.off + op.len); // a mapped store past EOF is SIGBUS: extend first, as fsx does
        const data = stamp(n, op.off, op.len);
        // The kernel reads the target first (a poisoned page fails the test, not the
        // process), and it is compared: what a private page copies must be known.
        // A private store: whole pages, so that what each page copies is known whole.
        const cmpFrom = op.m === 'P' ? Math.floor(op.off / PAGE) * PAGE : op.off;
        const cmpTo = op.m === 'P' ? roundUp(op.off + op.len, PAGE) : op.off + op.len;
        await compareMapped(op.m, cmpFrom, cmpTo, `${op.m === 'S' ? 'shared' : 'private'} mapping, before the store`);
        const l = live[op.m]!;
        if (op.m === 'P') {
          // copy-on-write: each page written becomes the mapping's own, as it reads now
          for (let p = Math.floor(op.off / PAGE); p * PAGE < op.off + op.len; p++) {
            if (!priv.has(p)) priv.set(p, Buffer.from((snap.get(p) ?? [pageOf(p)])[0]!));
            snap.delete(p);
            privOwner.set(p, n);
            const pg = priv.get(p)!;
            const s = Math.max(op.off, p * PAGE);
            const e = Math.min(op.off + op.len, (p + 1) * PAGE);
            data.copy(pg, s - p * PAGE, s - op.off, e - op.off);
          }
          res.privatePagesMax = Math.max(res.privatePagesMax, priv.size);
          writes.push({ n, off: op.off, len: op.len, how: 'a private mapped store' });
        } else {
          // The private mapping's copies of these pages may or may not show the store.
          const pl = live.P;
          const touched: number[] = [];
          if (pl) {
            for (let p = Math.floor(op.off / PAGE); p * PAGE < op.off + op.len; p++) {
              if (p * PAGE >= pl.off && p * PAGE < pl.off + pl.len && !priv.has(p)) touched.push(p);
            }
            for (const p of touched) if (!snap.has(p)) snap.set(p, [pageOf(p)]);
          }
          modelStore(op.off, data, n);
          for (const p of touched) snap.get(p)!.push(pageOf(p));
          writes.push({ n, off: op.off, len: op.len, how: 'a shared mapped store' });
        }
        data.copy(l.m.buffer, op.off - l.off);
        return true;
      }
      case 'mapread': {
        const l = live[op.m];
        const end = Math.min(op.off + op.len, roundUp(size, PAGE));
        if (!l || op.off < l.off || end > l.off + l.len || end <= op.off) return false;
        await compareMapped(op.m, op.off, end, `mapread ${op.m === 'S' ? 'shared' : 'private'}`);
        return true;
      }
      case 'write': {
        const data = stamp(n, op.off, op.len);
        const w = await f.write(data, op.off);
        if (w !== op.len) fail(`file.write returned ${w}, not ${op.len}`);
        modelStore(op.off, data, n);
        resetSnaps(op.off, op.off + op.len);
        if (op.off + op.len > size) size = op.off + op.len;
        writes.push({ n, off: op.off, len: op.len, how: 'file.write' });
        return true;
      }
      case 'read': {
        const buf = Buffer.alloc(op.len, 0xee);
        const got = await f.read(buf, op.off);
        const want = Math.max(0, Math.min(op.len, size - op.off));
        if (got !== want) fail(`file.read returned ${got}, model ${want}`);
        if (got > 0 && Buffer.compare(buf.subarray(0, got), bytes.subarray(op.off, op.off + got)) !== 0) {
          describeDiff('file.read', buf.subarray(0, got), bytes.subarray(op.off, op.off + got), op.off, false);
        }
        return true;
      }
      case 'truncate':
        await f.truncate(op.size);
        setSize(op.size, n);
        return true;
      case 'fallocate':
        await f.fallocate(op.off, op.len, { keepSize: op.keep });
        if (!op.keep && op.off + op.len > size) size = op.off + op.len;
        return true;
      case 'punch':
        await f.punchHole(op.off, op.len);
        modelZero(op.off, Math.min(op.off + op.len, size), n);
        resetSnaps(op.off, op.off + op.len);
        return true;
      case 'zero':
        await f.zeroRange(op.off, op.len, { keepSize: op.keep });
        modelZero(op.off, Math.min(op.off + op.len, size), n);
        resetSnaps(op.off, op.off + op.len);
        if (!op.keep && op.off + op.len > size) size = op.off + op.len;
        return true;
      case 'map': {
        if (op.off % PAGE !== 0 || op.len % PAGE !== 0 || op.off + op.len > CAP) return false;
        if (op.m === 'S' && op.off % granule !== 0) return false; // EINVAL on a granular device
        const old = live[op.m];
        if (old) {
          await old.m.unmap();
          live[op.m] = null;
        }
        forgetMapping(op.m);
        await mapLive(op.m, op.off, op.len, op.faultAround, op.sync);
        return true;
      }
      case 'unmap': {
        const l = live[op.m];
        if (!l) return false;
        await l.m.unmap();
        live[op.m] = null;
        forgetMapping(op.m);
        let threw = false;
        try { void l.m.buffer; } catch { threw = true; }
        if (!threw || l.m.mapped) fail('an unmapped mapping still hands out its buffer');
        return true;
      }
      case 'flush': {
        const l = live.S;
        if (l) await l.m.flush();
        if (live.P) await live.P.m.flush();
        if (op.fsync) await f.fsync();
        return true;
      }
    }
  };

  try {
    const count = o.script ? o.script.length : o.ops;
    for (let i = 0; i < count; i++) {
      n = i + 1;
      const op = o.script ? o.script[i]! : generate();
      const line = fmtOp(n, op);
      o.log.push(line);
      if (logFd >= 0) fs.writeSync(logFd, line + '\n');
      o.trace?.push(op);
      const t0 = performance.now();
      const done = await exec(op);
      const t1 = performance.now();
      if (!done) {
        o.trace?.pop();
        res.skipped++;
        o.log[o.log.length - 1] += ' (skipped: not possible in this state)';
        continue;
      }
      res.ops++;
      await check();
      if (o.profile) {
        const e = (o.profile[op.k] ??= { n: 0, exec: 0, check: 0 });
        e.n++; e.exec += t1 - t0; e.check += performance.now() - t1;
      }
    }
    for (const w of ['S', 'P'] as const) {
      await live[w]?.m.unmap();
      live[w] = null;
    }
    await f.close();
    await o.pool.unlink(fileName);
  } finally {
    fs.closeSync(sfd);
    if (logFd >= 0) fs.closeSync(logFd);
  }
  return res;
}
