// How to populate an installed 2 MiB window (docs/faults.md, "Populating a
// window"): a window of a file is mapped MAP_SHARED|MAP_FIXED over a PROT_NONE
// reservation, as daxmap's install does, populated one way or another, and then a
// writer stores one byte into each of its 512 pages. Timed apart: the install (mmap
// and populate, the answering thread's work) and the writer's stores (with the page
// faults they took). No userfaultfd: the trap costs the same whatever the populate.
//
// A last variant populates each window for reading in a second reservation (a
// "staging" range, away from the writer), then moves it into place with
// mremap(MREMAP_FIXED): its install_us is the move alone, and stage_us (the mmap and
// populate done beforehand) is printed apart.
//
// Usage: populate DIR [WINDOWS]
//   DIR: where the backing file lives (/dev/shm for tmpfs, a disk directory for a
//   disk file); WINDOWS: windows per variant (default 32).
// Prints one line per variant:
//   pages=resident|holes populate=write|read|none|staged install_us=X store_us=Y store_faults=F total_us_per_page=Z [stage_us=S]
// install_us, store_us: medians per window; store_faults: the writer's minor faults
// per window (mean). "resident": the window's pages were written with zeros first
// (pwrite), as daxmap's clean space and reserves hold them; "holes": never written.
#include "common.h"  // first: it defines _GNU_SOURCE

#include <sys/resource.h>

#define WIN (2 * MiB)

static long minor_faults(void) {
  struct rusage r;
  if (getrusage(RUSAGE_THREAD, &r) != 0) die("getrusage");
  return r.ru_minflt;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  prog = "populate";
  if (argc < 2) {
    fprintf(stderr, "usage: populate DIR [WINDOWS]\n");
    return 2;
  }
  int windows = argc > 2 ? atoi(argv[2]) : 32;
  if (windows < 1) windows = 32;
  char path[4096];
  snprintf(path, sizeof path, "%s/daxmap-bench-populate-%d", argv[1], (int)getpid());
  static const char* pops[] = {"write", "read", "none", "staged"};
  char* zeros = calloc(1, WIN);
  double* inst = calloc((size_t)windows, sizeof *inst);
  double* store = calloc((size_t)windows, sizeof *store);
  if (!zeros || !inst || !store) die("calloc");
  char* base = mmap(NULL, WIN * (size_t)windows, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) die("mmap reservation");
  // The staging range, 2 MiB aligned (so that a move can take whole page tables).
  size_t stage_len = WIN * ((size_t)windows + 1);
  char* stage_raw = mmap(NULL, stage_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (stage_raw == MAP_FAILED) die("mmap staging range");
  char* stage = (char*)(((uintptr_t)stage_raw + WIN - 1) & ~(uintptr_t)(WIN - 1));
  double* staged = calloc((size_t)windows, sizeof *staged);
  if (!staged) die("calloc");
  for (int resident = 1; resident >= 0; resident--) {
    for (int v = 0; v < 4; v++) {
      // A fresh file per variant, so no variant finds pages another one made.
      int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
      if (fd < 0) die("open");
      if (ftruncate(fd, (off_t)(WIN * (size_t)windows)) != 0) die("ftruncate");
      if (resident) {
        for (int i = 0; i < windows; i++) {
          if (pwrite(fd, zeros, WIN, (off_t)i * WIN) != (ssize_t)WIN) die("pwrite");
        }
      }
      long faults = 0;
      for (int i = 0; i < windows; i++) {
        char* at = base + (size_t)i * WIN;
        staged[i] = 0;
        if (v == 3) {
          uint64_t s0 = now_ns();
          char* q = mmap(stage + (size_t)i * WIN, WIN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, (off_t)i * WIN);
          if (q == MAP_FAILED) die("mmap staged window");
          (void)madvise(q, WIN, MADV_POPULATE_READ);
          staged[i] = (double)(now_ns() - s0) / 1000;
        }
        uint64_t t0 = now_ns();
        char* p;
        if (v == 3) {
          p = mremap(stage + (size_t)i * WIN, WIN, WIN, MREMAP_MAYMOVE | MREMAP_FIXED, at);
          if (p == MAP_FAILED) die("mremap staged window");
          // The move leaves the slot unmapped: reserve it again, or another mapping of
          // the process could land there and the next MAP_FIXED would replace it.
          if (mmap(stage + (size_t)i * WIN, WIN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
                   0) == MAP_FAILED)
            die("mmap staging slot again");
        } else {
          p = mmap(at, WIN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, (off_t)i * WIN);
          if (p == MAP_FAILED) die("mmap window");
        }
        if (v == 0) (void)madvise(p, WIN, MADV_POPULATE_WRITE);
        if (v == 1) (void)madvise(p, WIN, MADV_POPULATE_READ);
        uint64_t t1 = now_ns();
        long f0 = minor_faults();
        for (size_t off = 0; off < WIN; off += PAGE) ((volatile char*)p)[off] = 1;
        faults += minor_faults() - f0;
        uint64_t t2 = now_ns();
        inst[i] = (double)(t1 - t0) / 1000;
        store[i] = (double)(t2 - t1) / 1000;
      }
      if (mmap(base, WIN * (size_t)windows, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) ==
          MAP_FAILED)
        die("mmap reservation again");
      close(fd);
      unlink(path);
      qsort(inst, (size_t)windows, sizeof *inst, cmp_double);
      qsort(store, (size_t)windows, sizeof *store, cmp_double);
      qsort(staged, (size_t)windows, sizeof *staged, cmp_double);
      double mi = inst[windows / 2], ms = store[windows / 2];
      printf("pages=%s populate=%s install_us=%.1f store_us=%.1f store_faults=%.1f total_us_per_page=%.3f",
             resident ? "resident" : "holes", pops[v], mi, ms, (double)faults / windows, (mi + ms) / (WIN / PAGE));
      if (v == 3) printf(" stage_us=%.1f", staged[windows / 2]);
      printf("\n");
    }
  }
  return 0;
}
