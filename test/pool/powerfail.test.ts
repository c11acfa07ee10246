// Power failure at random persist points, file calls only (the scenario: powerfail.ts).
import t from 'tap';
import { useLockdep } from '../lock/guard.ts';
import { scenario } from './powerfail.ts';

useLockdep(t);

for (const seed of [101, 202]) {
  t.test(`power failure at random persist points, seed ${seed}`, async (t) => {
    await scenario(t, seed, 400);
  });
}
