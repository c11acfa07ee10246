// A fault channel: the per-handler queue of fault events. The agent's reader
// enqueues and notifies; the handler takes events and its answers retire them.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "frames.h"

namespace daxmap {

// Where a region's faults go. Events for the same page are merged while one is
// queued or being handled (the handler's answer wakes every thread waiting on the
// page), so two threads faulting one page get one answer.
class Channel {
 public:
  explicit Channel(uint32_t id) : id_(id) {}
  virtual ~Channel() = default;
  uint32_t id() const { return id_; }

  enum EnqueueResult { kOrphaned, kQueued, kMerged };
  // Reader thread. kOrphaned: nobody will answer, the caller poisons the fault.
  EnqueueResult Enqueue(const FaultEvent& ev);
  // Reader thread: queue a note (kEvNote) in order with the events; it is never
  // merged, never live (nothing answers it), and unless `wake` notifies nobody: it is
  // taken with the next event, or by a drain. With `wake` (a low-water note) the next
  // Flush() notifies the handler, as for an event. False if the channel is orphaned.
  bool EnqueueNote(const FaultEvent& note, bool wake = false);
  // Reader thread, after a batch: tell the handler there is work. False if the
  // handler is gone (the channel is then orphaned by the caller).
  bool Flush();
  // Handler side: move up to `max` queued events and notes out, in queue order; the
  // events stay live (outstanding) until an answer covers their page.
  size_t Take(FaultEvent* out, size_t max);
  // An answer for [off, off+len) of `region` ran: its waiters were woken.
  void Answered(uint32_t region, uint64_t off, uint64_t len);
  // The handler is gone: every live event is returned for poisoning.
  std::vector<FaultEvent> Orphan();
  std::vector<FaultEvent> DropRegion(uint32_t region);
  // The handler gave up on these events: those not yet answered are removed and
  // returned (for poisoning); answered ones are left alone.
  std::vector<FaultEvent> Abandon(const FaultEvent* evs, size_t n);
  // Live events older than `timeout_ns`, removed and returned (watchdog).
  std::vector<FaultEvent> Expired(uint64_t now_ns, uint64_t timeout_ns);
  bool orphaned() const { return orphaned_.load(std::memory_order_acquire); }
  size_t live() const;

 protected:
  // Signal the handler (e.g. a thread-safe function call). Called with notify_mu_
  // held, never after MarkClosed(). False if the handler is gone.
  virtual bool Notify() = 0;
  // After this returns Notify() is never called again.
  void MarkClosed();

 private:
  using Key = std::pair<uint32_t, uint64_t>;
  struct Live {
    FaultEvent ev;
    bool taken;
  };
  uint32_t id_;
  mutable std::mutex mu_;
  std::map<Key, Live> live_;
  // A fault's key, or a note (carried whole).
  struct Queued {
    Key key;
    bool is_note;
    FaultEvent note;
  };
  std::deque<Queued> queue_;
  bool pending_notify_ = false;  // events queued since the handler last drained
  bool notified_ = false;        // a notification is in flight
  std::mutex notify_mu_;
  bool closed_ = false;  // guarded by notify_mu_
  std::atomic<bool> orphaned_{false};
};

}  // namespace daxmap
