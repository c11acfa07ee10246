// The library members the tests use that lib/ marks @internal: tsconfig.json's
// stripInternal leaves them out of dist/*.d.ts (the published types), so this
// declaration adds them back, for the type check of the tests only
// (test/tsconfig.json), with their types taken from the sources in lib/.
import type * as lib from '../lib/client/pool';

declare module '../dist/client/pool' {
  interface Pool {
    request: lib.Pool['request'];
  }
  export const testHooks: typeof lib.testHooks;
}
