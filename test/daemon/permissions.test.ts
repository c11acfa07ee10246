// Who may do what through daxmapd: the socket's mode decides who may connect; a
// file's mode and owner decide what a client may do with it; mapping needs the
// device itself. The daemon runs as root; the unprivileged clients run as `nobody`
// (and other uids), from a world-readable copy of the library (../unprivileged.ts),
// so this works wherever the checkout lives.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startDaemon, startClient, type Client } from './helpers';
import { RawControl, RawFault } from './fuzz-wire';
import { Pool } from '../../dist/index';
import { stageFor, NOBODY, type Stage } from '../unprivileged';

if (process.getuid?.() !== 0) {
  t.plan(0, 'permission tests need root (they drop to nobody in child processes)');
  process.exit(0);
}
const staged = stageFor(t, ['test/daemon/fixtures/client.js']);
if (typeof staged === 'string') {
  t.plan(0, `permission tests run processes as nobody, and here ${staged}`);
  process.exit(0);
}
const stage: Stage = staged;

/** Run a script as nobody; its stdout, trimmed. */
function asNobody(script: string): string {
  const [cmd, ...args] = stage.node(['-e', script]);
  const r = spawnSync(cmd!, args, { ...stage.spawnOptions(), encoding: 'utf8', timeout: 20000 });
  if (r.status !== 0) throw new Error(`nobody's script failed (${r.status ?? r.signal}): ${r.stderr}`);
  return r.stdout.trim();
}

/** A module of the staged library, as a string literal for a script. */
const dist = (p: string): string => JSON.stringify(stage.path(path.join('dist', p)));

/**
 * Requests over a raw control connection, run with `setpriv` as any uid, primary gid
 * and supplementary groups; the replies, in order. In the arguments '$h' stands for
 * the handle the last openFile returned, { $text } for a payload.
 */
function rawAs(ids: { uid: number; gid: number; groups: number[] }, socket: string, requests: [string, unknown[]][]): { ok: boolean; value?: any; error?: { code: string } }[] {
  const script = `
    const net = require('node:net');
    const { CONTROL_MAGIC, ControlReader, encodeFrame } = require(${dist('protocol/control.js')});
    const reqs = ${JSON.stringify(requests)};
    const s = net.connect(${JSON.stringify(socket)});
    const r = new ControlReader({ expectMagic: false });
    const out = [];
    let h = 0;
    const arg = (a) => (a === '$h' ? h : a && a.$text !== undefined ? Buffer.from(a.$text) : a);
    const next = () => {
      const last = out[out.length - 1];
      if (last && last.ok && last.value && typeof last.value.handle === 'number') h = last.value.handle;
      if (out.length === reqs.length) { console.log(JSON.stringify(out)); process.exit(0); }
      s.write(encodeFrame({ id: out.length + 1, op: reqs[out.length][0], args: reqs[out.length][1].map(arg) }));
    };
    s.on('connect', () => { s.write(CONTROL_MAGIC); next(); });
    s.on('data', (b) => { for (const f of r.push(b)) { out.push(f.json); next(); } });
    s.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(0); });`;
  const groups = ids.groups.length ? [`--groups=${ids.groups.join(',')}`] : ['--clear-groups'];
  const r = spawnSync('setpriv', [`--reuid=${ids.uid}`, `--regid=${ids.gid}`, ...groups, ...stage.node(['-e', script])], { env: stage.env(), cwd: stage.root, encoding: 'utf8', timeout: 20000 });
  if (r.status !== 0) throw new Error(`setpriv script failed (${r.status ?? r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

async function rejectsCode(t: Test, p: Promise<unknown>, code: string, what: string): Promise<void> {
  try {
    await p;
    t.fail(`${what}: succeeded, expected ${code}`);
  } catch (err) {
    t.equal((err as { code?: string }).code, code, `${what}: ${code}`);
  }
}

t.test('the socket is created mode 0660: nobody cannot connect', async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.stop());
  const st = fs.statSync(d.socket);
  t.ok(st.isSocket(), 'a socket');
  t.equal((st.mode & 0o7777).toString(8), '660', 'mode 0660');
  t.equal(st.uid, 0, 'owned by root');
  t.equal(st.gid, 0, 'group root');
  const got = asNobody(`require(${dist('index.js')}).Pool.connect(${JSON.stringify(d.socket)}).then(
    (p) => { console.log('connected'); return p.close(); },
    (e) => console.log(e.code))`);
  t.equal(got, 'EACCES', 'Pool.connect as nobody fails with EACCES');
  // root still can
  const root = await Pool.connect(d.socket);
  t.same(await root.list(), [], 'root connects');
  await root.close();
});

t.test('--socket-mode 666: nobody connects, and gets what file modes and ownership allow', async (t) => {
  const d = await startDaemon({ args: ['--socket-mode', '666'] });
  let nobody: Client | null = null;
  t.teardown(async () => {
    await nobody?.kill();
    await d.stop();
  });
  t.equal((fs.statSync(d.socket).mode & 0o7777).toString(8), '666', 'the socket is mode 0666');

  // root's files: secret 0600, readable 0644, shared 0666
  const root = await Pool.connect(d.socket);
  t.teardown(() => root.close());
  const mk = async (name: string, mode: number, text: string): Promise<number> => {
    const { handle } = await root.request<{ handle: number }>('openFile', [name, { create: true, mode }]);
    await root.request('write', [handle, Buffer.from(text), 0]);
    return handle;
  };
  const secretHandle = await mk('secret', 0o600, 'root only');
  await mk('readable', 0o644, 'everyone may read');
  await mk('shared', 0o666, 'everyone may write');

  nobody = await startClient(d.socket, { stage });
  const n = nobody;

  // its own files: create and use them
  await n.call('open', { name: 'mine', create: true });
  t.equal(await n.call('write', { name: 'mine', offset: 0, text: 'nobody was here' }), 15);
  t.equal(await n.call('read', { name: 'mine', offset: 0, length: 15 }), 'nobody was here', 'nobody reads back its own file');
  await n.call('truncate', { name: 'mine', size: 1 << 20 });
  const st = await root.openFile('mine').then(async (f) => {
    const s = await f.stat();
    await f.close();
    return s as unknown as { uid: number; gid: number; mode: number; size: number };
  });
  t.match(st, { uid: NOBODY, gid: NOBODY, mode: 0o644, size: 1 << 20 }, 'the file is nobody\'s, mode 0644');

  // root's files, as their modes say
  await rejectsCode(t, n.call('open', { name: 'secret' }), 'EACCES', 'open a root 0600 file');
  await rejectsCode(t, n.call('open', { name: 'secret', create: true }), 'EACCES', 'open it with create');
  await n.call('open', { name: 'readable' });
  t.equal(await n.call('read', { name: 'readable', offset: 0, length: 17 }), 'everyone may read', 'reads a 0644 file');
  await rejectsCode(t, n.call('write', { name: 'readable', offset: 0, text: 'x' }), 'EACCES', 'write a root 0644 file');
  await rejectsCode(t, n.call('truncate', { name: 'readable', size: 0 }), 'EACCES', 'truncate a root 0644 file');
  await n.call('open', { name: 'shared' });
  await n.call('write', { name: 'shared', offset: 0, text: 'EVERYONE' });
  t.equal(await n.call('read', { name: 'shared', offset: 0, length: 18 }), 'EVERYONE may write', 'writes a 0666 file');

  // a handle of another connection is not ours
  await rejectsCode(t, n.call('request', { op: 'read', args: [secretHandle, 9, 0] }), 'EBADF', 'read through root\'s handle number');

  // unlink and rename: the owner only
  await rejectsCode(t, n.call('request', { op: 'unlink', args: ['shared'] }), 'EPERM', 'unlink a file it does not own');
  await rejectsCode(t, n.call('request', { op: 'rename', args: ['shared', 'taken'] }), 'EPERM', 'rename a file it does not own');
  await rejectsCode(t, n.call('request', { op: 'rename', args: ['mine', 'secret'] }), 'EPERM', 'rename its own file over root\'s');
  await n.call('request', { op: 'rename', args: ['mine', 'mine2'] });
  await n.call('request', { op: 'unlink', args: ['mine2'] });
  t.same((await root.list()).sort(), ['readable', 'secret', 'shared'], 'its own file renamed and removed; root\'s untouched');

  // root-only requests
  for (const [op, args] of [['configure', [{ windowBudget: 1 }]], ['testInject', [{ where: 'any' }]], ['lockdep', []], ['testExit', []], ['close', []]] as const) {
    await rejectsCode(t, n.call('request', { op, args }), 'EPERM', `request('${op}')`);
  }

  // mapping: nobody cannot open the root 0600 device, so it may not map
  const dev = fs.statSync(d.device);
  t.equal((dev.mode & 0o777).toString(8), '600', 'the device is root 0600');
  await n.call('open', { name: 'own2', create: true });
  await n.call('truncate', { name: 'own2', size: 1 << 20 });
  await rejectsCode(t, n.call('map', { name: 'own2', id: 1 }), 'EACCES', 'map() its own file');
  await rejectsCode(t, n.call('map', { name: 'readable', id: 2, opts: { private: true } }), 'EACCES', 'map() a readable file privately');
  // and the daemon refuses it too, should a client ask anyway
  const { handle } = await n.call<{ handle: number }>('request', { op: 'openFile', args: ['own2', {}] });
  await rejectsCode(t, n.call('request', { op: 'map', args: [handle, 77, 0, 4096, { private: false, sync: false, faultAround: false }] }), 'EACCES', 'the daemon refuses map');
  // file I/O through the daemon still works where modes allow
  await n.call('write', { name: 'own2', offset: 4096, text: 'still fine' });
  t.equal(await n.call('read', { name: 'own2', offset: 4096, length: 10 }), 'still fine');

  // the pool is still whole and root still does anything
  const f = await root.openFile('secret');
  const b = Buffer.alloc(9);
  await f.read(b, 0);
  t.equal(b.toString(), 'root only', 'root\'s secret untouched');
  t.same(await root.request('lockdep'), [], 'no lock-order violations in the daemon');
  await f.close();
});

t.test('a fault connection must come from its control connection\'s user', async (t) => {
  const d = await startDaemon({ args: ['--socket-mode', '666'] });
  t.teardown(() => d.stop());
  const c = await RawControl.open(d.socket);
  t.teardown(() => c.close());
  const h = await c.call<{ session: string; mayMap: boolean }>(1, 'hello', [{ pid: process.pid }]);
  t.equal(h.mayMap, true, 'root may map');
  // nobody presents root's session on a fault connection: hung up on
  const got = asNobody(`
    const net = require('node:net');
    const { encodeHello } = require(${dist('native/wire.js')});
    const s = net.connect(${JSON.stringify(d.socket)});
    let data = 0;
    s.on('connect', () => s.write(encodeHello(process.pid, ${h.session}n)));
    s.on('data', (b) => { data += b.length; });
    s.on('error', () => {});
    s.on('close', () => { console.log(data === 0 ? 'closed' : 'answered'); process.exit(0); });
    setTimeout(() => { console.log('still open'); process.exit(0); }, 30000);`);
  t.equal(got, 'closed', 'nobody is disconnected without a reply');
  // the session is still root's to use
  const f = await RawFault.open(d.socket);
  t.teardown(() => f.close());
  f.hello(BigInt(h.session));
  t.ok(await f.until(() => f.messages.length > 0, 30000), 'root\'s own fault connection is accepted');
  t.equal(f.messages[0]!.type, 4, 'with the daemon\'s HELLO');
  t.match(d.log.join('\n'), /fault connection refused/);
});

t.test('supplementary groups count, for the device as for files', async (t) => {
  const hasSetpriv = spawnSync('setpriv', ['--version']).status === 0;
  if (!hasSetpriv) {
    t.skip('needs setpriv (util-linux)', () => {});
    return;
  }
  const GRP = 100; // 'users'
  const d = await startDaemon({ args: ['--socket-mode', '666'] });
  t.teardown(() => d.stop());
  // The device: read-write for its group.
  fs.chownSync(d.device, 0, GRP);
  fs.chmodSync(d.device, 0o660);
  const hello: [string, unknown[]] = ['hello', [{}]];
  const inGroup = { uid: NOBODY, gid: NOBODY, groups: [GRP] };
  const outside = { uid: NOBODY, gid: NOBODY, groups: [] };
  t.equal(rawAs(inGroup, d.socket, [hello])[0]!.value.mayMap, true, 'a member of the device\'s group (supplementary) may map');
  t.equal(rawAs(outside, d.socket, [hello])[0]!.value.mayMap, false, 'without the group it may not');
  t.equal(rawAs({ uid: NOBODY, gid: GRP, groups: [] }, d.socket, [hello])[0]!.value.mayMap, true, 'and so may one whose primary group it is');

  // A file of uid 1000, group GRP, mode 0640: readable by the group, not writable.
  const made = rawAs({ uid: 1000, gid: GRP, groups: [] }, d.socket, [hello, ['openFile', ['grp', { create: true, mode: 0o640 }]], ['write', ['$h', { $text: 'group data' }, 0]]]);
  t.equal(made[1]!.ok, true, 'uid 1000 creates its file');
  t.equal(made[2]!.value, 10, 'and writes it');
  const member = rawAs(inGroup, d.socket, [hello, ['openFile', ['grp', {}]], ['read', ['$h', 5, 0]], ['truncate', ['$h', 0]]]);
  t.equal(member[1]!.ok, true, 'a supplementary member opens it');
  t.equal(member[2]!.ok, true, 'reads it');
  t.same(member[2]!.value, { $bin: true }, '(the bytes came as the payload)');
  t.equal(member[3]!.error?.code, 'EACCES', 'but may not write it');
  const stranger = rawAs(outside, d.socket, [hello, ['openFile', ['grp', {}]]]);
  t.equal(stranger[1]!.error?.code, 'EACCES', 'someone outside the group may not open it');
});
