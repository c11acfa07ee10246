// Power failure at random persist points with write faults and deferred conversion (powerfail.ts).
import t from 'tap';
import { useLockdep } from '../lock/guard.ts';
import { scenario } from './powerfail.ts';

useLockdep(t);

for (const seed of [303, 404]) {
  t.test(`power failure at random persist points, write faults with deferred conversion, seed ${seed}`, async (t) => {
    await scenario(t, seed, 400, { faults: true, defer: true });
  });
}
