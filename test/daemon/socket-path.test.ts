// daxmapd --socket PATH that cannot be: the daemon says what is wrong with the path
// and exits before it touches the device (no pool created or formatted).
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { DAEMON } from './helpers';
import { stageFor, type Stage } from '../unprivileged';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-sockpath-'));
fs.chmodSync(dir, 0o755);
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;

function daemon(socket: string, stage?: Stage): { status: number | null; out: string; device: string } {
  const device = `/dev/shm/daxmap-sockpath-${process.pid}-${n++}.pool`;
  const argv = ['--device', device, '--size', '16M', '--socket', socket];
  const [cmd, ...args] = stage ? stage.node([stage.path(DAEMON), ...argv]) : [process.execPath, DAEMON, ...argv];
  const r = spawnSync(cmd!, args, { encoding: 'utf8', timeout: 20000, ...(stage ? stage.spawnOptions() : { cwd: '/' }) });
  const created = fs.existsSync(device);
  fs.rmSync(device, { force: true });
  return { status: r.status, out: `${r.stdout}${r.stderr}`, device: created ? device : '' };
}

const file = path.join(dir, 'a-file');
fs.writeFileSync(file, '');

const cases: [string, string, string, RegExp][] = [
  ['a directory that does not exist', path.join(dir, 'missing', 'dir', 's'), 'ENOENT', /socket's directory '.*missing\/dir' does not exist: create it first/],
  ['a file where the directory should be', path.join(file, 's'), 'ENOTDIR', /is not a directory/],
  ['a path longer than a UNIX socket takes', path.join(dir, 'x'.repeat(120)), 'ENAMETOOLONG', /at most 107/],
];
for (const [what, socket, code, message] of cases) {
  t.test(`--socket: ${what}`, async (t) => {
    const r = daemon(socket);
    t.equal(r.status, 1, 'daxmapd could not start');
    t.match(r.out, new RegExp(`"code":"${code}"`), code);
    t.match(r.out, message, 'the message says what is wrong');
    t.equal(r.device, '', 'the device was not created');
  });
}

t.test('--socket in a directory the daemon\'s user cannot write', async (t) => {
  // daxmapd as nobody, from a staged copy (the checkout may be unreadable to it).
  const stage = stageFor(t);
  if (typeof stage === 'string') {
    t.skip(stage, () => {});
    return;
  }
  const r = daemon(path.join(dir, 's'), stage);
  t.equal(r.status, 1, 'daxmapd could not start');
  t.match(r.out, /"code":"EACCES"/);
  t.match(r.out, /cannot create the socket in '.*': uid 65534 has no write and search permission/);
  t.equal(r.device, '', 'the device was not created');
});
