// The zero-page race: a store from a thread that did not fault can land between the
// zero page being placed and being write-protected (a copy-on-write into a private
// page nobody asked for). The agent detects it (pagemap) and the policy adopts the
// page into a block, so the store reaches the file. The window is a microsecond
// wide; the DAXMAP_TEST_ZERO_RACE seam puts a store in it every time.
import t from 'tap';
import fs from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { FIXTURES } from './helpers';
import { hugetlb } from '../hugetlb';

function run(mode: string, p = `/dev/shm/daxmap-zero-race-${process.pid}-${mode}`): Promise<any> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [path.join(FIXTURES, 'zero-race-child.js'), p, mode], { env: { ...process.env, DAXMAP_TEST_ZERO_RACE: '1' } });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.on('error', reject);
    c.on('exit', () => {
      fs.rmSync(p, { force: true });
      try {
        resolve(JSON.parse(out.trim()));
      } catch {
        reject(new Error(out));
      }
    });
  });
}

for (const mode of ['page', 'huge'] as const) {
  t.test(`a store racing a zero-page answer is adopted into a block (${mode === 'huge' ? '2 MiB window' : '4 KiB page'})`, async (t) => {
    const r = await run(mode);
    t.equal(r.raced, 1, 'the race was detected');
    t.equal(r.seen, 0x7d, 'the faulting read sees the racing store');
    t.equal(r.file, 0x7d, 'the store is in the file');
    t.equal(r.written, 1, 'the page became a written block');
    t.equal(r.sigbus, 0);
  });
}

t.test('a store racing the agent\'s zero-page answer under a reserve (no fault-around) is copied into a block', async (t) => {
  const r = await run('reserve');
  t.equal(r.agentRaced, 1, 'the agent saw the race');
  t.equal(r.raced, 0, 'the policy had nothing to do');
  t.equal(r.seen, 0x7d, 'the faulting read sees the racing store');
  t.equal(r.file, 0x7d, 'the store is in the file');
  t.equal(r.sigbus, 0);
});

t.test('a store racing the agent\'s zero window under a reserve (fault-around) is copied into a block', async (t) => {
  const r = await run('reserve-window');
  t.equal(r.agentRaced, 1, 'the agent saw the race');
  t.equal(r.raced, 0, 'the policy had nothing to do');
  t.equal(r.seen, 0, 'the faulting read sees zeros: the store raced another page of the run');
  t.equal(r.racedSeen, 0x7d, 'that page holds the store');
  t.equal(r.file, 0x7d, 'and so does the file');
  t.equal(r.sigbus, 0);
});

t.test('a store racing a zero-page answer in a private mapping stays private', async (t) => {
  const r = await run('private');
  t.equal(r.raced, 1);
  t.equal(r.seen, 0x7d, 'the mapping keeps the store');
  t.equal(r.file, 0, 'the file is unchanged');
  t.equal(r.written, 0, 'no block allocated');
});

// On the device-DAX stand-in (hugetlbfs, 2 MiB-granular: docs/pool.md) a shared read
// fault is always a whole zero window, so the 4 KiB case is the 2 MiB one there.
t.test('on the hugetlbfs stand-in: a racing store is adopted into a whole unit, or stays private', async (t) => {
  const h = await hugetlb(t, 16);
  if (typeof h === 'string') {
    t.skip(h, () => {});
    return;
  }
  const r = await run('huge', h.file('zero-race'));
  t.equal(r.raced, 1, 'the race was detected');
  t.equal(r.seen, 0x7d, 'the faulting read sees the racing store');
  t.equal(r.file, 0x7d, 'the store is in the file');
  t.equal(r.written, 1, 'the unit became written');
  t.equal(r.sigbus, 0);
  const p = await run('private', h.file('zero-race-p'));
  t.equal(p.raced, 1);
  t.equal(p.seen, 0x7d, 'the private mapping keeps the store');
  t.equal(p.file, 0, 'the file is unchanged');
  t.equal(p.written, 0, 'no block allocated');
});
