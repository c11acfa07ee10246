// The daxmapd command line: parse options, start the daemon, stop cleanly on SIGTERM
// or SIGINT (every in-flight fault answered, the pool flushed, exit 0).
import path from 'node:path';
import { configureLogger } from '../log';
import { parseSize } from '../util/units';
import { isDaxError } from '../errors';
import { parseCommandLine, UsageError } from '../util/cli-args';
import { notifySystemd } from './notify';
import { backgroundNiceFromEnv, lowerBackgroundThreads } from './priority';
// Loaded only once the logger is configured: modules that take their logger when
// they load (the service, the pool) must get the daemon's (stdout, --log-level).
import type { Daemon } from './daemon';

const HELP = `Usage: daxmapd [options]

Serve a daxmap pool to client processes over a UNIX socket (Pool.connect).

Options:
  --device PATH      the pool device: a tmpfs or regular file, or /dev/daxX.Y
                     (default /dev/shm/daxmap.pool; created and formatted when missing;
                     a relative path is resolved against the current directory)
  --size SIZE        size of a device created here (default 1G; 512M, 2GiB, ...)
  --socket PATH      the listening socket (default $XDG_RUNTIME_DIR/daxmap.sock,
                     else /tmp/daxmap.sock); created mode 0660
  --socket-mode MODE octal mode of the socket file (default 660)
  --log-level LEVEL  fatal, error, warn, info (default), debug, trace, silent
  --metrics HOST:PORT  serve Prometheus metrics over HTTP at /metrics (off by
                     default; 127.0.0.1:9464, [::1]:9464, :9464 for every interface)
  -h, --help         this text

Readiness: once the socket accepts clients, READY=1 is sent to $NOTIFY_SOCKET
when set (systemd Type=notify); \`daxmap ping --socket PATH\` exits 0 once it answers.
Exit status: 0 after a clean stop, 1 if it could not start, 2 for bad options.

Signals: SIGTERM or SIGINT stop the daemon: no new clients, every mapping revoked
(client threads touching them get SIGBUS, never hang), the pool flushed, exit 0.
`;

export interface Args {
  device: string;
  socket: string;
  size: number;
  socketMode: number;
  logLevel: string;
  /** HOST:PORT of the Prometheus endpoint; null: none */
  metrics: { host: string; port: number } | null;
  help: boolean;
}

export function defaultSocket(): string {
  const run = process.env.XDG_RUNTIME_DIR;
  return run ? path.join(run, 'daxmap.sock') : '/tmp/daxmap.sock';
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** HOST:PORT, [V6]:PORT or :PORT (all interfaces); port 0 takes a free one. */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`--metrics wants HOST:PORT (127.0.0.1:9464, [::1]:9464, :9464), got '${text}'`);
  return { host: m[1] ?? (m[2] || '::'), port };
}

export function parseArgs(argv: string[]): Args {
  const { values: v } = parseCommandLine(argv, {
    device: { type: 'string', default: '/dev/shm/daxmap.pool' },
    socket: { type: 'string', default: defaultSocket() },
    size: { type: 'string' },
    'socket-mode': { type: 'string', default: '660' },
    'log-level': { type: 'string', default: 'info' },
    metrics: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  }, false);
  const str = (k: string): string => v[k] as string;
  const mode = str('socket-mode');
  if (!/^[0-7]{3,4}$/.test(mode)) throw new UsageError(`--socket-mode wants an octal mode like 660, got '${mode}'`);
  const level = str('log-level');
  if (!LOG_LEVELS.includes(level)) throw new UsageError(`unknown log level '${level}'`);
  return {
    device: str('device'),
    socket: str('socket'),
    size: v['size'] === undefined ? 1 << 30 : parseSize(str('size')),
    socketMode: parseInt(mode, 8),
    logLevel: level,
    metrics: v['metrics'] === undefined ? null : parseHostPort(str('metrics')),
    help: v['help'] === true,
  };
}

/**
 * `startupThreads`: the thread ids the process had before any of daxmap's modules
 * loaded (bin/daxmapd lists them first): Node's and V8's own, lowered to
 * DAXMAP_BACKGROUND_NICE. Without it nothing is lowered.
 */
export async function run(argv = process.argv.slice(2), startupThreads: readonly number[] = []): Promise<void> {
  let args: Args;
  try {
    args = parseArgs(argv);
  } catch (err) {
    process.stderr.write(`daxmapd: ${(err as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  if (args.help) {
    process.stdout.write(HELP);
    return;
  }
  const nice = backgroundNiceFromEnv();
  const lowered = lowerBackgroundThreads(nice, startupThreads);
  const log = configureLogger({ name: 'daxmapd', level: args.logLevel, fd: 1, pretty: process.stdout.isTTY === true });
  if (lowered > 0) log.debug({ threads: lowered, nice }, 'V8\'s background threads lowered');
  let daemon: Daemon;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { Daemon } = require('./daemon') as typeof import('./daemon');
    daemon = await Daemon.start({ device: args.device, socket: args.socket, size: args.size, socketMode: args.socketMode, metrics: args.metrics, log });
  } catch (err) {
    log.fatal({ err: isDaxError(err) ? { code: err.code, message: err.message } : err }, 'daxmapd could not start');
    process.exitCode = 1;
    return;
  }
  try {
    if (notifySystemd('READY=1', `MAINPID=${process.pid}`, 'STATUS=serving')) log.info('readiness sent to $NOTIFY_SOCKET');
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'could not notify $NOTIFY_SOCKET of readiness');
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    try {
      notifySystemd('STOPPING=1');
    } catch {
      // the service manager is gone: nothing to tell
    }
    daemon.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
