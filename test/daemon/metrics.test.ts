// daxmapd's operator surface: the Prometheus endpoint (--metrics), scraped over
// loopback and parsed as the text exposition format; the latency buckets it shares
// with `daxmap stat`; readiness (`daxmap ping`, READY=1 to $NOTIFY_SOCKET); the
// command line of daxmapd (util.parseArgs) keeping its flags and exit codes.
import t from 'tap';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { Pool } from '../../dist/index.js';
import { FaultStats, LATENCY_BOUNDS_US } from '../../dist/fault/stats.js';
import { parseArgs, parseHostPort } from '../../dist/daemon/main.js';
import { startDaemon, tmpName, DAEMON } from './helpers.ts';
import { until } from '../wait.ts';

const PAGE = 4096;
const CLI = resolve(__dirname, '../../bin/daxmap');

interface Sample { name: string; labels: Record<string, string>; value: number }
interface Family { type: string; help: string; samples: Sample[] }

/** The text exposition format (version 0.0.4), strictly: every sample belongs to a family declared with HELP and TYPE. */
function parseExposition(text: string): Map<string, Family> {
  const fams = new Map<string, Family>();
  let current: string | null = null;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      if (fams.has(m[1]!)) throw new Error(`family ${m[1]} declared twice`);
      fams.set(m[1]!, { type: '', help: m[2]!, samples: [] });
      current = m[1]!;
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (m) {
      if (m[1] !== current) throw new Error(`TYPE of ${m[1]} not after its HELP`);
      fams.get(current)!.type = m[2]!;
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const fam = fams.get(current ?? '');
    const name = m[1]!;
    const base = fam?.type === 'histogram' ? name.replace(/_(bucket|sum|count)$/, '') : name;
    if (!fam || base !== current) throw new Error(`sample ${name} outside its family (${current})`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').match(/[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"/g) ?? []) {
      const eq = l.indexOf('=');
      labels[l.slice(0, eq)] = l.slice(eq + 2, -1);
    }
    // Go's ParseFloat, as Prometheus reads it: NaN and ±Inf in any case.
    const v = m[3]!;
    const value = /^[+-]?inf$/i.test(v) ? (v.startsWith('-') ? -Infinity : Infinity) : /^nan$/i.test(v) ? NaN : Number(v);
    if (Number.isNaN(value) && !/^nan$/i.test(v)) throw new Error(`bad value in ${line}`);
    fam.samples.push({ name, labels, value });
  }
  return fams;
}

function get(url: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((res, rej) => {
    http.get(url, (r) => {
      let body = '';
      r.setEncoding('utf8');
      r.on('data', (d: string) => (body += d));
      r.on('end', () => res({ status: r.statusCode ?? 0, type: String(r.headers['content-type']), body }));
    }).on('error', rej);
  });
}

function value(f: Map<string, Family>, name: string, labels: Record<string, string> = {}): number {
  const fam = f.get(name) ?? f.get(name.replace(/_(bucket|sum|count)$/, ''));
  const s = fam?.samples.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  if (!s) throw new Error(`no sample ${name} ${JSON.stringify(labels)}`);
  return s.value;
}

t.test('latency buckets: fixed microsecond bounds, percentiles interpolated within them', async (t) => {
  const pool = new FaultStats();
  const file = new FaultStats(pool);
  t.same(file.snapshot(0).latencyUs, { p50: 0, p90: 0, p99: 0, max: 0, count: 0 });
  for (let i = 0; i < 100; i++) file.latency(41 + (i % 10)); // 41..50 µs: all in the (40, 50] bucket
  const s = pool.snapshot(0);
  const h = s.latencyHistogram;
  t.same(h.boundsUs, [...LATENCY_BOUNDS_US]);
  t.equal(h.counts.length, LATENCY_BOUNDS_US.length + 1);
  t.equal(h.counts[LATENCY_BOUNDS_US.indexOf(50)], 100, 'all in the ≤50 µs bucket');
  t.equal(h.sumUs, 10 * (41 + 42 + 43 + 44 + 45 + 46 + 47 + 48 + 49 + 50));
  t.equal(s.latencyUs.p50, 45, 'p50 halfway through the bucket, not its power-of-two bound');
  t.equal(s.latencyUs.p90, 49);
  t.equal(s.latencyUs.max, 50);
  file.latency(5_000_000); // past every bound
  const s2 = file.snapshot(0);
  t.equal(s2.latencyHistogram.counts.at(-1), 1);
  t.equal(s2.latencyUs.max, 5_000_000);
  t.ok(s2.latencyUs.p99 <= 50, 'the outlier is above p99 of 101');
  t.same(pool.snapshot(0).latencyHistogram, s2.latencyHistogram, 'a file feeds its pool');
});

t.test('daxmapd command line (util.parseArgs): flags, defaults, errors', async (t) => {
  const a = parseArgs(['--device', 'x.pool', '--size=2G', '--socket', '/tmp/s', '--socket-mode', '0600', '--log-level', 'warn', '--metrics', '127.0.0.1:9464']);
  t.same(a, { device: 'x.pool', socket: '/tmp/s', size: 2 ** 31, socketMode: 0o600, logLevel: 'warn', metrics: { host: '127.0.0.1', port: 9464 }, help: false });
  t.equal(parseArgs([]).metrics, null, 'no metrics endpoint unless asked');
  t.equal(parseArgs(['-h']).help, true);
  t.same(parseHostPort('[::1]:0'), { host: '::1', port: 0 });
  t.same(parseHostPort(':9464'), { host: '::', port: 9464 });
  for (const bad of [['--metrics', '9464'], ['--metrics', 'h:99999'], ['--bogus'], ['--socket'], ['--help=1'], ['stray'], ['--socket-mode', '8'], ['--log-level', 'loud'], ['--size', 'big']]) {
    t.throws(() => parseArgs(bad), bad.join(' '));
  }
  const r = spawnSync(process.execPath, [DAEMON, '--metrics', 'nope'], { encoding: 'utf8' });
  t.equal(r.status, 2, 'bad options exit 2');
  t.match(r.stderr, /--metrics wants HOST:PORT/);
  const m = spawnSync(process.execPath, [DAEMON, '--socket'], { encoding: 'utf8' });
  t.equal(m.status, 2);
  t.match(m.stderr, /--socket needs a value/);
  const h = spawnSync(process.execPath, [DAEMON, '--help'], { encoding: 'utf8' });
  t.equal(h.status, 0);
  for (const flag of ['--device', '--size', '--socket', '--socket-mode', '--log-level', '--metrics', '--help']) t.match(h.stdout, flag);
});

t.test('the metrics endpoint, scraped over loopback', async (t) => {
  // Reserves off: every one of the faults below must reach the daemon to be counted
  // (with them, its sparse writes are answered in the client: docs/fault-policy.md, "Reserves").
  const d = await startDaemon({ args: ['--metrics', '127.0.0.1:0'], env: { DAXMAP_RESERVE: 'off' } });
  t.teardown(() => d.stop());
  await until(() => d.log.some((l) => l.includes('metrics endpoint listening')), 'the metrics endpoint listening');
  const url = JSON.parse(d.log.find((l) => l.includes('metrics endpoint listening'))!).metrics as string;
  t.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);

  const first = await get(url);
  t.equal(first.status, 200);
  t.match(first.type, /^text\/plain; version=0\.0\.4/);
  const f0 = parseExposition(first.body);
  const types: Record<string, string> = {
    daxmap_faults_total: 'counter', daxmap_fault_extents_total: 'counter', daxmap_fault_answers_total: 'counter',
    daxmap_fault_windows_total: 'counter', daxmap_fault_latency_seconds: 'histogram', daxmap_revokes_total: 'counter',
    daxmap_evictions_total: 'counter', daxmap_pool_used_bytes: 'gauge', daxmap_pool_free_bytes: 'gauge', daxmap_files: 'gauge',
    daxmap_mapped_bytes: 'gauge', daxmapd_clients: 'gauge', daxmapd_errors_total: 'counter',
  };
  for (const [name, type] of Object.entries(types)) t.equal(f0.get(name)?.type, type, `${name} is a ${type}`);
  t.ok(f0.has('daxmapd_process_resident_memory_bytes'), 'Node process metrics too');
  t.equal(value(f0, 'daxmap_faults_total', { kind: 'write' }), 0);
  t.equal(value(f0, 'daxmapd_clients'), 0);
  t.equal(value(f0, 'daxmap_files'), 0);
  const buckets = f0.get('daxmap_fault_latency_seconds')!.samples.filter((s) => s.name.endsWith('_bucket'));
  t.same(buckets.map((s) => s.labels['le']), [...LATENCY_BOUNDS_US.map((us) => String(us / 1e6)), '+Inf'], 'buckets in seconds, microsecond bounds');
  t.equal(value(f0, 'daxmap_fault_latency_seconds_count'), 0);
  const free0 = value(f0, 'daxmap_pool_free_bytes');
  t.ok(free0 > 0);

  // 8 write faults and 4 read faults on holes, 4 KiB each.
  const pool = await Pool.connect(d.socket);
  const f = await pool.openFile('m', { create: true });
  await f.truncate(64 * PAGE);
  const m = await f.map({ faultAround: false });
  for (let p = 0; p < 8; p++) m.buffer[p * PAGE] = 1;
  let sum = 0;
  for (let p = 8; p < 12; p++) sum += m.buffer[p * PAGE]!;
  t.equal(sum, 0);
  await until(async () => (await pool.stats()).latencyUs.count >= 12, 'the daemon timed 12 faults');

  const f1 = parseExposition((await get(url)).body);
  t.equal(value(f1, 'daxmap_faults_total', { kind: 'write' }), 8);
  t.equal(value(f1, 'daxmap_faults_total', { kind: 'read' }), 4);
  t.equal(value(f1, 'daxmap_fault_answers_total', { answer: 'zero_page' }), 4);
  t.equal(value(f1, 'daxmap_fault_extents_total', { extent: 'hole' }), 12);
  t.equal(value(f1, 'daxmap_fault_windows_total', { size: '4KiB' }), 12);
  t.equal(value(f1, 'daxmap_fault_latency_seconds_count'), 12);
  t.equal(value(f1, 'daxmap_fault_latency_seconds_bucket', { le: '+Inf' }), 12);
  const cum = f1.get('daxmap_fault_latency_seconds')!.samples.filter((s) => s.name.endsWith('_bucket')).map((s) => s.value);
  t.ok(cum.every((v, i) => i === 0 || v >= cum[i - 1]!), 'buckets are cumulative');
  const sumS = value(f1, 'daxmap_fault_latency_seconds_sum');
  t.ok(sumS > 0 && sumS < 12 * 10, `latency sum in seconds (${sumS})`);
  t.equal(value(f1, 'daxmapd_clients'), 1);
  t.equal(value(f1, 'daxmap_files'), 1);
  t.equal(value(f1, 'daxmap_mapped_bytes'), 64 * PAGE);
  t.equal(value(f1, 'daxmap_pool_free_bytes'), free0 - 8 * PAGE, 'eight blocks allocated');
  t.equal(value(f1, 'daxmap_pool_used_bytes') - value(f0, 'daxmap_pool_used_bytes'), 8 * PAGE);
  const revokes0 = value(f1, 'daxmap_revokes_total');
  await f.punchHole(0, PAGE);
  t.ok(value(parseExposition((await get(url)).body), 'daxmap_revokes_total') > revokes0, 'a punch revokes');

  // daxmap stat prints the same buckets.
  const st = spawnSync(process.execPath, [CLI, 'stat', '--socket', d.socket], { encoding: 'utf8' });
  t.equal(st.status, 0, st.stderr);
  const line = /by bucket: (.*)/.exec(st.stdout)?.[1] ?? '';
  const printed = [...line.matchAll(/(\S+) (\d+)/g)].reduce((n, x) => n + Number(x[2]), 0);
  t.equal(printed, 12, `every fault in a printed bucket: ${line}`);

  await m.unmap();
  await f.close();
  await pool.close();
  await until(async () => value(parseExposition((await get(url)).body), 'daxmapd_clients') === 0, 'the client gone from the gauge');
  t.equal((await get(url.replace('/metrics', '/other'))).status, 404);
});

t.test('a metrics address in use: exit 1, nothing left listening', async (t) => {
  const busy = net.createServer();
  await new Promise<void>((res) => busy.listen(0, '127.0.0.1', res));
  t.teardown(() => busy.close());
  const port = (busy.address() as net.AddressInfo).port;
  const socket = tmpName('sock');
  const device = `/dev/shm/daxmap-mtest-${process.pid}.pool`;
  t.teardown(() => fs.rmSync(device, { force: true }));
  const r = spawnSync(process.execPath, [DAEMON, '--device', device, '--size', '16M', '--socket', socket, '--metrics', `127.0.0.1:${port}`], { encoding: 'utf8', timeout: 60000 });
  t.equal(r.status, 1, r.stdout + r.stderr);
  t.match(r.stdout, /"level":60.*EADDRINUSE/, 'a fatal line naming the reason');
  t.notOk(fs.existsSync(socket), 'the control socket is not left behind');
});

t.test('readiness: daxmap ping, and READY=1 to $NOTIFY_SOCKET', async (t) => {
  const gone = tmpName('sock');
  const none = spawnSync(process.execPath, [CLI, 'ping', '--socket', gone], { encoding: 'utf8' });
  t.equal(none.status, 2, 'no daemon: exit 2');
  t.match(none.stderr, new RegExp(`no answer from a daxmapd at ${gone}.*ENOENT`));
  t.equal(spawnSync(process.execPath, [CLI, 'ping'], { encoding: 'utf8' }).status, 2, 'usage error: exit 2');

  // A datagram socket stands in for systemd's: python3 binds it (Node has no UNIX
  // datagram sockets) and prints what arrives.
  const notify = tmpName('notify');
  const py = spawn('python3', ['-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print('bound', flush=True)
while True:
    print(repr(s.recv(4096).decode()), flush=True)
`, notify], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    py.kill();
    fs.rmSync(notify, { force: true });
  });
  let got = '';
  py.stdout!.on('data', (b: Buffer) => (got += b.toString()));
  await until(() => got.includes('bound'), 'the notify socket bound');

  // ping --wait is started before the daemon and answers once it serves.
  const socket = tmpName('sock');
  const waiting = spawn(process.execPath, [CLI, 'ping', '--socket', socket, '--wait', '60'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let pingOut = '';
  waiting.stdout!.on('data', (b: Buffer) => (pingOut += b.toString()));
  const pinged = new Promise<number | null>((res) => waiting.on('exit', (c) => res(c)));
  const d = await startDaemon({ socket, env: { NOTIFY_SOCKET: notify } });
  t.teardown(() => d.stop());
  await until(() => got.includes('READY=1'), 'READY=1 on the notify socket', { detail: () => got });
  t.match(got, new RegExp(`READY=1\\\\nMAINPID=${d.proc.pid}\\\\n`), 'READY=1 and the main pid');
  t.equal(await pinged, 0, 'ping --wait exits 0 once the daemon answers');
  t.match(pingOut, new RegExp(`daxmapd at ${socket} answers: device ${d.device}`));
  const ok = spawnSync(process.execPath, [CLI, 'ping', '--socket', socket], { encoding: 'utf8' });
  t.equal(ok.status, 0, ok.stderr);
  t.same(await d.stop(), { code: 0, signal: null });
  await until(() => got.includes('STOPPING=1'), 'STOPPING=1 on the notify socket', { detail: () => got });
  const after = spawnSync(process.execPath, [CLI, 'ping', '--socket', socket], { encoding: 'utf8' });
  t.equal(after.status, 2, 'stopped: exit 2');
});
