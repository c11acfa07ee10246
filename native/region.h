// A trapped region: reserved address space registered MISSING|WP with the agent's
// userfaultfd, and the answers that resolve faults in it. Mechanism only: which
// answer a fault gets is decided elsewhere.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "device.h"
#include "status.h"
#include "uffd.h"

namespace daxmap {

class Channel;

// A range answered by the agent itself, without a round trip to the handler: a
// fault inside it installs the covering window of the device range and wakes.
struct DirectRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  std::shared_ptr<Device> device;
  uint64_t dev_offset = 0;
  uint8_t flags = 0;       // AnswerFlags: kAnsWritable, kAnsPrivate, kAnsPopulate
  uint64_t window = 4096;  // bytes installed per fault (aligned within the region)
};

// A region's reserve (docs/native.md, "Reserves"): zeroed 4 KiB blocks of one device
// and the ranges (region offsets) where a write fault may take one of them natively.
struct Reserve {
  std::shared_ptr<Device> device;
  std::vector<uint64_t> blocks;         // device offsets, used from the back
  std::map<uint64_t, uint64_t> ranges;  // start -> end, sorted, non-overlapping, page-aligned
  uint64_t used = 0;                    // blocks installed since the last clear
  // The low-water mark (blocks; 0: none): the install that leaves `blocks` at or under
  // it sends its note with kEvLow, once; a set or top-up that adds blocks re-arms it.
  uint64_t low = 0;
  bool low_sent = false;
  // Set by a SetReserve with kAnsWp: a missing read fault in the ranges is answered
  // here too, with a write-protected page of zeros and a zero note (no block).
  bool zero_reads = false;
  // With zero_reads: a hole read zeroes (write-protected) the run of holes of the
  // ranges around it in its 2 MiB window, not only its page: the policy's fault-around.
  bool zero_window = false;
  // Reserve windows (docs/native.md, "Reserve windows"): windows of the region that
  // were holes of the file when given, each with the pages the reserve filled since;
  // after `threshold` of them the rest of the window is installed from a run (2 MiB
  // of zeroed blocks, device offsets in `runs`, used from the back). `run_unused`
  // counts the blocks of runs used by upgrades that were not installed.
  struct Window {
    uint64_t filled[8] = {};
    uint32_t count = 0;
    bool has(uint32_t i) const { return (filled[i / 64] >> (i % 64)) & 1; }
    void set(uint32_t i) {
      if (!has(i)) count++;
      filled[i / 64] |= 1ull << (i % 64);
    }
  };
  std::map<uint64_t, Window> windows;
  std::vector<uint64_t> runs;
  uint32_t threshold = 0;
  uint64_t run_unused = 0;
  bool Contains(uint64_t offset) const;
  void AddRange(uint64_t off, uint64_t end);
  // Removes the page at `offset` (which Contains) from the ranges.
  void RemovePage(uint64_t offset);
  // Removes [off, end) from the ranges, wherever it overlaps them.
  void RemoveRange(uint64_t off, uint64_t end);
  // Blocks not installed: the single blocks left, the runs not used, what upgrades left.
  uint64_t Unused() const { return blocks.size() + runs.size() * 512 + run_unused; }
  // Adds blocks (to be used in the given order, after those already held) and sets the
  // low-water mark.
  void AddBlocks(const uint64_t* add, size_t n, uint64_t low_water);
  bool active() const { return !ranges.empty() && !blocks.empty(); }
};

enum RegionState : int { kRegionOpen = 0, kRegionClosing = 1, kRegionClosed = 2 };

class Region {
 public:
  ~Region();  // closes the own staging memfd, if any
  static Status Create(const Uffd& uffd, uint32_t id, uint64_t length, std::shared_ptr<Region>* out);

  uint32_t id() const { return id_; }
  uintptr_t base() const { return base_; }
  uint64_t length() const { return length_; }
  bool Contains(uintptr_t addr) const { return addr >= base_ && addr - base_ < length_; }
  bool read_only() const { return read_only_; }
  // Makes the whole region PROT_READ, as a kernel mapping made without PROT_WRITE: a
  // store is SIGSEGV from the kernel, before any fault is trapped; loads still fault
  // to the handler. Revokes then move in read-only spares. Only before the region's
  // address is handed out (it is not synchronised with answers).
  int MakeReadOnly();

  std::atomic<int> state{kRegionOpen};
  // Executors hold it shared; close holds it exclusive, so no answer runs on a
  // region being retired.
  std::shared_mutex ops;

  // Guarded by mu.
  std::mutex mu;
  std::shared_ptr<Channel> channel;

  // The direct table (docs/native.md, "Decided ranges"), guarded by direct_mu. The
  // reader holds it shared (try-lock only: it never waits) across FindDirect and the
  // install of the window it found; SetDirect and ClearDirect hold it exclusive. So
  // once ClearDirect returns no direct install of the cleared range is in progress
  // or can start, and a revoke that follows takes whatever was installed.
  std::shared_mutex direct_mu;
  std::vector<DirectRange> direct;  // sorted by offset, non-overlapping
  bool FindDirect(uint64_t offset, DirectRange* out);
  // Both take direct_mu exclusive. SetDirect replaces what overlaps; ranges are
  // checked by the caller.
  void SetDirect(const DirectRange& d);
  void ClearDirect(uint64_t off, uint64_t len);

  // The reserve, guarded by reserve_mu: the reader holds it from the lookup until the
  // block is installed, woken and its note queued; the answers that change the
  // reserve (set, top up, ranges, windows, clear) lock it and never wait on the reader
  // while they hold it. So once ClearReserve returns no reserve
  // install is in progress or can start, and every note of one is on the channel.
  std::mutex reserve_mu;
  Reserve reserve;
  // Under reserve_mu: adds ranges and blocks (the device must be the reserve's, if any),
  // sets the low-water mark and whether hole reads in the ranges are answered too. 0 or EINVAL.
  int AddReserve(const std::shared_ptr<Device>& dev, uint64_t off, uint64_t len, const uint64_t* blocks, size_t n,
                 uint64_t low, bool zero_reads, bool zero_window);
  // Under reserve_mu: adds blocks to the reserve that is set, ranges untouched, and sets
  // the low-water mark. 0, ENOENT (no reserve set: cleared, or never set) or EINVAL
  // (another device).
  int TopUpReserve(const std::shared_ptr<Device>& dev, const uint64_t* blocks, size_t n, uint64_t low);
  // Under reserve_mu: adds the n ranges [pairs[2i], pairs[2i+1]) to the reserve that is
  // set (the blocks untouched). 0, ENOENT (no reserve set) or EINVAL (another device,
  // or a range that is empty, unaligned or not inside the region: nothing is added).
  int AddReserveRanges(const std::shared_ptr<Device>& dev, const uint64_t* pairs, size_t n);
  // A window in a ReserveWindows payload: its region offset, then a bitmap of its 512
  // pages, set for each page that is a hole of the file.
  static constexpr size_t kWindowWords = 1 + 8;
  // Under reserve_mu: sets the threshold and adds the n windows (kWindowWords u64s each)
  // and m runs (device offsets) to the reserve that is set. 0, ENOENT (no reserve set) or
  // EINVAL (another device, a window not 2 MiB aligned or past the region, a run not
  // page-aligned or past the device, a threshold of 0 or above 512; nothing added).
  int AddReserveWindows(const std::shared_ptr<Device>& dev, uint32_t threshold, const uint64_t* windows, size_t n,
                        const uint64_t* runs, size_t m);
  // Under reserve_mu: forgets the reserve; returns the number of blocks left unused.
  uint64_t ClearReserve();

  // The executors. Each returns 0 or a positive errno. `wake` wakes the threads
  // waiting on the range once the answer is in place. The agent passes wake=false
  // and wakes itself, after it has dropped the page's live event: a thread woken
  // earlier could fault again at once and be merged into the event being retired. Ranges are page-aligned and
  // inside the region (checked by the caller).
  int Install(const Uffd& u, uint64_t off, uint64_t len, const Device& dev, uint64_t dev_off, uint8_t flags,
              uint16_t flags2, bool wake);
  // raced: set when a write from another thread slipped in between placing the zero
  // page and write-protecting it; that page now holds private data (zeros plus the
  // write) and must be adopted into a block (an install with kAnsAdopt).
  int Zero(const Uffd& u, uint64_t off, uint64_t len, bool wp, bool wake, bool* raced);
  int Copy(const Uffd& u, uint64_t off, uint64_t len, const void* src, bool wp, bool wake);
  int Poison(const Uffd& u, uint64_t off, uint64_t len, bool wake);
  int Unprotect(const Uffd& u, uint64_t off, uint64_t len, bool wake);
  int Wake(const Uffd& u, uint64_t off, uint64_t len);
  // Atomically replaces the range with fresh trapped memory (a registered spare moved
  // in with mremap) so the next touch faults again. Must not run on the thread that
  // reads the userfaultfd: mremap waits until the REMAP event is read. mremap also
  // refuses (ENOMEM) within 3 mappings of vm.max_map_count, so callers keep their
  // installed windows well below the limit; ENOMEM is reported, never retried.
  int Revoke(const Uffd& u, uint64_t off, uint64_t len);
  // Maps [off, off+len) of the memfd `fd` over the same range of the region (shared,
  // writable, not populated), and takes the range out of the reserve's ranges and
  // windows under reserve_mu, so the reader never answers a fault there natively.
  // 0 or errno (EINVAL: not a memfd, or shorter than off+len; EROFS: a read-only
  // region). Does not wake.
  // fd kOwnFd: the region's own memfd (ENOENT if StagePrepare made none).
  int Stage(const Uffd& u, uint64_t off, uint64_t len, int fd);
  static constexpr int kOwnFd = -1;
  // Creates the region's own staging memfd (as long as the region, sparse,
  // close-on-exec) if it has none: a policy in another process takes it with
  // pidfd_getfd (docs/native.md, "Staged ranges"). 0 or errno; *fd its descriptor.
  // Closed with the region.
  int StagePrepare(int32_t* fd);
  // Close: replace the whole region with an inaccessible reservation, then wake every
  // waiter (it retries and meets PROT_NONE: EFAULT in a syscall, SIGSEGV otherwise).
  void Retire(const Uffd& u);

 private:
  Region() = default;
  // The own staging memfd (StagePrepare), guarded by reserve_mu; -1 when none.
  int own_stage_fd_ = -1;
  uint32_t id_ = 0;
  uintptr_t base_ = 0;
  uint64_t length_ = 0;
  bool read_only_ = false;
};

// Staging memfds (docs/native.md, "Staged ranges"), one definition for the agent's own
// (StagePrepare) and the policy's (the stageCreate binding): a sparse memfd of
// `length` bytes, close-on-exec; 0 or errno, *fd its descriptor.
int CreateStagingMemfd(uint64_t length, int* fd);
// 0 if `fd` is a staging memfd of at least `min_length` bytes: a regular shmem file
// (it answers F_GET_SEALS) on tmpfs, whose reads and mappings never block; else
// EINVAL (or fstat's errno). Checked before staging with it, and by daxmapd before
// it keeps a client's.
int CheckStagingMemfd(int fd, uint64_t min_length);

// Pagemap bits for [addr, addr + n pages): true if read. Bit 63 present, bit 56
// exclusively mapped (a private anonymous page, not the shared zero page).
bool ReadPagemap(uintptr_t addr, size_t npages, uint64_t* out);
constexpr uint64_t kPmPresent = 1ull << 63;
constexpr uint64_t kPmExclusive = 1ull << 56;
constexpr uint64_t kPmFile = 1ull << 61;

}  // namespace daxmap
