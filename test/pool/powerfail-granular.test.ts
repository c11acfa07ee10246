// Power failure at random persist points on a 2 MiB-granular storage (powerfail.ts).
import t from 'tap';
import { useLockdep } from '../lock/guard.ts';
import { scenario, HUGE } from './powerfail.ts';

useLockdep(t);

t.test('power failure at random persist points, 2 MiB-granular storage (the device-DAX stand-in), write faults, seed 505', async (t) => {
  await scenario(t, 505, 250, { faults: true, align: HUGE, size: 24 << 20 });
});
