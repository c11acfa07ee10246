// Open (replay) time of a pool whose metadata log holds one million records, and,
// for comparison, the open time after a clean close (checkpoint). Prints figures.
// Run with `npm run bench` (or npx tap test/perf/pool-replay.test.ts).
import t from 'tap';
import { rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { openDevice } from '../../dist/device/device.js';
import { PoolFs, coreOf } from '../../dist/pool/pool-fs.js';

const B = 4096;
const RECORDS = Number(process.env['DAXMAP_BENCH_RECORDS'] ?? 1_000_000);

t.test(`open time with ${RECORDS} log records`, async (t) => {
  const path = `/dev/shm/daxmap-replay-${process.pid}`;
  t.teardown(() => rmSync(path, { force: true }));
  const storage = openDevice(path, { create: true, size: 4 * 2 ** 30, exclusive: true });
  // a log big enough for the run (40 bytes per 4 KiB fallocate record)
  const pool = PoolFs.createOn(storage, { logBytes: 64 << 20 });
  const files = await Promise.all(Array.from({ length: 100 }, (_, i) => pool.openFile(`f${i}`, { create: true })));
  const t0 = Date.now();
  const per = Math.ceil(RECORDS / files.length);
  let n = 0;
  for (let k = 0; k < per && n < RECORDS; k++) {
    for (const f of files) {
      if (n++ >= RECORDS) break;
      await f.fallocate(k * 2 * B, B, { keepSize: true }); // one Map record each, never merged
    }
  }
  const core = coreOf(pool);
  t.comment(`built: ${core.txn.log.appended} records, ${(core.txn.log.used / 2 ** 20).toFixed(1)} MiB of log, ${core.txn.checkpoints} checkpoints, in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  t.equal(core.txn.checkpoints, 0, 'the log was not compacted during the build');
  // crash: make the log durable, drop the pool without a checkpoint
  core.txn.log.persist();
  storage.close();
  // open in a fresh process each time, as a restart would (this process still holds the built pool's heap)
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = openInChild(path, false);
    times.push(r.ms);
    if (i === 0) t.comment(`replayed ${r.records} records (fresh process)`);
    t.ok(r.records >= RECORDS);
  }
  times.sort((a, b) => a - b);
  t.comment(`open with ${RECORDS} log records: min ${times[0]!.toFixed(0)} ms, median ${times[1]!.toFixed(0)} ms, max ${times[2]!.toFixed(0)} ms (${Math.round(RECORDS / (times[1]! / 1000))} records/s)`);
  const c = openInChild(path, true); // opens, replays, closes (checkpoint of every extent)
  const o = openInChild(path, false);
  t.comment(`checkpoint of ${RECORDS} extents at close: ${c.closeMs.toFixed(0)} ms; open from that checkpoint: ${o.ms.toFixed(0)} ms (${o.records} records to replay)`);
  t.equal(o.records, 0);
});

function openInChild(path: string, close: boolean): { ms: number; records: number; closeMs: number } {
  const code = `
    const { PoolFs, coreOf } = require(${JSON.stringify(resolve(__dirname, '../../dist/pool/pool-fs.js'))});
    (async () => {
      const t0 = process.hrtime.bigint();
      const p = await PoolFs.open(${JSON.stringify(path)});
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const records = coreOf(p).openInfo.replay.records;
      let closeMs = 0;
      if (${close}) { const c0 = process.hrtime.bigint(); await p.close(); closeMs = Number(process.hrtime.bigint() - c0) / 1e6; }
      else coreOf(p).storage.close(); // leave the log as it is
      console.log(JSON.stringify({ ms, records, closeMs }));
    })();`;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout) as { ms: number; records: number; closeMs: number };
}
