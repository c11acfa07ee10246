// Open (replay) time of a pool whose metadata log holds one million records, and,
// for comparison, the open time after a clean close (checkpoint). Prints figures.
// Run with `npm run bench` (or npx tap test/perf/pool-replay.test.ts).
import t from 'tap';
import { rmSync } from 'node:fs';
import { openDevice } from '../../dist/device/device.js';
import { Pool, coreOf } from '../../dist/pool/pool.js';

const B = 4096;
const RECORDS = Number(process.env['DAXMAP_BENCH_RECORDS'] ?? 1_000_000);

t.test(`open time with ${RECORDS} log records`, async (t) => {
  const path = `/dev/shm/daxmap-replay-${process.pid}`;
  t.teardown(() => rmSync(path, { force: true }));
  const storage = openDevice(path, { create: true, size: 4 * 2 ** 30, exclusive: true });
  // a log big enough for the run (40 bytes per 4 KiB fallocate record)
  const pool = Pool.createOn(storage, { logBytes: 64 << 20 });
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
  t.comment(`built: ${core.log.appended} records, ${(core.log.used / 2 ** 20).toFixed(1)} MiB of log, ${core.checkpoints} checkpoints, in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  t.equal(core.checkpoints, 0, 'the log was not compacted during the build');
  // crash: make the log durable, drop the pool without a checkpoint
  core.log.persist();
  storage.close();
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const s0 = process.hrtime.bigint();
    const p = await Pool.open(path);
    times.push(Number(process.hrtime.bigint() - s0) / 1e6);
    const c = coreOf(p);
    if (i === 0) t.comment(`replayed ${c.openInfo.replay.records} records in ${c.openInfo.replay.transactions} transactions`);
    t.equal(c.openInfo.replay.records >= RECORDS, true);
    // leave without a checkpoint again so the next open replays the same log
    c.storage.close();
  }
  times.sort((a, b) => a - b);
  t.comment(`open with ${RECORDS} log records: min ${times[0]!.toFixed(0)} ms, median ${times[1]!.toFixed(0)} ms, max ${times[2]!.toFixed(0)} ms (${Math.round(RECORDS / (times[1]! / 1000))} records/s)`);
  const p = await Pool.open(path);
  const c0 = process.hrtime.bigint();
  await p.close(); // checkpoint of 1M extents
  const ckptMs = Number(process.hrtime.bigint() - c0) / 1e6;
  const o0 = process.hrtime.bigint();
  const p2 = await Pool.open(path);
  const openMs = Number(process.hrtime.bigint() - o0) / 1e6;
  t.comment(`checkpoint of ${RECORDS} extents at close: ${ckptMs.toFixed(0)} ms; open from that checkpoint: ${openMs.toFixed(0)} ms`);
  t.equal(coreOf(p2).openInfo.replay.records, 0);
  await p2.close();
});
