// The binary frames that carry fault events out of the agent and answers back in.
// Fixed-size, little-endian (the host order on every platform daxmap runs on), so the
// same bytes serve an in-process handler (a JS worker) and a UNIX socket to the daemon.
// lib/native/frames.ts mirrors these layouts; keep the two in step.
#pragma once

#include <cstdint>

namespace daxmap {

constexpr uint32_t kFrameVersion = 1;

enum EventFlags : uint16_t {
  kEvWrite = 1 << 0,   // the access was a write
  kEvWp = 1 << 1,      // a write-protect fault (the page is present, protected)
  kEvKernel = 1 << 2,  // reserved: the kernel does not say; kept for the wire format
  kEvNote = 1 << 3,    // not a fault to answer: the agent answered a write fault from the region's reserve
                       // (docs/native.md, "Reserves"). `offset` is the page, `time_ns` carries the device
                       // offset of the block installed there (not a time); count 1, never merged, never live
  kEvLow = 1 << 4,     // on a note only: that install took the reserve down to its low-water mark (the count
                       // its set / top-up reserve answer carried); this note wakes the handler, which may top
                       // the reserve up (kOpTopUpReserve). Sent once per arming (docs/native.md, "Reserves")
  kEvRun = 1 << 5,     // on a note only: a window's upgrade installed `count` pages from `offset` over a run's
                       // blocks from `time_ns` (device offset), in one mapping; the pages are the policy's to
                       // record as written (docs/native.md, "Reserve windows")
};

// One trapped fault, page-aligned. Faults on the same page read in one batch are
// coalesced into one event with count > 1.
struct FaultEvent {
  uint32_t region;   // region id
  uint16_t flags;    // EventFlags
  uint16_t count;    // faults coalesced into this event
  uint64_t offset;   // page offset within the region
  uint32_t tid;      // faulting thread (first one)
  uint32_t seq;      // agent sequence number
  uint64_t time_ns;  // CLOCK_MONOTONIC when the agent read it
};
static_assert(sizeof(FaultEvent) == 32, "FaultEvent is a 32-byte wire frame");

enum AnswerOp : uint8_t {
  kOpInstall = 1,            // mmap a device range MAP_FIXED over [offset, +length), then wake
  kOpZero = 2,               // the shared zero page (optionally write-protected), then wake
  kOpCopy = 3,               // UFFDIO_COPY bytes (payload, or from the device view), then wake
  kOpPoison = 4,             // SIGBUS for the faulting access(es)
  kOpRevoke = 5,             // replace [offset, +length) with fresh trapped memory, then wake
  kOpWake = 6,               // wake threads waiting on [offset, +length)
  kOpUnprotect = 7,          // clear write protection (private write to a zero page), wake
  kOpSetDirect = 8,          // decide [offset, +length) ahead: the agent answers its faults itself (device, dev_offset,
                             // flags writable|populate; 2 MiB windows); not an answer to a fault, wakes nothing
  kOpClearDirect = 9,        // forget the decided ranges over [offset, +length): once it returns, no fault there is
                             // answered natively any more (a following revoke takes whatever was installed)
  kOpSetReserve = 10,        // add [offset, +length) to the region's reserve ranges (holes a write fault may fill
                             // natively) and the payload's u64 device offsets of zeroed 4 KiB blocks of `device`
                             // to its reserve; not an answer to a fault, wakes nothing
  kOpClearReserve = 11,      // stop answering from the reserve (whole region; offset/length any valid range): once
                             // it returns no reserve install is in progress and every note is queued; the result
                             // is the number of blocks left unused (>= 0)
  kOpTopUpReserve = 12,      // add the payload's u64 device offsets (zeroed 4 KiB blocks of `device`) to the region's
                             // live reserve, without touching its ranges (offset/length any valid range); ENOENT
                             // when no reserve is set. Set and top-up reserve take the low-water mark in dev_offset
  kOpAddReserveRanges = 13,  // add the payload's u64 pairs [start, end) (region offsets, page-aligned, inside the
                             // region) to the live reserve's ranges (offset/length any valid range; `device` the
                             // reserve's); ENOENT when no reserve is set. One frame for a grant's many ranges
  kOpReserveWindows = 14,    // add upgradable windows and runs to the live reserve. Payload u64s: the threshold T,
                             // the number of windows n, n windows of 9 u64s each (the offset, 2 MiB aligned, then
                             // a 512-bit bitmap of the pages that are holes of the file), then device offsets of
                             // runs (2 MiB of zeroed blocks each). Once T pages of such a window are filled (or
                             // were not holes) the rest of it is installed from a run (docs/native.md, "Reserve
                             // windows"); ENOENT when no reserve is set
  kOpStage = 15,             // stage [offset, +length): map the same range of the memfd whose descriptor (in this
                             // process) is dev_offset over it, shared, writable, not populated, and take it out of
                             // the live reserve's ranges and windows: its stores are the kernel's own faults on the
                             // memfd, no trap (docs/native.md, "Staged ranges"); wakes the range. EINVAL if the
                             // descriptor is not a memfd or too short; never in a read-only region. dev_offset
                             // kStageOwnFd: the region's own memfd (StagePrepare; ENOENT if there is none)
  kOpStagePrepare = 16,      // create the region's own staging memfd, as long as the region, if it has none yet
                             // (offset/length any valid range; maps nothing, wakes nothing); the result is its
                             // descriptor (>= 0). For a policy in another process (daxmapd), which takes the
                             // memfd with pidfd_getfd before any range is staged with it (docs/native.md)
};

// Stage: dev_offset naming the region's own memfd (kOpStagePrepare) instead of a descriptor.
constexpr uint64_t kStageOwnFd = 0xffffffffu;

enum AnswerFlags : uint8_t {
  kAnsWritable = 1 << 0,    // install: PROT_WRITE
  kAnsPrivate = 1 << 1,     // install: MAP_PRIVATE (copy-on-write by the kernel)
  kAnsPopulate = 1 << 2,    // install: MADV_POPULATE_{WRITE,READ} before waking
  kAnsWp = 1 << 3,          // zero/copy: write-protected, so a later write traps
  kAnsNoWake = 1 << 4,      // do not wake (a later answer will)
  kAnsFromDevice = 1 << 5,  // copy: source is the device view at dev_offset
  kAnsAdopt = 1 << 6,       // install: first copy the present pages of the range into the device
  kAnsWindow = 1 << 7,      // set reserve (with kAnsWp): a hole read zeroes its run of holes in its 2 MiB window
};

// Second flag word (the frame's former reserved field).
enum AnswerFlags2 : uint16_t {
  kAns2PopulateRead = 1 << 0,  // install: populate for reading even if writable (no dirtying)
};

// One answer. COPY with a literal payload is followed by `payload` bytes, padded to 8.
struct Answer {
  uint8_t op;       // AnswerOp
  uint8_t flags;    // AnswerFlags
  uint16_t flags2;  // AnswerFlags2
  uint32_t region;
  uint64_t offset;      // within the region, page-aligned
  uint64_t length;      // page multiple
  uint32_t device;      // device id (install, copy from device)
  uint32_t payload;     // bytes of payload that follow this header
  uint64_t dev_offset;  // offset within the device
  uint64_t tag;         // opaque to the agent; echoed with the result
};
static_assert(sizeof(Answer) == 48, "Answer is a 48-byte wire frame");

// Result codes beside 0 / -errno.
constexpr int32_t kResultRaced = 1;  // zero: a racing write landed before write-protection

}  // namespace daxmap
