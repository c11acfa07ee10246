// userfaultfd open/handshake and the resolving ioctls. Every ioctl wrapper returns
// 0 or a positive errno; "already present" (EEXIST) pages are skipped so that a
// second answer for the same page is harmless and an op can be re-run after EAGAIN.
#include "uffd.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "uffd_compat.h"

namespace daxmap {

namespace {
constexpr size_t kPage = 4096;

int OpenViaSyscall(int* out) {
  long fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno;
  *out = static_cast<int>(fd);
  return 0;
}

int OpenViaDevice(int* out) {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return errno;
  int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
  int e = errno;
  close(dev);
  if (fd < 0) return e;
  *out = fd;
  return 0;
}

// Test seam: DAXMAP_TEST_DENY_UFFD=1 makes both ways fail as an unprivileged,
// locked-down process would see them. Used only to test the EUFFD message when the
// test cannot drop privileges for real.
bool DenySeam() {
  const char* v = getenv("DAXMAP_TEST_DENY_UFFD");
  return v != nullptr && v[0] == '1';
}

std::string FeatureNames(uint64_t missing) {
  std::string out;
  auto add = [&](uint64_t bit, const char* name) {
    if (missing & bit) {
      if (!out.empty()) out += ", ";
      out += name;
    }
  };
  add(UFFD_FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP");
  add(UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP");
  add(UFFD_FEATURE_THREAD_ID, "THREAD_ID");
  add(UFFD_FEATURE_POISON, "POISON (Linux 6.6+)");
  return out;
}
}  // namespace

const char* ErrnoName(int err) {
  const char* n = strerrorname_np(err);
  if (n != nullptr) return n;
  static thread_local char buf[16];
  snprintf(buf, sizeof buf, "E%d", err);
  return buf;
}

uint64_t UffdRequiredFeatures() {
  return UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_POISON;
}

std::string UffdHowToEnable(const std::string& reason) {
  return "userfaultfd is unavailable (" + reason +
         "). daxmap traps the first touch of every mapped page with userfaultfd, including "
         "faults taken inside system calls, so it needs full (not user-mode-only) access. "
         "Enable it with one of: run as root or with CAP_SYS_PTRACE; "
         "`sysctl -w vm.unprivileged_userfaultfd=1` (persist it in /etc/sysctl.d/); "
         "or give the user access to /dev/userfaultfd (Linux 6.1+), e.g. "
         "`chgrp daxmap /dev/userfaultfd && chmod 0660 /dev/userfaultfd` and add the user to "
         "that group. In a container, the seccomp profile must allow the userfaultfd syscall "
         "(Docker's default profile blocks it).";
}

Uffd::~Uffd() { Close(); }

void Uffd::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

Status Uffd::Open() {
  int fd = -1;
  int e1, e2;
  if (DenySeam()) {
    e1 = EPERM;
    e2 = EACCES;
  } else {
    e1 = OpenViaSyscall(&fd);
    info_.via = "syscall";
    e2 = 0;
    if (e1 != 0) {
      e2 = OpenViaDevice(&fd);
      info_.via = "/dev/userfaultfd";
    }
  }
  if (fd < 0) {
    std::string reason = std::string("userfaultfd(2): ") + ErrnoName(e1) + " " + strerror(e1) +
                         "; /dev/userfaultfd: " + ErrnoName(e2) + " " + strerror(e2);
    return Status::Coded(e1, "EUFFD", UffdHowToEnable(reason));
  }
  // Probe what the kernel offers (a handshake with features=0 reports them all),
  // then handshake for real on a fresh fd: the API ioctl can only be done once.
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = 0;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    int e = errno;
    close(fd);
    return Status::Coded(e, "EUFFD", UffdHowToEnable(std::string("UFFDIO_API: ") + strerror(e)));
  }
  uint64_t offered = api.features;
  uint64_t missing = UffdRequiredFeatures() & ~offered;
  close(fd);
  if (missing != 0) {
    return Status::Coded(EOPNOTSUPP, "EUFFD",
                         "the kernel's userfaultfd lacks features daxmap needs: " + FeatureNames(missing) +
                             ". daxmap needs Linux 6.6 or later.");
  }
  fd = -1;
  int e = info_.via == "syscall" ? OpenViaSyscall(&fd) : OpenViaDevice(&fd);
  if (e != 0) return Status::Coded(e, "EUFFD", UffdHowToEnable(std::string("reopen: ") + strerror(e)));
  api = {};
  api.api = UFFD_API;
  api.features = UffdRequiredFeatures();
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    int e3 = errno;
    close(fd);
    return Status::Coded(e3, "EUFFD", UffdHowToEnable(std::string("UFFDIO_API handshake: ") + strerror(e3)));
  }
  fd_ = fd;
  info_.features = offered;
  info_.ioctls = api.ioctls;
  return Status::Ok();
}

int Uffd::Register(uintptr_t start, size_t len) const {
  struct uffdio_register r = {};
  r.range.start = start;
  r.range.len = len;
  r.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
  return ioctl(fd_, UFFDIO_REGISTER, &r) == 0 ? 0 : errno;
}

int Uffd::Unregister(uintptr_t start, size_t len) const {
  struct uffdio_range r = {start, len};
  return ioctl(fd_, UFFDIO_UNREGISTER, &r) == 0 ? 0 : errno;
}

int Uffd::Wake(uintptr_t start, size_t len) const {
  struct uffdio_range r = {start, len};
  int e = ioctl(fd_, UFFDIO_WAKE, &r) == 0 ? 0 : errno;
  // Test seam (DAXMAP_TEST_WAKE_DELAY_US): the waker sleeps after each wake, so the
  // woken thread sees whatever the waker does after it late (docs/native.md, "Counters").
  static const long delay_us = getenv("DAXMAP_TEST_WAKE_DELAY_US") ? atol(getenv("DAXMAP_TEST_WAKE_DELAY_US")) : 0;
  if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
  return e;
}

// The fill ioctls stop at the first page already present (EEXIST) and report how
// far they got; skip that page and go on.
int Uffd::ZeroPages(uintptr_t start, size_t len, size_t* done_out) const {
  size_t done = 0;
  int e = 0;
  while (done < len) {
    struct uffdio_zeropage z = {};
    z.range.start = start + done;
    z.range.len = len - done;
    z.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE;
    if (ioctl(fd_, UFFDIO_ZEROPAGE, &z) == 0) {
      done = len;
      break;
    }
    e = errno;
    if (z.zeropage > 0) done += static_cast<size_t>(z.zeropage);
    if (e == EEXIST) {
      done += kPage;
      e = 0;
      continue;
    }
    break;
  }
  if (done_out != nullptr) *done_out = done;
  return e;
}

int Uffd::WriteProtect(uintptr_t start, size_t len, bool protect, bool dontwake) const {
  struct uffdio_writeprotect w = {};
  w.range.start = start;
  w.range.len = len;
  // WP never wakes, and the kernel rejects WP together with DONTWAKE.
  w.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : (dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
  return ioctl(fd_, UFFDIO_WRITEPROTECT, &w) == 0 ? 0 : errno;
}

int Uffd::Copy(uintptr_t dst, const void* src, size_t len, bool wp) const {
  size_t done = 0;
  // One UFFDIO_COPY must lie in one VMA (ENOENT otherwise); a trapped range that
  // revokes have split into several is copied a page at a time instead.
  bool by_page = false;
  while (done < len) {
    struct uffdio_copy c = {};
    c.dst = dst + done;
    c.src = reinterpret_cast<uintptr_t>(src) + done;
    c.len = by_page ? kPage : len - done;
    c.mode = UFFDIO_COPY_MODE_DONTWAKE | (wp ? UFFDIO_COPY_MODE_WP : 0);
    if (ioctl(fd_, UFFDIO_COPY, &c) == 0) {
      done += c.len;
      continue;
    }
    int e = errno;
    if (c.copy > 0) done += static_cast<size_t>(c.copy);
    if (e == EEXIST) {
      done += kPage;
      continue;
    }
    if (e == ENOENT && !by_page && len - done > kPage) {
      by_page = true;
      continue;
    }
    return e;
  }
  return 0;
}

int Uffd::Poison(uintptr_t start, size_t len) const {
  size_t done = 0;
  while (done < len) {
    struct uffdio_poison p = {};
    p.range.start = start + done;
    p.range.len = len - done;
    p.mode = UFFDIO_POISON_MODE_DONTWAKE;
    if (ioctl(fd_, UFFDIO_POISON, &p) == 0) return 0;
    int e = errno;
    if (p.updated > 0) done += static_cast<size_t>(p.updated);
    if (e == EEXIST) {
      done += kPage;
      continue;
    }
    return e;
  }
  return 0;
}

}  // namespace daxmap
