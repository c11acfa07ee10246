// Where a first touch's time goes (docs/faults.md): per 4 KiB first touch of a
// mapping, timed in one thread that touches every page of a fresh file in order, for
// the kernel's own fault and for userfaultfd traps answered in the ways daxmap's
// answers are built from. No daxmap code: differential experiments only.
//
// Usage: fault-stages DIR [MIB]
//   DIR: where the backing files live (/dev/shm for tmpfs, a disk directory for a disk
//   file); MIB: size of each mapping (default 32).
// Prints one line per variant:
//   variant=NAME access=read|write window_kib=N populate=P us_per_page=X touch_p50_us=M touch_p90_us=Q
//   us_per_fault=Y faults=F answer_us=A answer_p50_us=B
// us_per_page: the mean over every page; touch_p50/p90: the median and 90th percentile
// of one page's touch (for 4 KiB windows, one fault each; the median is what a
// loaded machine's preemptions do not move).
// answer_us (mean) and answer_p50_us (median): time the answering thread spent inside its answer (from the event
// in hand to the wake returning), so us_per_fault - answer_us is the trap, the
// reader's wake-up and read, any hand-off, and the thread's retry.
#include "common.h"  // first: it defines _GNU_SOURCE

#include <stdatomic.h>
#include <sys/eventfd.h>

enum answer { ZERO, ZERO_WP, COPY, INSTALL };
enum pop { POP_NONE, POP_MAP, POP_WRITE, POP_READ, POP_TOUCH };
static const char* pop_names[] = {"none", "map_populate", "madv_populate_write", "madv_populate_read", "touch"};

struct variant {
  const char* name;
  int trapped;        // 0: the kernel's own MAP_SHARED mapping of the file
  int write;          // the touch: store (1) or load (0)
  enum answer answer;
  size_t window;      // install window
  enum pop pop;
  int hop;            // 1: the reader hands the fault to a second thread, which answers
};

static const char* dir;
static uint64_t* per_answer;  // ns of each fault's answer, for the median
static size_t size;
static int seq;

// ---- one trapped run ----

struct run {
  const struct variant* v;
  int uffd, stop_fd, hop_fd, done_fd, file;
  uint8_t* base;
  _Atomic uintptr_t pending;  // the fault handed to the second thread
  uint64_t faults, answer_ns;
  int pagemap;
};

static void wake(struct run* r, uintptr_t start, size_t len) {
  struct uffdio_range w = {start, len};
  uffd_ioctl(r->uffd, UFFDIO_WAKE, &w, "UFFDIO_WAKE");
}

// The answer to the fault at addr, as daxmap's executor would give it.
static void answer(struct run* r, uintptr_t addr) {
  const struct variant* v = r->v;
  uint64_t t0 = now_ns();
  uintptr_t page = addr & ~(PAGE - 1);
  if (v->answer == ZERO) {
    struct uffdio_zeropage z = {{page, PAGE}, 0, 0};
    uffd_ioctl(r->uffd, UFFDIO_ZEROPAGE, &z, "UFFDIO_ZEROPAGE");
  } else if (v->answer == ZERO_WP) {
    // native/region.cc Region::Zero: pagemap before, zero page (no wake), write-protect,
    // pagemap after, wake.
    uint64_t pm;
    if (pread(r->pagemap, &pm, sizeof pm, (off_t)(page / PAGE * 8)) != sizeof pm) die("pagemap");
    struct uffdio_zeropage z = {{page, PAGE}, UFFDIO_ZEROPAGE_MODE_DONTWAKE, 0};
    uffd_ioctl(r->uffd, UFFDIO_ZEROPAGE, &z, "UFFDIO_ZEROPAGE");
    struct uffdio_writeprotect wp = {{page, PAGE}, UFFDIO_WRITEPROTECT_MODE_WP};
    uffd_ioctl(r->uffd, UFFDIO_WRITEPROTECT, &wp, "UFFDIO_WRITEPROTECT");
    if (pread(r->pagemap, &pm, sizeof pm, (off_t)(page / PAGE * 8)) != sizeof pm) die("pagemap");
    wake(r, page, PAGE);
  } else if (v->answer == COPY) {
    static uint8_t zeros[PAGE] __attribute__((aligned(4096)));
    struct uffdio_copy c = {page, (uintptr_t)zeros, PAGE, 0, 0};
    uffd_ioctl(r->uffd, UFFDIO_COPY, &c, "UFFDIO_COPY");
  } else {
    uintptr_t off = (page - (uintptr_t)r->base) / v->window * v->window;
    uint8_t* at = r->base + off;
    int flags = MAP_SHARED | MAP_FIXED | (v->pop == POP_MAP ? MAP_POPULATE : 0);
    if (mmap(at, v->window, PROT_READ | PROT_WRITE, flags, r->file, (off_t)off) == MAP_FAILED) die("install");
    if (v->pop == POP_WRITE) (void)madvise(at, v->window, MADV_POPULATE_WRITE);
    if (v->pop == POP_READ) (void)madvise(at, v->window, MADV_POPULATE_READ);
    if (v->pop == POP_TOUCH) {
      for (size_t o = 0; o < v->window; o += PAGE) ((volatile uint8_t*)at)[o] = ((volatile uint8_t*)at)[o];
    }
    wake(r, (uintptr_t)at, v->window);
  }
  uint64_t dt = now_ns() - t0;
  r->answer_ns += dt;
  if (r->faults < size / PAGE) per_answer[r->faults] = dt;
  r->faults++;
}

static void* second(void* arg) {
  struct run* r = arg;
  for (;;) {
    uint64_t n;
    if (read(r->hop_fd, &n, sizeof n) != sizeof n) {
      if (errno == EINTR) continue;
      die("read hop eventfd");
    }
    uintptr_t addr = atomic_exchange(&r->pending, 0);
    if (addr == UINTPTR_MAX) return NULL;
    if (addr != 0) answer(r, addr);
  }
}

static void* reader(void* arg) {
  struct run* r = arg;
  for (uintptr_t addr; (addr = next_fault(r->uffd, r->stop_fd)) != 0;) {
    if (r->v->hop) {
      // One fault is outstanding at a time (one touching thread): a single slot.
      atomic_store(&r->pending, addr);
      uint64_t one = 1;
      if (write(r->hop_fd, &one, sizeof one) != sizeof one) die("write hop eventfd");
    } else {
      answer(r, addr);
    }
  }
  return NULL;
}

static int fresh_file(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/daxmap-fault-stages-%d-%d", dir, (int)getpid(), seq++);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) die("create a backing file");
  unlink(path);
  if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
  return fd;
}

static uint64_t* per_touch;  // ns of each page's touch, for the median

// Touch every page in order; the total ns (per_touch[] holds each touch's own time,
// clock reads included: the median is robust to the preemptions of a loaded machine).
static uint64_t touch_all(uint8_t* p, int write) {
  size_t n = size / PAGE;
  unsigned sum = 0;
  uint64_t t0 = now_ns(), prev = t0;
  for (size_t i = 0; i < n; i++) {
    if (write) ((volatile uint8_t*)p)[i * PAGE] = 1;
    else sum += ((volatile uint8_t*)p)[i * PAGE];
    uint64_t t = now_ns();
    per_touch[i] = t - prev;
    prev = t;
  }
  if (sum != 0) { fprintf(stderr, "fault-stages: a hole read non-zero\n"); exit(1); }
  return prev - t0;
}

static void run_variant(const struct variant* v) {
  int file = fresh_file();
  uint64_t ns;
  struct run r = {.v = v, .file = file, .pagemap = -1};
  if (!v->trapped) {
    uint8_t* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, file, 0);
    if (p == MAP_FAILED) die("mmap");
    ns = touch_all(p, v->write);
    r.faults = size / PAGE;
    munmap(p, size);
  } else {
    void* raw;
    size_t raw_len;
    r.base = reserve_aligned(size, &raw, &raw_len);
    r.uffd = uffd_register(r.base, size, 1);
    r.stop_fd = eventfd(0, EFD_CLOEXEC);
    r.hop_fd = eventfd(0, EFD_CLOEXEC);
    r.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (r.stop_fd < 0 || r.hop_fd < 0 || r.pagemap < 0) die("eventfd/pagemap");
    pthread_t rt, st;
    if (pthread_create(&rt, NULL, reader, &r) != 0) die("pthread_create");
    if (v->hop && pthread_create(&st, NULL, second, &r) != 0) die("pthread_create");
    ns = touch_all(r.base, v->write);
    uint64_t one = 1;
    if (write(r.stop_fd, &one, sizeof one) != sizeof one) die("stop");
    pthread_join(rt, NULL);
    if (v->hop) {
      atomic_store(&r.pending, UINTPTR_MAX);
      if (write(r.hop_fd, &one, sizeof one) != sizeof one) die("stop");
      pthread_join(st, NULL);
    }
    munmap(raw, raw_len);
    close(r.uffd);
    close(r.stop_fd);
    close(r.hop_fd);
    close(r.pagemap);
  }
  close(file);
  size_t n = size / PAGE;
  qsort(per_touch, n, sizeof *per_touch, cmp_u64);
  size_t na = r.faults < n ? (size_t)r.faults : n;
  qsort(per_answer, na, sizeof *per_answer, cmp_u64);
  double answer_p50 = v->trapped && na ? per_answer[na / 2] / 1e3 : 0.0;
  printf("variant=%s access=%s window_kib=%zu populate=%s us_per_page=%.3f touch_p50_us=%.3f touch_p90_us=%.3f "
         "us_per_fault=%.3f faults=%llu answer_us=%.3f answer_p50_us=%.3f\n",
         v->name, v->write ? "write" : "read", v->window / 1024, v->trapped && v->answer == INSTALL ? pop_names[v->pop] : "-",
         ns / 1e3 / (double)n, per_touch[n / 2] / 1e3, per_touch[n * 9 / 10] / 1e3, r.faults ? ns / 1e3 / (double)r.faults : 0.0,
         (unsigned long long)r.faults, r.faults && v->trapped ? r.answer_ns / 1e3 / (double)r.faults : 0.0, answer_p50);
  fflush(stdout);
}

int main(int argc, char** argv) {
  prog = "fault-stages";
  if (argc < 2) {
    fprintf(stderr, "usage: fault-stages DIR [MIB]\n");
    return 2;
  }
  dir = argv[1];
  size = (argc > 2 ? strtoul(argv[2], NULL, 0) : 32) * MiB;
  if (size == 0 || size % (2 * MiB)) {
    fprintf(stderr, "fault-stages: MIB must be a positive multiple of 2\n");
    return 2;
  }
  per_touch = calloc(size / PAGE, sizeof *per_touch);
  per_answer = calloc(size / PAGE, sizeof *per_answer);
  if (!per_touch || !per_answer) die("calloc");
  static const struct variant vs[] = {
      {"kernel", 0, 0, ZERO, PAGE, POP_NONE, 0},
      {"kernel", 0, 1, ZERO, PAGE, POP_NONE, 0},
      {"zeropage", 1, 0, ZERO, PAGE, POP_NONE, 0},
      {"zeropage_wp", 1, 0, ZERO_WP, PAGE, POP_NONE, 0},
      {"zeropage_wp_hop", 1, 0, ZERO_WP, PAGE, POP_NONE, 1},
      {"copy", 1, 1, COPY, PAGE, POP_NONE, 0},
      {"install", 1, 1, INSTALL, PAGE, POP_NONE, 0},
      {"install", 1, 1, INSTALL, PAGE, POP_MAP, 0},
      {"install", 1, 1, INSTALL, PAGE, POP_WRITE, 0},
      {"install", 1, 1, INSTALL, PAGE, POP_READ, 0},
      {"install", 1, 1, INSTALL, PAGE, POP_TOUCH, 0},
      {"install", 1, 1, INSTALL, 64 * 1024, POP_NONE, 0},
      {"install", 1, 1, INSTALL, 64 * 1024, POP_WRITE, 0},
      {"install", 1, 1, INSTALL, 2 * MiB, POP_NONE, 0},
      {"install", 1, 1, INSTALL, 2 * MiB, POP_MAP, 0},
      {"install", 1, 1, INSTALL, 2 * MiB, POP_WRITE, 0},
      {"install", 1, 1, INSTALL, 2 * MiB, POP_READ, 0},
      {"install", 1, 1, INSTALL, 2 * MiB, POP_TOUCH, 0},
      {"install_hop", 1, 1, INSTALL, PAGE, POP_WRITE, 1},
      {"install_hop", 1, 1, INSTALL, 2 * MiB, POP_WRITE, 1},
  };
  for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) run_variant(&vs[i]);
  return 0;
}
