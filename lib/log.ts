// pino set-up: one root logger, a child per layer. Nothing is logged per fault at
// info; hot-path debug logging is guarded with isLevelEnabled by the caller.
import pino, { type Logger } from 'pino';

let root: Logger | undefined;

export interface LoggerOptions {
  level?: string;
  /** destination file descriptor (default stderr for libraries, the daemon passes stdout) */
  fd?: number;
}

/** Replace the root logger (the daemon does this at start-up). */
export function configureLogger(opts: LoggerOptions = {}): Logger {
  root = pino(
    { name: 'daxmap', level: opts.level ?? process.env.DAXMAP_LOG_LEVEL ?? 'warn', base: { pid: process.pid } },
    pino.destination({ fd: opts.fd ?? 2, sync: true }),
  );
  return root;
}

export function logger(layer?: string): Logger {
  if (root === undefined) configureLogger();
  const r = root as Logger;
  return layer === undefined ? r : r.child({ layer });
}
