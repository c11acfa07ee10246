// One userfaultfd: open (syscall, else /dev/userfaultfd), API handshake with the
// features daxmap needs, registration, and the resolving ioctls. Mechanism only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "status.h"

namespace daxmap {

struct UffdInfo {
  uint64_t features = 0;  // what the kernel offered
  uint64_t ioctls = 0;    // ioctls valid on the fd after the handshake
  std::string via;        // "syscall" or "/dev/userfaultfd"
};

// Features we ask for; missing any of kRequired fails the handshake with EUFFD.
// PAGEFAULT_FLAG_WP: write-protect faults (zero page then write). POISON: SIGBUS
// answers. EVENT_REMAP: registration survives mremap, which revoke relies on.
// THREAD_ID: the faulting tid in events (diagnostics, latency attribution).
uint64_t UffdRequiredFeatures();

class Uffd {
 public:
  Uffd() = default;
  ~Uffd();
  Uffd(const Uffd&) = delete;
  Uffd& operator=(const Uffd&) = delete;

  // Opens and handshakes. On failure the Status has code "EUFFD" and a message
  // that says exactly how to enable userfaultfd on this machine.
  Status Open();
  // Closes the fd (the kernel unregisters its ranges and wakes their waiters).
  void Close();
  int fd() const { return fd_; }
  const UffdInfo& info() const { return info_; }

  // Each returns 0 or a positive errno. Every call that can meet EAGAIN from a
  // changing mm (mmap_changing while a REMAP event is unread) reports it;
  // callers that are not the event reader retry, the reader defers.
  int Register(uintptr_t start, size_t len) const;  // MISSING | WP
  int Unregister(uintptr_t start, size_t len) const;
  int Wake(uintptr_t start, size_t len) const;
  // Fill [start, start+len) with the zero page, skipping pages already present
  // (EEXIST), without waking. `done` (optional) gets how far it got: the kernel
  // fills within one mapping only, so a range spanning two stops (ENOENT) there.
  int ZeroPages(uintptr_t start, size_t len, size_t* done = nullptr) const;
  // Clearing protection wakes waiters unless dontwake.
  int WriteProtect(uintptr_t start, size_t len, bool protect, bool dontwake = false) const;
  // Copy from src, skipping present pages; wp: install write-protected.
  int Copy(uintptr_t dst, const void* src, size_t len, bool wp) const;
  // SIGBUS markers on the missing pages of the range, skipping present ones.
  int Poison(uintptr_t start, size_t len) const;

 private:
  int fd_ = -1;
  UffdInfo info_;
};

// Human text for an EUFFD error, given what failed and why.
std::string UffdHowToEnable(const std::string& reason);

}  // namespace daxmap
