// Typed loader for the native addon, through node-gyp-build: build/Release, then
// build/Debug, then prebuilds/linux-x64/ (the N-API prebuild `npm pack` ships, made
// by prebuildify in the prepack script). An installed package has a build/ only when
// its install step (node-gyp-build) found no prebuild that loads and compiled one, so
// there the prebuild is what loads; in a checkout a fresh build/ wins over a
// prebuilds/ left by an earlier `npm pack` (which would be stale after a native edit).
// The interface below is the whole native surface; callers above lib/native validate
// arguments before they reach it.
//
// DAXMAP_ADDON_DIR names another directory to load it from (its build/Release, …):
// the sanitizer builds of scripts/sanitize.js live in build-sanitize/<kind>/. It is
// read by every thread and inherited by child processes, so a whole test run uses
// the one build.
import path from 'node:path';
// node-gyp-build is CommonJS, typed with `export =`.
// eslint-disable-next-line @typescript-eslint/no-require-imports
import load = require('node-gyp-build');

export interface UffdInfo {
  features: bigint;
  ioctls: bigint;
  via: string;
}

export interface RegionInfo {
  id: number;
  address: bigint;
  length: number;
}

export interface DeviceInfo {
  id: number;
  size: number;
  kind: 'file' | 'tmpfs' | 'devdax' | 'hugetlbfs';
  mapSync: boolean;
  align: number;
  /** A tmpfs that allocates 2 MiB folios (docs/native.md, "True 2 MiB mappings"). */
  huge: boolean;
}

export interface DeviceOpenOptions {
  create?: boolean;
  size?: number;
  exclusive?: boolean;
  view?: boolean;
  writable?: boolean;
}

export interface AgentStats {
  events: number;
  batches: number;
  merged: number;
  direct: number;
  /** write faults answered natively from a reserve (docs/native.md, "Reserves") */
  reserved: number;
  /** of those, stores on the zero page of a hole (a load came first): write-protect faults */
  reservedWp: number;
  /** hole reads answered natively in a reserve's ranges (write-protected zeros, a zero note each) */
  reservedZero: number;
  /** of those, a store landed between the zero page and its protection: its page was copied into a block */
  reservedRaced: number;
  /** reserve windows installed whole after their threshold (docs/native.md, "Reserve windows") */
  upgrades: number;
  /** pages those upgrades installed */
  runPages: number;
  /** reserve notes that woke the handler: the reserve reached its low-water mark */
  lowWater: number;
  delivered: number;
  poisoned: number;
  timeouts: number;
  deferred: number;
  answers: number;
  answerErrors: number;
  remaps: number;
  stray: number;
  /** times the reader thread returned from poll(): events, kicks, the watchdog's ticks */
  wakes: number;
  /** reader threads started in this process (the agent stops when its last user goes) */
  starts: number;
  faultTimeoutMs: number;
  via: string;
}

export interface SocketChannelInfo {
  /** handshake: our HELLO sent, the daemon's not yet received; open; closed (orphaned) */
  state: 'handshake' | 'open' | 'closed';
  /** why it closed, "<CODE>: <text>"; '' while running */
  reason: string;
  /** the daemon's pid from its HELLO (0 before) */
  peerPid: number;
  session: bigint;
  /** fault events live in the channel: queued, or sent and not yet answered */
  live: number;
  eventsSent: number;
  eventMessages: number;
  answers: number;
  answerMessages: number;
  bytesIn: number;
  bytesOut: number;
  /** bytes queued in user space because the socket is full */
  pendingOut: number;
}

/** Sizes and field [offset, size] of each frame struct, and the named constants, as the C++ compiler laid them out. */
export interface FrameLayout {
  structs: Record<string, { size: number; fields: Record<string, [number, number]> }>;
  constants: Record<string, number>;
}

export interface NativeAddon {
  uffdProbe(): UffdInfo;
  regionCreate(length: number, readOnly?: boolean): RegionInfo;
  regionBuffer(id: number): Buffer;
  regionArrayBuffer(id: number, offset: number, length: number): ArrayBuffer;
  regionClose(id: number, releaseNow?: boolean): void;
  regionBind(id: number, channel: number): void;
  regionSetDirect(id: number, offset: number, length: number, device: number, devOffset: number, flags: number, window: number): void;
  regionClearDirect(id: number, offset: number, length: number): void;
  channelOpen(onEvents: () => void): number;
  channelTake(id: number, into: Uint8Array): number;
  channelAbandon(id: number, events: Uint8Array, count: number): number;
  channelClose(id: number): void;
  channelRef(id: number, ref: boolean): void;
  channelOpenSocket(fd: number, session: bigint, onClosed?: (reason: string) => void): number;
  channelConnectSocket(path: string, session: bigint, onClosed?: (reason: string) => void): number;
  channelCloseSocket(id: number): void;
  channelRefSocket(id: number, ref: boolean): void;
  channelSocketInfo(id: number): SocketChannelInfo | undefined;
  execute(answers: Uint8Array, results: Int32Array): number;
  agentStats(): AgentStats;
  agentConfigure(options: { faultTimeoutMs?: number }): void;
  monotonicNow(): bigint;
  sigbusReport(enable: boolean): void;
  deviceOpen(path: string, options: DeviceOpenOptions): DeviceInfo;
  deviceView(id: number, offset: number, length: number): Buffer;
  devicePersist(id: number, offset: number, length: number): void;
  /** devicePersist on a libuv pool thread (the device is held until it is done). */
  devicePersistAsync(id: number, offset: number, length: number): Promise<void>;
  deviceZero(id: number, offset: number, length: number, resident?: boolean): void;
  /**
   * On a libuv pool thread: zeros written over each range of `zero` (deviceZero with
   * `resident`), then each range of `persist` persisted ([offset, length, …] pairs);
   * the device is held until it is done. Rejects on the first failure.
   */
  /** `background`: on the process's background thread, at nice 19 (the zeroer of free space). */
  deviceZeroPersistAsync(id: number, zero: Float64Array, persist: Float64Array, background?: boolean): Promise<void>;
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** One datagram to the UNIX datagram socket at `path` ("@name": abstract namespace), as sd_notify sends to $NOTIFY_SOCKET. */
  unixDatagramSend(path: string, data: Uint8Array): void;
  /** The frame and wire layouts as compiled (native/frames.h, native/socket_channel.h): for the test that keeps frames.ts and wire.ts equal to them. */
  frameLayout(): FrameLayout;
  deviceClose(id: number): void;
  /** A memfd of `length` bytes (sparse), close-on-exec: a staging area (docs/native.md, "Staged ranges"). */
  stageCreate(length: number): number;
  /**
   * The pages of [offset, offset+length) of the memfd `fd` holding a byte that is not
   * zero, at most `max`, in order: their offsets, their bytes back to back, and where
   * to go on (offset+length once done).
   */
  stageCollect(fd: number, offset: number, length: number, max: number): { offsets: Float64Array; data: Buffer; next: number };
  /** Frees the pages of [offset, offset+length) of the memfd `fd`. */
  stagePunch(fd: number, offset: number, length: number): void;
  /** Closes a memfd from stageCreate or stageAdopt (or a pidfd). */
  stageClose(fd: number): void;
  /** A pidfd of the process `pid` (close-on-exec). */
  pidfdOpen(pid: number): number;
  /**
   * This process's descriptor of the staging memfd that is descriptor `fd` in the
   * process of `pidfd` (pidfd_getfd): EPERM without the right to take it, EINVAL if it
   * is not a memfd of at least `length` bytes.
   */
  stageAdopt(pidfd: number, fd: number, length: number): number;
  /** fstat of the device's own descriptor, and its first `length` bytes (≤ 1 MiB) read through it. */
  deviceIdentify(id: number, length: number): { dev: bigint; ino: bigint; rdev: bigint; charDevice: boolean; mode: number; uid: number; gid: number; head: Buffer };
}

let cached: NativeAddon | undefined;

/** The addon, loaded once per environment (each worker thread loads its own instance). */
export function native(): NativeAddon {
  if (cached === undefined) {
    // dist/native/addon.js → the package root holds build/ and prebuilds/.
    const dir = process.env.DAXMAP_ADDON_DIR || path.resolve(__dirname, '..', '..');
    cached = load(dir) as NativeAddon;
  }
  return cached;
}
