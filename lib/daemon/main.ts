// The daxmapd command line: parse options, start the daemon, stop cleanly on SIGTERM
// or SIGINT (every in-flight fault answered, the pool flushed, exit 0).
import path from 'node:path';
import { configureLogger } from '../log';
import { parseSize } from '../util/units';
import { isDaxError } from '../errors';
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
  --log-level LEVEL  fatal, error, warn, info (default), debug, trace
  -h, --help         this text

Signals: SIGTERM or SIGINT stop the daemon: no new clients, every mapping revoked
(client threads touching them get SIGBUS, never hang), the pool flushed, exit 0.
`;

export interface Args {
  device: string;
  socket: string;
  size: number;
  socketMode: number;
  logLevel: string;
  help: boolean;
}

export function defaultSocket(): string {
  const run = process.env.XDG_RUNTIME_DIR;
  return run ? path.join(run, 'daxmap.sock') : '/tmp/daxmap.sock';
}

export function parseArgs(argv: string[]): Args {
  const a: Args = { device: '/dev/shm/daxmap.pool', socket: defaultSocket(), size: 1 << 30, socketMode: 0o660, logLevel: 'info', help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--device': a.device = value(); break;
      case '--socket': a.socket = value(); break;
      case '--size': a.size = parseSize(value()); break;
      case '--socket-mode': {
        const v = value();
        if (!/^[0-7]{3,4}$/.test(v)) throw new Error(`--socket-mode wants an octal mode like 660, got '${v}'`);
        a.socketMode = parseInt(v, 8);
        break;
      }
      case '--log-level': {
        const v = value();
        if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(v)) throw new Error(`unknown log level '${v}'`);
        a.logLevel = v;
        break;
      }
      case '-h': case '--help': a.help = true; break;
      default: throw new Error(`unknown option '${arg}' (see --help)`);
    }
  }
  return a;
}

export async function run(argv = process.argv.slice(2)): Promise<void> {
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
  const log = configureLogger({ name: 'daxmapd', level: args.logLevel, fd: 1, pretty: process.stdout.isTTY === true });
  let daemon: Daemon;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { Daemon } = require('./daemon') as typeof import('./daemon');
    daemon = await Daemon.start({ device: args.device, socket: args.socket, size: args.size, socketMode: args.socketMode, log });
  } catch (err) {
    log.fatal({ err: isDaxError(err) ? { code: err.code, message: err.message } : err }, 'daxmapd could not start');
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
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
