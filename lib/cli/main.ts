// The `daxmap` command: mkfs, fsck, ls and stat of a pool device; ls and stat also
// of the pool a running daxmapd serves (--socket). One rule for the exit status of
// every command (EXIT_STATUS below, in the help and the README): 0 done; 1 the device
// was read and is not a sound pool (fsck found problems, or EBADF: not a pool, or
// damaged); 2 nothing was examined: a usage error, or the device or daemon could not
// be reached (missing, a directory or other non-device, permission, in use, no daemon).

import { isDaxError } from '../errors';
import { PoolFs, DEFAULT_POOL_SIZE, fsckDevice, type FsckReport } from '../pool/index';
import { Pool as ClientPool } from '../client/pool';
import type { FaultStatsSnapshot } from '../fault/stats';
import { ProgressBar, type ProgressOut } from './progress';
import { formatSize, parseSize } from '../util/units';
import { parseCommandLine, UsageError } from '../util/cli-args';
import { LATENCY_BOUNDS_US } from '../fault/stats';

export interface Io {
  stdout: { write(s: string): unknown };
  stderr: ProgressOut;
}

interface OptSpec { [name: string]: 'flag' | 'value' }

interface Command {
  summary: string;
  usage: string;
  help: string;
  opts: OptSpec;
  run(args: string[], opts: Record<string, string | true>, io: Io): Promise<number>;
}

const EXIT_STATUS = `Exit status (every command):
  0  done (fsck: the pool is clean)
  1  the device was read and is not a sound pool: fsck found problems, or it is
     not a daxmap pool or is damaged (EBADF)
  2  nothing was examined: a usage error, or the device or daemon could not be
     reached (missing, a directory or other non-device, permission, in use, no
     daxmapd at the socket)`;

/** The exit status of a command that failed with `e` (see EXIT_STATUS). */
export function exitStatus(e: unknown): 1 | 2 {
  if (e instanceof UsageError) return 2;
  return (e as { code?: unknown } | null)?.code === 'EBADF' ? 1 : 2;
}

const COMMON = `
Options for every command:
  -h, --help     show this help`;

const commands: Record<string, Command> = {
  mkfs: {
    summary: 'format a device (a /dev/dax device, or a regular or tmpfs file, created if missing) as an empty pool',
    usage: 'daxmap mkfs <device> [--size SIZE] [--force]',
    help: `  --size SIZE    size of a device file to create (default ${formatSize(DEFAULT_POOL_SIZE)}; 4096, 64K, 512M, 1G, 2GiB ...)
  --force        format over an existing pool (everything in it is lost)`,
    opts: { size: 'value', force: 'flag' },
    async run(args, opts, io) {
      const dev = one(args, 'device');
      const size = typeof opts['size'] === 'string' ? parseSize(opts['size']) : undefined;
      const bar = new ProgressBar(io.stderr);
      bar.update('format', 0, 3);
      const pool = await PoolFs.create(dev, { ...(size === undefined ? {} : { size }), force: opts['force'] === true });
      bar.update('format', 2, 3);
      const fs = await pool.statfs();
      const info = await pool.info();
      await pool.close();
      bar.update('format', 3, 3);
      bar.done();
      io.stdout.write(`formatted ${dev}: ${formatSize(info.deviceBytes)} ${info.kind} device (${formatSize(info.granularity)} granular), ${formatSize(fs.size)} for data in ${fs.blockSize}-byte blocks, up to ${info.maxFiles} files, uuid ${info.uuid}\n`);
      return 0;
    },
  },
  fsck: {
    summary: 'check a pool: superblocks, checkpoint, log checksums, block ownership, free map, sizes',
    usage: 'daxmap fsck <device> [--json]',
    help: `  --json         print the report as JSON
Problems found are listed one per line (exit status 1).`,
    opts: { json: 'flag' },
    async run(args, opts, io) {
      const dev = one(args, 'device');
      const bar = new ProgressBar(io.stderr);
      let rep: FsckReport;
      try {
        rep = fsckDevice(dev, (phase, done, total) => bar.update(phase, done, total));
      } catch (e) {
        if (isDaxError(e, 'EBUSY')) {
          throw Object.assign(new Error(`EBUSY: '${dev}' is in use by a running service; stop it (or ask daxmapd) before checking`), { code: 'EBUSY' });
        }
        throw e;
      } finally {
        bar.done();
      }
      if (opts['json']) {
        io.stdout.write(`${JSON.stringify({ device: dev, ...rep }, null, 2)}\n`);
      } else {
        io.stdout.write(`fsck ${dev}\n`);
        for (const l of rep.info) io.stdout.write(`  ${l}\n`);
        for (const w of rep.warnings) io.stdout.write(`  warning: ${w}\n`);
        if (rep.clean) io.stdout.write('clean\n');
        else {
          io.stdout.write(`${rep.errors.length} problem${rep.errors.length === 1 ? '' : 's'}:\n`);
          for (const e of rep.errors) io.stdout.write(`  error: ${e}\n`);
        }
      }
      return rep.clean ? 0 : 1;
    },
  },
  ls: {
    summary: 'list the files of a pool: name, size, allocated bytes, extent count',
    usage: 'daxmap ls <device> | --socket PATH [--json] [--bytes]',
    help: `  --socket PATH  ask the daxmapd listening on PATH instead of opening the device
                 (the device is in use while the daemon runs); files you may not
                 read are listed without figures
  --bytes        sizes in bytes instead of K/M/G
  --json         one JSON object per file
Extents are counted as \`stat\` lists them: runs of written or unwritten blocks.`,
    opts: { json: 'flag', bytes: 'flag', socket: 'value' },
    async run(args, opts, io) {
      let rows: LsRow[];
      if (typeof opts['socket'] === 'string') {
        if (args.length !== 0) throw new UsageError('give either <device> or --socket PATH, not both');
        const pool = await ClientPool.connect(opts['socket']);
        try {
          rows = [];
          for (const name of await pool.list()) {
            try {
              const f = await pool.openFile(name);
              try {
                const st = await f.stat();
                rows.push({ name, size: st.size, allocated: st.allocated, extents: st.extents.length });
              } finally {
                await f.close();
              }
            } catch (e) {
              const code = (e as { code?: string }).code;
              if (code !== 'EACCES' && code !== 'ENOENT') throw e;
              if (code === 'EACCES') rows.push({ name, error: code }); // ENOENT: removed meanwhile
            }
          }
        } finally {
          await pool.close();
        }
      } else {
        const dev = one(args, 'device');
        const pool = await PoolFs.open(dev, { cleanTarget: 0 }); // a look: no zeroing of free space
        try {
          rows = [];
          for (const name of await pool.list()) {
            const f = await pool.openFile(name);
            const st = await f.stat();
            rows.push({ name, size: st.size, allocated: st.allocated, extents: st.extents.length });
          }
        } finally {
          await pool.close();
        }
      }
      if (opts['json']) {
        for (const r of rows) io.stdout.write(`${JSON.stringify(r)}\n`);
      } else {
        const sz = (n: number | undefined): string => (n === undefined ? '-' : opts['bytes'] ? String(n) : formatSize(n));
        const table = [['NAME', 'SIZE', 'ALLOCATED', 'EXTENTS'], ...rows.map((r) => [r.name, sz(r.size), sz(r.allocated), r.extents === undefined ? '-' : String(r.extents)])];
        writeTable(io, table);
      }
      return 0;
    },
  },
  ping: {
    summary: 'ask a daxmapd whether it answers (for scripts and service checks)',
    usage: 'daxmap ping --socket PATH [--wait SECONDS]',
    help: `  --socket PATH    the daemon's socket
  --wait SECONDS   keep trying until it answers or SECONDS have passed (default 0:
                   one try)
Exit status 0 once the daemon answered (connected, hello and its device
answered), 2 with the reason otherwise.`,
    opts: { socket: 'value', wait: 'value' },
    async run(args, opts, io) {
      if (args.length !== 0 || typeof opts['socket'] !== 'string') throw new UsageError('expected --socket PATH');
      const wait = opts['wait'] === undefined ? 0 : Number(opts['wait']);
      if (!Number.isFinite(wait) || wait < 0) throw new UsageError(`--wait wants a number of seconds, got '${String(opts['wait'])}'`);
      const socket = opts['socket'];
      const end = Date.now() + wait * 1000;
      for (;;) {
        try {
          const pool = await ClientPool.connect(socket, { timeoutMs: Math.max(1000, end - Date.now()) });
          try {
            const fs = await pool.statfs();
            io.stdout.write(`daxmapd at ${socket} answers: device ${pool.path}, ${formatSize(fs.free)} free of ${formatSize(fs.size)}\n`);
          } finally {
            await pool.close();
          }
          return 0;
        } catch (e) {
          const code = (e as { code?: string }).code;
          if (Date.now() >= end || code === 'EACCES') {
            throw Object.assign(new Error(`no answer from a daxmapd at ${socket}${wait > 0 ? ` within ${wait} s` : ''}: ${(e as Error).message}`), { code: code ?? 'ECONNREFUSED' });
          }
          await new Promise((res) => setTimeout(res, Math.min(100, Math.max(0, end - Date.now()))));
        }
      }
    },
  },
  stat: {
    summary: 'show a pool (geometry, space, log) or, with a file name, one file and its extents',
    usage: 'daxmap stat <device> [file] | --socket PATH [file] [--json]',
    help: `  --socket PATH  ask the daxmapd listening on PATH: the pool's space, and fault
                 counts by kind with latency percentiles, in total and per file
                 (files that took faults since the daemon started); with a file
                 name, that file, its extents and its faults
  --json         print JSON`,
    opts: { json: 'flag', socket: 'value' },
    async run(args, opts, io) {
      if (typeof opts['socket'] === 'string') {
        if (args.length > 1) throw new UsageError('expected --socket PATH [file]');
        return statDaemon(opts['socket'], args[0], opts['json'] === true, io);
      }
      if (args.length < 1 || args.length > 2) throw new UsageError('expected <device> [file]');
      const pool = await PoolFs.open(args[0]!, { cleanTarget: 0 }); // a look: no zeroing of free space
      try {
        let out: Record<string, unknown>;
        if (args[1] !== undefined) {
          const f = await pool.openFile(args[1]);
          out = { ...(await f.stat()) };
        } else {
          const fs = await pool.statfs();
          const i = await pool.info();
          out = {
            device: i.device, kind: i.kind, granularity: i.granularity, uuid: i.uuid, formatVersion: i.formatVersion,
            deviceBytes: i.deviceBytes, blockSize: fs.blockSize, dataBytes: fs.size, freeBytes: fs.free,
            usedBytes: fs.size - fs.free, files: i.files, maxFiles: i.maxFiles,
            logBytesUsed: i.logBytesUsed, logBytes: i.logBytes, checkpointGeneration: i.checkpointGeneration,
            replayedRecords: i.replayedRecords, created: new Date(i.createdMs).toISOString(),
          };
        }
        if (opts['json']) io.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
        else for (const [k, v] of Object.entries(out)) {
          if (k === 'extents') {
            io.stdout.write('extents:\n');
            for (const e of v as { offset: number; length: number; state: string }[]) io.stdout.write(`  ${e.offset}+${e.length} ${e.state}\n`);
          } else {
            io.stdout.write(`${k}: ${typeof v === 'number' && /Bytes$|^size$|^allocated$|^granularity$/.test(k) ? `${v} (${formatSize(v)})` : String(v)}\n`);
          }
        }
      } finally {
        await pool.close();
      }
      return 0;
    },
  },
};

function one(args: string[], what: string): string {
  if (args.length !== 1) throw new UsageError(`expected exactly one <${what}>`);
  return args[0]!;
}

interface LsRow {
  name: string;
  size?: number;
  allocated?: number;
  extents?: number;
  /** the file could not be read (EACCES through daxmapd) */
  error?: string;
}

/** Left-aligned first column, right-aligned numbers. */
function writeTable(io: Io, table: string[][]): void {
  const cols = table[0]!.length;
  const w = Array.from({ length: cols }, (_x, c) => Math.max(...table.map((row) => row[c]!.length)));
  for (const row of table) io.stdout.write(`${row.map((cell, c) => (c === 0 ? cell.padEnd(w[c]!) : cell.padStart(w[c]!))).join('  ').trimEnd()}\n`);
}

/** Fault counters; `installedWindows` only for the pool (it is per client process, not per file). */
function faultLines(s: FaultStatsSnapshot, indent: string, pool: boolean): string[] {
  const l = s.latencyUs;
  return [
    `${indent}faults: ${s.faults} (read ${s.read}, write ${s.write}, write-protect ${s.writeProtect})`,
    `${indent}  by extent: hole ${s.hole}, unwritten ${s.unwritten}, written ${s.written}, beyond EOF ${s.beyondEof}`,
    `${indent}  by window: 2 MiB ${s.pmd}, 4 KiB ${s.pte}`,
    `${indent}  answers: zero page ${s.zeroPage}, copy ${s.copy}, SIGBUS ${s.sigbus}, spurious ${s.spurious}, raced ${s.raced}`,
    `${indent}  fallback 2 MiB to 4 KiB ${s.fallback}, evictions ${s.evictions}, revokes ${s.revokes}, recovered ${s.recovered}${pool ? `, installed windows ${s.installedWindows}` : ''}`,
    `${indent}  decided at map ${s.decided} (written pieces installed ahead or answered by the clients' agents; those faults are not counted here)`,
    `${indent}latency µs: p50 ${Math.round(l.p50)}, p90 ${Math.round(l.p90)}, p99 ${Math.round(l.p99)}, max ${Math.round(l.max)} (${l.count} faults)`,
    `${indent}  by bucket: ${latencyBuckets(s)}`,
  ];
}

/** The non-empty latency buckets, "≤50µs 3, ≤60µs 12, >1s 1": the buckets of daxmapd's metrics histogram. */
function latencyBuckets(s: FaultStatsSnapshot): string {
  const h = s.latencyHistogram;
  const us = (n: number): string => (n >= 1e6 ? `${n / 1e6}s` : n >= 1000 ? `${n / 1000}ms` : `${n}µs`);
  const parts = h.counts.map((n, i) => (n === 0 ? '' : `${i < h.boundsUs.length ? `≤${us(h.boundsUs[i]!)}` : `>${us(LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.length - 1]!)}`} ${n}`));
  return parts.filter(Boolean).join(', ') || 'none';
}

/** `daxmap stat --socket PATH [file]`: what a running daxmapd says. */
async function statDaemon(socket: string, file: string | undefined, json: boolean, io: Io): Promise<number> {
  const pool = await ClientPool.connect(socket);
  try {
    const byFile = await pool.request<{ file: string; stats: FaultStatsSnapshot }[]>('statsByFile');
    if (file !== undefined) {
      const f = await pool.openFile(file);
      let st;
      try {
        st = await f.stat();
      } finally {
        await f.close();
      }
      const faults = byFile.find((x) => x.file === file)?.stats ?? null;
      if (json) {
        io.stdout.write(`${JSON.stringify({ ...st, faults }, null, 2)}\n`);
        return 0;
      }
      const s = st as typeof st & { name?: string; mode?: number; uid?: number; gid?: number; mtimeMs?: number };
      io.stdout.write(`file: ${file}\n`);
      io.stdout.write(`size: ${st.size} (${formatSize(st.size)})\n`);
      io.stdout.write(`allocated: ${st.allocated} (${formatSize(st.allocated)})\n`);
      if (s.mode !== undefined) io.stdout.write(`mode: ${s.mode.toString(8).padStart(4, '0')}, uid ${s.uid}, gid ${s.gid}\n`);
      if (s.mtimeMs !== undefined) io.stdout.write(`modified: ${new Date(s.mtimeMs).toISOString()}\n`);
      io.stdout.write('extents:\n');
      for (const e of st.extents) io.stdout.write(`  ${e.offset}+${e.length} ${e.state}\n`);
      if (faults) for (const l of faultLines(faults, '', false)) io.stdout.write(`${l}\n`);
      else io.stdout.write('faults: none since daxmapd started\n');
      return 0;
    }
    const [fs, faults, names] = await Promise.all([pool.statfs(), pool.stats(), pool.list()]);
    if (json) {
      io.stdout.write(`${JSON.stringify({
        socket, device: pool.path, dataBytes: fs.size, freeBytes: fs.free, usedBytes: fs.size - fs.free, blockSize: fs.blockSize,
        reservedBytes: reservedOf(fs), ...(fs.clean ? { clean: fs.clean } : {}), files: names.length, faults, byFile,
      }, null, 2)}\n`);
      return 0;
    }
    const bytes = (n: number): string => `${n} (${formatSize(n)})`;
    io.stdout.write(`daemon: ${socket}\ndevice: ${pool.path}\n`);
    io.stdout.write(`dataBytes: ${bytes(fs.size)}\nfreeBytes: ${bytes(fs.free)}\nusedBytes: ${bytes(fs.size - fs.free)}\nblockSize: ${fs.blockSize}\nfiles: ${names.length}\n`);
    // the reserve of pre-zeroed blocks (docs/pool.md, "Reserve"): its stock counts in freeBytes
    io.stdout.write(`reservedBytes: ${bytes(reservedOf(fs))}\n`);
    // free space kept zeroed in the background (docs/pool.md, "Clean free space")
    const c = fs.clean;
    if (c) {
      io.stdout.write(`cleanFreeBytes: ${bytes(c.cleanFree)} (target ${formatSize(c.target)}, zeroing ${formatSize(c.zeroing)})\n`);
      io.stdout.write(`  since start: zeroed ahead ${formatSize(c.zeroedAhead)} in ${c.jobs} jobs (${Math.round(c.busyMs)} ms), taken clean ${formatSize(c.cleanTaken)}, zeroed on allocation ${formatSize(c.zeroedOnPath)}\n`);
    }
    for (const l of faultLines(faults, '', true)) io.stdout.write(`${l}\n`);
    if (byFile.length > 0) {
      io.stdout.write('per file:\n');
      const table = [['  FILE', 'FAULTS', 'READ', 'WRITE', 'WP', '2M', '4K', 'ZERO', 'COPY', 'SIGBUS', 'P50us', 'P99us', 'MAXus']];
      for (const { file: name, stats: x } of byFile) {
        table.push([`  ${name}`, ...[x.faults, x.read, x.write, x.writeProtect, x.pmd, x.pte, x.zeroPage, x.copy, x.sigbus, x.latencyUs.p50, x.latencyUs.p99, x.latencyUs.max].map((n) => String(Math.round(n)))]);
      }
      writeTable(io, table);
    }
    return 0;
  } finally {
    await pool.close();
  }
}

/** Bytes in the pool's reserve of pre-zeroed blocks (0 from a daemon that does not report it). */
function reservedOf(fs: object): number {
  const r = (fs as { reserved?: unknown }).reserved;
  return typeof r === 'number' ? r : 0;
}

function mainHelp(): string {
  const lines = ['daxmap: tools for daxmap pools (DAX-like file mappings for Node.js)', '', 'Usage: daxmap <command> [options]', '', 'Commands:'];
  for (const [name, c] of Object.entries(commands)) lines.push(`  ${name.padEnd(6)} ${c.summary}`);
  lines.push('', 'Run `daxmap <command> --help` for the options of a command.', '', EXIT_STATUS, '');
  return lines.join('\n');
}

function commandHelp(c: Command): string {
  return `Usage: ${c.usage}\n\n${c.summary[0]!.toUpperCase()}${c.summary.slice(1)}.\n\n${c.help}\n${COMMON.trimStart()}\n\n${EXIT_STATUS}\n`;
}

function parse(c: Command, argv: string[]): { args: string[]; opts: Record<string, string | true> } {
  const spec = Object.fromEntries(Object.entries(c.opts).map(([name, kind]) => [name, { type: kind === 'flag' ? 'boolean' as const : 'string' as const }]));
  const { values, positionals } = parseCommandLine(argv, spec, true);
  const opts: Record<string, string | true> = {};
  for (const [k, v] of Object.entries(values)) if (v !== undefined && v !== false) opts[k] = v;
  return { args: positionals, opts };
}

/** Run the CLI; returns the exit code (never throws). */
export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    io.stdout.write(mainHelp());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V') {
    io.stdout.write('daxmap 0.1.0\n');
    return 0;
  }
  const c = commands[name];
  if (!c) {
    io.stderr.write(`daxmap: unknown command '${name}'\n\n${mainHelp()}`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    io.stdout.write(commandHelp(c));
    return 0;
  }
  try {
    const { args, opts } = parse(c, rest);
    return await c.run(args, opts, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr.write(`daxmap ${name}: ${e.message}\nUsage: ${c.usage}\n`);
      return 2;
    }
    io.stderr.write(`daxmap ${name}: ${(e as Error).message}\n`);
    return exitStatus(e);
  }
}

/** Entry point for bin/daxmap. */
export function run(): void {
  void main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
