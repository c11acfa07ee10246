// The slow first pass (docs/faults.md, "The slow first pass"): time memset passes
// 1..N over a tmpfs file mapped in different ways, after an optional churn of the same
// file (a large range written, then punched: the pool's allocate-and-unlink).
//
// Usage: first-pass key=value...
//   dir=/dev/shm      where the "pool" file lives
//   mib=256           mapping size
//   churn=0           MiB written then punched before the mapping (0: none)
//   mode=kernel       kernel: one MAP_SHARED mapping of the file
//                     fixed:  MAP_FIXED windows over a reserved region, NOT registered
//                     trap:   a userfaultfd-registered region; a reader thread installs
//                             the window of each fault (MAP_FIXED) and wakes it
//                     ahead:  a userfaultfd-registered region; every window installed
//                             with MAP_FIXED before any touch
//   window=2048       window size in KiB (4, 64, 2048...)
//   pop=write         populate flavour of each window: none, map (MAP_POPULATE),
//                     write (MADV_POPULATE_WRITE), read (MADV_POPULATE_READ),
//                     touch (the installer stores one byte per page of the window)
//   prefault=1        store one byte per page of the mapping before the passes (untimed)
//   passes=4          memset passes over the whole mapping
//   unmap_before=0    1: unmap the reserved region before each MAP_FIXED install
//   settle=0          ms to wait after the churn (free page reporting runs 2 s after a free)
//   wp=1              register MISSING|WP with daxmap's features (native/uffd.cc); 0: MISSING only
//   split=0           1: map each window in two halves (two mmap calls), so that no call
//                     replaces a whole aligned 2 MiB range and the page table the trapped
//                     fault allocated is not freed (native/region.cc, MapSplit)
// Prints one line of key=value pairs: the time of each pass (ms), the mapping's smaps
// (VMAs, Rss, ShmemPmdMapped, FilePmdMapped, AnonHugePages) after the prefault, and the
// /proc/vmstat counters that moved during the prefault and during pass 1.
#include "common.h"  // first: it defines _GNU_SOURCE

#include <sys/resource.h>

static const char* dir = "/dev/shm";
static unsigned long mib = 256, churn = 0, window_kib = 2048, passes = 4;
static int prefault = 1, unmap_before = 0, wp = 1, split = 0;
static unsigned long settle_ms = 0;
static const char* mode = "kernel";
static const char* pop = "write";

static int fd = -1, uffd = -1;
static uint8_t* base;
static size_t size, window;

static double now_ms(void) { return now_ns() / 1e6; }

// Map the file's window [off, off+window) over base+off and populate it as asked.
static void install(size_t off) {
  if (unmap_before) munmap(base + off, window);
  int flags = MAP_SHARED | MAP_FIXED | (strcmp(pop, "map") == 0 ? MAP_POPULATE : 0);
  void* p;
  if (split && window >= 2 * PAGE) {
    size_t half = window / 2;
    if (mmap(base + off, half, PROT_READ | PROT_WRITE, flags, fd, (off_t)off) == MAP_FAILED) die("mmap MAP_FIXED");
    if (mmap(base + off + half, window - half, PROT_READ | PROT_WRITE, flags, fd, (off_t)(off + half)) == MAP_FAILED) die("mmap MAP_FIXED");
    p = base + off;
  } else {
    p = mmap(base + off, window, PROT_READ | PROT_WRITE, flags, fd, (off_t)off);
    if (p == MAP_FAILED) die("mmap MAP_FIXED");
  }
  if (strcmp(pop, "write") == 0 && madvise(p, window, MADV_POPULATE_WRITE) != 0) die("MADV_POPULATE_WRITE");
  if (strcmp(pop, "read") == 0 && madvise(p, window, MADV_POPULATE_READ) != 0) die("MADV_POPULATE_READ");
  if (strcmp(pop, "touch") == 0) {
    for (size_t o = 0; o < window; o += PAGE) ((volatile uint8_t*)p)[o] = 0;
  }
}

static void* reader(void* arg) {
  (void)arg;
  for (;;) {
    struct pollfd pfd = {uffd, POLLIN, 0};
    if (poll(&pfd, 1, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    struct uffd_msg msg;
    ssize_t n = read(uffd, &msg, sizeof msg);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n != sizeof msg) die("read uffd");
    if (msg.event == UFFD_EVENT_REMAP) continue;
    if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
    uintptr_t addr = (uintptr_t)msg.arg.pagefault.address;
    if (addr == 0) return NULL;  // not a fault of ours: the stop signal below
    size_t off = ((addr - (uintptr_t)base) / window) * window;
    install(off);
    struct uffdio_range r = {(uintptr_t)base + off, window};
    if (ioctl(uffd, UFFDIO_WAKE, &r) != 0) die("UFFDIO_WAKE");
  }
}

// The mapping's smaps, summed over the VMAs inside [base, base+size).
static void smaps(const char* tag) {
  FILE* f = fopen("/proc/self/smaps", "r");
  if (!f) die("smaps");
  char line[512];
  int in = 0, vmas = 0;
  unsigned long rss = 0, spmd = 0, fpmd = 0, ahp = 0, v;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (line[strspn(line, "0123456789abcdef")] == '-' && sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      in = lo >= (uintptr_t)base && hi <= (uintptr_t)base + size;
      vmas += in;
      continue;
    }
    if (!in) continue;
    if (sscanf(line, "Rss: %lu kB", &v) == 1) rss += v;
    else if (sscanf(line, "ShmemPmdMapped: %lu kB", &v) == 1) spmd += v;
    else if (sscanf(line, "FilePmdMapped: %lu kB", &v) == 1) fpmd += v;
    else if (sscanf(line, "AnonHugePages: %lu kB", &v) == 1) ahp += v;
  }
  fclose(f);
  printf(" %s_vmas=%d %s_rss_kb=%lu %s_shmem_pmd_kb=%lu %s_file_pmd_kb=%lu %s_anon_huge_kb=%lu", tag, vmas, tag, rss, tag,
         spmd, tag, fpmd, tag, ahp);
}

#define NSTAT 256
struct vmstat {
  int n;
  char name[NSTAT][48];
  unsigned long long v[NSTAT];
};

static void read_vmstat(struct vmstat* s) {
  FILE* f = fopen("/proc/vmstat", "r");
  if (!f) die("vmstat");
  s->n = 0;
  while (s->n < NSTAT && fscanf(f, "%47s %llu", s->name[s->n], &s->v[s->n]) == 2) s->n++;
  fclose(f);
}

// Counters that moved, with a few interesting ones always shown.
static void vmstat_delta(const char* tag, const struct vmstat* a, const struct vmstat* b) {
  static const char* watch[] = {"thp_", "pgfault", "numa_", "compact_", "pgalloc_", "pgfree", "nr_shmem", "nr_page_table", "ksm", "zero", "tlb"};
  for (int i = 0; i < a->n && i < b->n; i++) {
    long long d = (long long)(b->v[i] - a->v[i]);
    if (d == 0) continue;
    for (size_t w = 0; w < sizeof watch / sizeof *watch; w++) {
      if (strstr(a->name[i], watch[w])) {
        printf(" %s.%s=%lld", tag, a->name[i], d);
        break;
      }
    }
  }
}

int main(int argc, char** argv) {
  prog = "first-pass";
  for (int i = 1; i < argc; i++) {
    char* eq = strchr(argv[i], '=');
    if (!eq) { fprintf(stderr, "first-pass: bad argument %s\n", argv[i]); return 2; }
    *eq = 0;
    const char *k = argv[i], *v = eq + 1;
    if (!strcmp(k, "dir")) dir = v;
    else if (!strcmp(k, "mib")) mib = strtoul(v, 0, 0);
    else if (!strcmp(k, "churn")) churn = strtoul(v, 0, 0);
    else if (!strcmp(k, "mode")) mode = v;
    else if (!strcmp(k, "window")) window_kib = strtoul(v, 0, 0);
    else if (!strcmp(k, "pop")) pop = v;
    else if (!strcmp(k, "prefault")) prefault = atoi(v);
    else if (!strcmp(k, "passes")) passes = strtoul(v, 0, 0);
    else if (!strcmp(k, "unmap_before")) unmap_before = atoi(v);
    else if (!strcmp(k, "wp")) wp = atoi(v);
    else if (!strcmp(k, "settle")) settle_ms = strtoul(v, 0, 0);
    else if (!strcmp(k, "split")) split = atoi(v);
    else { fprintf(stderr, "first-pass: unknown key %s\n", k); return 2; }
  }
  size = mib * MiB;
  window = window_kib * 1024;
  if (window == 0 || size % window) { fprintf(stderr, "first-pass: window must divide the size\n"); return 2; }

  char path[256];
  snprintf(path, sizeof path, "%s/daxmap-first-pass-%d", dir, (int)getpid());
  fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) die("create the pool file");
  unlink(path);
  size_t total = size > churn * MiB ? size : churn * MiB;
  if (ftruncate(fd, (off_t)total) != 0) die("ftruncate");
  if (churn) {
    // The pool's allocate-and-unlink: the range is written (pages allocated), then
    // punched (pages freed), as a deleted file's zeroed blocks are.
    uint8_t* c = mmap(NULL, churn * MiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (c == MAP_FAILED) die("mmap churn");
    memset(c, 0x5a, churn * MiB);
    munmap(c, churn * MiB);
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)(churn * MiB)) != 0) die("punch");
    if (settle_ms) usleep((useconds_t)(settle_ms * 1000));
  }

  // A 2 MiB aligned reservation, as native/region.cc makes.
  void* raw;
  size_t raw_len;
  base = reserve_aligned(size, &raw, &raw_len);
  pthread_t th;
  int threaded = 0;
  if (!strcmp(mode, "kernel")) {
    if (mmap(base, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) die("mmap");
  } else if (!strcmp(mode, "fixed") || !strcmp(mode, "ahead") || !strcmp(mode, "trap")) {
    if (strcmp(mode, "fixed") != 0) {
      uffd = uffd_register(base, size, wp);
    }
    if (!strcmp(mode, "trap")) {
      if (pthread_create(&th, NULL, reader, NULL) != 0) die("pthread_create");
      threaded = 1;
    } else {
      for (size_t off = 0; off < size; off += window) install(off);
    }
  } else {
    fprintf(stderr, "first-pass: unknown mode %s\n", mode);
    return 2;
  }

  static struct vmstat v0, v1, v2;
  struct rusage ru0, ru1, ru2;
  read_vmstat(&v0);
  getrusage(RUSAGE_SELF, &ru0);
  double t0 = now_ms();
  if (prefault) {
    for (size_t o = 0; o < size; o += PAGE) ((volatile uint8_t*)base)[o] = 1;
  }
  double t1 = now_ms();
  read_vmstat(&v1);
  getrusage(RUSAGE_SELF, &ru1);
  printf("mode=%s churn=%lu window_kib=%lu pop=%s split=%d mib=%lu prefault_ms=%.1f", mode, churn, window_kib, pop, split, mib, t1 - t0);
  for (unsigned long p = 0; p < passes; p++) {
    double a = now_ms();
    memset(base, (int)(0x10 + p), size);
    double b = now_ms();
    printf(" pass%lu_ms=%.1f", p + 1, b - a);
    if (p == 0) {
      read_vmstat(&v2);
      getrusage(RUSAGE_SELF, &ru2);
      smaps("after1");
    }
  }
  for (size_t o = 0; o < size; o += 997 * PAGE) {
    if (base[o] != (uint8_t)(0x10 + passes - 1)) { fprintf(stderr, "first-pass: wrong byte at %zu\n", o); return 1; }
  }
  printf(" prefault_minflt=%ld pass1_minflt=%ld pass1_nivcsw=%ld", ru1.ru_minflt - ru0.ru_minflt, ru2.ru_minflt - ru1.ru_minflt,
         ru2.ru_nivcsw - ru1.ru_nivcsw);
  vmstat_delta("prefault", &v0, &v1);
  vmstat_delta("pass1", &v1, &v2);
  printf("\n");
  if (threaded) {
    // Stop the reader: it is blocked in poll; closing uffd would not wake it, so
    // cancel it (it holds no lock between syscalls).
    pthread_cancel(th);
    pthread_join(th, NULL);
  }
  return 0;
}
