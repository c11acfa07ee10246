// A benchmark client process for test/perf/daemon-bench.ts, driven over IPC. It
// prepares a first-touch target (not timed) — an embedded pool's mapping, or a
// mapping through daxmapd — then
// touches every page once in a given random order from its main thread, timing each
// touch with process.hrtime.bigint(), and checks the data afterwards.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const dist = path.resolve(__dirname, '../../dist');
const { Pool } = require(path.join(dist, 'index.js'));

const PAGE = 4096;
const MiB = 1 << 20;

/** A permutation of 0..n-1 from a seed (the same xorshift32 + Fisher-Yates as test/perf/stats.ts). */
function shuffled(n, seed) {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  let s = seed >>> 0 || 1;
  for (let i = n - 1; i > 0; i--) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    const j = s % (i + 1);
    const x = p[i]; p[i] = p[j]; p[j] = x;
  }
  return p;
}

const stampOf = (run) => (p) => ((p * 31 + run * 7) & 0xff) | 1;

/** One byte stored into each page in `order`, each store timed; the per-touch times in ns. */
function touch(buf, order, stamp) {
  const ns = new Float64Array(order.length);
  const start = process.hrtime.bigint();
  for (let i = 0; i < order.length; i++) {
    const p = order[i];
    const t0 = process.hrtime.bigint();
    buf[p * PAGE + (p % 4093)] = stamp(p);
    ns[i] = Number(process.hrtime.bigint() - t0);
  }
  const end = process.hrtime.bigint();
  return { ns, start, end };
}

function summary(ns) {
  const s = Float64Array.from(ns).sort();
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))] / 1000;
  let sum = 0;
  for (const x of ns) sum += x;
  return { medianUs: at(0.5), p99Us: at(0.99), maxUs: s[s.length - 1] / 1000, meanUs: sum / ns.length / 1000 };
}

let t = null; // the prepared target

const commands = {
  /**
   * mode: 'embedded' | 'daemon' | 'kernel' (the kernel's own MAP_SHARED mapping of a
   * /dev/shm file, through the kmap addon at `kmap`: row 8's ceiling on this machine).
   * Sets up the target; nothing timed.
   */
  async prepare({ mode, socket, mb, seed, run, name, kmap }) {
    const size = mb * MiB;
    const pages = size / PAGE;
    const order = shuffled(pages, seed);
    if (mode === 'kernel') {
      const km = require(kmap);
      const file = `/dev/shm/daxmap-bench-dk-${process.pid}-${name}`;
      fs.writeFileSync(file, '', { mode: 0o600 });
      fs.truncateSync(file, size);
      let ab;
      try {
        ab = km.map(file, size, false);
      } finally {
        fs.rmSync(file);
      }
      t = { mode, order, run, pages, km, ab, buf: Buffer.from(ab), name };
      return pages;
    }
    let pool;
    let poolFile = null;
    if (mode === 'embedded') {
      poolFile = `/dev/shm/daxmap-bench-de-${process.pid}-${name}.pool`;
      pool = await Pool.create(poolFile, { size: size + 64 * MiB });
    } else {
      pool = await Pool.connect(socket);
    }
    const f = await pool.openFile(name, { create: true });
    await f.truncate(size);
    const m = await f.map({ faultAround: false });
    t = { mode, order, run, pages, pool, poolFile, f, m, name, buf: m.buffer, stats0: await pool.stats() };
    return pages;
  },

  /** A short untimed first-touch run, to warm up the JIT on both sides. */
  async warmup({ mode, socket, kmap }) {
    const name = `warmup-${process.pid}`;
    await commands.prepare({ mode, socket, mb: 4, seed: 7, run: 0, name, kmap });
    touch(t.buf, t.order, stampOf(0));
    await commands.finish({ check: false });
    return true;
  },

  /**
   * The timed touches; with `at` (CLOCK_MONOTONIC ns, as a string) they start then,
   * not when the message came: two clients told at once start together.
   */
  async touch({ at } = {}) {
    if (at !== undefined) {
      const start = BigInt(at);
      while (process.hrtime.bigint() < start);
    }
    const c0 = process.cpuUsage();
    const r = touch(t.buf, t.order, stampOf(t.run));
    const c = process.cpuUsage(c0);
    t.ns = r.ns;
    // CPU of every thread of this process (its agent's too) while it touched, µs.
    return { ...summary(r.ns), startNs: String(r.start), endNs: String(r.end), pages: t.order.length, cpuUs: c.user + c.system };
  },

  /** Check 64 pages spread over the target (file.read for pools: no fault), then clean up. */
  async finish({ check = true } = {}) {
    if (t.mode === 'kernel') {
      // The stores are the kernel's: nothing of daxmap's to check.
      t.km.unmap(t.ab);
      t = null;
      return { ok: 0, bad: 0, stats: null };
    }
    const stamp = stampOf(t.run);
    let ok = 0;
    let bad = 0;
    let stats;
    try {
      if (check) {
        const page = Buffer.alloc(PAGE);
        for (let k = 0; k < 64; k++) {
          const p = Math.floor((k * t.pages) / 64);
          await t.f.read(page, p * PAGE);
          if (page[p % 4093] === stamp(p) && page[(p % 4093) ^ 1] === 0) ok++;
          else bad++;
        }
      }
      const s = await t.pool.stats();
      const d = (k) => s[k] - t.stats0[k];
      stats = { faults: d('faults'), pte: d('pte'), pmd: d('pmd'), sigbus: d('sigbus'), latencyUs: s.latencyUs };
    } finally {
      await t.m.unmap();
      await t.f.close();
      await t.pool.unlink(t.name);
      await t.pool.close();
      if (t.poolFile) fs.rmSync(t.poolFile, { force: true });
      t = null;
    }
    return { ok, bad, stats };
  },
};

process.on('message', async (m) => {
  try {
    const value = await commands[m.cmd](m);
    process.send({ seq: m.seq, ok: true, value });
  } catch (e) {
    process.send({ seq: m.seq, ok: false, code: e.code, message: e.message });
  }
});
process.send({ ready: true });
