// daxmap: the package root.
export { Pool, PoolFile, type CreateOptions, type FileStat, type StatFs } from './pool/index';
