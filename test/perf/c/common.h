// What the C experiments of test/perf/c share (docs/faults.md): headers, the
// constants older system headers lack, and daxmap's userfaultfd handshake and
// registration (native/uffd.cc), so the experiments trap as daxmap traps.
#pragma once
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)  // Linux 6.6; older headers lack it
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

#define PAGE 4096ul
#define MiB (1ul << 20)

// The program's name in error messages; each program sets it.
static const char* prog = "perf-c";

static void die(const char* what) {
  fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// A userfaultfd ioctl, retried on EAGAIN; EEXIST (the page is there already: a race)
// is not an error.
static inline void uffd_ioctl(int fd, unsigned long req, void* arg, const char* what) {
  while (ioctl(fd, req, arg) != 0) {
    if (errno == EAGAIN) continue;
    if (errno == EEXIST) return;
    die(what);
  }
}

// The reader's wait: the address of the next page fault on `uffd`, or 0 once
// `stop_fd` is readable (other events are skipped).
static inline uintptr_t next_fault(int uffd, int stop_fd) {
  for (;;) {
    struct pollfd p[2] = {{uffd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[1].revents) return 0;
    struct uffd_msg msg;
    ssize_t n = read(uffd, &msg, sizeof msg);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n != sizeof msg) die("read userfaultfd");
    if (msg.event == UFFD_EVENT_PAGEFAULT) return (uintptr_t)msg.arg.pagefault.address;
  }
}

// For qsort of uint64_t (medians of per-fault times).
static inline int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

// A userfaultfd registered over [base, base+len): daxmap's features and MISSING|WP
// (native/uffd.cc), or with daxmap=0 no features and MISSING only.
static inline int uffd_register(void* base, size_t len, int daxmap) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API};
  if (daxmap) api.features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_POISON;
  if (ioctl(fd, UFFDIO_API, &api) != 0) die("UFFDIO_API");
  struct uffdio_register reg = {.range = {(uintptr_t)base, len},
                                .mode = UFFDIO_REGISTER_MODE_MISSING | (daxmap ? UFFDIO_REGISTER_MODE_WP : 0)};
  if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) die("UFFDIO_REGISTER");
  return fd;
}

// A 2 MiB aligned reservation of len bytes, as native/region.cc makes; *raw and
// *raw_len are what to munmap.
static inline uint8_t* reserve_aligned(size_t len, void** raw, size_t* raw_len) {
  *raw_len = len + 2 * MiB;
  *raw = mmap(NULL, *raw_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (*raw == MAP_FAILED) die("reserve");
  return (uint8_t*)(((uintptr_t)*raw + 2 * MiB - 1) & ~(2 * MiB - 1));
}
