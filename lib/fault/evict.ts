// Keeping a process's installed windows within its budget (docs/fault-policy.md,
// "The window budget"): the least recently installed go first, a whole 2 MiB chunk
// of a shared mapping at a time. Private mappings have no windows.
import { withOperation, type LockHandle } from '../lock/index';
import { ENXIO, type Client, type FaultContext } from './context';
import { revokeAnswers } from './decide';
import { HUGE, PAGE, PageState } from './states';

export class Evictor {
  private evicting = false;

  constructor(private readonly ctx: FaultContext) {}

  /**
   * Revoke at least `n` of the client's installed windows, oldest first, a whole
   * 2 MiB file chunk of a mapping at a time: the chunk of the least recently
   * installed window goes with every window of it. One revoke (one mremap, one TLB
   * shootdown, one REMAP event) then takes back up to 512 windows, where a window at
   * a time cost as much as a fault each. Each chunk is taken with its own locks
   * (range shared → entry), skipped if they are busy; never called with locks held.
   */
  async evict(client: Client, n: number): Promise<void> {
    if (this.evicting || n <= 0) return;
    this.evicting = true;
    try {
      await withOperation('evict', async () => {
        const start = client.budget.count;
        // Only shared mappings have windows (a private mapping's pages are its own
        // anonymous memory), so eviction never touches a private mapping.
        for (const w of client.budget.oldest(n)) {
          if (start - client.budget.count >= n) return;
          if (!client.budget.has(w.mapping, w.offset)) continue; // went with an earlier chunk
          await this.evictChunk(client, w);
        }
      });
    } finally {
      this.evicting = false;
    }
  }

  private async evictChunk(client: Client, w: { mapping: string; offset: number; length: number }): Promise<void> {
    const m = this.ctx.mappings.get(w.mapping);
    if (!m || m.dead) {
      client.budget.dropRange(w.mapping, w.offset, w.length);
      return;
    }
    const chunk = Math.floor((m.fileOffset + w.offset) / HUGE);
    const key = `${m.inode.id}:${chunk}`;
    if (this.ctx.busy.has(key)) return;
    const range = m.inode.rangeLock.tryAcquire(chunk * HUGE, (chunk + 1) * HUGE, 'shared');
    if (!range) return;
    let entry: LockHandle | undefined;
    try {
      entry = await this.ctx.lockEntry(key);
      // The chunk's part of the mapping (a mapping at an offset that is not 2 MiB
      // aligned has a partial chunk at each end).
      const lo = Math.max(0, chunk * HUGE - m.fileOffset);
      const hi = Math.min(m.length, (chunk + 1) * HUGE - m.fileOffset);
      // A decided piece of the chunk is cleared before the revoke (same batch, in order).
      const results = await this.ctx.answer(client, revokeAnswers(m, lo, hi - lo));
      if (results.every((r) => r === 0 || r === ENXIO)) {
        const before = client.budget.count;
        client.budget.dropRange(w.mapping, lo, hi - lo);
        this.ctx.bump(m, 'evictions', before - client.budget.count);
        m.states.set(lo / PAGE, hi / PAGE, PageState.None);
      }
    } finally {
      entry?.release();
      range.release();
    }
  }

}
