// Waiting for a state that no event announces (a counter in another thread or
// process, a process's run state): check it until it holds, with a bound, and fail
// naming what did not happen. Each check that asks a process something is itself a
// round trip to it. Never a fixed time in place of a condition.

/**
 * Checks `cond` every few ms until it returns true; throws after `ms` (including a
 * check that never answers), naming `what`, with `detail()` if given.
 */
export async function until(cond: () => boolean | Promise<boolean>, what: string, opts: { ms?: number; detail?: () => unknown } = {}): Promise<void> {
  const ms = opts.ms ?? 20000;
  const end = Date.now() + ms;
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((res) => (timer = setTimeout(() => res('late'), Math.max(0, end - Date.now()))));
    const r = await Promise.race([Promise.resolve(cond()), late]).finally(() => clearTimeout(timer));
    if (r === true) return;
    if (r === 'late' || Date.now() > end) {
      const d = opts.detail?.();
      throw new Error(`timed out after ${ms} ms waiting for ${what}${d === undefined ? '' : ` (${JSON.stringify(d)})`}`);
    }
    await new Promise((res) => setTimeout(res, 5));
  }
}

/** Waits for `p` with the event loop held alive: an idle Pool does not hold it (an application may exit). */
export async function held<T>(p: Promise<T>): Promise<T> {
  const keep = setInterval(() => {}, 1000);
  try {
    return await p;
  } finally {
    clearInterval(keep);
  }
}
