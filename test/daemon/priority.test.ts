// daxmapd's background threads (docs/daemon.md, "Threads and priorities"): the
// threads Node and V8 start before daxmapd's modules load (V8's compiler and GC
// helpers) are at nice 19, so that on a busy machine they take only CPU time no
// client wants; the main thread, libuv's pool and daxmap's own native threads keep
// their priority.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import { DAEMON, tmpName } from './helpers.ts';
import { until } from '../wait.ts';
import { Pool } from '../../dist/index.js';

interface Thread { tid: number; comm: string; nice: number }

function threads(pid: number): Thread[] {
  const out: Thread[] = [];
  for (const name of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${name}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      // after "pid (comm)": state is field 3, nice field 19
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.push({ tid: Number(name), comm, nice: Number(fields[19 - 3]) });
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

/**
 * daxmapd as it runs in production: without the modules tap preloads into every child
 * (NODE_OPTIONS --import, put back by tap's own spawn), whose loader thread starts
 * libuv's pool before daxmapd's first line and so would be lowered with V8's threads.
 */
async function daemon(t: Test, env: Record<string, string> = {}): Promise<{ pid: number; socket: string }> {
  const socket = tmpName('sock');
  const device = `/dev/shm/daxmap-prio-${process.pid}-${Date.now()}.pool`;
  const proc = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, DAEMON, '--device', device, '--socket', socket, '--size', '64M', '--log-level', 'info'], {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((res) => proc.on('exit', (c) => res(c)));
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
    fs.rmSync(device, { force: true });
    fs.rmSync(socket, { force: true });
  });
  await until(() => out.includes('daxmapd listening') || proc.exitCode !== null, 'daxmapd listening');
  t.equal(proc.exitCode, null, 'daxmapd is up');
  return { pid: proc.pid!, socket };
}


t.test('the daemon\'s V8 threads run at nice 19; its main thread, libuv\'s pool and its native threads do not', async (t) => {
  const d = await daemon(t);
  // a client, so that every thread the daemon uses exists
  const pool = await Pool.connect(d.socket);
  const f = await pool.openFile('p', { create: true });
  await f.truncate(1 << 20);
  const m = await f.map();
  m.buffer[100] = 1;
  await m.unmap();
  await f.close();
  const ts = threads(d.pid);
  await pool.close();
  t.equal(ts.find((x) => x.tid === d.pid)?.nice, 0, 'the main thread at nice 0');
  const lowered = ts.filter((x) => x.nice === 19 && x.comm !== 'daxmap-zero');
  t.ok(lowered.length >= 2, `V8's background threads at nice 19 (${lowered.length})`);
  const native = ts.filter((x) => x.comm.startsWith('daxmap-') && x.comm !== 'daxmap-zero');
  t.ok(native.every((x) => x.nice === 0), `daxmap's native threads at nice 0 (${native.map((x) => `${x.comm}:${x.nice}`).join(', ')})`);
  const later = ts.filter((x) => x.tid !== d.pid && x.nice === 0 && !x.comm.startsWith('daxmap-'));
  t.ok(later.length >= 1, `threads started later (libuv's pool) keep nice 0 (${later.length})`);
});

t.test('DAXMAP_BACKGROUND_NICE=0 leaves them alone', async (t) => {
  const d = await daemon(t, { DAXMAP_BACKGROUND_NICE: '0' });
  const ts = threads(d.pid);
  t.same(ts.filter((x) => x.nice !== 0 && x.comm !== 'daxmap-zero').map((x) => x.comm), [], 'every thread at nice 0');
});
