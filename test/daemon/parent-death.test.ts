// A test process killed outright (tap kills a file at its timeout) takes the daxmapd
// it started with it: a daemon left running held its device, and on the hugetlbfs
// stand-in the huge pages the suite must give back (test/daemon/helpers.ts).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';

t.test('a test process SIGKILLed: its daxmapd exits too', async (t) => {
  const child = spawn(process.execPath, [...process.execArgv, path.join(__dirname, 'parent-death-child.ts')], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const line = await new Promise<string>((res, rej) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) res(out.trim());
    });
    child.on('exit', (code) => rej(new Error(`the test process exited (${code}) before its daemon listened`)));
  });
  const [pidText, device, socket] = line.split(' ');
  const pid = Number(pidText);
  // The killed process cannot remove its daemon's device and socket.
  t.teardown(() => {
    for (const f of [device, socket]) if (f) fs.rmSync(f, { force: true });
  });
  t.ok(pid > 0 && fs.existsSync(`/proc/${pid}`), `the daemon (pid ${pid}) is running`);
  child.kill('SIGKILL');
  await new Promise((res) => child.once('exit', res));
  // Wait for it to go (a zombie is reaped by init, so /proc/<pid> disappears).
  const end = Date.now() + 60000;
  const gone = (): boolean => {
    try {
      return /^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    } catch {
      return true;
    }
  };
  while (!gone() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  t.ok(gone(), 'the daemon exited with its parent');
  if (!gone()) process.kill(pid, 'SIGKILL');
});
