// Helpers for daemon tests: a daxmapd process on a private socket and pool, and
// client processes driven over IPC.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Stage } from '../unprivileged';

export const ROOT = path.resolve(__dirname, '../..');
export const DAEMON = path.join(ROOT, 'bin', 'daxmapd');
export const FIXTURES = path.join(__dirname, 'fixtures');
export const PAGE = 4096;
export const HUGE = 2 << 20;

let n = 0;

/**
 * Where a daemon's default device goes: /dev/shm, or with DAXMAP_TEST_BACKINGS=hugetlbfs
 * the hugetlbfs mount DAXMAP_HUGETLBFS names, to try a daemon test file on the
 * device-DAX stand-in (test/hugetlb.ts).
 */
function deviceDir(): string {
  const h = process.env.DAXMAP_HUGETLBFS;
  return process.env.DAXMAP_TEST_BACKINGS === 'hugetlbfs' && h !== undefined && h !== '' ? h : '/dev/shm';
}

/**
 * A daemon dies with the test process that started it (a test file killed at tap's
 * timeout used to leave its daxmapd running, holding its device: on the hugetlbfs
 * stand-in, huge pages the suite must give back). util-linux's setpriv sets the
 * parent-death signal and execs node; without it the daemon is spawned directly.
 */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));

export function tmpName(kind: string): string {
  return `/tmp/daxmap-dtest-${process.pid}-${Date.now()}-${n++}.${kind}`;
}

export interface DaemonProc {
  proc: ChildProcess;
  socket: string;
  device: string;
  log: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Stop the daemon; its socket and (unless keepDevice) its device file are removed. */
  stop(signal?: NodeJS.Signals, keepDevice?: boolean): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export async function startDaemon(opts: { device?: string; socket?: string; size?: string; args?: string[]; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<DaemonProc> {
  const socket = opts.socket ?? tmpName('sock');
  const device = opts.device ?? `${deviceDir()}/daxmap-dtest-${process.pid}-${n++}.pool`;
  const argv = [DAEMON, '--device', device, '--socket', socket, '--size', opts.size ?? '64M', '--log-level', 'info', ...(opts.args ?? [])];
  const [cmd, args] = SETPRIV ? [SETPRIV, ['--pdeathsig', 'SIGKILL', process.execPath, ...argv]] : [process.execPath, argv];
  const proc = spawn(cmd, args, {
    env: { ...process.env, DAXMAP_LOCKDEP: '1', DAXMAP_TEST_HOOKS: '1', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
  });
  const log: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => proc.on('exit', (code, signal) => res({ code, signal })));
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split('\n');
    buf = lines.pop()!;
    log.push(...lines);
  });
  proc.stderr!.on('data', (d: Buffer) => log.push(d.toString()));
  const t0 = Date.now();
  while (!log.some((l) => l.includes('daxmapd listening'))) {
    if (proc.exitCode !== null || Date.now() - t0 > 60000) throw new Error(`daxmapd did not start: ${log.join('\n')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc, socket, device, log, exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM', keepDevice = false) {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const r = await exited;
      if (!keepDevice) fs.rmSync(device, { force: true });
      fs.rmSync(socket, { force: true });
      return r;
    },
  };
}

export interface Client {
  proc: ChildProcess;
  pid: number;
  call<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T>;
  /** Send without waiting (for a command that blocks the child). */
  send(cmd: string, args?: Record<string, unknown>): Promise<unknown>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * A client process (fixtures/client.js) connected to `socket`. With a `stage` it runs
 * as the stage's user, from the stage (see ../unprivileged.ts): another user may not
 * be able to read the checkout, nor load the test runner's preloads. `cwd`: where it runs.
 */
export async function startClient(socket: string, opts: { stage?: Stage; cwd?: string } = {}): Promise<Client> {
  const script = path.join(FIXTURES, 'client.js');
  const s = opts.stage;
  const where = opts.cwd !== undefined ? { cwd: opts.cwd } : {};
  const [cmd, ...args] = s ? s.node([s.path(script)]) : [];
  const proc = s
    ? spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], ...s.spawnOptions({ DAXMAP_SIGBUS_REPORT: '1' }), ...where })
    : fork(script, [], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env: { ...process.env, DAXMAP_SIGBUS_REPORT: '1' }, ...where });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString();
  });
  proc.stdout!.on('data', () => {});
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => proc.on('exit', (code, signal) => res({ code, signal })));
  await new Promise<void>((res, rej) => {
    proc.once('message', () => res());
    proc.once('exit', (c, sig) => rej(new Error(`client exited early (${c ?? sig}): ${stderr.trim()}`)));
  });
  let seq = 0;
  const waiters = new Map<number, { res: (v: unknown) => void; rej: (e: Error) => void }>();
  proc.on('message', (m: any) => {
    const w = waiters.get(m.seq);
    if (!w) return;
    waiters.delete(m.seq);
    if (m.ok) w.res(m.value);
    else w.rej(Object.assign(new Error(m.message), { code: m.code }));
  });
  void exited.then((e) => {
    for (const w of waiters.values()) w.rej(Object.assign(new Error(`client died (${e.signal ?? e.code})`), { code: 'EDIED', signal: e.signal }));
    waiters.clear();
    // A client killed inside a kernel touch (a write(2) from its mapping, blocked on
    // the fault) never removed that touch's scratch file (fixtures/client.js).
    const mine = `daxmap-dclient-${proc.pid}-`;
    for (const f of fs.readdirSync('/dev/shm')) if (f.startsWith(mine)) fs.rmSync(`/dev/shm/${f}`, { force: true });
  });
  const send = (cmd: string, args: Record<string, unknown> = {}): Promise<unknown> => {
    const s = ++seq;
    return new Promise((res, rej) => {
      waiters.set(s, { res, rej });
      proc.send({ ...args, cmd, seq: s });
    });
  };
  const c: Client = {
    proc, pid: proc.pid!, exited, send,
    call: <T>(cmd: string, args: Record<string, unknown> = {}) => send(cmd, args) as Promise<T>,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
  await c.call('connect', { socket });
  return c;
}

/** A daemon and `n` clients connected to it, all stopped at the test's teardown (clients killed first). */
export async function daemonWithClients(t: { teardown(fn: () => unknown): void }, n: number, opts: Parameters<typeof startDaemon>[0] = {}): Promise<{ d: DaemonProc; clients: Client[] }> {
  const d = await startDaemon(opts);
  const clients: Client[] = [];
  t.teardown(async () => {
    for (const c of clients) await c.kill();
    await d.stop();
  });
  for (let i = 0; i < n; i++) clients.push(await startClient(d.socket));
  return { d, clients };
}

/**
 * A new client of `socket` creates file 'g' of `size` bytes, maps it and stores
 * `what` at 0: null if it could, else the error `map()` (or the store) failed with.
 */
export async function tryMapAndStore(socket: string, size: number, what: string): Promise<{ code: string; message: string } | null> {
  const c = await startClient(socket);
  try {
    await c.call('open', { name: 'g', create: true });
    await c.call('truncate', { name: 'g', size });
    await c.call('map', { name: 'g', id: 1 });
    await c.call('store', { id: 1, offset: 0, text: what });
    return null;
  } catch (e) {
    return e as { code: string; message: string };
  } finally {
    await c.kill();
  }
}
