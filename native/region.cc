// Trapped regions and the answers that resolve their faults.
#include "region.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "frames.h"
#include "uffd_compat.h"

namespace daxmap {

namespace {
constexpr uint64_t kPage = 4096;
constexpr uint64_t k2M = 2ull << 20;
}  // namespace

bool ReadPagemap(uintptr_t addr, size_t npages, uint64_t* out) {
  static int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);  // process-wide, never closed
  if (fd < 0) return false;
  size_t want = npages * sizeof(uint64_t);
  ssize_t n = pread(fd, out, want, static_cast<off_t>((addr / kPage) * sizeof(uint64_t)));
  return n == static_cast<ssize_t>(want);
}

Status Region::Create(const Uffd& uffd, uint32_t id, uint64_t length, std::shared_ptr<Region>* out) {
  if (length == 0 || length % kPage != 0)
    return Status::Errno(EINVAL, "create region: length must be a positive page multiple");
  // Reserve 2 MiB extra and trim, so the region is 2 MiB aligned and whole 2 MiB
  // windows can be installed in it.
  uint64_t span = length + k2M;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return Status::Errno(errno, "reserve region address space");
  uintptr_t raw = reinterpret_cast<uintptr_t>(p);
  uintptr_t base = (raw + k2M - 1) & ~(k2M - 1);
  if (base > raw) munmap(p, base - raw);
  uintptr_t end = base + length;
  if (raw + span > end) munmap(reinterpret_cast<void*>(end), raw + span - end);
  int e = uffd.Register(base, length);
  if (e != 0) {
    munmap(reinterpret_cast<void*>(base), length);
    return Status::Errno(e, "register region with userfaultfd");
  }
  std::shared_ptr<Region> r(new Region());
  r->id_ = id;
  r->base_ = base;
  r->length_ = length;
  *out = std::move(r);
  return Status::Ok();
}

int Region::MakeReadOnly() {
  if (mprotect(reinterpret_cast<void*>(base_), length_, PROT_READ) != 0) return errno;
  read_only_ = true;
  return 0;
}

bool Region::FindDirect(uint64_t offset, DirectRange* out) {
  // The last range starting at or before offset (the table is sorted, non-overlapping).
  auto it = std::upper_bound(direct.begin(), direct.end(), offset,
                             [](uint64_t o, const DirectRange& d) { return o < d.offset; });
  if (it == direct.begin()) return false;
  --it;
  if (offset - it->offset >= it->length) return false;
  *out = *it;
  return true;
}

namespace {
// Removes [off, off+len) from a sorted, non-overlapping table, cutting ranges that
// straddle its ends.
void CutDirect(std::vector<DirectRange>* table, uint64_t off, uint64_t len) {
  std::vector<DirectRange> out;
  uint64_t end = off + len;
  for (const DirectRange& d : *table) {
    uint64_t dend = d.offset + d.length;
    if (dend <= off || d.offset >= end) {
      out.push_back(d);
      continue;
    }
    if (d.offset < off) {
      DirectRange head = d;
      head.length = off - d.offset;
      out.push_back(head);
    }
    if (dend > end) {
      DirectRange tail = d;
      tail.offset = end;
      tail.length = dend - end;
      tail.dev_offset = d.dev_offset + (end - d.offset);
      out.push_back(tail);
    }
  }
  table->swap(out);
}
}  // namespace

void Region::SetDirect(const DirectRange& d) {
  std::unique_lock<std::shared_mutex> g(direct_mu);
  CutDirect(&direct, d.offset, d.length);
  auto pos = std::lower_bound(direct.begin(), direct.end(), d,
                              [](const DirectRange& a, const DirectRange& b) { return a.offset < b.offset; });
  direct.insert(pos, d);
}

void Region::ClearDirect(uint64_t off, uint64_t len) {
  std::unique_lock<std::shared_mutex> g(direct_mu);
  CutDirect(&direct, off, len);
}

bool Reserve::Contains(uint64_t offset) const {
  auto it = ranges.upper_bound(offset);
  if (it == ranges.begin()) return false;
  --it;
  return offset < it->second;
}

void Reserve::AddRange(uint64_t off, uint64_t end) {
  // Merge with every range it touches or overlaps.
  auto it = ranges.upper_bound(off);
  if (it != ranges.begin() && std::prev(it)->second >= off) --it;
  while (it != ranges.end() && it->first <= end) {
    off = std::min(off, it->first);
    end = std::max(end, it->second);
    it = ranges.erase(it);
  }
  ranges.emplace(off, end);
}

void Reserve::RemovePage(uint64_t offset) {
  auto it = std::prev(ranges.upper_bound(offset));
  uint64_t start = it->first, end = it->second;
  ranges.erase(it);
  if (start < offset) ranges.emplace(start, offset);
  if (offset + kPage < end) ranges.emplace(offset + kPage, end);
}

void Reserve::RemoveRange(uint64_t off, uint64_t end) {
  auto it = ranges.upper_bound(off);
  if (it != ranges.begin() && std::prev(it)->second > off) --it;
  while (it != ranges.end() && it->first < end) {
    uint64_t s = it->first, e = it->second;
    it = ranges.erase(it);
    if (s < off) ranges.emplace(s, off);
    if (end < e) {
      ranges.emplace(end, e);
      break;
    }
  }
}

void Reserve::AddBlocks(const uint64_t* add, size_t n, uint64_t low_water) {
  // Used from the back: the caller's first block is used first, and the blocks added
  // go after those left (which were given earlier).
  blocks.insert(blocks.begin(), add, add + n);
  std::reverse(blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(n));
  low = low_water;
  // Re-armed by every addition, even one that leaves the reserve at or under the mark
  // (the handler added less than was used meanwhile): the next install signals again.
  if (n != 0) low_sent = false;
}

int Region::AddReserve(const std::shared_ptr<Device>& dev, uint64_t off, uint64_t len, const uint64_t* blocks, size_t n,
                       uint64_t low, bool zero_reads, bool zero_window) {
  std::lock_guard<std::mutex> g(reserve_mu);
  if (reserve.device && reserve.device != dev) return EINVAL;
  reserve.device = dev;
  reserve.zero_reads = zero_reads;
  reserve.zero_window = zero_reads && zero_window;
  reserve.AddRange(off, off + len);
  reserve.AddBlocks(blocks, n, low);
  return 0;
}

int Region::AddReserveRanges(const std::shared_ptr<Device>& dev, const uint64_t* pairs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint64_t s = pairs[2 * i], e = pairs[2 * i + 1];
    if (s >= e || s % kPage || e % kPage || e > length_) return EINVAL;
  }
  std::lock_guard<std::mutex> g(reserve_mu);
  if (!reserve.device) return ENOENT;
  if (reserve.device != dev) return EINVAL;
  for (size_t i = 0; i < n; i++) reserve.AddRange(pairs[2 * i], pairs[2 * i + 1]);
  return 0;
}

int Region::AddReserveWindows(const std::shared_ptr<Device>& dev, uint32_t threshold, const uint64_t* windows, size_t n,
                              const uint64_t* runs, size_t m) {
  if (threshold == 0 || threshold > k2M / kPage) return EINVAL;
  for (size_t i = 0; i < n; i++) {
    const uint64_t w = windows[i * kWindowWords];
    if (w % k2M != 0 || w >= length_ || length_ - w < k2M) return EINVAL;
  }
  for (size_t i = 0; i < m; i++) {
    if (runs[i] % kPage != 0 || runs[i] > dev->size() || dev->size() - runs[i] < k2M) return EINVAL;
  }
  std::lock_guard<std::mutex> g(reserve_mu);
  if (!reserve.device) return ENOENT;
  if (reserve.device != dev) return EINVAL;
  reserve.threshold = threshold;
  for (size_t i = 0; i < n; i++) {
    // The pages that are not holes count as filled: they are never installed over, and
    // they count toward the threshold (the window is that dense already).
    Reserve::Window w;
    const uint64_t* holes = windows + i * kWindowWords + 1;
    for (uint32_t p = 0; p < k2M / kPage; p++) {
      if (!((holes[p / 64] >> (p % 64)) & 1)) w.set(p);
    }
    reserve.windows[windows[i * kWindowWords]] = w;
  }
  reserve.runs.insert(reserve.runs.begin(), runs, runs + m);
  std::reverse(reserve.runs.begin(), reserve.runs.begin() + static_cast<std::ptrdiff_t>(m));
  return 0;
}

int Region::TopUpReserve(const std::shared_ptr<Device>& dev, const uint64_t* blocks, size_t n, uint64_t low) {
  std::lock_guard<std::mutex> g(reserve_mu);
  // Test seam (DAXMAP_TEST_TOPUP_HOLD_US): hold the reserve this long, so that a fault
  // on a reserve range meets it taken (test/native/reserve.test.ts).
  static const long hold_us = getenv("DAXMAP_TEST_TOPUP_HOLD_US") ? atol(getenv("DAXMAP_TEST_TOPUP_HOLD_US")) : 0;
  if (hold_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(hold_us));
  if (!reserve.device) return ENOENT;
  if (reserve.device != dev) return EINVAL;
  reserve.AddBlocks(blocks, n, low);
  return 0;
}

uint64_t Region::ClearReserve() {
  std::lock_guard<std::mutex> g(reserve_mu);
  uint64_t unused = reserve.Unused();
  reserve = Reserve();
  return unused;
}

namespace {
// Move a registered spare over [to, to+len) in one atomic step, so no access can
// land in between and meet unregistered memory.
int MoveSpareOver(const Uffd& u, uintptr_t to, uint64_t len, int prot) {
  void* spare = mmap(nullptr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (spare == MAP_FAILED) return errno;
  int e = u.Register(reinterpret_cast<uintptr_t>(spare), len);
  if (e != 0) {
    munmap(spare, len);
    return e;
  }
  void* r = mremap(spare, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(to));
  if (r == MAP_FAILED) {
    e = errno;
    munmap(spare, len);
    return e;
  }
  return 0;
}

// At most this many aligned 2 MiB ranges in an install are split (MapFixed): more is
// an install made ahead (at map time, a decided range), where no trap left a page table.
constexpr uint64_t kSplitMaxChunks = 4;

// mmap(MAP_FIXED) of fd's [foff, foff+len) over [addr, addr+len). With `split`, no
// single call replaces a whole aligned 2 MiB range: each such range inside is cut at
// its middle, and the pieces merge back into one VMA (the same file, consecutive
// offsets). A call that replaces a whole aligned range frees its page table; where a
// trapped fault had allocated that table, the first pass over the window's pages then
// cost about 2 us a page on this VM, with no guest fault, and not with the window
// mapped in two calls (docs/faults.md, "The slow first pass"). Only where pages are
// mapped 4 KiB at a time: a huge device's window must be one call, for its PMD. If a
// later piece fails, the earlier ones are made registered holes again (with
// `hole_prot`), and its errno is returned.
int MapFixed(const Uffd& u, uintptr_t addr, uint64_t len, int prot, int flags, int fd, uint64_t foff, bool split,
             int hole_prot) {
  uint64_t cuts[kSplitMaxChunks];
  size_t n = 0;
  if (split) {
    uint64_t first = (addr + k2M - 1) & ~(k2M - 1);
    uint64_t chunks = first + k2M <= addr + len ? (addr + len - first) / k2M : 0;
    if (chunks <= kSplitMaxChunks) {
      for (uint64_t c = 0; c < chunks; c++) cuts[n++] = first + c * k2M + k2M / 2;
    }
  }
  uintptr_t at = addr;
  for (size_t i = 0; i <= n; i++) {
    uintptr_t end = i < n ? cuts[i] : addr + len;
    void* p = mmap(reinterpret_cast<void*>(at), end - at, prot, flags, fd, static_cast<off_t>(foff + (at - addr)));
    if (p == MAP_FAILED) {
      int e = errno;
      if (at > addr) (void)MoveSpareOver(u, addr, at - addr, hole_prot);
      return e;
    }
    at = end;
  }
  return 0;
}
}  // namespace

int Region::Install(const Uffd& u, uint64_t off, uint64_t len, const Device& dev, uint64_t dev_off, uint8_t flags,
                    uint16_t flags2, bool wake) {
  if (dev_off > dev.size() || len > dev.size() - dev_off) return EINVAL;
  if (dev.align() > kPage && ((base_ + off) % dev.align() || dev_off % dev.align() || len % dev.align())) {
    return EINVAL;  // device-dax and hugetlbfs only map whole, aligned extents
  }
  bool writable = (flags & kAnsWritable) != 0;
  bool priv = (flags & kAnsPrivate) != 0;
  if (writable && !priv && !dev.writable()) return EACCES;
  if (flags & kAnsAdopt) {
    // The range holds private pages with data that belongs in the device (a write
    // that raced a zero-page answer). They are write-protected, so nothing changes
    // them while we copy; only present pages are read (a missing one would fault
    // this very thread).
    if (dev.view() == nullptr) return EINVAL;
    size_t n = len / kPage;
    std::vector<uint64_t> pm(n);
    if (!ReadPagemap(base_ + off, n, pm.data())) return EIO;
    for (size_t i = 0; i < n; i++) {
      if ((pm[i] & kPmPresent) && (pm[i] & kPmExclusive)) {
        memcpy(dev.view() + dev_off + i * kPage, reinterpret_cast<void*>(base_ + off + i * kPage), kPage);
      }
    }
  }
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  int mflags = (priv ? MAP_PRIVATE : MAP_SHARED) | MAP_FIXED;
  bool split = dev.align() == kPage && !dev.huge();  // 4 KiB pages: see MapFixed
  int me = MapFixed(u, base_ + off, len, prot, mflags, dev.fd(), dev_off, split,
                    read_only_ ? PROT_READ : PROT_READ | PROT_WRITE);
  if (me != 0) return me;  // ENOMEM here is usually vm.max_map_count: reported, never retried
  void* p = reinterpret_cast<void*>(base_ + off);
  // A huge=advise tmpfs allocates 2 MiB folios only where asked: ask for an aligned
  // whole window, so its first fault (or the populate below) maps one PMD.
  if (dev.huge_advise() && !priv && len % k2M == 0 && (base_ + off) % k2M == 0 && dev_off % k2M == 0)
    (void)madvise(p, len, MADV_HUGEPAGE);
  if (flags & kAnsPopulate) {
    // Best effort: a page that cannot be populated faults in the kernel as usual.
    // A writable shared window of a 4 KiB tmpfs device is populated for reading: a
    // shared tmpfs mapping needs no write notification, so read faults map its pages
    // writable, and they do it through fault-around, up to 16 pages a fault, where a
    // write populate takes a fault per page (1.5-3x the time over the resident zeros
    // a window is taken from; docs/faults.md, "Populating a window"). Stores then take
    // no fault either way. Not on a regular file: its mapping tracks writes, so a page
    // populated for reading is mapped read-only, and bench row 6 measured 3x slower.
    bool for_read =
        (flags2 & kAns2PopulateRead) != 0 || (len > kPage && dev.kind() == DeviceKind::kTmpfs && !dev.huge());
    int adv = (writable && !priv && !for_read) ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
    (void)madvise(p, len, adv);
  }
  if (wake) u.Wake(base_ + off, len);
  return 0;
}

int CreateStagingMemfd(uint64_t length, int* fd) {
  int f = memfd_create("daxmap-stage", MFD_CLOEXEC);
  if (f < 0) return errno;
  if (ftruncate(f, static_cast<off_t>(length)) != 0) {
    int e = errno;
    close(f);
    return e;
  }
  *fd = f;
  return 0;
}

int CheckStagingMemfd(int fd, uint64_t min_length) {
  if (fcntl(fd, F_GET_SEALS) < 0) return EINVAL;  // not shmem (nor hugetlbfs)
  struct stat st;
  struct statfs sfs;
  if (fstat(fd, &st) != 0 || fstatfs(fd, &sfs) != 0) return errno;
  if (!S_ISREG(st.st_mode) || sfs.f_type != TMPFS_MAGIC || static_cast<uint64_t>(st.st_size) < min_length)
    return EINVAL;
  return 0;
}

int Region::StagePrepare(int32_t* fd) {
  if (read_only_) return EROFS;
  std::lock_guard<std::mutex> g(reserve_mu);
  if (own_stage_fd_ < 0) {
    int e = CreateStagingMemfd(length_, &own_stage_fd_);
    if (e != 0) return e;
  }
  *fd = own_stage_fd_;
  return 0;
}

int Region::Stage(const Uffd& u, uint64_t off, uint64_t len, int fd) {
  if (read_only_) return EROFS;
  std::lock_guard<std::mutex> g(reserve_mu);
  if (fd == kOwnFd) {
    if (own_stage_fd_ < 0) return ENOENT;
    fd = own_stage_fd_;
  }
  int e = CheckStagingMemfd(fd, off + len);
  if (e != 0) return e;
  // A memfd of 4 KiB pages: split (MapFixed) like a 4 KiB device's window.
  int me = MapFixed(u, base_ + off, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off, true,
                    PROT_READ | PROT_WRITE);
  if (me != 0) return me;
  if (!reserve.ranges.empty()) reserve.RemoveRange(off, off + len);
  for (auto it = reserve.windows.lower_bound(off & ~(k2M - 1)); it != reserve.windows.end() && it->first < off + len;) {
    if (it->first + k2M > off)
      it = reserve.windows.erase(it);
    else
      ++it;
  }
  return 0;
}

int Region::Zero(const Uffd& u, uint64_t off, uint64_t len, bool wp, bool wake, bool* raced) {
  *raced = false;
  size_t n = len / kPage;
  // Pages already present before this answer are not ours to judge.
  std::vector<uint64_t> before(n), after(n);
  bool have_before = wp && ReadPagemap(base_ + off, n, before.data());
  size_t done = 0;
  int e = u.ZeroPages(base_ + off, len, &done);
  if (e != 0) {
    // The range spans more than one mapping (ENOENT past the first). Zero pages
    // already placed must not stay writable-by-copy: protect them, then report.
    if (wp && done > 0) (void)u.WriteProtect(base_ + off, done, true);
    return e;
  }
  // Test seam (DAXMAP_TEST_ZERO_RACE=1): a store from a thread that did not fault,
  // landing exactly in the window between the zero page and its write protection.
  // The real race is a microsecond wide; this makes the detection testable.
  static const bool race_seam = getenv("DAXMAP_TEST_ZERO_RACE") != nullptr && getenv("DAXMAP_TEST_ZERO_RACE")[0] == '1';
  if (race_seam && wp) *reinterpret_cast<volatile uint8_t*>(base_ + off + 7) = 0x7d;
  if (wp) {
    e = u.WriteProtect(base_ + off, len, true);
    if (e != 0) return e;
    // Between placing the zero page and protecting it, a write from a thread that
    // did not fault could have copied-on-write it into a private page. Detect it.
    if (have_before && ReadPagemap(base_ + off, n, after.data())) {
      for (size_t i = 0; i < n; i++) {
        if (!(before[i] & kPmPresent) && (after[i] & kPmPresent) && (after[i] & kPmExclusive)) *raced = true;
      }
    }
  }
  if (wake) u.Wake(base_ + off, len);
  return 0;
}

int Region::Copy(const Uffd& u, uint64_t off, uint64_t len, const void* src, bool wp, bool wake) {
  int e = u.Copy(base_ + off, src, len, wp);
  if (e != 0) return e;
  if (wake) u.Wake(base_ + off, len);
  return 0;
}

int Region::Poison(const Uffd& u, uint64_t off, uint64_t len, bool wake) {
  // A present page (the zero page under a write fault) cannot take a poison marker;
  // drop it first. Its contents were zeros or are being discarded by this answer.
  size_t n = len / kPage;
  std::vector<uint64_t> pm(n);
  if (ReadPagemap(base_ + off, n, pm.data())) {
    for (size_t i = 0; i < n; i++) {
      if (pm[i] & kPmPresent) (void)madvise(reinterpret_cast<void*>(base_ + off + i * kPage), kPage, MADV_DONTNEED);
    }
  }
  int e = u.Poison(base_ + off, len);
  if (e != 0) return e;
  if (wake) u.Wake(base_ + off, len);
  return 0;
}

int Region::Unprotect(const Uffd& u, uint64_t off, uint64_t len, bool wake) {
  int e = u.WriteProtect(base_ + off, len, false, !wake);
  if (e != 0) return e;
  if (wake) u.Wake(base_ + off, len);
  return 0;
}

int Region::Wake(const Uffd& u, uint64_t off, uint64_t len) { return u.Wake(base_ + off, len); }

int Region::Revoke(const Uffd& u, uint64_t off, uint64_t len) {
  int e = MoveSpareOver(u, base_ + off, len, read_only_ ? PROT_READ : PROT_READ | PROT_WRITE);
  u.Wake(base_ + off, len);
  return e;
}

void Region::Retire(const Uffd& u) {
  void* p = mmap(reinterpret_cast<void*>(base_), length_, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  (void)p;  // if even this fails the registration stays and waiters are woken below
  u.Wake(base_, length_);
  // The own memfd: a policy that took it (daxmapd) keeps its own descriptor of it,
  // so what was stored there can still be collected.
  std::lock_guard<std::mutex> g(reserve_mu);
  if (own_stage_fd_ >= 0) close(own_stage_fd_);
  own_stage_fd_ = -1;
}

Region::~Region() {
  if (own_stage_fd_ >= 0) close(own_stage_fd_);
}

}  // namespace daxmap
