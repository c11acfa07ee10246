// A device file the pool lives in: a regular file, a tmpfs file, or a /dev/dax
// character device. Opened once, locked, mapped MAP_SHARED as the service's
// direct-access view; the same fd is what fault answers install from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "status.h"

namespace daxmap {

// kHugetlb: a file on hugetlbfs, the device-DAX stand-in: 2 MiB-granular like
// device-DAX (docs/native.md, "2 MiB-granular devices").
enum class DeviceKind { kFile, kTmpfs, kDevDax, kHugetlb };

// What the descriptor is (fstat) and the first bytes behind it: how a daemon
// client proves that the device it opened is the daemon's (docs/daemon.md).
struct DeviceIdentity {
  uint64_t dev = 0;   // st_dev
  uint64_t ino = 0;   // st_ino
  uint64_t rdev = 0;  // st_rdev (device-dax: which device the node names)
  bool char_device = false;
  uint32_t mode = 0, uid = 0, gid = 0;
};

struct DeviceOptions {
  bool create = false;     // create a regular/tmpfs file at `size` if it does not exist
  uint64_t size = 0;       // for create
  bool exclusive = false;  // take an exclusive flock; EBUSY if another holder exists
  bool view = true;        // map the whole device MAP_SHARED for direct access
  bool writable = true;
};

class Device {
 public:
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  static Status Open(const std::string& path, const DeviceOptions& opts, Device** out);

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  DeviceKind kind() const { return kind_; }
  const char* kind_name() const;
  bool map_sync() const { return map_sync_; }
  // Install granularity: devdax and hugetlbfs mappings must be aligned to it (2 MiB); else a page.
  uint64_t align() const { return align_; }
  // A tmpfs that allocates 2 MiB folios (mount option huge=always/within_size/advise,
  // or shmem_enabled force; not deny): an aligned 2 MiB window maps as one PMD.
  bool huge() const { return huge_ != 0; }
  // huge=advise: a window must be madvise(MADV_HUGEPAGE)d before its first fault.
  bool huge_advise() const { return huge_ == 2; }
  uint8_t* view() const { return view_; }
  bool writable() const { return writable_; }
  const std::string& path() const { return path_; }

  // Make [off, off+len) durable: cache-line write-back + fence for MAP_SYNC
  // mappings, else msync(MS_SYNC) of the covering pages.
  Status Persist(uint64_t off, uint64_t len) const;
  // Make [off, off+len) read as zeros, page-aligned, without touching the memory
  // where the backing allows: a hole punched in tmpfs (its pages are freed), a
  // zeroed range in a regular file (FALLOC_FL_ZERO_RANGE, blocks stay allocated),
  // memset + flush on device-dax. Not durable until Persist().
  Status Zero(uint64_t off, uint64_t len) const;
  // Make [off, off+len) read as zeros by writing zeros through the descriptor
  // (pwrite), so its pages are resident afterwards: on tmpfs they are allocated (or
  // kept) and zero, on a regular file they are in the page cache, and a later
  // mapping of the range maps them without allocating, clearing or converting
  // anything (docs/faults.md, "The 2 MiB window"). Page-aligned; not durable until
  // Persist(). Falls back to Zero() where the device cannot be written (device-dax).
  Status ZeroResident(uint64_t off, uint64_t len) const;
  // fstat of this descriptor, and its first `len` bytes (at most 1 MiB) read through
  // it: pread, or a transient read-only mapping where the device cannot be read
  // (device-dax). Never re-opens the path.
  Status Identify(DeviceIdentity* id, uint8_t* head, size_t len) const;

 private:
  Device() = default;
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  DeviceKind kind_ = DeviceKind::kFile;
  bool map_sync_ = false;
  bool writable_ = true;
  uint64_t align_ = 4096;
  int huge_ = 0;  // 0 no, 1 yes, 2 advise (see huge())
  uint8_t* view_ = nullptr;
};

// Process-wide table of open devices by id: fault answers name a device by id, and
// any thread may execute them. Independent of userfaultfd, so pool tools (fsck)
// work where userfaultfd is unavailable.
class DeviceRegistry {
 public:
  static uint32_t Add(std::shared_ptr<Device> dev);
  static std::shared_ptr<Device> Find(uint32_t id);
  static void Remove(uint32_t id);
};

// Flush CPU caches for [p, p+len) to the persistence domain and fence.
void FlushCacheLines(const void* p, size_t len);

}  // namespace daxmap
