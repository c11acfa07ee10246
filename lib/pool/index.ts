// The pool: a crash-safe extent filesystem inside the device (docs/pool.md).
export { Pool, PoolFile, type CreateOptions, type FileStat, type StatFs } from './pool';
