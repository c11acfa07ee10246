// Device open/lock/map and the persistence primitives.
#include "device.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "uffd_compat.h"

namespace daxmap {

namespace {
constexpr uint64_t kPage = 4096;
constexpr uint64_t k2M = 2ull << 20;

bool ReadSysU64(const std::string& path, uint64_t* out) {
  FILE* f = fopen(path.c_str(), "re");
  if (f == nullptr) return false;
  unsigned long long v = 0;
  bool ok = fscanf(f, "%llu", &v) == 1;
  fclose(f);
  if (ok) *out = v;
  return ok;
}

// The word in [brackets] of a sysfs choice file ("always within_size advise [never] deny force").
std::string SysChoice(const char* path) {
  FILE* f = fopen(path, "re");
  if (f == nullptr) return "";
  char buf[256] = {0};
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  std::string s(buf, n);
  size_t a = s.find('['), b = s.find(']');
  return a == std::string::npos || b == std::string::npos || b < a ? "" : s.substr(a + 1, b - a - 1);
}

// Does the tmpfs holding a file of st_dev `dev` allocate 2 MiB folios? The mount's
// huge= option (its super options in /proc/self/mountinfo), overridden by the global
// shmem_enabled deny/force. 0 no, 1 yes, 2 only where madvise(MADV_HUGEPAGE) asks.
int TmpfsHuge(dev_t dev) {
  const std::string global = SysChoice("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  if (global == "deny") return 0;
  if (global == "force") return 1;
  FILE* f = fopen("/proc/self/mountinfo", "re");
  if (f == nullptr) return 0;
  char want[32];
  snprintf(want, sizeof want, "%u:%u", major(dev), minor(dev));
  int huge = 0;
  char* line = nullptr;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    // id parent major:minor root mountpoint options... - fstype source superoptions
    std::string l(line);
    size_t sp1 = l.find(' '), sp2 = sp1 == std::string::npos ? sp1 : l.find(' ', sp1 + 1);
    if (sp2 == std::string::npos) continue;
    size_t sp3 = l.find(' ', sp2 + 1);
    if (l.compare(sp2 + 1, sp3 - sp2 - 1, want) != 0) continue;
    size_t dash = l.find(" - ");
    if (dash == std::string::npos) continue;
    std::string opts = "," + l.substr(l.rfind(' ') + 1);
    while (!opts.empty() && (opts.back() == '\n' || opts.back() == ' ')) opts.pop_back();
    opts += ",";
    if (opts.find(",huge=always,") != std::string::npos || opts.find(",huge=within_size,") != std::string::npos)
      huge = 1;
    else if (opts.find(",huge=advise,") != std::string::npos)
      huge = 2;
    break;
  }
  free(line);
  fclose(f);
  return huge;
}

Status Fail(int e, const std::string& what, const std::string& path) {
  return Status::Errno(e, what + " '" + path + "'");
}

#if defined(__x86_64__)
enum class FlushInsn { kClwb, kClflushopt, kClflush };

FlushInsn DetectFlush() {
  unsigned a, b, c, d;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    if (b & (1u << 24)) return FlushInsn::kClwb;
    if (b & (1u << 23)) return FlushInsn::kClflushopt;
  }
  return FlushInsn::kClflush;
}

__attribute__((target("clwb"))) void FlushClwb(uintptr_t p, uintptr_t end) {
  for (; p < end; p += 64) _mm_clwb(reinterpret_cast<void*>(p));
}
__attribute__((target("clflushopt"))) void FlushClflushopt(uintptr_t p, uintptr_t end) {
  for (; p < end; p += 64) _mm_clflushopt(reinterpret_cast<void*>(p));
}
void FlushClflush(uintptr_t p, uintptr_t end) {
  for (; p < end; p += 64) _mm_clflush(reinterpret_cast<void*>(p));
}
#endif
}  // namespace

void FlushCacheLines(const void* ptr, size_t len) {
#if defined(__x86_64__)
  static const FlushInsn insn = DetectFlush();
  uintptr_t p = reinterpret_cast<uintptr_t>(ptr) & ~uintptr_t{63};
  uintptr_t end = reinterpret_cast<uintptr_t>(ptr) + len;
  switch (insn) {
    case FlushInsn::kClwb: FlushClwb(p, end); break;
    case FlushInsn::kClflushopt: FlushClflushopt(p, end); break;
    case FlushInsn::kClflush: FlushClflush(p, end); break;
  }
  _mm_sfence();
#else
  // No user-space cache flush known here: fall back to the ordering guarantee
  // only; Persist() uses msync for such mappings instead.
  (void)ptr;
  (void)len;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

const char* Device::kind_name() const {
  switch (kind_) {
    case DeviceKind::kFile: return "file";
    case DeviceKind::kTmpfs: return "tmpfs";
    case DeviceKind::kDevDax: return "devdax";
    case DeviceKind::kHugetlb: return "hugetlbfs";
  }
  return "file";
}

Device::~Device() {
  if (view_ != nullptr) munmap(view_, size_);
  if (fd_ >= 0) close(fd_);  // also releases the flock (unless an installed mapping still holds the file)
}

Status Device::Open(const std::string& path, const DeviceOptions& opts, Device** out) {
  Device* d = new Device();
  d->path_ = path;
  d->writable_ = opts.writable;
  bool created = false;
  // Every failure after a create removes the file it created (a failed create leaves nothing).
  auto fail = [&](Status s) {
    if (created) unlink(path.c_str());
    delete d;
    return s;
  };
  int oflags = (opts.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  d->fd_ = open(path.c_str(), oflags);
  if (d->fd_ < 0 && errno == ENOENT && opts.create) {
    d->fd_ = open(path.c_str(), oflags | O_CREAT | O_EXCL, 0600);
    created = d->fd_ >= 0;
  }
  if (d->fd_ < 0) return fail(Fail(errno, "open device", path));

  if (opts.exclusive && flock(d->fd_, LOCK_EX | LOCK_NB) != 0) {
    int e = errno == EWOULDBLOCK ? EBUSY : errno;
    return fail(Status::Errno(e, "lock device '" + path + "' (another daxmap service holds it)"));
  }

  struct stat st;
  if (fstat(d->fd_, &st) != 0) return fail(Fail(errno, "stat device", path));
  if (S_ISCHR(st.st_mode)) {
    char sys[96];
    snprintf(sys, sizeof sys, "/sys/dev/char/%u:%u", major(st.st_rdev), minor(st.st_rdev));
    uint64_t sz = 0;
    if (!ReadSysU64(std::string(sys) + "/size", &sz)) {
      return fail(Status::Errno(
          ENODEV, "device '" + path + "' is a character device but not device-dax (no " + sys + "/size)"));
    }
    d->kind_ = DeviceKind::kDevDax;
    d->align_ = k2M;
    uint64_t a = 0;
    if (ReadSysU64(std::string(sys) + "/align", &a) && a >= kPage) d->align_ = a;
    d->size_ = sz - sz % d->align_;
  } else if (S_ISREG(st.st_mode)) {
    struct statfs fs;
    if (fstatfs(d->fd_, &fs) != 0) return fail(Fail(errno, "statfs device", path));
    const auto ftype = static_cast<unsigned long>(fs.f_type);
    d->kind_ = ftype == TMPFS_MAGIC       ? DeviceKind::kTmpfs
               : ftype == HUGETLBFS_MAGIC ? DeviceKind::kHugetlb
                                          : DeviceKind::kFile;
    // hugetlbfs maps only at its page size (2 MiB with pagesize=2M; f_bsize says).
    if (d->kind_ == DeviceKind::kTmpfs) d->huge_ = TmpfsHuge(st.st_dev);
    if (d->kind_ == DeviceKind::kHugetlb)
      d->align_ = fs.f_bsize >= static_cast<long>(kPage) ? static_cast<uint64_t>(fs.f_bsize) : k2M;
    uint64_t sz = static_cast<uint64_t>(st.st_size);
    if ((created || sz == 0) && opts.create) {
      if (opts.size == 0 || opts.size % d->align_ != 0) {
        return fail(Status::Errno(EINVAL, "create device '" + path + "': size must be a positive multiple of " +
                                              std::to_string(d->align_) + " on " + d->kind_name()));
      }
      if (ftruncate(d->fd_, static_cast<off_t>(opts.size)) != 0) {
        return fail(Fail(errno, "size device", path));
      }
      // A sparse regular file would turn a full host filesystem into SIGBUS on a
      // store through the mapping; reserve the blocks now and fail with ENOSPC
      // instead. tmpfs is left sparse: reserving would spend the memory up front.
      if (d->kind_ == DeviceKind::kFile) {
        int e = posix_fallocate(d->fd_, 0, static_cast<off_t>(opts.size));
        if (e != 0 && e != EOPNOTSUPP) {
          return fail(Fail(e, "reserve space for device", path));
        }
      }
      sz = opts.size;
    }
    d->size_ = sz - sz % d->align_;
  } else {
    return fail(
        Status::Errno(ENODEV, "device '" + path + "' is neither a regular file nor a device-dax character device"));
  }

  if (opts.view && d->size_ > 0) {
    int prot = PROT_READ | (opts.writable ? PROT_WRITE : 0);
    void* p = MAP_FAILED;
    if (opts.writable) {
      p = mmap(nullptr, d->size_, prot, MAP_SHARED_VALIDATE | MAP_SYNC, d->fd_, 0);
      if (p != MAP_FAILED) d->map_sync_ = true;
    }
    if (p == MAP_FAILED) p = mmap(nullptr, d->size_, prot, MAP_SHARED, d->fd_, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      // hugetlbfs reserves every huge page of a shared mapping at mmap: too few free
      // pages is ENOMEM here, not a SIGBUS later
      if (e == ENOMEM && d->kind_ == DeviceKind::kHugetlb)
        return fail(Status::Errno(e, "map device '" + path + "': not enough free huge pages for " +
                                         std::to_string(d->size_ >> 20) +
                                         " MiB (raise /proc/sys/vm/nr_hugepages or the mount's size)"));
      return fail(Fail(e, "map device", path));
    }
    d->view_ = static_cast<uint8_t*>(p);
    // huge=advise: the page cache takes 2 MiB folios only where a mapping asks, and a
    // range first written through the view must already be one for a window to map as
    // a PMD later (docs/native.md, "True 2 MiB mappings").
    if (d->huge_advise()) (void)madvise(p, d->size_, MADV_HUGEPAGE);
    // device-dax stores go straight to media; hugetlbfs has no writeback at all (its
    // fsync, and so msync, does nothing): stores persist by cache flush + fence.
    if (d->kind_ == DeviceKind::kDevDax || d->kind_ == DeviceKind::kHugetlb) d->map_sync_ = true;
  }
  *out = d;
  return Status::Ok();
}

Status Device::Identify(DeviceIdentity* id, uint8_t* head, size_t len) const {
  struct stat st;
  if (fstat(fd_, &st) != 0) return Fail(errno, "stat device", path_);
  id->dev = static_cast<uint64_t>(st.st_dev);
  id->ino = static_cast<uint64_t>(st.st_ino);
  id->rdev = static_cast<uint64_t>(st.st_rdev);
  id->char_device = S_ISCHR(st.st_mode);
  id->mode = st.st_mode;
  id->uid = st.st_uid;
  id->gid = st.st_gid;
  if (len > (1u << 20) || len > size_)
    return Status::Errno(EINVAL, "identify device '" + path_ + "': read past its size");
  if (len == 0) return Status::Ok();
  if (view_ != nullptr) {
    memcpy(head, view_, len);
    return Status::Ok();
  }
  if (kind_ != DeviceKind::kDevDax) {  // hugetlbfs files have read(2)
    size_t got = 0;
    while (got < len) {
      ssize_t r = pread(fd_, head + got, len - got, static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Fail(errno, "read the superblock of device", path_);
      if (r == 0) return Status::Errno(EIO, "read the superblock of device '" + path_ + "': short file");
      got += static_cast<size_t>(r);
    }
    return Status::Ok();
  }
  // device-dax has no read(2): map its first aligned unit read-only for a moment.
  uint64_t maplen = (len + align_ - 1) / align_ * align_;
  void* p = mmap(nullptr, maplen, PROT_READ, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) return Fail(errno, "map the superblock of device", path_);
  memcpy(head, p, len);
  munmap(p, maplen);
  return Status::Ok();
}

Status Device::Zero(uint64_t off, uint64_t len) const {
  if (len == 0) return Status::Ok();
  if (off > size_ || len > size_ - off || off % kPage || len % kPage) {
    return Status::Errno(EINVAL, "zero range not page-aligned or outside device '" + path_ + "'");
  }
  int mode = -1;
  if (kind_ == DeviceKind::kTmpfs) mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  if (kind_ == DeviceKind::kFile) mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
  if (mode >= 0 && fallocate(fd_, mode, static_cast<off_t>(off), static_cast<off_t>(len)) == 0) return Status::Ok();
  if (view_ == nullptr) return Status::Errno(errno ? errno : EOPNOTSUPP, "zero range of device '" + path_ + "'");
  memset(view_ + off, 0, len);
  if (map_sync_) FlushCacheLines(view_ + off, len);
  return Status::Ok();
}

Status Device::ZeroResident(uint64_t off, uint64_t len) const {
  if (len == 0) return Status::Ok();
  if (off > size_ || len > size_ - off || off % kPage || len % kPage) {
    return Status::Errno(EINVAL, "zero range not page-aligned or outside device '" + path_ + "'");
  }
  if (kind_ != DeviceKind::kTmpfs && kind_ != DeviceKind::kFile) return Zero(off, len);
  static const std::vector<uint8_t> zeros(256 * 1024, 0);  // read-only once built
  for (uint64_t done = 0; done < len;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), len - done));
    ssize_t w = pwrite(fd_, zeros.data(), n, static_cast<off_t>(off + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Fail(w < 0 ? errno : EIO, "write zeros to device", path_);
    done += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

Status Device::Persist(uint64_t off, uint64_t len) const {
  if (len == 0) return Status::Ok();
  if (off > size_ || len > size_ - off) return Status::Errno(EINVAL, "persist range outside device '" + path_ + "'");
  if (view_ == nullptr) {
    if (fdatasync(fd_) != 0) return Fail(errno, "fdatasync device", path_);
    return Status::Ok();
  }
#if defined(__x86_64__)
  if (map_sync_) {
    FlushCacheLines(view_ + off, len);
    return Status::Ok();
  }
#endif
  uint64_t start = off & ~(kPage - 1);
  uint64_t end = off + len;
  if (msync(view_ + start, end - start, MS_SYNC) != 0) return Fail(errno, "msync device", path_);
  return Status::Ok();
}

namespace {
// Process-wide by nature: ids cross threads. Never destroyed (see Agent::Instance).
struct Registry {
  std::mutex mu;
  uint32_t next = 1;
  std::unordered_map<uint32_t, std::shared_ptr<Device>> devices;
};
Registry& TheRegistry() {
  static Registry* r = new Registry();
  return *r;
}
}  // namespace

uint32_t DeviceRegistry::Add(std::shared_ptr<Device> dev) {
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> g(r.mu);
  uint32_t id = r.next++;
  r.devices[id] = std::move(dev);
  return id;
}

std::shared_ptr<Device> DeviceRegistry::Find(uint32_t id) {
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> g(r.mu);
  auto it = r.devices.find(id);
  return it == r.devices.end() ? nullptr : it->second;
}

void DeviceRegistry::Remove(uint32_t id) {
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> g(r.mu);
  r.devices.erase(id);
}

}  // namespace daxmap
