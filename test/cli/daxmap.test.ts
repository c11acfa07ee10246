// The daxmap CLI: mkfs/ls/stat/fsck through bin/daxmap in a child process, help on
// every command, exit codes, and a damaged pool reported precisely.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, openSync, writeSync, closeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';
import { main } from '../../dist/cli/main.js';
import { parseSize, formatSize } from '../../dist/util/units.js';
import { ProgressBar } from '../../dist/cli/progress.js';
import { useLockdep } from '../lock/guard.ts';

useLockdep(t);

const bin = resolve(__dirname, '../../bin/daxmap');
const dir = mkdtempSync(join(tmpdir(), 'daxmap-cli-'));
const shm = `/dev/shm/daxmap-cli-${process.pid}`;
t.teardown(() => { rmSync(dir, { recursive: true, force: true }); rmSync(shm, { force: true }); });

function cli(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

async function inproc(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s), isTTY: false } });
  return { code, out, err };
}

t.test('sizes', async (t) => {
  t.equal(parseSize('4096'), 4096);
  t.equal(parseSize('64K'), 65536);
  t.equal(parseSize('1G'), 2 ** 30);
  t.equal(parseSize('2GiB'), 2 ** 31);
  t.equal(parseSize('1.5m'), 1.5 * 2 ** 20);
  t.equal(parseSize('10MB'), 10 * 2 ** 20);
  for (const bad of ['', 'x', '-1', '1X', '0']) t.throws(() => parseSize(bad), { code: 'EINVAL' });
  t.equal(formatSize(512), '512B');
  t.equal(formatSize(1536), '1.5K');
  t.equal(formatSize(2 ** 30), '1G');
});

t.test('help on every command, usage errors exit 2', async (t) => {
  const top = cli('--help'); // through bin/daxmap once
  t.equal(top.code, 0);
  for (const c of ['mkfs', 'fsck', 'ls', 'stat']) {
    t.match(top.out, new RegExp(`\\n  ${c} `));
    const h = await inproc(c, '--help');
    t.equal(h.code, 0, `${c} --help`);
    t.match(h.out, new RegExp(`^Usage: daxmap ${c} <device>`));
  }
  t.match((await inproc('ls', '--help')).out, /--socket PATH/);
  t.equal(cli().code, 2);
  t.equal((await inproc('frobnicate')).code, 2);
  t.equal((await inproc('mkfs')).code, 2);
  t.equal((await inproc('mkfs', 'a', 'b')).code, 2);
  t.equal((await inproc('fsck', 'x', '--nope')).code, 2);
  t.equal((await inproc('fsck', 'x', '-q')).code, 2);
  t.equal((await inproc('mkfs', join(dir, 'x'), '--size')).code, 2);
  t.equal((await inproc('mkfs', join(dir, 'x'), '--size', 'lots')).code, 2);
  t.equal((await inproc('mkfs', join(dir, 'x'), '--force=yes')).code, 2);
  t.equal((await inproc('--version')).code, 0);
});

t.test('mkfs, ls, stat, fsck on a tmpfs and a disk pool', async (t) => {
  for (const [i, dev] of [shm, join(dir, 'pool')].entries()) {
    const run = i === 0 ? async (...a: string[]) => cli(...a) : inproc; // the tmpfs round goes through bin/daxmap
    const m = await run('mkfs', dev, '--size', '32M');
    t.equal(m.code, 0, m.err);
    t.match(m.out, i === 0 ? /formatted .*: 32M tmpfs device \(4K granular\)/ : /formatted .*: 32M file device \(4K granular\)/);
    const again = await run('mkfs', dev);
    t.equal(again.code, 2, 'refuses an existing pool');
    t.match(again.err, /EEXIST/);
    const pool = await PoolFs.open(dev);
    const f = await pool.openFile('file one', { create: true });
    await f.write(Buffer.alloc(10000, 1), 0);
    await f.fallocate(1 << 20, 1 << 20, { keepSize: true });
    await (await pool.openFile('empty', { create: true })).fsync();
    t.equal((await run('ls', dev)).code, 2, 'busy while open');
    t.match((await run('fsck', dev)).err, /EBUSY/);
    await pool.close();
    const ls = await run('ls', dev, '--bytes');
    t.equal(ls.code, 0, ls.err);
    t.match(ls.out, /NAME\s+SIZE\s+ALLOCATED\s+EXTENTS/);
    t.match(ls.out, /empty\s+0\s+0\s+0/);
    t.match(ls.out, /file one\s+10000\s+1060864\s+2/);
    const lj = (await run('ls', dev, '--json')).out.trim().split('\n').map((l) => JSON.parse(l));
    t.same(lj.map((r) => r.name), ['empty', 'file one']);
    const st = JSON.parse((await run('stat', dev, '--json')).out);
    t.same(Object.keys(st), ['device', 'kind', 'granularity', 'uuid', 'formatVersion', 'deviceBytes', 'blockSize', 'dataBytes', 'freeBytes',
      'usedBytes', 'files', 'maxFiles', 'logBytesUsed', 'logBytes', 'checkpointGeneration', 'replayedRecords', 'created']);
    t.equal(st.files, 2);
    t.equal(st.logBytesUsed, 0, 'closed cleanly: the log was checkpointed');
    t.equal(st.deviceBytes, 32 << 20);
    t.equal(st.granularity, 4096, 'a file maps at any page');
    t.match((await run('stat', dev)).out, /freeBytes: \d+ \(/);
    const fst = await run('stat', dev, 'file one');
    t.match(fst.out, /size: 10000/);
    t.match(fst.out, /extents:\n {2}0\+12288 written\n {2}1048576\+1048576 unwritten/);
    t.equal((await run('stat', dev, 'nope')).code, 2);
    t.equal((await run('ls', dev, '--socket', '/tmp/x')).code, 2);
    const fk = await run('fsck', dev);
    t.equal(fk.code, 0, fk.out + fk.err);
    t.match(fk.out, /clean\n$/);
    const fj = JSON.parse((await run('fsck', dev, '--json')).out);
    t.equal(fj.clean, true);
    t.equal(fj.summary.files, 2);
  }
});

t.test('fsck reports damage precisely and exits 1', async (t) => {
  const dev = join(dir, 'damaged');
  t.equal((await inproc('mkfs', dev, '--size', '16M')).code, 0);
  const pool = await PoolFs.open(dev);
  const f = await pool.openFile('f', { create: true });
  await f.write(Buffer.alloc(3 * 4096, 7), 0);
  const core = coreOf(pool);
  const devBlock = core.lookup(core.state.names.get('f')!, 0).deviceOffset! / 4096;
  const g = await pool.openFile('g', { create: true });
  // forge a valid record that gives g a block of f: fsck must name both
  core.txn.log.append([{ t: 5, id: core.state.names.get('g')!.id, fb: 0, len: 1, dev: devBlock + 1, state: 2 } as never]);
  core.txn.log.persist();
  // leave without close (a crash): the forged record stays in the log
  core.storage.close();
  void g;
  const r = cli('fsck', dev);
  t.equal(r.code, 1);
  t.match(r.out, /error: .*device block \d+ mapped by file \d+ \('g'\) is already owned by file \d+ \('f'\)/);
  // superblocks both destroyed
  const d2 = join(dir, 'nosb');
  t.equal((await inproc('mkfs', d2, '--size', '16M')).code, 0);
  const fd = openSync(d2, 'r+');
  writeSync(fd, Buffer.alloc(16, 0xff), 0, 16, 100);
  writeSync(fd, Buffer.alloc(16, 0xff), 0, 16, 4096 + 100);
  closeSync(fd);
  const r2 = await inproc('fsck', d2);
  t.equal(r2.code, 1);
  t.match(r2.out, /error: .*bad superblock \(superblock copy 0: checksum .*; superblock copy 1: checksum/);
  // one copy: a warning, still clean
  const d3 = join(dir, 'onesb');
  t.equal((await inproc('mkfs', d3, '--size', '16M')).code, 0);
  const fd3 = openSync(d3, 'r+');
  writeSync(fd3, Buffer.alloc(16, 0xff), 0, 16, 100);
  closeSync(fd3);
  const r3 = await inproc('fsck', d3);
  t.equal(r3.code, 0);
  t.match(r3.out, /warning: superblock copy 0: checksum/);
  // not a pool
  const d4 = join(dir, 'foreign');
  writeFileSync(d4, Buffer.alloc(1 << 20, 1));
  const r4 = await inproc('fsck', d4);
  t.equal(r4.code, 1);
  t.match(r4.out, /not a daxmap pool/);
  t.equal((await inproc('fsck', join(dir, 'missing'))).code, 2);
  t.equal((await inproc('ls', d4)).code, 1, 'ls of a non-pool is a finding (EBADF)');
});

t.test('in-process main and the progress bar', async (t) => {
  const dev = join(dir, 'inproc');
  t.equal((await inproc('mkfs', dev, '--size=8M')).code, 0);
  t.equal((await inproc('fsck', dev)).code, 0);
  t.equal((await inproc('ls', dev, '--json')).out, '');
  t.equal((await inproc('stat', dev)).code, 0);
  t.equal((await inproc('stat')).code, 2);
  t.equal((await inproc('ls', dev, '--bytes=3')).code, 2);
  t.equal((await inproc('help')).code, 0);
  let drawn = '';
  const bar = new ProgressBar({ isTTY: true, columns: 60, write: (s: string) => (drawn += s) });
  bar.update('fsck', 0, 10);
  bar.update('fsck', 5, 10);
  bar.update('fsck', 10, 10);
  bar.done();
  t.match(drawn, /\rfsck \[#+ *\] {2}50%/);
  // eslint-disable-next-line no-control-regex -- the bar ends with the terminal's erase-line escape
  t.match(drawn, /100%\r\x1b\[K$/);
  let quiet = '';
  const off = new ProgressBar({ isTTY: false, write: (s: string) => (quiet += s) });
  off.update('x', 1, 2);
  off.done();
  t.equal(quiet, '', 'nothing drawn when stderr is not a terminal');
});

t.test('one rule for the exit status: 1 a device read and found unsound, 2 nothing examined', async (t) => {
  const sub = join(dir, 'a-directory');
  mkdirSync(sub);
  const foreign = join(dir, 'exit-foreign');
  writeFileSync(foreign, Buffer.alloc(1 << 20, 7));
  const missing = join(dir, 'exit-missing');
  const pool = join(dir, 'exit-pool');
  t.equal((await inproc('mkfs', pool, '--size', '8M')).code, 0);
  const cases: [string[], number, string][] = [
    [['stat', sub], 2, 'a directory'],
    [['fsck', sub], 2, 'a directory'],
    [['ls', sub], 2, 'a directory'],
    [['mkfs', sub], 2, 'a directory'],
    [['stat', missing], 2, 'a missing device'],
    [['ls', missing], 2, 'a missing device'],
    [['fsck', missing], 2, 'a missing device'],
    [['stat', '/dev/null'], 2, 'a character device that is not device-dax'],
    [['fsck', '/dev/null'], 2, 'a character device that is not device-dax'],
    [['stat', foreign], 1, 'not a pool'],
    [['ls', foreign], 1, 'not a pool'],
    [['fsck', foreign], 1, 'not a pool'],
    [['stat', pool, 'no-such-file'], 2, 'no such file in the pool'],
    [['ls', '--socket', join(dir, 'no-daemon.sock')], 2, 'no daemon'],
    [['stat', '--socket', join(dir, 'no-daemon.sock')], 2, 'no daemon'],
    [['fsck', pool], 0, 'a clean pool'],
    [['stat', pool], 0, 'a clean pool'],
  ];
  for (const [args, code, what] of cases) {
    const r = await inproc(...args);
    t.equal(r.code, code, `daxmap ${args.join(' ')} (${what}): ${code}${r.code === code ? '' : ` — ${r.err}`}`);
  }
  t.match(cli('--help').out, /Exit status \(every command\):\n {2}0 {2}done/, 'the rule is in the help');
  t.match(cli('stat', '--help').out, /Exit status \(every command\)/, 'and in each command\'s help');
});
