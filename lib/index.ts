// daxmap: the package root. `Pool` is the client of a pool service: in embedded mode
// the service (pool + fault policy) runs in a worker thread that Pool.create/open
// starts, so any thread of the application may touch a mapping freely.
export {
  Pool, PoolFile, Mapping,
  type PoolOptions, type CreateOptions, type OpenFileOptions, type ConnectOptions, type FileStat, type StatFs, type CleanSpace, type MapRequestOptions,
  type SharedPool, type PoolEvents,
} from './client/pool';
export { isDaxError, type DaxmapError, type ErrorCode } from './errors';
export type { LoggerOption, LevelName } from './log';
export type { FaultStatsSnapshot as FaultStats } from './fault/stats';
export { probeUffd, reportSigbus } from './native/engine';
