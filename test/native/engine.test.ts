// userfaultfd availability: the handshake, and the EUFFD error with its remedy.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { probeUffd, agentStats } from '../../dist/native/engine';
import { runChild } from './helpers';
import { stageFor, NOBODY } from '../unprivileged';

t.test('userfaultfd opens with the features daxmap needs', async (t) => {
  const info = probeUffd();
  t.ok(info.via === 'syscall' || info.via === '/dev/userfaultfd');
  const POISON = 1n << 14n;
  const WP = 1n << 0n;
  const REMAP = 1n << 2n;
  t.ok((info.features & POISON) !== 0n, 'POISON offered');
  t.ok((info.features & WP) !== 0n, 'WP offered');
  t.ok((info.features & REMAP) !== 0n, 'EVENT_REMAP offered');
  t.type(agentStats().events, 'number');
});

function checkEuffd(t: Test, out: any, region: any): void {
  t.equal(out.ok, false);
  t.equal(out.code, 'EUFFD');
  t.match(out.message, /userfaultfd is unavailable/);
  t.match(out.message, /vm\.unprivileged_userfaultfd=1/, 'says how to enable it by sysctl');
  t.match(out.message, /\/dev\/userfaultfd/, 'says how to enable it by the device node');
  t.match(out.message, /seccomp/, 'mentions container seccomp profiles');
  t.same(region, { region: false, code: 'EUFFD' }, 'creating a region fails the same way');
}

// A real denial: an unprivileged user on this machine (vm.unprivileged_userfaultfd=0,
// /dev/userfaultfd root-only). That user runs a staged copy of the library, so this
// works wherever the checkout lives (../unprivileged.ts).
t.test('EUFFD for an unprivileged user', async (t) => {
  const sysctl = fs.readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim();
  const devMode = fs.statSync('/dev/userfaultfd', { throwIfNoEntry: false })?.mode ?? 0;
  if (process.getuid?.() !== 0 || sysctl !== '0' || (devMode & 0o006) !== 0) {
    t.skip('needs root to drop to an unprivileged user, and a machine where that user is denied userfaultfd', () => {});
    return;
  }
  const stage = stageFor(t, ['test/native/fixtures/euffd-child.js'], { uid: NOBODY, gid: NOBODY });
  if (typeof stage === 'string') {
    t.skip(`cannot run as uid ${NOBODY}: ${stage}`, () => {});
    return;
  }
  const probe = await runChild('euffd-child.js', [], { stage });
  t.equal(probe.code, 0, `the probe ran as uid ${NOBODY}`, { stderr: probe.stderr });
  const lines = probe.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  t.equal(lines.length, 2, 'it reported the probe and the region', { stdout: probe.stdout });
  checkEuffd(t, lines[0], lines[1]);
});

// The same message through the test seam, which works wherever the checkout lives.
t.test('EUFFD through the denial seam', async (t) => {
  const probe = await runChild('euffd-child.js', [], { env: { DAXMAP_TEST_DENY_UFFD: '1' } });
  const lines = probe.stdout.trim().split('\n').map((l) => JSON.parse(l));
  checkEuffd(t, lines[0], lines[1]);
  t.match(lines[0].message, /EPERM/, 'names the underlying errors');
});

t.test('the device layer works without userfaultfd', async (t) => {
  const p = path.join('/dev/shm', `daxmap-nouffd-${process.pid}`);
  t.teardown(() => fs.rmSync(p, { force: true }));
  const src = `
    const { openDevice } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/device/device'))});
    const d = openDevice(${JSON.stringify(p)}, { create: true, size: 4096 });
    d.view(0, 2).write('ok'); d.close(); console.log('device ok');`;
  const child = await new Promise<{ out: string; code: number | null }>((res) => {
    const c = spawn(process.execPath, ['-e', src], { env: { ...process.env, DAXMAP_TEST_DENY_UFFD: '1' } });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.on('exit', (code: number | null) => res({ out, code }));
  });
  t.equal(child.code, 0);
  t.match(child.out, /device ok/);
});
