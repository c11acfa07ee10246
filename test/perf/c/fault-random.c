// The mechanism's floor for random 4 KiB installs (docs/faults.md, "The random-order
// floor"): bench row 1 touches the pages of a 64 MiB mapping in a random order and
// daxmap answers each write fault from the reserve (native/agent.cc TryReserve): the
// reader thread installs a block of the device with mmap(MAP_FIXED, MAP_SHARED) and
// MADV_POPULATE_WRITE, then wakes the thread. The blocks are wherever the reserve
// found them, so neighbouring pages seldom get neighbouring blocks and every install
// is a VMA of its own. fault-stages.c touches pages in order, where each install
// merges with its neighbour. This program times the same answer in a random order,
// with the device pages in file order (neighbours merge once both are there) or
// shuffled (a VMA per page), and with another thread of the process busy, as
// daxmap's service worker runs beside the reader. No daxmap code.
//
// Usage: fault-random DIR [MIB [SEED]]
//   DIR: where the backing files live (/dev/shm: tmpfs); MIB: the mapping's size
//   (default 64, bench row 1's); SEED: the permutations' seed (default 1).
// Prints one line per variant:
//   variant=NAME order=random|seq dev=file|shuffled|- busy=none|spin|pinned|pinned_spin
//   pages=N faults=F touch_p50_us=M touch_p90_us=Q us_per_page=X answer_p50_us=A
//   place_p50_us=B populate_p50_us=C wake_p50_us=D resumed_first=R vmas_mid=V vmas_end=W tlb=T checked=0|1
// touch: one page's store, clock reads included (its median is what a loaded
// machine's preemptions do not move; us_per_page is the mean); answer: the time inside
// the reader from the event in hand to the wake returning, and its parts (place: the
// mmap or the copy); resumed_first: the share of the faults whose thread had resumed
// and stored before the reader's UFFDIO_WAKE returned (the woken thread run at once
// on the reader's CPU: the wake's time then takes in that run); vmas_mid and
// vmas_end: VMAs of /proc/self/maps inside the region when half the pages and all of
// them were touched; tlb: TLB shootdown interrupts of every CPU during the touches
// (/proc/interrupts, system-wide: other processes' count too); checked: every store
// read back from the device page it was meant to reach.
// A variant that cannot run here prints variant=NAME ... skip=REASON instead.
#include "common.h"  // first: it defines _GNU_SOURCE

#include <sched.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

enum answer { KERNEL, COPY, INSTALL };
enum busy { BUSY_NONE, BUSY_SPIN, PINNED, PINNED_SPIN };
static const char* busy_names[] = {"none", "spin", "pinned", "pinned_spin"};

struct variant {
  const char* name;
  enum answer answer;
  int random;     // touch order: shuffled (1) or in order (0)
  int dev_shuf;   // INSTALL: device pages shuffled (1) or the page's own offset (0)
  int resident;   // INSTALL: the device file written with zeros first (the reserve's stock is)
  enum busy busy; // another thread spinning; PINNED*: the toucher and reader on one CPU, the spinner on another
};

static const char* dir;
static size_t size, npages;
static uint32_t *order, *devpage;  // touch order; device page of each page
static uint64_t *per_touch, *per_answer, *per_place, *per_pop, *per_wake;
static int seq;
static _Atomic uint64_t resumed;  // when the storing thread's last store returned (ns)

static void shuffle(uint32_t* p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i++) p[i] = (uint32_t)i;
  uint32_t s = seed ? seed : 1;
  for (size_t i = n - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    size_t j = s % (i + 1);
    uint32_t x = p[i];
    p[i] = p[j];
    p[j] = x;
  }
}

static double median_us(uint64_t* xs, size_t n) {
  if (n == 0) return 0.0;
  qsort(xs, n, sizeof *xs, cmp_u64);
  return xs[n / 2] / 1e3;
}

// VMAs of this process that lie inside [lo, hi).
static unsigned vmas_in(uintptr_t lo, uintptr_t hi) {
  FILE* f = fopen("/proc/self/maps", "r");
  if (!f) die("/proc/self/maps");
  unsigned n = 0;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    unsigned long a, b;
    if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a >= lo && b <= hi) n++;
    // A line longer than the buffer (a long path) continues without an address: skipped.
  }
  fclose(f);
  return n;
}

// TLB shootdown interrupts received by every CPU so far (the "TLB:" row of
// /proc/interrupts), or 0 where the kernel has no such row.
static uint64_t tlb_shootdowns(void) {
  FILE* f = fopen("/proc/interrupts", "r");
  if (!f) return 0;
  static char line[8192];
  uint64_t sum = 0;
  while (fgets(line, sizeof line, f)) {
    char* p = line;
    while (*p == ' ') p++;
    if (strncmp(p, "TLB:", 4) != 0) continue;
    p += 4;
    for (;;) {
      char* end;
      unsigned long long v = strtoull(p, &end, 10);
      if (end == p) break;
      sum += v;
      p = end;
    }
  }
  fclose(f);
  return sum;
}

// ---- the answering side ----

struct run {
  const struct variant* v;
  int uffd, stop_fd, file;
  uint8_t* base;
  size_t faults, resumed_first;
  _Atomic int spin_stop;
};

// daxmap's reserve answer (native/agent.cc TryReserve → Region::Install): the
// device page over the faulting page, populated for writing, then the wake.
static void answer(struct run* r, uintptr_t addr) {
  uint64_t t0 = now_ns(), t1 = t0, t2 = t0;
  uintptr_t page = addr & ~(PAGE - 1);
  size_t i = (page - (uintptr_t)r->base) / PAGE;
  if (r->v->answer == COPY) {
    static uint8_t zeros[PAGE] __attribute__((aligned(4096)));
    struct uffdio_copy c = {page, (uintptr_t)zeros, PAGE, 0, 0};
    uffd_ioctl(r->uffd, UFFDIO_COPY, &c, "UFFDIO_COPY");
    t1 = t2 = now_ns();
  } else {
    off_t dev = (off_t)(r->v->dev_shuf ? devpage[i] : i) * (off_t)PAGE;
    if (mmap((void*)page, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, r->file, dev) == MAP_FAILED) die("install");
    t1 = now_ns();
    (void)madvise((void*)page, PAGE, MADV_POPULATE_WRITE);
    t2 = now_ns();
    struct uffdio_range w = {page, PAGE};
    uffd_ioctl(r->uffd, UFFDIO_WAKE, &w, "UFFDIO_WAKE");
  }
  uint64_t t3 = now_ns();
  // The wake began at t2 (install), or inside the copy (UFFDIO_COPY wakes): from t0.
  uint64_t woke = r->v->answer == COPY ? t0 : t2;
  if (atomic_load_explicit(&resumed, memory_order_relaxed) > woke) r->resumed_first++;
  if (r->faults < npages) {
    per_answer[r->faults] = t3 - t0;
    per_place[r->faults] = t1 - t0;
    per_pop[r->faults] = t2 - t1;
    per_wake[r->faults] = t3 - t2;
  }
  r->faults++;
}

static void* reader(void* arg) {
  struct run* r = arg;
  for (uintptr_t addr; (addr = next_fault(r->uffd, r->stop_fd)) != 0;) answer(r, addr);
  return NULL;
}

static void* spinner(void* arg) {
  struct run* r = arg;
  volatile uint64_t n = 0;
  while (!atomic_load_explicit(&r->spin_stop, memory_order_relaxed)) n++;
  return NULL;
}

// The first two CPUs this process may run on; 0 if there are fewer.
static int two_cpus(int* a, int* b) {
  cpu_set_t s;
  if (sched_getaffinity(0, sizeof s, &s) != 0) return 0;
  int found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; c++) {
    if (!CPU_ISSET(c, &s)) continue;
    if (found++ == 0) *a = c;
    else *b = c;
  }
  return found == 2;
}

static void pin(pthread_t t, int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  int e = pthread_setaffinity_np(t, sizeof s, &s);
  if (e != 0) {
    errno = e;
    die("pthread_setaffinity_np");
  }
}

static int fresh_file(int resident) {
  char path[512];
  snprintf(path, sizeof path, "%s/daxmap-fault-random-%d-%d", dir, (int)getpid(), seq++);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) die("create a backing file");
  unlink(path);
  if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
  if (resident) {
    static uint8_t zeros[64 * 1024];
    for (size_t o = 0; o < size; o += sizeof zeros) {
      if (pwrite(fd, zeros, sizeof zeros, (off_t)o) != (ssize_t)sizeof zeros) die("pwrite zeros");
    }
  }
  return fd;
}

// Every store reached the page it was meant to: page i's first byte is i * 7 + 1, in
// the device page it was given (kernel, install: read through a fresh mapping of the
// file) or in the region's own page (copy: answered with anonymous pages).
static int check(const struct run* r) {
  const struct variant* v = r->v;
  const uint8_t* m = r->base;
  if (v->answer != COPY) {
    m = mmap(NULL, size, PROT_READ, MAP_SHARED, r->file, 0);
    if (m == MAP_FAILED) die("mmap for the check");
  }
  int ok = 1;
  for (size_t i = 0; i < npages && ok; i++) {
    size_t d = v->answer == INSTALL && v->dev_shuf ? devpage[i] : i;
    if (m[d * PAGE] != (uint8_t)(i * 7 + 1) || m[d * PAGE + 1] != 0) ok = 0;
  }
  if (v->answer != COPY) munmap((void*)m, size);
  return ok;
}

static void run_variant(const struct variant* v) {
  struct run r = {.v = v, .uffd = -1, .stop_fd = -1};
  int cpu0 = 0, cpu1 = 0;
  const char* order_name = v->random ? "random" : "seq";
  const char* dev_name = v->answer != INSTALL ? "-" : v->dev_shuf ? "shuffled" : "file";
  if (v->busy != BUSY_NONE && !two_cpus(&cpu0, &cpu1)) {
    printf("variant=%s order=%s dev=%s busy=%s skip=fewer_than_2_cpus\n", v->name, order_name, dev_name, busy_names[v->busy]);
    fflush(stdout);
    return;
  }
  cpu_set_t saved;
  if (sched_getaffinity(0, sizeof saved, &saved) != 0) die("sched_getaffinity");
  if (v->busy == PINNED || v->busy == PINNED_SPIN) pin(pthread_self(), cpu0);  // the reader inherits it

  r.file = fresh_file(v->resident);
  void* raw = NULL;
  size_t raw_len = 0;
  pthread_t rt, st;
  if (v->answer == KERNEL) {
    r.base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, r.file, 0);
    if (r.base == MAP_FAILED) die("mmap");
  } else {
    r.base = reserve_aligned(size, &raw, &raw_len);
    r.uffd = uffd_register(r.base, size, 1);
    r.stop_fd = eventfd(0, EFD_CLOEXEC);
    if (r.stop_fd < 0) die("eventfd");
    if (pthread_create(&rt, NULL, reader, &r) != 0) die("pthread_create");
  }
  if (v->busy != BUSY_NONE && v->busy != PINNED) {
    if (pthread_create(&st, NULL, spinner, &r) != 0) die("pthread_create");
    if (v->busy == PINNED_SPIN) pin(st, cpu1);
  }

  // The touches: one store per page, in the variant's order, each timed alone.
  uintptr_t lo = (uintptr_t)r.base, hi = lo + size;
  unsigned vmas_mid = 0;
  uint64_t tlb0 = tlb_shootdowns();
  uint64_t total = 0, prev = now_ns();
  for (size_t k = 0; k < npages; k++) {
    size_t i = v->random ? order[k] : k;
    ((volatile uint8_t*)r.base)[i * PAGE] = (uint8_t)(i * 7 + 1);
    uint64_t t = now_ns();
    atomic_store_explicit(&resumed, t, memory_order_relaxed);
    per_touch[k] = t - prev;
    total += t - prev;
    if (k == npages / 2) {
      vmas_mid = vmas_in(lo, hi);  // outside the timing
      t = now_ns();
    }
    prev = t;
  }
  uint64_t tlb = tlb_shootdowns() - tlb0;
  unsigned vmas_end = vmas_in(lo, hi);

  if (v->busy != BUSY_NONE && v->busy != PINNED) {
    atomic_store(&r.spin_stop, 1);
    pthread_join(st, NULL);
  }
  int ok = check(&r);  // every page is present now: no fault
  if (v->answer == KERNEL) {
    munmap(r.base, size);
  } else {
    uint64_t one = 1;
    if (write(r.stop_fd, &one, sizeof one) != sizeof one) die("stop");
    pthread_join(rt, NULL);
    munmap(raw, raw_len);
    close(r.uffd);
    close(r.stop_fd);
  }
  if (sched_setaffinity(0, sizeof saved, &saved) != 0) die("sched_setaffinity");
  close(r.file);

  size_t nf = r.faults < npages ? r.faults : npages;
  double touch_p50 = median_us(per_touch, npages), touch_p90 = per_touch[npages * 9 / 10] / 1e3;
  printf("variant=%s order=%s dev=%s busy=%s resident=%d pages=%zu faults=%zu touch_p50_us=%.3f touch_p90_us=%.3f "
         "us_per_page=%.3f answer_p50_us=%.3f place_p50_us=%.3f populate_p50_us=%.3f wake_p50_us=%.3f resumed_first=%.3f "
         "vmas_mid=%u "
         "vmas_end=%u tlb=%llu checked=%d\n",
         v->name, order_name, dev_name, busy_names[v->busy], v->resident, npages, v->answer == KERNEL ? npages : r.faults,
         touch_p50, touch_p90, total / 1e3 / (double)npages, median_us(per_answer, nf), median_us(per_place, nf),
         median_us(per_pop, nf), median_us(per_wake, nf), r.faults ? (double)r.resumed_first / (double)r.faults : 0.0,
         vmas_mid, vmas_end, (unsigned long long)tlb, ok);
  fflush(stdout);
}

int main(int argc, char** argv) {
  prog = "fault-random";
  if (argc < 2) {
    fprintf(stderr, "usage: fault-random DIR [MIB [SEED]]\n");
    return 2;
  }
  dir = argv[1];
  size = (argc > 2 ? strtoul(argv[2], NULL, 0) : 64) * MiB;
  uint32_t seed = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 0) : 1;
  if (size == 0 || size % (2 * MiB)) {
    fprintf(stderr, "fault-random: MIB must be a positive multiple of 2\n");
    return 2;
  }
  npages = size / PAGE;
  order = calloc(npages, sizeof *order);
  devpage = calloc(npages, sizeof *devpage);
  per_touch = calloc(npages, sizeof *per_touch);
  per_answer = calloc(npages, sizeof *per_answer);
  per_place = calloc(npages, sizeof *per_place);
  per_pop = calloc(npages, sizeof *per_pop);
  per_wake = calloc(npages, sizeof *per_wake);
  if (!order || !devpage || !per_touch || !per_answer || !per_place || !per_pop || !per_wake) die("calloc");
  shuffle(order, npages, seed * 2654435761u);
  shuffle(devpage, npages, seed * 2246822519u + 1);
  static const struct variant vs[] = {
      {"kernel", KERNEL, 0, 0, 0, BUSY_NONE},
      {"kernel", KERNEL, 1, 0, 0, BUSY_NONE},
      {"kernel", KERNEL, 1, 0, 0, BUSY_SPIN},
      {"copy", COPY, 1, 0, 0, BUSY_NONE},
      {"install", INSTALL, 1, 0, 0, BUSY_NONE},
      {"install", INSTALL, 1, 1, 0, BUSY_NONE},
      {"install", INSTALL, 0, 1, 0, BUSY_NONE},
      {"install", INSTALL, 1, 1, 1, BUSY_NONE},
      {"install", INSTALL, 1, 1, 0, BUSY_SPIN},
      {"install", INSTALL, 1, 1, 0, PINNED},
      {"install", INSTALL, 1, 1, 0, PINNED_SPIN},
      {"copy", COPY, 1, 0, 0, PINNED},
      {"copy", COPY, 1, 0, 0, PINNED_SPIN},
  };
  for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) run_variant(&vs[i]);
  return 0;
}
