// The fault agent: one per process. While it has users it owns the userfaultfd and
// a reader thread that reads fault events in batches and routes each to the channel
// of its region (or answers it natively from the region's direct table); it keeps
// the registries of regions and channels. Answers are executed by Execute() on the
// caller's thread, never on the reader (revoke's mremap waits for the reader).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "channel.h"
#include "device.h"
#include "frames.h"
#include "region.h"
#include "status.h"
#include "uffd.h"

namespace daxmap {

struct AgentStats {
  std::atomic<uint64_t> events{0};          // page faults read
  std::atomic<uint64_t> batches{0};         // reads that returned events
  std::atomic<uint64_t> merged{0};          // faults merged into a live event of the same page
  std::atomic<uint64_t> direct{0};          // answered natively from a direct table
  std::atomic<uint64_t> reserved{0};        // write faults answered natively from a reserve (one note each)
  std::atomic<uint64_t> reserved_wp{0};     // of those, stores on the zero page of a hole (write-protect faults)
  std::atomic<uint64_t> reserved_zero{0};   // hole reads answered natively in a reserve's ranges (a zero note each)
  std::atomic<uint64_t> upgrades{0};        // reserve windows installed whole after their threshold
  std::atomic<uint64_t> run_pages{0};       // pages those upgrades installed (no trap for any of them)
  std::atomic<uint64_t> reserved_raced{0};  // of those, a store landed before the protection: copied into a block
  std::atomic<uint64_t> low_water{0};       // notes that woke the handler: a reserve reached its low-water mark
  std::atomic<uint64_t> delivered{0};       // events handed to channels
  std::atomic<uint64_t> poisoned{0};        // faults answered with SIGBUS by the agent itself
  std::atomic<uint64_t> timeouts{0};        // faults the watchdog answered
  std::atomic<uint64_t> deferred{0};        // agent answers deferred by EAGAIN
  std::atomic<uint64_t> answers{0};         // answers executed
  std::atomic<uint64_t> answer_errors{0};
  std::atomic<uint64_t> remaps{0};  // REMAP events (one per revoke)
  std::atomic<uint64_t> stray{0};   // faults outside any live region
  std::atomic<uint64_t> wakes{0};   // times the reader returned from poll()
  std::atomic<uint64_t> starts{0};  // reader threads started (the agent ran)
};

class Agent {
 public:
  // The process's agent. The object is never destroyed (its registries and stats
  // are process-wide); it *runs* — userfaultfd open, reader thread started — while
  // it has at least one user.
  static Agent& Instance();
  // Takes a user reference. The first user starts the agent; if that fails nothing
  // is remembered, so the next Acquire tries again.
  Status Acquire();
  // Drops a user reference. The last user stops the reader (through its eventfd),
  // joins it and closes the userfaultfd. Every region must be closed by then.
  void Release();
  // Only checks that userfaultfd can be opened with our features.
  static Status Probe(UffdInfo* info);

  const Uffd& uffd() const { return uffd_; }
  AgentStats& stats() { return stats_; }

  Status CreateRegion(uint64_t length, std::shared_ptr<Region>* out);
  std::shared_ptr<Region> FindRegion(uint32_t id);
  // bury: keep the PROT_NONE reservation for the grace period (a system call may
  // still hold a pointer into it); false releases it at once, for a region whose
  // memory never reached anyone (a map() that failed before returning it).
  Status CloseRegion(uint32_t id, bool bury = true);
  Status BindRegion(uint32_t region, uint32_t channel);
  Status SetDirect(uint32_t region, const DirectRange& d);
  Status ClearDirect(uint32_t region, uint64_t off, uint64_t len);

  // Answers each event's page with SIGBUS (skipping closed regions).
  void PoisonEvents(const std::vector<FaultEvent>& evs);

  uint32_t NextChannelId() { return next_channel_.fetch_add(1); }
  void AddChannel(std::shared_ptr<Channel> ch);
  std::shared_ptr<Channel> FindChannel(uint32_t id);
  // Poisons every live event of the channel and forgets it.
  void OrphanChannel(uint32_t id);

  // Executes a buffer of Answer frames (with payloads). results[i] gets 0, -errno,
  // or kResultRaced for the i-th answer. Returns the number of answers parsed, or
  // -EINVAL for a malformed buffer (answers before the bad frame ran).
  long Execute(const uint8_t* buf, size_t len, int32_t* results, size_t max_results);

  // Wakes the reader, which recomputes when the watchdog next needs to run.
  void set_fault_timeout_ms(uint64_t ms);
  uint64_t fault_timeout_ms() const { return fault_timeout_ns_.load() / 1000000ull; }
  bool OnReaderThread() const { return std::this_thread::get_id() == reader_id_.load(std::memory_order_acquire); }

 private:
  Agent() = default;
  Status Start();
  void Stop();
  // Makes the reader's poll() return (a no-op while it is not running).
  void Kick();
  void ReaderLoop();
  // How long the reader may sleep in poll(): -1 (until an event or a kick) when
  // nothing is pending; short while deferred poisons wait; until the next
  // watchdog tick while events are live; until the next grave is due.
  int PollTimeoutMs(uint64_t now, uint64_t last_tick);
  bool AnyLive();
  void HandleFault(uint64_t addr, uint64_t flags, uint32_t tid, uint64_t now,
                   std::vector<std::shared_ptr<Channel>>* touched);
  // Agent-side poison of one page on the reader thread; deferred on EAGAIN.
  void PoisonPage(const std::shared_ptr<Region>& r, uint64_t off);
  void RunDeferred();
  void Watchdog(uint64_t now);
  // *value: a result beside 0 / -errno (kResultRaced, or ClearReserve's unused count).
  int ExecuteOne(const Answer& a, const uint8_t* payload, int32_t* value);
  // Reader thread: answers the fault from the region's direct table if it can
  // (true: answered, or woken to meet a closing region); false routes it to the channel.
  bool TryDirect(const std::shared_ptr<Region>& r, const FaultEvent& ev, const std::shared_ptr<Channel>& ch);
  // Reader thread: answers a write fault on a reserve range with a block of the
  // region's reserve and queues a note on the channel (true), or routes it (false).
  // The note of the install that reaches the low-water mark wakes the handler: its
  // channel is added to `touched` (flushed after the batch).
  bool TryReserve(const std::shared_ptr<Region>& r, const FaultEvent& ev, const std::shared_ptr<Channel>& ch,
                  std::vector<std::shared_ptr<Channel>>* touched);
  // Set reserve's (or, top_up, top-up reserve's) checks and the reserve update: 0 or
  // the errno it is refused with.
  static int SetReserve(Region& r, const Answer& a, const uint8_t* payload, bool top_up);
  // A hole read in a reserve set with kAnsWp: its page, or with kAnsWindow the run of
  // holes around it in its 2 MiB window, zeroed and write-protected, and zero notes
  // (reserve_mu and ops held).
  bool ZeroRun(Region& r, Reserve& rs, const FaultEvent& ev, const std::shared_ptr<Channel>& ch,
               std::vector<std::shared_ptr<Channel>>* touched);
  // A page that a store raced into between its zero page and the protection: its bytes
  // into the next block of the reserve, installed over it and noted (reserve_mu and ops held).
  bool AdoptRaced(Region& r, Reserve& rs, const FaultEvent& ev, const std::shared_ptr<Channel>& ch,
                  std::vector<std::shared_ptr<Channel>>* touched);
  // The block at hand installed at ev.offset and noted (the low-water mark, a reserve
  // window's count and upgrade); not woken (reserve_mu and ops held).
  bool InstallBlock(Region& r, Reserve& rs, const FaultEvent& ev, bool wp, const std::shared_ptr<Channel>& ch,
                    std::vector<std::shared_ptr<Channel>>* touched);
  // Installs the rest of a reserve window from the next run (docs/native.md, "Reserve windows").
  void UpgradeWindow(Region& r, Reserve& rs, uint64_t win, const Reserve::Window& w, const std::shared_ptr<Channel>& ch,
                     std::vector<std::shared_ptr<Channel>>* touched);
  // 0, or the errno a direct range is refused with (ENODEV no device, EINVAL).
  static int CheckDirect(const Region& r, const DirectRange& d);

  // Start/stop: users_ and the running state change together under life_mu_.
  // uffd_ and wake_fd_ change only there, while no user exists, so the users that
  // read them (after their Acquire, which took life_mu_) never race with a change.
  std::mutex life_mu_;
  uint64_t users_ = 0;
  Uffd uffd_;
  int wake_fd_ = -1;  // eventfd: a kick or the stop request
  std::atomic<bool> stop_{false};
  AgentStats stats_;
  std::thread reader_;
  // Set by the reader itself before it does anything else, cleared as it ends.
  std::atomic<std::thread::id> reader_id_{};
  std::atomic<uint32_t> seq_{1};
  std::atomic<uint32_t> next_region_{1};
  std::atomic<uint32_t> next_channel_{1};
  std::atomic<uint64_t> fault_timeout_ns_{30ull * 1000000000ull};

  std::shared_mutex reg_mu_;
  std::map<uintptr_t, std::shared_ptr<Region>> by_base_;
  std::unordered_map<uint32_t, std::shared_ptr<Region>> by_id_;
  std::unordered_map<uint32_t, std::shared_ptr<Channel>> channels_;

  // Reader-thread only: poisons that met EAGAIN (a REMAP event not yet read).
  std::vector<std::pair<std::shared_ptr<Region>, uint64_t>> deferred_;

  // Retired regions' PROT_NONE reservations, released after a grace period so a
  // system call still holding a pointer into one fails with EFAULT instead of
  // touching memory that was handed out again.
  std::mutex grave_mu_;
  std::deque<std::pair<uint64_t, std::pair<uintptr_t, uint64_t>>> graveyard_;
  void Bury(uintptr_t base, uint64_t len);
  void ReleaseGraves(uint64_t now, bool all);
  // When the oldest grave is due (0: none).
  uint64_t NextGraveDue();
};

uint64_t MonotonicNs();

}  // namespace daxmap
