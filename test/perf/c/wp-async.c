// Can a shared tmpfs mapping take first-touch stores into holes with no trap while
// daxmap still learns which pages were stored to? (docs/faults.md, "What row 4a would
// need".) A sparse tmpfs file is mapped MAP_SHARED, registered with userfaultfd in
// write-protect mode with UFFD_FEATURE_WP_ASYNC (the kernel resolves write-protect
// faults itself and marks the page written) and write-protected whole; then one store
// into each of `touches` random pages and one load from each of `touches` other pages;
// then the PAGEMAP_SCAN ioctl lists the pages marked written. The same stores into a
// plain MAP_SHARED mapping of another sparse file are the baseline.
//
// usage: wp-async DIR MIB TOUCHES ROUNDS
// prints, per round: kernel_us tracked_us kernel_faults tracked_faults wp_us scan_us
// written found loads_written (or "unsupported=<why>" and exit 0 when the kernel lacks
// a feature).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// Constants newer than the system's headers (Linux 6.7 uapi).
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
struct scan_region {
  uint64_t start, end, categories;
};
struct scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define SCAN_IOCTL _IOWR('f', 16, struct scan_arg)
#define IS_WRITTEN (1 << 1)

#define PAGE 4096UL

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static long minor_faults(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_minflt;
}

static uint32_t seed = 0x2545f491;
static uint32_t next_random(void) {
  seed ^= seed << 13;
  seed ^= seed >> 17;
  seed ^= seed << 5;
  return seed;
}

// A sparse file of len bytes under dir, mapped shared and unlinked at once.
static char* sparse_mapping(const char* dir, const char* tag, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/daxmap-bench-wp-%s-%d", dir, tag, (int)getpid());
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    perror(path);
    exit(1);
  }
  unlink(path);
  if (ftruncate(fd, (off_t)len) != 0) {
    perror("ftruncate");
    exit(1);
  }
  char* p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  close(fd);
  return p;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: wp-async DIR MIB TOUCHES ROUNDS\n");
    return 2;
  }
  size_t len = (size_t)atol(argv[2]) << 20;
  size_t pages = len / PAGE;
  size_t touches = (size_t)atol(argv[3]);
  int rounds = atoi(argv[4]);
  if (pages < 2 * touches || touches == 0) {
    fprintf(stderr, "wp-async: need at least 2 x TOUCHES pages\n");
    return 2;
  }
  uint32_t* order = malloc(sizeof(uint32_t) * pages);
  char* seen = malloc(pages);
  struct scan_region* vec = calloc(touches + 1, sizeof(*vec));
  if (!order || !seen || !vec) return 1;
  int pm = open("/proc/self/pagemap", O_RDONLY);
  if (pm < 0) {
    printf("unsupported=no-/proc/self/pagemap\n");
    return 0;
  }
  for (int round = 0; round < rounds; round++) {
    for (size_t i = 0; i < pages; i++) order[i] = (uint32_t)i;
    for (size_t i = pages - 1; i > 0; i--) {
      size_t j = next_random() % (i + 1);
      uint32_t x = order[i];
      order[i] = order[j];
      order[j] = x;
    }
    // the baseline
    char* k = sparse_mapping(argv[1], "k", len);
    long f0 = minor_faults();
    double t0 = now_us();
    for (size_t i = 0; i < touches; i++) k[(size_t)order[i] * PAGE + 8] = 7;
    double kernel_us = (now_us() - t0) / (double)touches;
    long kernel_faults = minor_faults() - f0;
    munmap(k, len);

    // tracked
    char* p = sparse_mapping(argv[1], "p", len);
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) {
      printf("unsupported=userfaultfd:%s\n", strerror(errno));
      return 0;
    }
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
                                         UFFD_FEATURE_WP_UNPOPULATED};
    if (ioctl(uffd, UFFDIO_API, &api) != 0) {
      printf("unsupported=UFFD_FEATURE_WP_ASYNC:%s\n", strerror(errno));
      return 0;
    }
    struct uffdio_register reg = {.range = {(uintptr_t)p, len}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
      printf("unsupported=register-wp:%s\n", strerror(errno));
      return 0;
    }
    double w0 = now_us();
    struct uffdio_writeprotect wp = {.range = {(uintptr_t)p, len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
      perror("UFFDIO_WRITEPROTECT");
      return 1;
    }
    double wp_us = now_us() - w0;
    f0 = minor_faults();
    t0 = now_us();
    for (size_t i = 0; i < touches; i++) p[(size_t)order[i] * PAGE + 8] = 7;
    double tracked_us = (now_us() - t0) / (double)touches;
    long tracked_faults = minor_faults() - f0;
    volatile char sink = 0;
    for (size_t i = touches; i < 2 * touches; i++) sink += p[(size_t)order[i] * PAGE + 8];
    (void)sink;

    struct scan_arg a = {.size = sizeof a,
                         .start = (uintptr_t)p,
                         .end = (uintptr_t)p + len,
                         .vec = (uintptr_t)vec,
                         .vec_len = touches + 1,
                         .category_mask = IS_WRITTEN,
                         .return_mask = IS_WRITTEN};
    double s0 = now_us();
    long n = ioctl(pm, SCAN_IOCTL, &a);
    double scan_us = now_us() - s0;
    if (n < 0) {
      printf("unsupported=PAGEMAP_SCAN:%s\n", strerror(errno));
      return 0;
    }
    memset(seen, 0, pages);
    size_t written = 0, found = 0, loads_written = 0;
    for (long i = 0; i < n; i++) {
      for (uint64_t x = vec[i].start; x < vec[i].end; x += PAGE) {
        written++;
        seen[(x - (uintptr_t)p) / PAGE] = 1;
      }
    }
    for (size_t i = 0; i < touches; i++) found += seen[order[i]];
    for (size_t i = touches; i < 2 * touches; i++) loads_written += seen[order[i]];
    printf("kernel_us=%.3f tracked_us=%.3f kernel_faults=%ld tracked_faults=%ld wp_us=%.0f scan_us=%.0f written=%zu found=%zu loads_written=%zu\n",
           kernel_us, tracked_us, kernel_faults, tracked_faults, wp_us, scan_us, written, found, loads_written);
    close(uffd);
    munmap(p, len);
  }
  close(pm);
  return 0;
}
