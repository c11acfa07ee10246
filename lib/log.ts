// pino set-up: one root logger, a child per layer. Nothing is logged per fault at
// info; hot-path debug logging is guarded with isLevelEnabled by the caller.
import pino, { type Logger } from 'pino';

let root: Logger | undefined;

export interface LoggerOptions {
  level?: string;
  /** destination file descriptor (default stderr for libraries, the daemon passes stdout) */
  fd?: number;
  /** human-readable lines (pino-pretty) instead of JSON: the daemon does this when stdout is a TTY */
  pretty?: boolean;
  name?: string;
}

/** Replace the root logger (the daemon does this at start-up). */
export function configureLogger(opts: LoggerOptions = {}): Logger {
  const options = { name: opts.name ?? 'daxmap', level: opts.level ?? process.env.DAXMAP_LOG_LEVEL ?? 'warn', base: { pid: process.pid } };
  if (opts.pretty) {
    // pino-pretty in-process (no transport worker), writing to the same descriptor.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pretty = require('pino-pretty') as (o: object) => NodeJS.WritableStream;
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
