// The pool: a crash-safe extent filesystem inside the device (docs/pool.md). What
// the layers above (the service, the CLI) use of it; the fault policy's entry
// points are in internal.ts.
export {
  PoolFs, PoolFsFile, DEFAULT_POOL_SIZE,
  type PoolFsCreateOptions, type PoolFsFileStat, type PoolFsInfo, type PoolFsStatFs, type PoolFsOpenOptions,
} from './pool-fs';
export type { CleanSpace } from './core';
export { fsckDevice, type FsckReport } from './fsck';
export { MAX_FILE_SIZE } from './format';
export {
  identityMismatch, openVerifiedDevice, parseIdentity, readIdentity, statIdentity, statOwner, type DeviceIdentity,
} from './identity';
