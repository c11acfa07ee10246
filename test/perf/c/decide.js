// The fault policy's decision alone (docs/faults.md), for test/perf/breakdown.test.ts.
// Plain JavaScript run by a plain `node` child: under tap the test process carries
// tap's loaders and instrumentation, which make every promise dearer and inflated the
// decision (an async chain) about twofold; the pool's own service worker is started
// without them (execArgv: []), so this child is what matches it.
//
// Usage: node decide.js DIR BYTES
// FaultPolicy is driven with a Client whose run() answers at once, on a real pool in
// DIR: BYTES/4096 faults of each kind in order (faultAround: false), after 768 faults
// on another file to warm the JIT. The first half of each kind's faults run as they
// are; the second half with each stage timed by wrapping its method from here (no
// change to lib/). Prints one JSON object: kind -> stage -> the median over the
// faults of that stage's µs, plus 'total' (the decision, unwrapped), 'total, stages
// timed', 'mean' (of the unwrapped half) and 'worst' (µs, of the unwrapped half).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const DIST = path.resolve(__dirname, '../../../dist');
const { PoolFs } = require(`${DIST}/pool/index`);
const { poolInternals } = require(`${DIST}/pool/internal`);
const { FaultPolicy } = require(`${DIST}/fault/policy`);
const { WindowBudget } = require(`${DIST}/fault/budget`);
const { EV_WRITE } = require(`${DIST}/native/frames`);
const { monotonicNow } = require(`${DIST}/native/engine`);

const PAGE = 4096;
const KINDS = ['read of a hole', 'write to a hole', 'write to a written block'];
const STAGES = [
  'range lock (shared, chunk)', 'entry lock (chunk)', 'lookup', 'ensureWritten (all of it)',
  '  alloc + log locks', '  allocate', '  zero the block', '  persist the block (msync)', '  journal (apply + append)',
  'refreshZeros (other mappings)', 'answer (client.run, here at once)',
];

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Wrap obj[name]: while acc.on, the time of each call (to its promise's settling) adds to acc.cur[bucket]. */
function timed(obj, name, bucket, acc) {
  const orig = obj[name];
  obj[name] = function (...args) {
    if (!acc.on) return orig.apply(this, args);
    const t0 = process.hrtime.bigint();
    const add = () => acc.cur.set(bucket, (acc.cur.get(bucket) ?? 0) + Number(process.hrtime.bigint() - t0));
    const r = orig.apply(this, args);
    if (r instanceof Promise) return r.finally(add);
    add();
    return r;
  };
}

async function main() {
  const [dir, bytes] = [process.argv[2], Number(process.argv[3])];
  const pages = bytes / PAGE;
  const poolPath = path.join(dir, `daxmap-bench-breakdown-decide-${process.pid}`);
  const pool = await PoolFs.create(poolPath, { size: 2 * bytes + (64 << 20) });
  const out = {};
  try {
    const ip = poolInternals(pool);
    const acc = { cur: new Map(), on: false };
    // The pool's and the policy's steps, wrapped before the policy is built (it keeps `ip`).
    timed(ip, 'lookup', 'lookup', acc);
    timed(ip, 'ensureWritten', 'ensureWritten (all of it)', acc);
    const core = ip.core;
    timed(core.txn.allocLock, 'acquire', '  alloc + log locks', acc);
    timed(core.txn.logLock, 'acquire', '  alloc + log locks', acc);
    timed(core.txn, 'allocate', '  allocate', acc);
    timed(core.blocks, 'fillBlocks', '  zero the block', acc);
    timed(core.blocks, 'persistRuns', '  persist the block (msync)', acc);
    timed(core.txn, 'commit', '  journal (apply + append)', acc);
    const policy = new FaultPolicy(ip);
    timed(policy.ctx.entryLocks, 'acquire', 'entry lock (chunk)', acc);
    timed(policy.revoker, 'refreshZeros', 'refreshZeros (other mappings)', acc);
    const client = { id: 'bench', run: (answers) => answers.map(() => 0), budget: new WindowBudget(1 << 30), deviceId: 1 };
    timed(client, 'run', 'answer (client.run, here at once)', acc);
    const mapReq = (region, inode, length) => ({ region, inode, fileOffset: 0, length, private: false, sync: false, faultAround: false, writable: true });
    const fault = (region, flags, p) => policy.handle(client, [{ region, flags, count: 1, offset: p * PAGE, tid: 0, seq: p, timeNs: monotonicNow() }]);

    // Warm the JIT on every path: reads of holes, writes to them, writes to the blocks those made.
    const warm = await pool.openFile('warm', { create: true });
    await warm.truncate(256 * PAGE);
    for (const [r, flags] of [[101, 0], [102, EV_WRITE], [103, EV_WRITE]]) {
      policy.map(client, mapReq(r, ip.inode(warm), 256 * PAGE));
      for (let p = 0; p < 256; p++) await fault(r, flags, p);
      policy.unmap(client, r);
    }
    await warm.close();

    const f = await pool.openFile('f', { create: true });
    await f.truncate(bytes);
    const inode = ip.inode(f);
    timed(ip.rangeLock(inode), 'acquireShared', 'range lock (shared, chunk)', acc);
    const written = await pool.openFile('w', { create: true });
    await written.truncate(bytes);
    const winode = ip.inode(written);
    await ip.ensureWritten(winode, 0, bytes, {});
    timed(ip.rangeLock(winode), 'acquireShared', 'range lock (shared, chunk)', acc);
    let region = 1;
    for (const kind of KINDS) {
      const r = region++;
      policy.map(client, mapReq(r, kind === 'write to a written block' ? winode : inode, bytes));
      const flags = kind === 'read of a hole' ? 0 : EV_WRITE;
      const half = pages / 2;
      const per = new Map();
      const push = (k, ns) => { if (!per.has(k)) per.set(k, []); per.get(k).push(ns / 1000); };
      for (let p = 0; p < pages; p++) {
        acc.on = p >= half;
        acc.cur = new Map();
        const t0 = process.hrtime.bigint();
        await fault(r, flags, p);
        const ns = Number(process.hrtime.bigint() - t0);
        if (!acc.on) { push('total', ns); continue; }
        push('total, stages timed', ns);
        for (const st of STAGES) push(st, acc.cur.get(st) ?? 0);
      }
      acc.on = false;
      const res = Object.fromEntries([...per].map(([k, xs]) => [k, median(xs)]));
      const unwrapped = per.get('total');
      res.mean = unwrapped.reduce((a, b) => a + b, 0) / unwrapped.length;
      res.worst = Math.max(...unwrapped);
      out[kind] = res;
      policy.unmap(client, r);
    }
    const st = policy.snapshot();
    if (st.sigbus !== 0) throw new Error(`the policy answered ${st.sigbus} faults with SIGBUS`);
    if (st.faults !== 3 * 256 + pages * KINDS.length) throw new Error(`the policy counted ${st.faults} faults, not ${3 * 256 + pages * KINDS.length}`);
    await f.close();
    await written.close();
  } finally {
    await pool.close();
    fs.rmSync(poolPath, { force: true });
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
