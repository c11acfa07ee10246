// Every test file calls useLockdep(t): the lock validator is on for the whole file
// and the file fails if any violation was recorded.
import type { Test } from 'tap';
import { lockdep } from '../../dist/lock/index.js';

export function useLockdep(t: Test): void {
  lockdep.enable();
  t.teardown(() => {
    const v = lockdep.violations();
    if (v.length) {
      // A failing assertion in teardown is not allowed; throwing fails the file.
      lockdep.assertClean();
    }
  });
}
