// Helpers for the socket-channel tests: the fake daemon (fixtures/socket-daemon.js)
// in a child process, driven over IPC, and small waiting utilities.
import { fork, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import os from 'node:os';
import fs from 'node:fs';
import { FIXTURES, type Rule } from './helpers';

export interface DaemonReport {
  connected: boolean;
  hello: { pid: number; session: string; version: number } | null;
  /** [region, offset, flags, count, op, result, tag] per answer to an event */
  log: [number, number, number, number, number, number | null, number][];
  eventMessages: number[];
  events: number;
  tagMismatch: number;
  outstanding: number;
  floodResults: number;
  bye: boolean;
  closed: boolean;
  error: string | null;
}

export interface WireAnswerSpec {
  op: number;
  flags?: number;
  flags2?: number;
  region: number;
  offset: number;
  length: number;
  device?: number;
  devOffset?: number;
  tag?: number;
  /** A set or top-up reserve's blocks (device offsets), sent as its payload. */
  blocks?: number[];
}

/**
 * What the fake daemon read, in socket order: ['E', region, offset, flags, devOffset]
 * per event or note (devOffset: a note's block, else 0), ['R', tag, result] per result.
 */
export type TraceEntry = ['E', number, number, number, number] | ['R', number, number];

let counter = 0;

export class FakeDaemon {
  private seq = 0;
  private waiters = new Map<number, (m: any) => void>();
  private exited: Promise<void>;

  private constructor(readonly child: ChildProcess, readonly path: string) {
    child.on('message', (m: any) => {
      const w = this.waiters.get(m.seq);
      if (w) {
        this.waiters.delete(m.seq);
        w(m);
      }
    });
    this.exited = new Promise((res) => child.once('exit', () => res()));
  }

  static async start(): Promise<FakeDaemon> {
    const p = path.join(os.tmpdir(), `daxmap-test-sock-${process.pid}-${counter++}.sock`);
    const child = fork(path.join(FIXTURES, 'socket-daemon.js'), [p], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
    const d = new FakeDaemon(child, p);
    await new Promise<void>((res, rej) => {
      d.waiters.set(0, () => res());
      child.once('error', rej);
      child.once('exit', (code) => rej(new Error(`fake daemon exited early (${code})`)));
    });
    return d;
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  private request(msg: object): Promise<any> {
    const seq = ++this.seq;
    return new Promise((res) => {
      this.waiters.set(seq, res);
      this.child.send({ ...msg, seq });
    });
  }

  config(hello: string): Promise<void> {
    return this.request({ cmd: 'config', hello });
  }

  rule(region: number, rule: Rule): Promise<void> {
    return this.request({ cmd: 'rule', region, rule });
  }

  forget(region: number): Promise<void> {
    return this.request({ cmd: 'forget', region });
  }

  /** The latest connection's state, or that of the latest connection of `session`. */
  report(session?: bigint): Promise<DaemonReport> {
    return this.request({ cmd: 'report', session: session?.toString() });
  }

  /** The trace of the latest connection, or of the latest connection of `session`. */
  trace(session?: bigint): Promise<TraceEntry[]> {
    return this.request({ cmd: 'trace', session: session?.toString() }).then((m) => m.trace);
  }

  /** Sends one ANSWERS message; resolves with its RESULTS. */
  answer(answers: WireAnswerSpec[]): Promise<{ tag: number; result: number }[]> {
    return this.request({ cmd: 'answer', answers }).then((m) => m.results);
  }

  flood(count: number): Promise<void> {
    return this.request({ cmd: 'flood', count });
  }

  pause(): Promise<void> {
    return this.request({ cmd: 'pause' });
  }

  resume(): Promise<void> {
    return this.request({ cmd: 'resume' });
  }

  raw(kind: string, session?: bigint): Promise<void> {
    return this.request({ cmd: 'raw', kind, session: session?.toString() });
  }

  /** Polls the report (of the connection of `session`, once it said HELLO) until `cond` holds. */
  async until(cond: (r: DaemonReport) => boolean, what: string, session?: bigint, ms = 10000): Promise<DaemonReport> {
    const end = Date.now() + ms;
    for (;;) {
      const r = await this.report(session);
      if (r.connected && cond(r)) return r;
      if (Date.now() > end) throw new Error(`timed out waiting for the daemon: ${what} (${JSON.stringify({ ...r, log: r.log?.length })})`);
      await sleep(5);
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    this.child.kill(signal);
    await this.exited;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) await this.kill('SIGTERM');
    fs.rmSync(this.path, { force: true });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function waitFor(cond: () => boolean, what: string, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
