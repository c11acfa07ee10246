// daxmapd's background threads (docs/daemon.md, "Threads and priorities"): the
// threads Node and V8 start before the daemon runs (V8's compiler and GC helpers) are
// at nice 19, so that on a busy machine they take only CPU time no client wants; the
// main thread and daxmap's own native threads keep their priority.
import t from 'tap';
import fs from 'node:fs';
import { startDaemon } from './helpers.ts';
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

t.test('the daemon\'s V8 threads run at nice 19; its main thread and its native threads do not', async (t) => {
  const d = await startDaemon();
  try {
    // a client, so that the daemon's own threads (libuv's, daxmap's) exist too
    const pool = await Pool.connect(d.socket);
    const f = await pool.openFile('p', { create: true });
    await f.truncate(1 << 20);
    const m = await f.map();
    m.buffer[100] = 1;
    await m.unmap();
    await f.close();
    const ts = threads(d.proc.pid!);
    const main = ts.find((x) => x.tid === d.proc.pid);
    t.equal(main?.nice, 0, 'the main thread at nice 0');
    const lowered = ts.filter((x) => x.nice === 19 && x.comm !== 'daxmap-zero');
    t.ok(lowered.length >= 2, `V8's background threads at nice 19 (${lowered.length}: ${lowered.map((x) => x.comm).join(', ')})`);
    const native = ts.filter((x) => x.comm.startsWith('daxmap-') && x.comm !== 'daxmap-zero');
    t.ok(native.every((x) => x.nice === 0), `daxmap's native threads at nice 0 (${native.map((x) => `${x.comm}:${x.nice}`).join(', ')})`);
    t.ok(ts.length > lowered.length + 1, 'threads started later (libuv\'s, daxmap\'s) keep nice 0');
    await pool.close();
  } finally {
    t.same(await d.stop(), { code: 0, signal: null });
  }
});

t.test('DAXMAP_BACKGROUND_NICE=0 leaves them alone', async (t) => {
  const d = await startDaemon({ env: { DAXMAP_BACKGROUND_NICE: '0' } });
  try {
    const ts = threads(d.proc.pid!);
    t.same(ts.filter((x) => x.nice !== 0 && x.comm !== 'daxmap-zero').map((x) => x.comm), [], 'every thread at nice 0');
  } finally {
    t.same(await d.stop(), { code: 0, signal: null });
  }
});
