// The fault channel: queueing, merging by page, delivery and retirement of events.
#include "channel.h"

#include <algorithm>

namespace daxmap {

Channel::EnqueueResult Channel::Enqueue(const FaultEvent& ev) {
  std::lock_guard<std::mutex> g(mu_);
  if (orphaned_.load(std::memory_order_relaxed)) return kOrphaned;
  Key k{ev.region, ev.offset};
  auto it = live_.find(k);
  if (it != live_.end()) {
    it->second.ev.count = static_cast<uint16_t>(std::min<int>(0xffff, it->second.ev.count + ev.count));
    it->second.ev.flags |= ev.flags;
    return kMerged;
  }
  live_.emplace(k, Live{ev, false});
  queue_.push_back(Queued{k, false, {}});
  pending_notify_ = true;
  return kQueued;
}

bool Channel::EnqueueNote(const FaultEvent& note, bool wake) {
  std::lock_guard<std::mutex> g(mu_);
  if (orphaned_.load(std::memory_order_relaxed)) return false;
  queue_.push_back(Queued{Key{note.region, note.offset}, true, note});
  if (wake) pending_notify_ = true;
  return true;
}

bool Channel::Flush() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!pending_notify_ || notified_) return true;
    pending_notify_ = false;
    notified_ = true;
  }
  std::lock_guard<std::mutex> n(notify_mu_);
  if (closed_) return false;
  return Notify();
}

size_t Channel::Take(FaultEvent* out, size_t max) {
  std::lock_guard<std::mutex> g(mu_);
  size_t n = 0;
  while (n < max && !queue_.empty()) {
    Queued q = queue_.front();
    queue_.pop_front();
    if (q.is_note) {
      out[n++] = q.note;
      continue;
    }
    auto it = live_.find(q.key);
    if (it == live_.end() || it->second.taken) continue;  // answered meanwhile
    it->second.taken = true;
    out[n++] = it->second.ev;
  }
  if (queue_.empty()) notified_ = false;  // drained: the next event notifies again
  return n;
}

void Channel::Answered(uint32_t region, uint64_t off, uint64_t len) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = live_.lower_bound(Key{region, off});
  while (it != live_.end() && it->first.first == region && it->first.second < off + len) it = live_.erase(it);
}

std::vector<FaultEvent> Channel::Orphan() {
  std::lock_guard<std::mutex> g(mu_);
  orphaned_.store(true, std::memory_order_release);
  std::vector<FaultEvent> out;
  out.reserve(live_.size());
  for (auto& [k, l] : live_) out.push_back(l.ev);
  live_.clear();
  queue_.clear();
  return out;
}

std::vector<FaultEvent> Channel::DropRegion(uint32_t region) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<FaultEvent> out;
  auto it = live_.lower_bound(Key{region, 0});
  while (it != live_.end() && it->first.first == region) {
    out.push_back(it->second.ev);
    it = live_.erase(it);
  }
  return out;
}

std::vector<FaultEvent> Channel::Abandon(const FaultEvent* evs, size_t n) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<FaultEvent> out;
  for (size_t i = 0; i < n; i++) {
    auto it = live_.find(Key{evs[i].region, evs[i].offset});
    if (it == live_.end()) continue;
    out.push_back(it->second.ev);
    live_.erase(it);
  }
  return out;
}

std::vector<FaultEvent> Channel::Expired(uint64_t now_ns, uint64_t timeout_ns) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<FaultEvent> out;
  for (auto it = live_.begin(); it != live_.end();) {
    if (now_ns - it->second.ev.time_ns > timeout_ns) {
      out.push_back(it->second.ev);
      it = live_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

size_t Channel::live() const {
  std::lock_guard<std::mutex> g(mu_);
  return live_.size();
}

void Channel::MarkClosed() {
  std::lock_guard<std::mutex> n(notify_mu_);
  closed_ = true;
}

}  // namespace daxmap
