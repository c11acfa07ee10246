// daxmapd's Prometheus endpoint (--metrics HOST:PORT, off by default): GET /metrics
// in the text exposition format, through prom-client's registry. Every figure is read
// when scraped, from what the daemon already keeps (the fault policy's counters and
// latency buckets, the pool's statfs, the sessions), so nothing is added to the fault
// path. docs/daemon.md lists the metrics.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { FaultStatsSnapshot } from '../fault/stats';

/** What the endpoint reads from the daemon at each scrape. */
export interface MetricsSource {
  faults(): FaultStatsSnapshot;
  pool(): Promise<{ usedBytes: number; freeBytes: number; files: number }>;
  mappedBytes(): number;
  clients(): number;
  errors(): Record<string, number>;
}

/** One sample: the metric's own name unless `metricName` (a histogram's _bucket, _sum, _count). */
type Values = { value: number; labels?: Record<string, string | number>; metricName?: string }[];

/** A metric whose values are read at scrape time (prom-client formats it). */
function metric(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: () => Values | Promise<Values>) {
  return {
    name, help, type,
    async get() {
      return { name, help, type, aggregator: 'sum', values: await values() };
    },
  };
}

/** The daemon's metrics in a registry of their own (plus Node's process metrics). */
export function metricsRegistry(src: MetricsSource): Registry {
  const reg = new Registry();
  collectDefaultMetrics({ register: reg, prefix: 'daxmapd_' });
  const add = (m: ReturnType<typeof metric>): void => reg.registerMetric(m as never);
  const by = (label: string, pick: Record<string, (s: FaultStatsSnapshot) => number>) => (): Values => {
    const s = src.faults();
    return Object.entries(pick).map(([v, f]) => ({ labels: { [label]: v }, value: f(s) }));
  };
  add(metric('daxmap_faults_total', 'Page faults handled, by access kind', 'counter',
    by('kind', { read: (s) => s.read, write: (s) => s.write, write_protect: (s) => s.writeProtect })));
  add(metric('daxmap_fault_extents_total', 'Page faults by what the file held at the faulting offset', 'counter',
    by('extent', { hole: (s) => s.hole, unwritten: (s) => s.unwritten, written: (s) => s.written, beyond_eof: (s) => s.beyondEof })));
  add(metric('daxmap_fault_answers_total', 'Fault answers other than a direct mapping of a block', 'counter',
    by('answer', { zero_page: (s) => s.zeroPage, copy: (s) => s.copy, sigbus: (s) => s.sigbus, spurious: (s) => s.spurious, raced: (s) => s.raced })));
  add(metric('daxmap_fault_windows_total', 'Faults answered by window size', 'counter',
    by('size', { '2MiB': (s) => s.pmd, '4KiB': (s) => s.pte })));
  add(metric('daxmap_revokes_total', 'Mapping ranges revoked (truncate, punch, zero range, unlink, rename, stop)', 'counter', () => [{ value: src.faults().revokes }]));
  add(metric('daxmap_evictions_total', 'Installed windows evicted to stay within the window budget', 'counter', () => [{ value: src.faults().evictions }]));
  add(metric('daxmap_fault_latency_seconds', 'Time from the fault to its answer', 'histogram', () => {
    const s = src.faults();
    const h = s.latencyHistogram;
    const out: Values = [];
    let cumulative = 0;
    h.boundsUs.forEach((us, i) => {
      cumulative += h.counts[i]!;
      out.push({ metricName: 'daxmap_fault_latency_seconds_bucket', labels: { le: us / 1e6 }, value: cumulative });
    });
    out.push({ metricName: 'daxmap_fault_latency_seconds_bucket', labels: { le: '+Inf' }, value: s.latencyUs.count });
    out.push({ metricName: 'daxmap_fault_latency_seconds_sum', labels: {}, value: h.sumUs / 1e6 });
    out.push({ metricName: 'daxmap_fault_latency_seconds_count', labels: {}, value: s.latencyUs.count });
    return out;
  }));
  // The pool's figures come from one statfs and list per scrape, shared by the three gauges.
  let pool: Promise<{ usedBytes: number; freeBytes: number; files: number }> | null = null;
  const poolOnce = (): Promise<{ usedBytes: number; freeBytes: number; files: number }> => {
    pool ??= src.pool().finally(() => setImmediate(() => (pool = null)));
    return pool;
  };
  add(metric('daxmap_pool_used_bytes', 'Data bytes of the pool in use by files', 'gauge', async () => [{ value: (await poolOnce()).usedBytes }]));
  add(metric('daxmap_pool_free_bytes', 'Data bytes of the pool free', 'gauge', async () => [{ value: (await poolOnce()).freeBytes }]));
  add(metric('daxmap_files', 'Files in the pool', 'gauge', async () => [{ value: (await poolOnce()).files }]));
  add(metric('daxmap_mapped_bytes', 'Bytes of files mapped by clients (sum of their mappings\' lengths)', 'gauge', () => [{ value: src.mappedBytes() }]));
  add(metric('daxmapd_clients', 'Client processes connected', 'gauge', () => [{ value: src.clients() }]));
  add(metric('daxmapd_errors_total', 'Client traffic refused or failed, by kind', 'counter',
    () => Object.entries(src.errors()).map(([kind, value]) => ({ labels: { kind }, value }))));
  return reg;
}

/** Serves the registry at http://HOST:PORT/metrics; resolves once listening. */
export function serveMetrics(reg: Registry, at: { host: string; port: number }, log: Logger): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('daxmapd: metrics are at /metrics\n');
      return;
    }
    reg.metrics().then(
      (text) => res.writeHead(200, { 'content-type': reg.contentType }).end(text),
      (err: unknown) => {
        log.error({ err }, 'metrics scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`);
      },
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      server.removeListener('error', reject);
      server.on('error', (err) => log.error({ err }, 'metrics server error'));
      const a = server.address() as AddressInfo;
      log.info({ metrics: `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics` }, 'metrics endpoint listening');
      resolve(server);
    });
  });
}
