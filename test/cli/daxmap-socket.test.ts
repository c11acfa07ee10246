// `daxmap ls --socket PATH` and `daxmap stat --socket PATH [file]`: the tool asks a
// running daxmapd instead of opening the (busy) device. The same listing as the
// device form once the daemon has stopped; fault counts and latency in total and per
// file; files a user may not read listed without figures.
import t from 'tap';
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { main } from '../../dist/cli/main.js';
import { Pool } from '../../dist/index.js';
import { startDaemon } from '../daemon/helpers.ts';
import { stageFor, NOBODY, type Stage } from '../unprivileged.ts';

const bin = resolve(__dirname, '../../bin/daxmap');
const PAGE = 4096;
const MiB = 1 << 20;

/** Runs the tool; with a stage, as its user and from it (see ../unprivileged.ts). */
function cli(args: string[], stage?: Stage): { code: number | null; out: string; err: string } {
  const [cmd, ...argv] = stage ? stage.node([stage.path('bin/daxmap'), ...args]) : [process.execPath, bin, ...args];
  const r = spawnSync(cmd!, argv, { encoding: 'utf8', timeout: 30000, ...(stage ? stage.spawnOptions() : { cwd: '/' }) });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

async function inproc(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s), isTTY: false } });
  return { code, out, err };
}

t.test('ls and stat through a running daxmapd', async (t) => {
  // Reserves off: the figures below count every fault of the sparse writes (with
  // reserves, most are answered in this client: docs/fault-policy.md, "Reserves").
  const d = await startDaemon({ args: ['--socket-mode', '666'], env: { DAXMAP_RESERVE: 'off' } });
  t.teardown(() => d.stop());
  const sock = d.socket;

  // Files, and faults on one of them, from this process (a client like any other).
  const pool = await Pool.connect(sock);
  const a = await pool.openFile('alpha', { create: true });
  await a.truncate(4 * MiB);
  const m = await a.map({ faultAround: false });
  for (let p = 0; p < 10; p++) m.buffer[p * PAGE] = p + 1; // 10 write faults on holes
  let sum = 0;
  for (let p = 10; p < 15; p++) sum += m.buffer[p * PAGE]!; // 5 read faults: zero pages
  t.equal(sum, 0);
  const b = await pool.openFile('beta gamma', { create: true });
  await b.write(Buffer.alloc(10000, 1), 0);
  await b.fallocate(MiB, MiB, { keepSize: true });
  await pool.openFile('empty', { create: true });
  const { handle } = await pool.request<{ handle: number }>('openFile', ['secret', { create: true, mode: 0o600 }]);
  await pool.request('write', [handle, Buffer.from('root only'), 0]);
  const stats = await pool.stats();
  t.equal(stats.faults, 15, 'the pool counted 15 faults');

  // ls
  const ls = cli(['ls', '--socket', sock, '--bytes']);
  t.equal(ls.code, 0, ls.err);
  t.match(ls.out, /^NAME\s+SIZE\s+ALLOCATED\s+EXTENTS\n/);
  t.match(ls.out, /\nalpha\s+4194304\s+40960\s+\d+\n/, 'alpha: 10 pages written');
  t.match(ls.out, /\nbeta gamma\s+10000\s+1060864\s+2\n/, 'a written and an unwritten extent');
  t.match(ls.out, /\nempty\s+0\s+0\s+0\n/);
  t.match(ls.out, /\nsecret\s+9\s+4096\s+1\n/);
  const human = await inproc('ls', '--socket', sock);
  t.equal(human.code, 0, human.err);
  t.match(human.out, /beta gamma\s+9\.8K\s+1\.0M\s+2/);
  const lj = (await inproc('ls', '--socket', sock, '--json')).out.trim().split('\n').map((l) => JSON.parse(l));
  t.same(lj.map((r) => r.name).sort(), ['alpha', 'beta gamma', 'empty', 'secret']);
  t.same(lj.find((r) => r.name === 'alpha'), { name: 'alpha', size: 4 * MiB, allocated: 10 * PAGE, extents: lj.find((r) => r.name === 'alpha').extents });

  // stat: totals and per file
  const st = await inproc('stat', '--socket', sock);
  t.equal(st.code, 0, st.err);
  t.match(st.out, new RegExp(`device: ${d.device}\\n`));
  t.match(st.out, /freeBytes: \d+ \(/);
  t.match(st.out, /files: 4\n/);
  t.match(st.out, /faults: 15 \(read 5, write 10, write-protect 0\)/);
  t.match(st.out, /by extent: hole 15,/);
  t.match(st.out, /by window: 2 MiB 0, 4 KiB 15/);
  t.match(st.out, /answers: zero page 5,/);
  t.match(st.out, /latency µs: p50 \d+, p90 \d+, p99 \d+, max \d+ \(15 faults\)/);
  t.match(st.out, /per file:\n\s+FILE\s+FAULTS\s+READ\s+WRITE.*\n\s+alpha\s+15\s+5\s+10\s/);
  const sj = JSON.parse((await inproc('stat', '--socket', sock, '--json')).out);
  t.equal(sj.device, d.device);
  t.equal(sj.files, 4);
  t.equal(sj.faults.faults, 15);
  t.equal(sj.faults.write, 10);
  t.equal(sj.faults.latencyUs.count, 15);
  t.same(sj.byFile.map((x: { file: string }) => x.file), ['alpha']);
  t.equal(sj.byFile[0].stats.faults, 15);
  t.ok(sj.freeBytes < sj.dataBytes && sj.usedBytes === sj.dataBytes - sj.freeBytes);

  // stat of one file
  const sa = cli(['stat', '--socket', sock, 'alpha']);
  t.equal(sa.code, 0, sa.err);
  t.match(sa.out, /file: alpha\nsize: 4194304 \(4M\)\nallocated: 40960 \(40K\)\nmode: 0644, uid 0, gid 0\n/);
  t.match(sa.out, /extents:\n {2}0\+40960 written\n/);
  t.match(sa.out, /faults: 15 \(read 5, write 10/);
  const sb = JSON.parse((await inproc('stat', '--socket', sock, 'beta gamma', '--json')).out);
  t.same(sb.extents, [{ offset: 0, length: 12288, state: 'written' }, { offset: MiB, length: MiB, state: 'unwritten' }]);
  t.equal(sb.faults, null, 'no faults on beta gamma');
  t.match((await inproc('stat', '--socket', sock, 'empty')).out, /faults: none since daxmapd started/);

  // errors
  const nope = await inproc('stat', '--socket', sock, 'nope');
  t.equal(nope.code, 2);
  t.match(nope.err, /ENOENT|no file 'nope'/);
  const gone = await inproc('ls', '--socket', `${sock}.missing`);
  t.equal(gone.code, 2);
  t.match(gone.err, /cannot connect to daxmapd .*Is daxmapd running/);
  t.equal((await inproc('ls', d.device, '--socket', sock)).code, 2, 'a device and a socket: usage error');
  t.equal((await inproc('stat', '--socket', sock, 'a', 'b')).code, 2);
  t.equal((await inproc('ls', '--socket')).code, 2, '--socket needs a value');

  // as nobody (the socket is 0666): the root 0600 file is listed without figures
  const nobody = stageFor(t, [], { uid: NOBODY, gid: NOBODY });
  if (typeof nobody === 'string') {
    t.skip(`ls and stat as nobody: ${nobody}`, () => {});
  } else {
    const nb = cli(['ls', '--socket', sock, '--bytes'], nobody);
    t.equal(nb.code, 0, nb.err);
    t.match(nb.out, /\nsecret\s+-\s+-\s+-\n/, 'nobody sees the name of a file it cannot read, no figures');
    t.match(nb.out, /\nalpha\s+4194304\s+40960\s+/, 'and the figures of one it can');
    const nj = cli(['ls', '--socket', sock, '--json'], nobody);
    t.equal(nj.code, 0, nj.err);
    t.match(nj.out, /\{"name":"secret","error":"EACCES"\}/);
    const ns = cli(['stat', '--socket', sock, 'secret'], nobody);
    t.equal(ns.code, 2);
    t.match(ns.err, /EACCES/);
  }

  await m.unmap();
  await pool.close();
  // The same listing as the device form, once the daemon has let go of the device.
  const socketForm = cli(['ls', '--socket', sock, '--bytes']).out;
  t.same(await d.stop('SIGTERM', true), { code: 0, signal: null });
  t.teardown(() => fs.rmSync(d.device, { force: true }));
  const devForm = cli(['ls', d.device, '--bytes']);
  t.equal(devForm.code, 0, devForm.err);
  t.equal(devForm.out, socketForm, 'ls --socket and ls <device> print the same table');
});
