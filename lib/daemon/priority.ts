// The daemon's own background threads at a low priority (docs/daemon.md, "Threads
// and priorities"). Before any of daxmap's modules load (bin/daxmapd lists them
// then), the threads daxmapd has besides its main thread are Node's and V8's: V8's platform workers, which compile hot JavaScript
// (TurboFan) and help the garbage collector, and their task scheduler. On a machine
// whose CPUs the daemon's clients keep busy, a compile job of 10–20 ms shared a CPU
// with a faulting client in scheduler slices (4 ms stalls every 8 ms in row 8 of the
// bench). At nice 19 they take only CPU time no client wants. The main thread, the
// libuv pool (the reserve's refill: faults wait for it) and daxmap's native threads
// keep their priority; the zeroer has its own thread at nice 19 already. Listed any
// later, the threads would include libuv's pool when something had used it while the
// modules loaded (it had, in the test suite's daemons). A thread inherits the nice
// value of the thread that starts it: with modules preloaded through NODE_OPTIONS
// (--import), their loader thread is lowered too, and so is whatever it starts.
import os from 'node:os';

/** DAXMAP_BACKGROUND_NICE: the nice value (1–19) of those threads; 0 leaves them alone. Default 19. */
export function backgroundNiceFromEnv(): number {
  const v = process.env['DAXMAP_BACKGROUND_NICE'];
  if (v === undefined || v.trim() === '') return 19;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 && n <= 19 ? n : 19;
}

/**
 * The threads `tids` of this process but the main one, at `nice` (a per-thread nice
 * value: setpriority on a thread id). Returns how many were lowered; a thread that
 * ended meanwhile is skipped.
 */
export function lowerBackgroundThreads(nice: number, tids: readonly number[]): number {
  if (nice <= 0) return 0;
  let n = 0;
  for (const tid of tids) {
    if (tid === process.pid) continue;
    try {
      os.setPriority(tid, nice);
      n++;
    } catch {
      // gone since the listing
    }
  }
  return n;
}
