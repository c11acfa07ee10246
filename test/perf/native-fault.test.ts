// Issue 2 benchmark: first-touch write cost per 4 KiB page, trapped by userfaultfd,
// against the kernel's own fault on a MAP_SHARED mapping of a tmpfs file, same run.
import t from 'tap';
import fs from 'node:fs';
import { TrappedRegion } from '../../dist/native/region';
import { openDevice } from '../../dist/device/device';
import { Handler } from '../native/helpers';
import { RUNS, table } from './stats';

const PAGE = 4096;
const SIZE = 32 << 20;
const PAGES = SIZE / PAGE;
let seq = 0;

function freshDevice(): { dev: ReturnType<typeof openDevice>; path: string } {
  const path = `/dev/shm/daxmap-bench-${process.pid}-${seq++}`;
  return { dev: openDevice(path, { create: true, size: SIZE }), path };
}

function touchAll(b: Buffer): number {
  const t0 = process.hrtime.bigint();
  for (let off = 0; off < SIZE; off += PAGE) b[off] = 1;
  return Number(process.hrtime.bigint() - t0) / 1000 / PAGES;
}

t.test('first-touch write, µs per 4 KiB page', async (t) => {
  const h = await Handler.start();
  t.teardown(() => h.stop());
  const kernel: number[] = [];
  const direct: number[] = [];
  const js4k: number[] = [];
  const js2m: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    {
      const { dev, path } = freshDevice();
      kernel.push(touchAll(dev.view(0, SIZE)));
      dev.close();
      fs.rmSync(path);
    }
    {
      const { dev, path } = freshDevice();
      const r = new TrappedRegion(SIZE);
      r.setDirect(0, SIZE, dev.deviceId, 0, { writable: true, populate: true, window: PAGE });
      direct.push(touchAll(r.buffer));
      r.close();
      dev.close();
      fs.rmSync(path);
    }
    for (const [window, out] of [[PAGE, js4k], [2 << 20, js2m]] as const) {
      const { dev, path } = freshDevice();
      const r = new TrappedRegion(SIZE);
      await h.rule(r.id, { mode: 'install', device: dev.deviceId, populate: true, window });
      r.bind(h.ref);
      out.push(touchAll(r.buffer));
      r.close();
      dev.close();
      fs.rmSync(path);
    }
  }
  const lines = table('µs per page', [
    { label: 'kernel MAP_SHARED tmpfs (baseline)', runs: kernel },
    { label: 'trapped, answered natively (install 4K)', runs: direct },
    { label: 'trapped, JS handler on a worker (4K)', runs: js4k },
    { label: 'trapped, JS handler, 2 MiB window+populate', runs: js2m },
  ], kernel);
  t.comment(`${RUNS} runs of ${PAGES} sequential first-touch writes each`);
  for (const l of lines) t.comment(l);
  t.equal(kernel.length, RUNS);
});
