// Fault-ahead (docs/fault-policy.md, "Fault-ahead"): a sequential writer's next 2 MiB
// windows are allocated, zeroed and installed before it touches them, within the
// mapping and within EOF only, never for sparse random writes nor sync mappings; windows installed
// ahead are file data that truncate, punch hole, zero range and unlink take back like
// any other window.
import t from 'tap';
import type { Pool } from '../../dist/client/pool';
import { until } from '../wait';
import { forBackings, kernelTouch, PAGE, HUGE } from './helpers';

/** Waits until no fault-ahead task of the service is running. */
async function aheadDone(pool: Pool): Promise<void> {
  await until(async () => (await pool.request<number>('testAhead')) === 0, 'fault-ahead to finish');
}

/** Stores `byte` into every page of [from, to) of the mapping, in order. */
function storeSeq(b: Buffer, from: number, to: number, byte: number): void {
  for (let off = from; off < to; off += PAGE) b[off] = byte;
}

/** A file of `chunks` 2 MiB chunks (plus `extra` bytes), mapped, its first two chunks written in order: the windows ahead follow. */
async function writer(pool: Pool, name: string, chunks: number, extra = 0) {
  const f = await pool.openFile(name, { create: true });
  await f.truncate(chunks * HUGE + extra);
  const m = await f.map();
  const s0 = await pool.stats();
  storeSeq(m.buffer, 0, 2 * HUGE, 0x11);
  await aheadDone(pool);
  return { f, m, s0 };
}

forBackings(t, 'a sequential writer\'s next window is installed ahead (one by default), inside EOF only, and its stores there take no fault', async (t, { pool }) => {
  // 4 chunks and a page: chunk 4 crosses EOF and is never taken ahead
  const { f, m, s0 } = await writer(pool, 'seq', 4, PAGE);
  const s1 = await pool.stats();
  t.equal(s1.ahead - s0.ahead, 1, 'the window after the second fault was installed ahead, and only that one');
  t.equal(s1.faults - s0.faults, 2, 'the first two chunks took one fault each');
  t.equal((await f.stat()).allocated, 3 * HUGE, 'allocated: the two chunks written and the one ahead');
  const b = Buffer.alloc(HUGE);
  await f.read(b, 2 * HUGE);
  t.ok(b.every((x) => x === 0), 'a window installed ahead reads zeros before it is written');
  storeSeq(m.buffer, 2 * HUGE, 3 * HUGE, 0x22);
  const s2a = await pool.stats();
  t.equal(s2a.faults - s1.faults, 0, 'stores into the window installed ahead take no fault');
  storeSeq(m.buffer, 3 * HUGE, 4 * HUGE, 0x22); // its fault; the next chunk holds EOF: nothing ahead
  await aheadDone(pool);
  const s2 = await pool.stats();
  t.equal(s2.faults - s2a.faults, 1, 'the chunk after it faults once (the writer caught up)');
  t.equal(s2.ahead - s1.ahead, 0, 'and the chunk holding EOF is not taken ahead');
  t.equal((await f.stat()).allocated, 4 * HUGE, 'allocated: the four chunks written, nothing past EOF');
  m.buffer[4 * HUGE] = 0x33; // the EOF chunk: a fault, a 4 KiB page
  await aheadDone(pool);
  const s3 = await pool.stats();
  t.equal(s3.faults - s2.faults, 1, 'the chunk holding EOF faults');
  t.equal(s3.ahead - s2.ahead, 0, 'nothing is installed ahead past EOF');
  t.equal((await f.stat()).allocated, 4 * HUGE + PAGE, 'allocated: exactly the file');
  for (const [off, want] of [[0, 0x11], [2 * HUGE, 0x22], [4 * HUGE - PAGE, 0x22], [4 * HUGE, 0x33]] as const) {
    const p = Buffer.alloc(1);
    await f.read(p, off);
    t.equal(p[0], want, `the store at ${off} is in the file`);
  }
  await m.unmap();
});

forBackings(t, 'no windows ahead for sparse random writes, sync mappings, nor with configure({ ahead: 0 })', async (t, { pool }) => {
  const f = await pool.openFile('sparse', { create: true });
  await f.truncate(32 * HUGE);
  const m = await f.map();
  const s0 = await pool.stats();
  // A random writer's first store at a chunk's start takes the whole chunk (the first
  // write of a mapping), but nothing continues it.
  for (const p of [0, 7 * 512 + 3, 20 * 512 + 100, 3 * 512 + 9, 30 * 512 + 1]) m.buffer[p * PAGE] = 1;
  await aheadDone(pool);
  t.equal((await pool.stats()).ahead - s0.ahead, 0, 'sparse writes: nothing ahead');
  await m.unmap();
  // a sync mapping: its record must be durable before the first store, made in its fault
  const h = await pool.openFile('sync', { create: true });
  await h.truncate(4 * HUGE);
  const ms = await h.map({ sync: true });
  storeSeq(ms.buffer, 0, 3 * HUGE, 0x66);
  await aheadDone(pool);
  t.equal((await pool.stats()).ahead - s0.ahead, 0, 'a sync mapping: nothing ahead');
  await ms.unmap();
  await h.close();
  await pool.request('configure', [{ ahead: 0 }]);
  const { f: g, m: n } = await writer(pool, 'off', 4);
  t.equal((await pool.stats()).ahead - s0.ahead, 0, 'fault-ahead off: nothing ahead');
  t.equal((await g.stat()).allocated, 2 * HUGE, 'only the chunks written are allocated');
  await n.unmap();
  await t.rejects(pool.request('configure', [{ ahead: 17 }]), { code: 'EINVAL' }, 'more than 16 windows ahead is refused');
  await pool.request('configure', [{ ahead: 1 }]); // back to the default
  await f.close();
  await g.close();
});

forBackings(t, 'truncate, punch hole, zero range and unlink take back windows installed ahead and never touched', async (t, { pool }) => {
  await pool.request('configure', [{ ahead: 2 }]); // two windows ahead, to take back one and keep the other
  const { f, m, s0 } = await writer(pool, 'victim', 6);
  // chunks 2 and 3 installed ahead, untouched
  t.equal((await pool.stats()).ahead - s0.ahead, 2, 'two windows ahead');
  await f.punchHole(2 * HUGE, HUGE);
  t.equal((await f.stat()).allocated, 3 * HUGE, 'punch freed the window installed ahead');
  t.equal(m.buffer[2 * HUGE + 5], 0, 'the punched window reads zeros');
  m.buffer[2 * HUGE + PAGE] = 0x44; // faults afresh: a new block of the file
  const p = Buffer.alloc(1);
  await f.read(p, 2 * HUGE + PAGE);
  t.equal(p[0], 0x44, 'a store after the punch reaches the file: the old window was revoked');
  await f.zeroRange(3 * HUGE, HUGE, { keepSize: true });
  m.buffer[3 * HUGE + 8 * PAGE] = 0x55;
  await f.read(p, 3 * HUGE + 8 * PAGE);
  t.equal(p[0], 0x55, 'a store after zero range reaches the file');
  // truncate below the windows ahead of a new stream (chunks 4 and 5 after 2 and 3)
  storeSeq(m.buffer, 3 * HUGE + 9 * PAGE, 4 * HUGE, 0x12);
  await aheadDone(pool);
  await f.truncate(4 * HUGE);
  t.equal((await f.stat()).allocated <= 4 * HUGE, true, 'truncate freed what lay past the new EOF');
  t.equal(await kernelTouch(m.buffer, 4 * HUGE), 'EFAULT', 'past the new EOF: SIGBUS, not an old window');
  await f.truncate(6 * HUGE);
  t.equal(m.buffer[5 * HUGE + 3], 0, 'grown again: zeros');
  // unlink: every window of the file goes, those installed ahead included
  const { m: n } = await writer(pool, 'gone', 6);
  await pool.unlink('gone');
  t.equal(await kernelTouch(n.buffer, 3 * HUGE), 'EFAULT', 'a window installed ahead of an unlinked file: SIGBUS');
  await n.unmap();
  await m.unmap();
});
