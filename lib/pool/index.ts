// The pool: a crash-safe extent filesystem inside the device (docs/pool.md). What
// the layers above (the service, the CLI) use of it; the fault policy's entry
// points are in internal.ts.
export { Pool, PoolFile, DEFAULT_POOL_SIZE, type CreateOptions, type FileStat, type PoolInfo, type StatFs } from './pool';
export { fsckDevice, type FsckReport } from './fsck';
