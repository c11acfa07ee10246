// Messages between a Pool (client) and its service, over a MessagePort (embedded
// mode) or a daxmapd control connection (./control.ts). A request names an operation
// (./ops.ts) and carries its arguments; every request gets exactly one response.
// The service may also send notices (the pool was closed).

export interface Request {
  id: number;
  op: string;
  args: unknown[];
}

/** An error on the wire: its code and message, and the system error's fields when it has them (lib/protocol/errors.ts). */
export interface ErrorInfo {
  code: string;
  message: string;
  errno?: number;
  syscall?: string;
  path?: string;
  /** The error it wraps, as far as it can be said (a chain of at most a few). */
  cause?: ErrorInfo;
}

export type Response =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: ErrorInfo };

export interface Notice {
  notice: 'closed';
}

export interface Hello {
  /** The service's fault channel: regions of this process bind to it. */
  channel: number;
  /** The pool's device id in this process (embedded mode: the service's own). */
  deviceId: number;
  path: string;
  /**
   * The device's mapping granularity in bytes when above a page (2 MiB on devdax and
   * hugetlbfs): a shared mapping's region is then whole units, so the unit holding EOF
   * can be mapped whole (docs/pool.md, "2 MiB-granular devices").
   */
  granularity?: number;
}

export interface MapOptions {
  private: boolean;
  sync: boolean;
  faultAround: boolean;
  /** The client's region is PROT_READ: the service installs nothing writable in it. */
  readOnly: boolean;
}

export interface StartRequest {
  device: string;
  mode: 'create' | 'open';
  size?: number;
  force?: boolean;
  /** The service worker's log level (default: DAXMAP_LOG_LEVEL, else warn). */
  logLevel?: string;
  /** Where the worker's log lines go, one JSON line per message (the opening thread relays them to the application's logger); default stderr. */
  logPort?: import('node:worker_threads').MessagePort;
}

export type StartReply = { ok: true; hello: Hello } | { ok: false; error: ErrorInfo };

export function isNotice(m: unknown): m is Notice {
  return typeof m === 'object' && m !== null && 'notice' in m;
}
