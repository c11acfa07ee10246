// pino set-up: one root logger, a child per layer. Nothing is logged per fault at
// info; hot-path debug logging is guarded with isLevelEnabled by the caller.
// pino-pretty is not a dependency of the package: the daemon pretty-prints on a
// terminal when it is installed, and writes JSON lines otherwise.
import pino, { type Logger } from 'pino';
import { daxError } from './errors';

let root: Logger | undefined;

/** A logger of the application's (pino, or anything with pino's level methods, `level` and `child`), or a level name for daxmap's own. */
export type LoggerOption = Logger | LevelName;
export type LevelName = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
const LEVELS: readonly string[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export interface LoggerOptions {
  level?: string;
  /** destination file descriptor (default stderr for libraries, the daemon passes stdout) */
  fd?: number;
  /** destination of JSON lines instead of a descriptor (a service worker relays its lines to the application's logger) */
  write?: (line: string) => void;
  /** human-readable lines (pino-pretty, when installed) instead of JSON: the daemon does this when stdout is a TTY */
  pretty?: boolean;
  name?: string;
}

function loadPretty(): ((o: object) => NodeJS.WritableStream) | null {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('pino-pretty') as (o: object) => NodeJS.WritableStream;
  } catch {
    return null;
  }
}

/** Replace the root logger (the daemon and the service worker do this at start-up, before the layers make their children). */
export function configureLogger(opts: LoggerOptions = {}): Logger {
  const options = { name: opts.name ?? 'daxmap', level: opts.level ?? process.env.DAXMAP_LOG_LEVEL ?? 'warn', base: { pid: process.pid } };
  const pretty = opts.pretty && opts.write === undefined ? loadPretty() : null;
  if (opts.write !== undefined) {
    const write = opts.write;
    root = pino(options, { write: (line: string) => write(line) });
  } else if (pretty !== null) {
    // pino-pretty in-process (no transport worker), writing to the same descriptor.
    root = pino(options, pretty({ destination: opts.fd ?? 2, sync: true, colorize: true, translateTime: 'SYS:HH:MM:ss.l' }) as never);
  } else {
    root = pino(options, pino.destination({ fd: opts.fd ?? 2, sync: true }));
  }
  return root;
}

export function logger(layer?: string): Logger {
  if (root === undefined) configureLogger();
  const r = root as Logger;
  return layer === undefined ? r : r.child({ layer });
}

function isLogger(v: unknown): v is Logger {
  if (v === null || typeof v !== 'object') return false;
  const l = v as Record<string, unknown>;
  return typeof l.level === 'string' && typeof l.child === 'function' && LEVELS.slice(0, 6).every((k) => typeof l[k] === 'function');
}

/** Checks a `logger` option: undefined, a level name, or a logger. EINVAL otherwise. */
export function checkLoggerOption(v: unknown): LoggerOption | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'string' && LEVELS.includes(v)) return v as LevelName;
  if (isLogger(v)) return v;
  throw daxError('EINVAL', `option logger must be a pino logger or one of the levels ${LEVELS.join(', ')}, got ${typeof v === 'string' ? `'${v}'` : typeof v}`);
}

/** The logger a Pool uses for `opt`: the application's (a child for `layer`), or daxmap's own at that level. */
export function loggerFor(opt: LoggerOption | undefined, layer: string): Logger {
  if (opt === undefined) return logger(layer);
  if (typeof opt === 'string') return logger(layer).child({}, { level: opt });
  return opt.child({ layer });
}

/** The level a logger option asks of a service worker's own logger. */
export function levelOf(opt: LoggerOption | undefined): string | undefined {
  if (opt === undefined) return undefined;
  return typeof opt === 'string' ? opt : opt.level;
}

/**
 * Logs one JSON line of another thread's pino logger through `to`, at its level
 * (the service worker's lines reach the application's logger this way). A line that
 * is not pino's JSON is logged as a message at warn.
 */
export function relayLine(to: Logger, line: string): void {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    to.warn(line.trimEnd());
    return;
  }
  const { level, msg, time: _t, pid: _p, hostname: _h, name: _n, ...fields } = rec;
  const label = typeof level === 'number' ? pino.levels.labels[level] : undefined;
  const method = label !== undefined && LEVELS.slice(0, 6).includes(label) ? label as Exclude<LevelName, 'silent'> : 'warn';
  to[method](fields, typeof msg === 'string' ? msg : '');
}
