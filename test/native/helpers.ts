// Test helpers for the native engine: a handler worker with a request/response
// protocol, devices in tmpfs and on disk, and child-process runners.
import { Worker } from 'node:worker_threads';
import { spawn } from 'node:child_process';
import path from 'node:path';
import os from 'node:os';
import fs from 'node:fs';
import { openDevice, type DeviceStorage } from '../../dist/device/device';
import type { Stage } from '../unprivileged';
import type { Test } from 'tap';
import { TrappedRegion } from '../../dist/native/region';
import { configureAgent, execute } from '../../dist/native/engine';
import { AnswerBatch, type AnswerSpec } from '../../dist/native/frames';

export const DIST = path.resolve(__dirname, '../../dist');
export const FIXTURES = path.join(__dirname, 'fixtures');

export interface Rule {
  mode: 'install' | 'zero' | 'copy' | 'poison' | 'ignore' | 'zero-then-install';
  device?: number;
  devBase?: number;
  window?: number;
  populate?: boolean;
  delayMs?: number;
  payloadByte?: number;
}

export interface Report {
  log: [number, number, number, number, number, number][];
  answersPerPage: [string, number][];
  /** [region, offset, devOffset] of each reserve note, in order */
  notes: ([number, number, number] | [number, number, number, number])[];
  /** [region, offset] of each note that carried EV_LOW (the reserve reached its low-water mark) */
  lowNotes: [number, number][];
}

export class Handler {
  private seq = 0;
  private waiters = new Map<number, (m: any) => void>();
  private constructor(readonly worker: Worker, readonly channel: number) {
    worker.on('message', (m: any) => {
      const w = this.waiters.get(m.seq);
      if (w) {
        this.waiters.delete(m.seq);
        w(m);
      }
    });
  }

  static async start(): Promise<Handler> {
    const worker = new Worker(path.join(FIXTURES, 'handler-worker.js'), { execArgv: [] });
    const ready = await new Promise<any>((res, rej) => {
      worker.once('message', res);
      worker.once('error', rej);
    });
    return new Handler(worker, ready.channel);
  }

  /** The object a TrappedRegion binds to. */
  get ref(): { id: number } {
    return { id: this.channel };
  }

  private request(msg: object): Promise<any> {
    const seq = ++this.seq;
    return new Promise((res) => {
      this.waiters.set(seq, res);
      this.worker.postMessage({ ...msg, seq });
    });
  }

  rule(region: number, rule: Rule): Promise<void> {
    return this.request({ type: 'rule', region, rule });
  }

  forget(region: number): Promise<void> {
    return this.request({ type: 'forget', region });
  }

  report(): Promise<Report> {
    return this.request({ type: 'report' });
  }

  execute(answers: object[]): Promise<number[]> {
    return this.request({ type: 'execute', answers }).then((m) => m.results);
  }

  closeChannel(): Promise<void> {
    return this.request({ type: 'close' });
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}

let counter = 0;
/** A fresh device file in tmpfs or on the disk filesystem, removed by the returned cleanup. */
export function tempDevice(kind: 'tmpfs' | 'disk', size: number): { dev: DeviceStorage; path: string; cleanup: () => void } {
  const dir = kind === 'tmpfs' ? '/dev/shm' : os.tmpdir();
  const p = path.join(dir, `daxmap-test-${process.pid}-${Date.now()}-${counter++}.dev`);
  const dev = openDevice(p, { create: true, size });
  return {
    dev,
    path: p,
    cleanup: () => {
      dev.close();
      fs.rmSync(p, { force: true });
    },
  };
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * The variables of a sanitizer run (scripts/sanitize.js: which addon build to load,
 * the preloaded runtimes and their options), which even a child started with a
 * clean environment keeps, so that it runs what the rest of the run runs.
 */
export function sanitizerEnv(): NodeJS.ProcessEnv {
  const keep = ['DAXMAP_ADDON_DIR', 'LD_PRELOAD', 'ASAN_OPTIONS', 'UBSAN_OPTIONS', 'TSAN_OPTIONS', 'DAXMAP_UBSAN_LOG'];
  return Object.fromEntries(keep.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
}

/**
 * Runs a fixture script in a child process (a behaviour that kills a process is
 * tested there). With a `stage`, the staged copy of the fixture runs as the stage's
 * user, without the test runner's preloads (see ../unprivileged.ts), and without a
 * sanitizer build (the stage holds the ordinary addon; another user may not read
 * the checkout's sanitizer build or write its report directory).
 */
export function runChild(script: string, args: string[] = [], opts: { env?: NodeJS.ProcessEnv; stage?: Stage; timeoutMs?: number; nodeArgs?: string[] } = {}): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const file = path.join(FIXTURES, script);
    const s = opts.stage;
    const [cmd, ...argv] = s ? s.node([...(opts.nodeArgs ?? []), s.path(file), ...args]) : [process.execPath, ...(opts.nodeArgs ?? []), file, ...args];
    const child = spawn(cmd!, argv, {
      ...(s ? s.spawnOptions(opts.env) : { env: { ...process.env, ...opts.env } }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30000);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * A kernel-mode touch of one page through a system call: a read fault (write(2) from
 * the page) or a write fault (read(2) into it). A fault nobody answers ends in EFAULT
 * after the agent's timeout instead of a hung or killed test process.
 */
export function kernelTouch(buf: Buffer, off: number, write: boolean, scratch: string): string {
  const fd = fs.openSync(scratch, 'w+');
  try {
    if (write) {
      fs.writeSync(fd, Buffer.alloc(4096, 0x3c), 0, 4096, 0);
      fs.readSync(fd, buf, off, 4096, 0);
    } else {
      fs.writeSync(fd, buf, off, 4096, 0);
    }
    return 'ok';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  } finally {
    fs.closeSync(fd);
  }
}

/** Execute answers directly (no fault to answer); the result of each. */
export function runAnswers(answers: AnswerSpec[]): number[] {
  const b = new AnswerBatch();
  for (const a of answers) b.add(a);
  return Array.from(execute(b));
}

/**
 * A tmpfs device and a trapped region of `size` bytes bound to a handler worker (with
 * `rule`), a scratch file for kernel touches (named by `tag`) and a short fault
 * timeout; all undone at teardown.
 */
export async function boundRegion(t: Test, size: number, tag: string, rule: Rule): Promise<{ dev: DeviceStorage; scratch: string; h: Handler; r: TrappedRegion }> {
  const { dev, cleanup } = tempDevice('tmpfs', size);
  t.teardown(cleanup);
  const scratch = `/dev/shm/daxmap-test-${tag}-${process.pid}`;
  t.teardown(() => fs.rmSync(scratch, { force: true }));
  configureAgent({ faultTimeoutMs: 3000 });
  t.teardown(() => configureAgent({ faultTimeoutMs: 30000 }));
  const h = await Handler.start();
  t.teardown(() => h.worker.terminate());
  const r = new TrappedRegion(size);
  t.teardown(() => r.close());
  r.bind(h.ref);
  await h.rule(r.id, rule);
  return { dev, scratch, h, r };
}
