// The fault agent: reader thread, routing, registries, and the answer executor.
#include "agent.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <vector>

#include "uffd_compat.h"

namespace daxmap {

namespace {
constexpr uint64_t kPage = 4096;
constexpr uint64_t k2M = 2ull << 20;
constexpr uint64_t kDirectWindow = 2ull << 20;        // a decided range is installed a 2 MiB chunk at a time
constexpr uint64_t kGraceNs = 30ull * 1000000000ull;  // graveyard grace period
constexpr uint64_t kEagainBudgetNs = 5ull * 1000000000ull;
constexpr uint64_t kTickNs = 100000000ull;  // the watchdog's period while events are live

// Retry an op that met EAGAIN (the mm is changing: a REMAP event is unread). The
// reader thread reads it independently, so this converges; bounded anyway.
template <typename F>
int RetryEagain(F fn) {
  uint64_t start = MonotonicNs();
  long sleep_us = 20;
  for (;;) {
    int e = fn();
    if (e != EAGAIN) return e;
    if (MonotonicNs() - start > kEagainBudgetNs) return e;
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    sleep_us = std::min(sleep_us * 2, 1000L);
  }
}

// Bytes of a device range staged in memory, for a copy answer in a process that has
// no view of the device: pread for files and tmpfs, a transient mapping of the
// covering aligned range for a device-DAX character device (it has no read(2)).
class DeviceBytes {
 public:
  ~DeviceBytes() {
    if (map_ != nullptr) munmap(map_, map_len_);
  }
  int Read(const Device& dev, uint64_t off, uint64_t len) {
    if (dev.kind() == DeviceKind::kDevDax) {
      uint64_t a = dev.align();
      uint64_t start = off - off % a;
      uint64_t end = (off + len + a - 1) / a * a;
      void* p = mmap(nullptr, end - start, PROT_READ, MAP_SHARED, dev.fd(), static_cast<off_t>(start));
      if (p == MAP_FAILED) return errno;
      map_ = p;
      map_len_ = end - start;
      data_ = static_cast<const uint8_t*>(p) + (off - start);
      return 0;
    }
    buf_.resize(len);
    uint64_t done = 0;
    while (done < len) {
      ssize_t n = pread(dev.fd(), buf_.data() + done, len - done, static_cast<off_t>(off + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno;
      if (n == 0) return EIO;  // the device is shorter than its recorded size
      done += static_cast<uint64_t>(n);
    }
    data_ = buf_.data();
    return 0;
  }
  const uint8_t* data() const { return data_; }

 private:
  std::vector<uint8_t> buf_;
  void* map_ = nullptr;
  uint64_t map_len_ = 0;
  const uint8_t* data_ = nullptr;
};
}  // namespace

uint64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

Agent& Agent::Instance() {
  // Process-wide by nature (one userfaultfd serves every thread's regions). Never
  // destroyed: at process.exit() the main environment is not torn down, so its
  // reference is never dropped and the reader may still be running when static
  // destructors run; a joinable std::thread destroyed there would terminate.
  static Agent* agent = new Agent();
  return *agent;
}

Status Agent::Acquire() {
  std::lock_guard<std::mutex> g(life_mu_);
  if (users_ == 0) {
    Status s = Start();
    if (!s.ok()) return s;
  }
  users_++;
  return Status::Ok();
}

void Agent::Release() {
  std::lock_guard<std::mutex> g(life_mu_);
  if (users_ == 0) return;
  if (--users_ == 0) Stop();
}

Status Agent::Probe(UffdInfo* info) {
  Uffd u;
  Status s = u.Open();
  if (s.ok()) *info = u.info();
  return s;
}

Status Agent::Start() {
  Status s = uffd_.Open();
  if (!s.ok()) return s;
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    int e = errno;
    uffd_.Close();
    return Status::Errno(e, "start the fault agent: eventfd");
  }
  stop_.store(false);
  // The reader takes no asynchronous signal: each would be a wake-up for nothing
  // (and an EINTR); node's threads handle them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int e = 0;
  try {
    reader_ = std::thread([this] { ReaderLoop(); });
  } catch (const std::system_error& err) {
    e = err.code().value() != 0 ? err.code().value() : EAGAIN;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (e != 0) {
    close(wake_fd_);
    wake_fd_ = -1;
    uffd_.Close();
    return Status::Errno(e, "start the fault agent's reader thread");
  }
  // Named here, not by the thread itself, so that the name is there once Acquire
  // returns (tests find the thread by it in /proc/self/task/*/comm).
  pthread_setname_np(reader_.native_handle(), "daxmap-reader");
  stats_.starts++;
  return Status::Ok();
}

void Agent::Stop() {
  // Every region is closed by now (each user closes its own before releasing), so
  // no thread waits on a fault of ours; closing the userfaultfd would wake any that
  // did all the same.
  stop_.store(true);
  Kick();
  reader_.join();
  close(wake_fd_);
  wake_fd_ = -1;
  uffd_.Close();
}

void Agent::Kick() {
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof one);
}

void Agent::set_fault_timeout_ms(uint64_t ms) {
  fault_timeout_ns_.store(ms * 1000000ull);
  Kick();
}

bool Agent::AnyLive() {
  std::shared_lock<std::shared_mutex> g(reg_mu_);
  for (auto& [id, ch] : channels_) {
    if (ch->live() != 0) return true;
  }
  return false;
}

int Agent::PollTimeoutMs(uint64_t now, uint64_t last_tick) {
  if (!deferred_.empty()) return 1;
  uint64_t due = 0;
  if (fault_timeout_ns_.load() != 0 && AnyLive()) due = last_tick + kTickNs;
  uint64_t grave = NextGraveDue();
  if (grave != 0 && (due == 0 || grave < due)) due = grave;
  if (due == 0) return -1;
  if (due <= now) return 0;
  return static_cast<int>(std::min<uint64_t>((due - now + 999999) / 1000000, kTickNs / 1000000));
}

void Agent::ReaderLoop() {
  reader_id_.store(std::this_thread::get_id(), std::memory_order_release);
  struct uffd_msg msgs[64];
  uint64_t last_tick = MonotonicNs();
  std::vector<std::shared_ptr<Channel>> touched;
  for (;;) {
    struct pollfd p[2] = {{uffd_.fd(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int pr = poll(p, 2, PollTimeoutMs(MonotonicNs(), last_tick));
    stats_.wakes++;
    uint64_t now = MonotonicNs();
    if (pr > 0 && (p[1].revents & POLLIN)) {
      uint64_t v;
      (void)!read(wake_fd_, &v, sizeof v);
      if (stop_.load()) break;
    }
    if (pr > 0 && (p[0].revents & POLLIN)) {
      ssize_t n = read(uffd_.fd(), msgs, sizeof msgs);
      if (n > 0) {
        stats_.batches++;
        touched.clear();
        size_t count = static_cast<size_t>(n) / sizeof(struct uffd_msg);
        for (size_t i = 0; i < count; i++) {
          const struct uffd_msg& m = msgs[i];
          if (m.event == UFFD_EVENT_PAGEFAULT) {
            HandleFault(m.arg.pagefault.address, m.arg.pagefault.flags, m.arg.pagefault.feat.ptid, now, &touched);
          } else if (m.event == UFFD_EVENT_REMAP) {
            stats_.remaps++;
          }
        }
        std::sort(touched.begin(), touched.end());
        touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
        for (auto& ch : touched) {
          if (!ch->Flush()) OrphanChannel(ch->id());
        }
      }
    } else if (pr > 0 && (p[0].revents & (POLLERR | POLLHUP | POLLNVAL))) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // cannot happen while the fd is open
    }
    if (!deferred_.empty()) RunDeferred();
    if (now - last_tick >= kTickNs) {
      last_tick = now;
      Watchdog(now);
    }
    ReleaseGraves(now, false);
  }
  // Deferred poisons belong to regions closed by now (their waiters were woken
  // when they closed); the userfaultfd's close wakes anything else.
  deferred_.clear();
  reader_id_.store(std::thread::id(), std::memory_order_release);
}

void Agent::HandleFault(uint64_t addr, uint64_t kflags, uint32_t tid, uint64_t now,
                        std::vector<std::shared_ptr<Channel>>* touched) {
  stats_.events++;
  uintptr_t page = addr & ~(kPage - 1);
  std::shared_ptr<Region> r;
  {
    std::shared_lock<std::shared_mutex> g(reg_mu_);
    auto it = by_base_.upper_bound(page);
    if (it != by_base_.begin()) {
      --it;
      if (it->second->Contains(page)) r = it->second;
    }
  }
  if (!r || r->state.load() != kRegionOpen) {
    // Closed or closing: the thread retries and meets the retired reservation.
    stats_.stray++;
    uffd_.Wake(page, kPage);
    return;
  }
  uint64_t off = page - r->base();
  FaultEvent ev = {};
  ev.region = r->id();
  ev.flags = static_cast<uint16_t>(((kflags & UFFD_PAGEFAULT_FLAG_WRITE) ? kEvWrite : 0) |
                                   ((kflags & UFFD_PAGEFAULT_FLAG_WP) ? kEvWp : 0));
  ev.count = 1;
  ev.offset = off;
  ev.tid = tid;
  ev.seq = seq_.fetch_add(1);
  ev.time_ns = now;

  std::shared_ptr<Channel> ch;
  {
    std::lock_guard<std::mutex> g(r->mu);
    ch = r->channel;
  }
  if (TryDirect(r, ev, ch)) return;
  if (TryReserve(r, ev, ch, touched)) return;
  if (!ch || ch->orphaned()) {
    PoisonPage(r, off);
    return;
  }
  switch (ch->Enqueue(ev)) {
    case Channel::kOrphaned: PoisonPage(r, off); return;
    case Channel::kMerged: stats_.merged++; return;
    case Channel::kQueued:
      stats_.delivered++;
      touched->push_back(ch);
      return;
  }
}

bool Agent::TryDirect(const std::shared_ptr<Region>& r, const FaultEvent& ev, const std::shared_ptr<Channel>& ch) {
  // The table is held shared from the lookup until the window is installed and woken,
  // so a ClearDirect (exclusive) either comes first — then the range is not found —
  // or waits until this install is done, and the revoke after it takes the window.
  // Never waits: contended, the fault goes to the handler, which answers it.
  std::shared_lock<std::shared_mutex> table(r->direct_mu, std::try_to_lock);
  if (!table.owns_lock()) return false;
  DirectRange d;
  if (!r->FindDirect(ev.offset, &d)) return false;
  // A write-protect fault, or a write to a range decided read-only: the handler's
  // (it answers SIGBUS or whatever the policy says; an install would be SIGSEGV).
  if ((ev.flags & kEvWp) || ((ev.flags & kEvWrite) && !(d.flags & kAnsWritable))) return false;
  // Test seam (DAXMAP_TEST_DIRECT_DELAY_US): widen the window between finding the
  // range and installing it, so the race with ClearDirect + Revoke is testable.
  static const long delay_us = getenv("DAXMAP_TEST_DIRECT_DELAY_US") ? atol(getenv("DAXMAP_TEST_DIRECT_DELAY_US")) : 0;
  if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
  std::shared_lock<std::shared_mutex> ops(r->ops, std::try_to_lock);
  uintptr_t page = r->base() + ev.offset;
  if (!ops.owns_lock() || r->state.load() != kRegionOpen) {
    uffd_.Wake(page, kPage);  // closing: the thread meets the retired reservation
    return true;
  }
  uint64_t pm = 0;
  if (ReadPagemap(page, 1, &pm) && (pm & kPmPresent) && (pm & kPmFile)) {
    stats_.merged++;
    uffd_.Wake(page, kPage);  // a stale event: the window is already installed (and this page populated)
    return true;
  }
  uint64_t w = d.window < kPage ? kPage : d.window;
  uint64_t ws = std::max(d.offset, ev.offset & ~(w - 1));
  uint64_t we = std::min(d.offset + d.length, (ev.offset & ~(w - 1)) + w);
  uint8_t flags = d.flags & static_cast<uint8_t>(~kAnsPopulate);
  int e = r->Install(uffd_, ws, we - ws, *d.device, d.dev_offset + (ws - d.offset), flags, 0, false);
  if (e != 0) return false;  // e.g. ENOMEM at vm.max_map_count: the handler decides
  if (d.flags & kAnsPopulate) {
    // Only the faulting page, for the access that faulted; the rest of the window
    // takes the kernel's own first-touch faults (no trap: it is no longer registered).
    bool wr = (ev.flags & kEvWrite) && (d.flags & kAnsWritable);
    (void)madvise(reinterpret_cast<void*>(page), kPage, wr ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
  }
  stats_.direct++;
  if (ch) ch->Answered(r->id(), ws, we - ws);  // before the wake: see Region's executors
  uffd_.Wake(r->base() + ws, we - ws);
  return true;
}

bool Agent::TryReserve(const std::shared_ptr<Region>& r, const FaultEvent& ev, const std::shared_ptr<Channel>& ch,
                       std::vector<std::shared_ptr<Channel>>* touched) {
  // A write fault; or a read of a hole, where the policy asked for it (kAnsWp on the
  // set reserve answer: a mapping whose hole reads are 4 KiB zero pages), answered with
  // a write-protected page of zeros. A write-protect fault is taken only on a page of
  // zeros of a hole (checked below): a load followed by a store (Buffer.writeUInt32LE,
  // `b[i] |= x`) is then answered here like a store alone, instead of taking the
  // reserve back (docs/native.md, "Reserves").
  const bool write = (ev.flags & kEvWrite) != 0;
  const bool wp = (ev.flags & kEvWp) != 0;
  // A note needs someone to read it: with no handler the block would be nobody's.
  if (!ch || ch->orphaned()) return false;
  // Held from the lookup until the note is queued, so that once ClearReserve (which
  // locks it) returns, no install from the reserve is in progress and every note of
  // one is on the channel, ahead of anything queued later. Waited for: its other
  // holders are the handler's answers (set, top up, add ranges or windows, clear),
  // bookkeeping that never waits on this thread. A fault that found it taken used to
  // go to the handler, whose policy took the reserve back and granted it again: tens
  // of ms behind whatever the handler was doing (docs/native.md, "Reserves").
  std::lock_guard<std::mutex> g(r->reserve_mu);
  Reserve& rs = r->reserve;
  if (rs.ranges.empty()) return false;
  uintptr_t page = r->base() + ev.offset;
  if (!rs.Contains(ev.offset)) {
    // A second fault on a page this reserve just filled, read before the install
    // went in: the page is there, only wake (else the handler would be asked).
    uint64_t pm = 0;
    if (rs.used != 0 && ReadPagemap(page, 1, &pm) && (pm & kPmPresent) && (pm & kPmFile)) {
      stats_.merged++;  // counted before the wake, as every answer (docs/native.md, "Counters")
      uffd_.Wake(page, kPage);
      return true;
    }
    return false;
  }
  if (!write && !rs.zero_reads) return false;
  // Ran out: the handler refills. A read needs one at hand too (a racing store, below).
  if (rs.blocks.empty()) return false;
  std::shared_lock<std::shared_mutex> ops(r->ops, std::try_to_lock);
  if (!ops.owns_lock() || r->state.load() != kRegionOpen) {
    uffd_.Wake(page, kPage);  // closing: the thread meets the retired reservation
    return true;
  }
  // A hole read: the policy's own answer, the shared zero page(s), write-protected
  // (ZeroRun). A block is still needed at hand: a store from a thread that did not
  // fault can land between a zero page and its protection, and it must reach the file.
  if (!write) return ZeroRun(*r, rs, ev, ch, touched);
  if (wp) {
    // In the ranges a page is a hole of the file. Present in the registered region, it
    // is the shared zero page (placed by the policy or above: neither a file page nor
    // exclusive). A private copy a store raced into before the protection is made a
    // block before anything else sees it (above, or by the policy before its fault is
    // resolved), so none is here while a reserve is live; an exclusive page is taken
    // only if it holds nothing but zeros, else it is left to the handler.
    // Write-protected, the page cannot change under this check, and while the reserve
    // is live nothing else changes the mapping's pages: every other path takes the
    // reserve back first, which waits for reserve_mu, held here.
    uint64_t pm = 0;
    if (!ReadPagemap(page, 1, &pm) || !(pm & kPmPresent) || (pm & kPmFile)) return false;
    if (pm & kPmExclusive) {
      const uint8_t* b = reinterpret_cast<const uint8_t*>(page);
      if (b[0] != 0 || memcmp(b, b + 1, kPage - 1) != 0) return false;
    }
  }
  if (!InstallBlock(*r, rs, ev, wp, ch, touched)) return false;
  uffd_.Wake(page, kPage);
  return true;
}

bool Agent::InstallBlock(Region& r, Reserve& rs, const FaultEvent& ev, bool wp, const std::shared_ptr<Channel>& ch,
                         std::vector<std::shared_ptr<Channel>>* touched) {
  // reserve_mu and the region's ops (shared) are held; a block is at hand.
  const uint64_t dev_off = rs.blocks.back();
  // Test seam (DAXMAP_TEST_RESERVE_DELAY_US): widen the window between taking the
  // reserve and installing, so ClearReserve racing faults is testable.
  static const long delay_us =
      getenv("DAXMAP_TEST_RESERVE_DELAY_US") ? atol(getenv("DAXMAP_TEST_RESERVE_DELAY_US")) : 0;
  if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
  int e = r.Install(uffd_, ev.offset, kPage, *rs.device, dev_off, kAnsWritable | kAnsPopulate, 0, false);
  if (e != 0) return false;  // e.g. ENOMEM at vm.max_map_count: the handler decides
  rs.blocks.pop_back();
  rs.RemovePage(ev.offset);
  rs.used++;
  FaultEvent note = ev;
  note.flags = static_cast<uint16_t>(kEvNote | kEvWrite);
  note.count = 1;
  note.time_ns = dev_off;  // a note carries the block's device offset here
  // Not signalled on its own: a wake-up of the handler per native answer would cost
  // what the answer saves. It goes with the next fault event of the channel, or when
  // the reserve is cleared (docs/native.md, "Reserves") — except the note of the
  // install that takes the reserve down to its low-water mark: that one wakes the
  // handler (after this batch of faults), so it can top the reserve up before it runs
  // dry. An orphaned channel cannot take it: the handler is gone with its policy, and
  // the block with it.
  bool low = rs.low != 0 && !rs.low_sent && rs.blocks.size() <= rs.low;
  if (low) {
    rs.low_sent = true;
    note.flags = static_cast<uint16_t>(note.flags | kEvLow);
    stats_.low_water++;
  }
  if (ch->EnqueueNote(note, low) && low) touched->push_back(ch);
  stats_.reserved++;
  if (wp) stats_.reserved_wp++;
  ch->Answered(r.id(), ev.offset, kPage);  // before the wake: see Region's executors
  // A reserve window: after `threshold` pages of it filled, the rest of it, before the
  // store that filled the threshold is woken (once per window: once that store is
  // done, so is the upgrade).
  auto w = rs.windows.find(ev.offset & ~(k2M - 1));
  if (w != rs.windows.end()) {
    w->second.set(static_cast<uint32_t>((ev.offset - w->first) / kPage));
    if (w->second.count >= rs.threshold && !rs.runs.empty()) UpgradeWindow(r, rs, w->first, w->second, ch, touched);
  }
  return true;
}

bool Agent::AdoptRaced(Region& r, Reserve& rs, const FaultEvent& ev, const std::shared_ptr<Channel>& ch,
                       std::vector<std::shared_ptr<Channel>>* touched) {
  // The page at ev.offset is a private copy that a store raced into between the zero
  // page and its protection, write-protected now, so it cannot change. Its bytes go
  // into the next block, which is installed over it like a store's (and noted as one).
  // Should the copy fail, false: the caller sends the event to the handler, which
  // finds the page present and answers it (EEXIST) as it can.
  const uintptr_t page = r.base() + ev.offset;
  if (rs.blocks.empty()) return false;
  if (pwrite(rs.device->fd(), reinterpret_cast<const void*>(page), kPage, static_cast<off_t>(rs.blocks.back())) !=
      static_cast<ssize_t>(kPage))
    return false;
  stats_.reserved_raced++;
  return InstallBlock(r, rs, ev, false, ch, touched);
}

bool Agent::ZeroRun(Region& r, Reserve& rs, const FaultEvent& ev, const std::shared_ptr<Channel>& ch,
                    std::vector<std::shared_ptr<Channel>>* touched) {
  // reserve_mu and the region's ops (shared) are held; the faulting page is in the
  // ranges (a hole of the file) and a block is at hand. The policy answers a read of a
  // hole with one zero page, or with fault-around (zero_window) with 2 MiB of them;
  // here, the faulting page, or the run of pages around it in its 2 MiB window that
  // are in the ranges and not present (pages filled since are not holes any more), at
  // most as many as blocks at hand (each page a store raced into takes one). No memory
  // is spent on them, and they stay in the ranges: write-protected, a store to one is
  // a write-protect fault, answered from the reserve (TryReserve).
  const uint64_t span = rs.zero_window ? k2M : kPage;
  const uint64_t w0 = ev.offset & ~(span - 1);
  const uint64_t w1 = std::min<uint64_t>(w0 + span, r.length());
  const size_t n = static_cast<size_t>((w1 - w0) / kPage);
  const size_t f = static_cast<size_t>((ev.offset - w0) / kPage);
  std::vector<uint64_t> pm(n);
  if (!ReadPagemap(r.base() + w0, n, pm.data())) return false;
  auto hole = [&](size_t k) { return !(pm[k] & kPmPresent) && rs.Contains(w0 + k * kPage); };
  if (!hole(f)) return false;
  const size_t cap = rs.blocks.size();
  size_t i = f, j = f + 1;
  while (j < n && j - i < cap && hole(j)) j++;
  while (i > 0 && j - i < cap && hole(i - 1)) i--;
  bool raced = false;
  int e = r.Zero(uffd_, w0 + i * kPage, (j - i) * kPage, true, false, &raced);
  if (e != 0 && j - i > 1) {
    // The run spans more than one mapping of the region (ENOENT past the first): what
    // was placed is protected (Region::Zero); the faulting page alone then.
    bool r2 = false;
    (void)r.Zero(uffd_, ev.offset, kPage, true, false, &r2);
  }
  // What each page of the run is now: a zero page, a private copy a store raced into,
  // or not placed. The zero pages' notes first: a raced page's block below can reach a
  // reserve window's threshold, and its upgrade installs over zero pages of the run.
  std::vector<uint64_t> after(j - i);
  if (!ReadPagemap(r.base() + w0 + i * kPage, j - i, after.data())) return false;
  auto zero = [&](size_t k) {
    const uint64_t a = after[k - i];
    return (a & kPmPresent) && !(a & (kPmFile | kPmExclusive));
  };
  bool mine = false;
  for (size_t k = i; k < j;) {
    if (!zero(k)) {
      k++;
      continue;
    }
    size_t m = k + 1;
    while (m < j && zero(m)) m++;
    FaultEvent note = ev;
    note.flags = kEvNote;  // a zero note: no block, no kEvWrite
    note.offset = w0 + k * kPage;
    note.count = static_cast<uint16_t>(m - k);
    note.time_ns = 0;
    (void)ch->EnqueueNote(note, false);
    ch->Answered(r.id(), note.offset, (m - k) * kPage);  // before the wake: see Region's executors
    if (f >= k && f < m) {
      mine = true;
      stats_.reserved_zero++;  // before the wake: the woken thread may read the counters at once
    }
    uffd_.Wake(r.base() + note.offset, (m - k) * kPage);
    k = m;
  }
  for (size_t k = i; k < j; k++) {
    const uint64_t a = after[k - i];
    if (!(a & kPmPresent) || (a & kPmFile) || !(a & kPmExclusive)) continue;
    FaultEvent rev = ev;
    rev.offset = w0 + k * kPage;
    if (!AdoptRaced(r, rs, rev, ch, touched)) return false;
    if (k == f) {
      mine = true;
      stats_.reserved_zero++;
    }
    uffd_.Wake(r.base() + rev.offset, kPage);
  }
  return mine;  // false: the faulting page was not placed, the handler's
}
void Agent::UpgradeWindow(Region& r, Reserve& rs, uint64_t win, const Reserve::Window& w,
                          const std::shared_ptr<Channel>& ch, std::vector<std::shared_ptr<Channel>>* touched) {
  // reserve_mu and the region's ops (shared) are held. Every page of the window not
  // filled (here, or before: the policy marks the pages that are not holes) is still a
  // hole of the file (while the reserve is live nothing else touches the file): its
  // runs of pages are installed over the run's blocks at the same place in the window,
  // without populate (each page then takes the kernel's own first-touch fault, no
  // trap), and each such gap is noted (kEvRun) for the policy to record as written.
  uint64_t run = rs.runs.back();
  rs.runs.pop_back();
  const uint32_t pages = static_cast<uint32_t>(k2M / kPage);
  uint64_t installed = 0;
  stats_.upgrades++;  // counters before the wakes below
  for (uint32_t i = 0; i < pages;) {
    if (w.has(i)) {
      i++;
      continue;
    }
    uint32_t j = i;
    while (j < pages && !w.has(j)) j++;
    uint64_t off = win + static_cast<uint64_t>(i) * kPage, len = static_cast<uint64_t>(j - i) * kPage;
    // A failure (ENOMEM at vm.max_map_count) leaves this gap and the rest as holes in
    // the ranges; the run's blocks not installed go back at the take-back.
    if (r.Install(uffd_, off, len, *rs.device, run + (off - win), kAnsWritable, 0, false) != 0) break;
    rs.RemoveRange(off, off + len);
    FaultEvent note = {};
    note.region = r.id();
    note.flags = static_cast<uint16_t>(kEvNote | kEvWrite | kEvRun);
    note.count = static_cast<uint16_t>(j - i);
    note.offset = off;
    note.seq = seq_.fetch_add(1);
    note.time_ns = run + (off - win);  // the device offset of the gap's first block
    // The first gap's note wakes the handler (once per window): it may add runs for the
    // windows still waiting, which it would otherwise learn of only with the next fault
    // or low-water note.
    if (ch->EnqueueNote(note, installed == 0) && installed == 0) touched->push_back(ch);
    ch->Answered(r.id(), off, len);  // faults queued on those pages: the install answers them
    stats_.run_pages += j - i;
    uffd_.Wake(r.base() + off, len);
    installed += j - i;
    i = j;
  }
  rs.run_unused += pages - installed;
  rs.windows.erase(win);
}

int Agent::SetReserve(Region& r, const Answer& a, const uint8_t* payload, bool top_up) {
  std::shared_ptr<Device> dev = DeviceRegistry::Find(a.device);
  if (!dev) return ENODEV;
  // Shared writable 4 KiB installs only: never in a read-only region, never on a
  // 2 MiB-granular device (it maps whole aligned units only).
  // kAnsWp (a set, not a top-up): hole reads in the ranges are answered too.
  // kAnsWindow (with kAnsWp): a hole read zeroes its run of holes in its window.
  const uint8_t allowed = top_up ? 0 : (kAnsWp | kAnsWindow);
  if ((a.flags & ~allowed) != 0 || ((a.flags & kAnsWindow) && !(a.flags & kAnsWp)) || a.flags2 != 0 ||
      a.payload % 8 != 0 || r.read_only() || !dev->writable() || dev->align() > kPage)
    return EINVAL;
  size_t n = a.payload / 8;
  std::vector<uint64_t> blocks(n);
  if (n != 0) memcpy(blocks.data(), payload, a.payload);
  for (uint64_t b : blocks) {
    if (b % kPage != 0 || b > dev->size() || kPage > dev->size() - b) return EINVAL;
  }
  // dev_offset carries the low-water mark (blocks), not a device offset.
  if (top_up) return r.TopUpReserve(dev, blocks.data(), n, a.dev_offset);
  return r.AddReserve(dev, a.offset, a.length, blocks.data(), n, a.dev_offset, (a.flags & kAnsWp) != 0,
                      (a.flags & kAnsWindow) != 0);
}

void Agent::PoisonPage(const std::shared_ptr<Region>& r, uint64_t off) {
  std::shared_lock<std::shared_mutex> ops(r->ops, std::try_to_lock);
  if (!ops.owns_lock() || r->state.load() != kRegionOpen) {
    uffd_.Wake(r->base() + off, kPage);
    return;
  }
  stats_.poisoned++;
  if (OnReaderThread()) {
    int e = r->Poison(uffd_, off, kPage, true);
    if (e == EAGAIN) {
      stats_.deferred++;
      deferred_.emplace_back(r, off);
    }
  } else {
    RetryEagain([&] { return r->Poison(uffd_, off, kPage, true); });
  }
}

void Agent::PoisonEvents(const std::vector<FaultEvent>& evs) {
  for (const FaultEvent& ev : evs) {
    std::shared_ptr<Region> r = FindRegion(ev.region);
    if (r) PoisonPage(r, ev.offset);
  }
}

void Agent::RunDeferred() {
  std::vector<std::pair<std::shared_ptr<Region>, uint64_t>> work;
  work.swap(deferred_);
  for (auto& [r, off] : work) {
    stats_.poisoned--;  // counted again by PoisonPage
    PoisonPage(r, off);
  }
}

void Agent::Watchdog(uint64_t now) {
  uint64_t timeout = fault_timeout_ns_.load();
  std::vector<std::shared_ptr<Channel>> chans;
  {
    std::shared_lock<std::shared_mutex> g(reg_mu_);
    for (auto& [id, ch] : channels_) chans.push_back(ch);
  }
  if (timeout != 0) {
    for (auto& ch : chans) {
      std::vector<FaultEvent> evs = ch->Expired(now, timeout);
      stats_.timeouts += evs.size();
      PoisonEvents(evs);
    }
  }
}

Status Agent::CreateRegion(uint64_t length, std::shared_ptr<Region>* out) {
  std::shared_ptr<Region> r;
  Status s = Region::Create(uffd_, next_region_.fetch_add(1), length, &r);
  if (!s.ok()) return s;
  {
    std::unique_lock<std::shared_mutex> g(reg_mu_);
    by_base_[r->base()] = r;
    by_id_[r->id()] = r;
  }
  *out = r;
  return Status::Ok();
}

std::shared_ptr<Region> Agent::FindRegion(uint32_t id) {
  std::shared_lock<std::shared_mutex> g(reg_mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

Status Agent::CloseRegion(uint32_t id, bool bury) {
  std::shared_ptr<Region> r;
  {
    std::unique_lock<std::shared_mutex> g(reg_mu_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return Status::Errno(ENOENT, "close region: no such region");
    r = it->second;
    by_id_.erase(it);
    by_base_.erase(r->base());
  }
  r->state.store(kRegionClosing);
  {
    std::unique_lock<std::shared_mutex> ops(r->ops);
    r->Retire(uffd_);
  }
  std::shared_ptr<Channel> ch;
  {
    std::lock_guard<std::mutex> g(r->mu);
    ch = std::move(r->channel);
  }
  r->ClearDirect(0, r->length());
  r->ClearReserve();
  if (ch) ch->DropRegion(id);  // their threads were woken by Retire
  r->state.store(kRegionClosed);
  if (bury) {
    Bury(r->base(), r->length());
  } else {
    munmap(reinterpret_cast<void*>(r->base()), r->length());
  }
  return Status::Ok();
}

Status Agent::BindRegion(uint32_t region, uint32_t channel) {
  std::shared_ptr<Region> r = FindRegion(region);
  if (!r) return Status::Errno(ENOENT, "bind region: no such region");
  std::shared_ptr<Channel> ch;
  if (channel != 0) {
    ch = FindChannel(channel);
    if (!ch) return Status::Errno(ENOENT, "bind region: no such channel");
  }
  std::lock_guard<std::mutex> g(r->mu);
  r->channel = std::move(ch);
  return Status::Ok();
}

Status Agent::SetDirect(uint32_t region, const DirectRange& d) {
  std::shared_ptr<Region> r = FindRegion(region);
  if (!r) return Status::Errno(ENOENT, "set direct range: no such region");
  int e = CheckDirect(*r, d);
  if (e != 0) return Status::Errno(e, "set direct range: range outside region or device, or bad window or flags");
  r->SetDirect(d);
  return Status::Ok();
}

int Agent::CheckDirect(const Region& r, const DirectRange& d) {
  if (!d.device) return ENODEV;
  if (d.length == 0 || d.offset % kPage || d.length % kPage || d.offset > r.length() ||
      d.length > r.length() - d.offset || d.dev_offset % kPage || d.dev_offset > d.device->size() ||
      d.length > d.device->size() - d.dev_offset || d.window == 0 || (d.window & (d.window - 1)) != 0 ||
      (d.flags & ~(kAnsWritable | kAnsPrivate | kAnsPopulate)) != 0 ||
      ((d.flags & kAnsWritable) && !(d.flags & kAnsPrivate) && !d.device->writable())) {
    return EINVAL;
  }
  return 0;
}

Status Agent::ClearDirect(uint32_t region, uint64_t off, uint64_t len) {
  std::shared_ptr<Region> r = FindRegion(region);
  if (!r) return Status::Errno(ENOENT, "clear direct range: no such region");
  r->ClearDirect(off, len);
  return Status::Ok();
}

void Agent::AddChannel(std::shared_ptr<Channel> ch) {
  std::unique_lock<std::shared_mutex> g(reg_mu_);
  channels_[ch->id()] = std::move(ch);
}

std::shared_ptr<Channel> Agent::FindChannel(uint32_t id) {
  std::shared_lock<std::shared_mutex> g(reg_mu_);
  auto it = channels_.find(id);
  return it == channels_.end() ? nullptr : it->second;
}

void Agent::OrphanChannel(uint32_t id) {
  std::shared_ptr<Channel> ch;
  {
    std::unique_lock<std::shared_mutex> g(reg_mu_);
    auto it = channels_.find(id);
    if (it == channels_.end()) return;
    ch = std::move(it->second);
    channels_.erase(it);
  }
  PoisonEvents(ch->Orphan());
}

long Agent::Execute(const uint8_t* buf, size_t len, int32_t* results, size_t max_results) {
  size_t pos = 0;
  long i = 0;
  while (pos < len) {
    if (len - pos < sizeof(Answer)) return -EINVAL;
    Answer a;
    memcpy(&a, buf + pos, sizeof a);
    pos += sizeof a;
    size_t padded = (static_cast<size_t>(a.payload) + 7) & ~size_t{7};
    if (padded > len - pos) return -EINVAL;
    const uint8_t* payload = buf + pos;
    pos += padded;
    int32_t value = 0;
    int e = ExecuteOne(a, a.payload ? payload : nullptr, &value);
    if (static_cast<size_t>(i) < max_results) results[i] = e != 0 ? -e : value;
    i++;
  }
  return i;
}

int Agent::ExecuteOne(const Answer& a, const uint8_t* payload, int32_t* value) {
  stats_.answers++;
  bool raced_flag = false;
  bool* raced = &raced_flag;
  std::shared_ptr<Region> r = FindRegion(a.region);
  if (!r) {
    stats_.answer_errors++;
    return ENXIO;
  }
  if (a.length == 0 || a.offset % kPage || a.length % kPage || a.offset > r->length() ||
      a.length > r->length() - a.offset) {
    stats_.answer_errors++;
    return EINVAL;
  }
  std::shared_lock<std::shared_mutex> ops(r->ops);
  if (r->state.load() != kRegionOpen) {
    stats_.answer_errors++;
    return ENXIO;
  }
  // Every op runs without waking; once it succeeded the page's live event is
  // dropped and only then are the waiters woken. Woken first, a thread could fault
  // on the page again at once, be merged into the event being retired, and never
  // be answered.
  bool wake = !(a.flags & kAnsNoWake);
  int e = 0;
  switch (a.op) {
    case kOpInstall: {
      std::shared_ptr<Device> dev = DeviceRegistry::Find(a.device);
      e = dev ? r->Install(uffd_, a.offset, a.length, *dev, a.dev_offset, a.flags, a.flags2, false) : ENODEV;
      break;
    }
    case kOpZero:
      e = RetryEagain([&] { return r->Zero(uffd_, a.offset, a.length, (a.flags & kAnsWp) != 0, false, raced); });
      break;
    case kOpCopy: {
      const void* src = nullptr;
      std::shared_ptr<Device> dev;
      DeviceBytes staged;
      if (a.flags & kAnsFromDevice) {
        dev = DeviceRegistry::Find(a.device);
        if (!dev || a.dev_offset > dev->size() || a.length > dev->size() - a.dev_offset) {
          e = dev ? EINVAL : ENODEV;
          break;
        }
        if (dev->view() != nullptr) {
          src = dev->view() + a.dev_offset;
        } else {
          // A client that opened the device without a view (daemon mode): read the
          // bytes through its own descriptor.
          e = staged.Read(*dev, a.dev_offset, a.length);
          if (e != 0) break;
          src = staged.data();
        }
      } else {
        if (payload == nullptr || a.payload < a.length) {
          e = EINVAL;
          break;
        }
        src = payload;
      }
      e = RetryEagain([&] { return r->Copy(uffd_, a.offset, a.length, src, (a.flags & kAnsWp) != 0, false); });
      break;
    }
    case kOpPoison: e = RetryEagain([&] { return r->Poison(uffd_, a.offset, a.length, false); }); break;
    case kOpRevoke:
      // Not an answer to a fault: it wakes its range itself, and waiters refault.
      e = OnReaderThread() ? EDEADLK : r->Revoke(uffd_, a.offset, a.length);
      break;
    case kOpWake: break;
    case kOpUnprotect: e = RetryEagain([&] { return r->Unprotect(uffd_, a.offset, a.length, false); }); break;
    case kOpSetDirect: {
      // Only what a shared mapping may decide: writable and/or populate (the faulting
      // page); the window is the 2 MiB chunk of the region.
      DirectRange d;
      d.offset = a.offset;
      d.length = a.length;
      d.device = DeviceRegistry::Find(a.device);
      d.dev_offset = a.dev_offset;
      d.flags = a.flags;
      d.window = kDirectWindow;
      if (a.flags & ~(kAnsWritable | kAnsPopulate))
        e = EINVAL;
      else
        e = CheckDirect(*r, d);
      if (e == 0) r->SetDirect(d);
      break;
    }
    case kOpClearDirect: r->ClearDirect(a.offset, a.length); break;
    case kOpSetReserve: e = SetReserve(*r, a, payload, false); break;
    case kOpTopUpReserve: e = SetReserve(*r, a, payload, true); break;
    case kOpAddReserveRanges: {
      std::shared_ptr<Device> dev = DeviceRegistry::Find(a.device);
      if (!dev) {
        e = ENODEV;
      } else if (a.flags != 0 || a.flags2 != 0 || a.payload % 16 != 0) {
        e = EINVAL;
      } else {
        std::vector<uint64_t> pairs(a.payload / 8);
        if (!pairs.empty()) memcpy(pairs.data(), payload, a.payload);
        e = r->AddReserveRanges(dev, pairs.data(), pairs.size() / 2);
      }
      break;
    }
    case kOpReserveWindows: {
      std::shared_ptr<Device> dev = DeviceRegistry::Find(a.device);
      if (!dev) {
        e = ENODEV;
      } else if (a.flags != 0 || a.flags2 != 0 || a.payload % 8 != 0 || a.payload < 16) {
        e = EINVAL;
      } else {
        std::vector<uint64_t> v(a.payload / 8);
        memcpy(v.data(), payload, a.payload);
        uint64_t t = v[0], n = v[1];
        const uint64_t words = Region::kWindowWords;
        if (t > UINT32_MAX || n > (v.size() - 2) / words)
          e = EINVAL;
        else
          e = r->AddReserveWindows(dev, static_cast<uint32_t>(t), v.data() + 2, n, v.data() + 2 + n * words,
                                   v.size() - 2 - n * words);
      }
      break;
    }
    case kOpStage:
      e = (a.flags != 0 || a.flags2 != 0 || a.payload != 0 || (a.dev_offset > INT32_MAX && a.dev_offset != kStageOwnFd))
              ? EINVAL
              : r->Stage(uffd_, a.offset, a.length,
                         a.dev_offset == kStageOwnFd ? Region::kOwnFd : static_cast<int>(a.dev_offset));
      break;
    case kOpStagePrepare:
      e = (a.flags != 0 || a.flags2 != 0 || a.payload != 0) ? EINVAL : r->StagePrepare(value);
      break;
    case kOpClearReserve: *value = static_cast<int32_t>(std::min<uint64_t>(r->ClearReserve(), INT32_MAX)); break;
    default: e = EINVAL;
  }
  if (e != 0) {
    stats_.answer_errors++;
    return e;
  }
  if (raced_flag) *value = kResultRaced;
  bool decides = a.op == kOpSetDirect || a.op == kOpClearDirect || a.op == kOpSetReserve || a.op == kOpClearReserve ||
                 a.op == kOpTopUpReserve || a.op == kOpAddReserveRanges || a.op == kOpReserveWindows ||
                 a.op == kOpStagePrepare;
  if (a.op != kOpRevoke && !decides && wake) {
    std::shared_ptr<Channel> ch;
    {
      std::lock_guard<std::mutex> g(r->mu);
      ch = r->channel;
    }
    if (ch) ch->Answered(r->id(), a.offset, a.length);
    r->Wake(uffd_, a.offset, a.length);
  }
  return 0;
}

void Agent::Bury(uintptr_t base, uint64_t len) {
  uint64_t now = MonotonicNs();
  {
    std::lock_guard<std::mutex> g(grave_mu_);
    graveyard_.emplace_back(now, std::make_pair(base, len));
  }
  ReleaseGraves(now, false);
  Kick();  // the reader now has a grave to release when it is due
}

uint64_t Agent::NextGraveDue() {
  std::lock_guard<std::mutex> g(grave_mu_);
  return graveyard_.empty() ? 0 : graveyard_.front().first + kGraceNs + 1;
}

void Agent::ReleaseGraves(uint64_t now, bool all) {
  std::lock_guard<std::mutex> g(grave_mu_);
  while (!graveyard_.empty() && (all || now - graveyard_.front().first > kGraceNs)) {
    munmap(reinterpret_cast<void*>(graveyard_.front().second.first), graveyard_.front().second.second);
    graveyard_.pop_front();
  }
}

}  // namespace daxmap
