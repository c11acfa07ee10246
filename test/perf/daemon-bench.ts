// Rows 8 and 9 of the benchmark table: random 4 KiB first-touch write faults
// (map({ faultAround: false })) through daxmapd — a daemon child answering client
// children (daemon-client.js) over its socket — beside embedded mode (the pool's
// service in a worker thread of the same client process), and two clients faulting
// at once through one daemon against one alone. Each client touches every page of its
// own fresh file once, in a random order, from its main thread.
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { startDaemon, type DaemonProc } from '../daemon/helpers';
import { buildAddonIn } from './kmap';

const CLIENT = path.join(__dirname, 'daemon-client.js');
// The children run without tap's loaders and coverage hooks, and without the lock validator.
const ENV = { ...process.env, NODE_OPTIONS: '', DAXMAP_LOCKDEP: '0', DAXMAP_TEST_HOOKS: '0' };

interface Touch { medianUs: number; p99Us: number; maxUs: number; meanUs: number; startNs: string; endNs: string; pages: number; cpuUs: number }
interface Finish { ok: number; bad: number; stats: { faults: number; pte: number; pmd: number; sigbus: number } | null }

/** A client process driven over IPC (daemon-client.js). */
class Client {
  private seq = 0;
  private readonly waiters = new Map<number, { res: (v: any) => void; rej: (e: Error) => void }>();
  private constructor(readonly proc: ChildProcess) {
    proc.on('message', (m: any) => {
      const w = this.waiters.get(m.seq);
      if (!w) return;
      this.waiters.delete(m.seq);
      if (m.ok) w.res(m.value);
      else w.rej(Object.assign(new Error(m.message), { code: m.code }));
    });
    proc.on('exit', (code, signal) => {
      for (const w of this.waiters.values()) w.rej(new Error(`bench client died (${signal ?? code})`));
      this.waiters.clear();
    });
  }

  static async start(): Promise<Client> {
    const proc = fork(CLIENT, [], { execArgv: [], env: ENV, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await new Promise<void>((res, rej) => {
      proc.once('message', () => res());
      proc.once('exit', (c) => rej(new Error(`bench client exited early (${c})`)));
    });
    return new Client(proc);
  }

  call<T>(cmd: string, args: Record<string, unknown> = {}): Promise<T> {
    const seq = ++this.seq;
    return new Promise((res, rej) => {
      this.waiters.set(seq, { res, rej });
      this.proc.send({ ...args, cmd, seq });
    });
  }

  kill(): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
  }
}

export interface DaemonRun {
  /** Mean µs per touch (wall time / pages), embedded and through daxmapd, same client, same order. */
  embeddedUs: number;
  daemonUs: number;
  /** Faults per second through daxmapd: one client alone, two at once (total). */
  oneFaultsPerSec: number;
  twoFaultsPerSec: number;
  /** The same with the kernel's own mappings (same clients, same orders): what this machine allows. */
  kernelOneFaultsPerSec: number;
  kernelTwoFaultsPerSec: number;
  /**
   * CPUs kept busy by one client alone through daxmapd: the CPU time of the client
   * (all its threads) and of the daemon while it touched, over the wall time. Two
   * clients on c CPUs can get at most c / this of one client's throughput.
   */
  oneCpus: number;
}

/** Time on a CPU of every thread of a process so far, in µs (/proc/<pid>/task/<tid>/schedstat: ns). */
function cpuUsOf(pid: number): number {
  let ns = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread is gone: its time is lost to this count (a few µs at most)
    }
  }
  return ns / 1000;
}

const wallSeconds = (xs: Touch[]): number => {
  const start = xs.map((x) => BigInt(x.startNs)).reduce((p, c) => (c < p ? c : p));
  const end = xs.map((x) => BigInt(x.endNs)).reduce((p, c) => (c > p ? c : p));
  return Number(end - start) / 1e9;
};

export class DaemonBench {
  /** Sampled pages that read back wrong, faults answered with SIGBUS, over every run. */
  bad = 0;
  sigbus = 0;

  private constructor(private readonly d: DaemonProc, private readonly a: Client, private readonly b: Client, private readonly mb: number,
    /** The private directory of the kmap addon the clients load (kernel mode). */
    private readonly dir: string) {}

  static async start(mb: number): Promise<DaemonBench> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-bench-kmap-'));
    const clients: Client[] = [];
    let d: DaemonProc | undefined;
    try {
      const kmap = buildAddonIn('kmap', dir);
      d = await startDaemon({ size: `${4 * mb + 128}M`, env: ENV });
      clients.push(await Client.start(), await Client.start());
      const [a, b] = clients as [Client, Client];
      // Warm-up (not timed): the JIT of the clients, their service workers and the daemon.
      for (const mode of ['embedded', 'daemon', 'kernel']) await a.call('warmup', { mode, socket: d.socket, kmap });
      for (const mode of ['daemon', 'kernel']) await b.call('warmup', { mode, socket: d.socket, kmap });
      return new DaemonBench(d, a, b, mb, dir);
    } catch (e) {
      for (const c of clients) c.kill();
      await d?.stop();
      fs.rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  private get kmap(): string {
    return path.join(this.dir, 'kmap.node');
  }

  /**
   * Both clients prepared, then told to start their touches at the same instant, a
   * little ahead (each waits for it): the messages arrive ms apart on a busy machine,
   * and a start that lagged by a few ms counted against two clients of 20-30 ms each.
   */
  private async both(mode: 'daemon' | 'kernel', seed: number, run: number): Promise<[Touch, Touch]> {
    await this.a.call('prepare', { mode, socket: this.d.socket, mb: this.mb, seed, run, name: `r${run}-two-a`, kmap: this.kmap });
    await this.b.call('prepare', { mode, socket: this.d.socket, mb: this.mb, seed: seed + 1000, run, name: `r${run}-two-b`, kmap: this.kmap });
    const at = String(process.hrtime.bigint() + 50_000_000n);
    const [xa, xb] = await Promise.all([this.a.call<Touch>('touch', { at }), this.b.call<Touch>('touch', { at })]);
    this.finished(await this.a.call<Finish>('finish'));
    this.finished(await this.b.call<Finish>('finish'));
    return [xa, xb];
  }

  private finished(f: Finish): void {
    this.bad += f.bad;
    this.sigbus += f.stats?.sigbus ?? 0;
  }

  /** One client's timed touches; `daemonCpuUs`: the daemon's CPU time from just before to just after them. */
  private async one(c: Client, mode: 'embedded' | 'daemon' | 'kernel', seed: number, run: number, name: string): Promise<Touch & { daemonCpuUs: number }> {
    await c.call('prepare', { mode, socket: this.d.socket, mb: this.mb, seed, run, name, kmap: this.kmap });
    const d0 = cpuUsOf(this.d.proc.pid!);
    const x = await c.call<Touch>('touch');
    const daemonCpuUs = cpuUsOf(this.d.proc.pid!) - d0;
    this.finished(await c.call<Finish>('finish'));
    return { ...x, daemonCpuUs };
  }

  async run(run: number): Promise<DaemonRun> {
    const seed = 0x1234567 + run;
    const modes = run % 2 === 0 ? (['embedded', 'daemon'] as const) : (['daemon', 'embedded'] as const);
    const res: Partial<Record<'embedded' | 'daemon', Touch & { daemonCpuUs: number }>> = {};
    for (const mode of modes) res[mode] = await this.one(this.a, mode, seed, run, `r${run}-${mode}`);
    const dm = res.daemon!;
    // Two client processes faulting at once, each its own file, through the one daemon;
    // then the same with the kernel's own mappings.
    const [xa, xb] = await this.both('daemon', seed, run);
    const k1 = await this.one(this.a, 'kernel', seed, run, `r${run}-kernel`);
    const [ka, kb] = await this.both('kernel', seed, run);
    return {
      embeddedUs: res.embedded!.meanUs,
      daemonUs: dm.meanUs,
      oneFaultsPerSec: dm.pages / wallSeconds([dm]),
      twoFaultsPerSec: (xa.pages + xb.pages) / wallSeconds([xa, xb]),
      kernelOneFaultsPerSec: k1.pages / wallSeconds([k1]),
      kernelTwoFaultsPerSec: (ka.pages + kb.pages) / wallSeconds([ka, kb]),
      oneCpus: (dm.cpuUs + dm.daemonCpuUs) / 1e6 / wallSeconds([dm]),
    };
  }

  async stop(): Promise<void> {
    this.a.kill();
    this.b.kill();
    await this.d.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
    // the embedded pools a killed client left behind
    for (const f of fs.readdirSync('/dev/shm')) {
      if ([this.a, this.b].some((c) => f.startsWith(`daxmap-bench-de-${c.proc.pid}-`))) fs.rmSync(`/dev/shm/${f}`, { force: true });
    }
  }
}
