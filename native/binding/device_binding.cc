// JS surface of devices: open (lock, map), views as Buffers, persist, close.
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "binding/common.h"
#include "device.h"
#include "region.h"

namespace daxmap {

namespace {

bool BoolOpt(Napi::Object o, const char* k, bool dflt) {
  Napi::Value v = o.Get(k);
  return v.IsBoolean() ? v.As<Napi::Boolean>().Value() : dflt;
}

// deviceOpen(path, { create, size, exclusive, view, writable })
Napi::Value DeviceOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].ToString().Utf8Value();
  DeviceOptions opts;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    opts.create = BoolOpt(o, "create", false);
    opts.exclusive = BoolOpt(o, "exclusive", false);
    opts.view = BoolOpt(o, "view", true);
    opts.writable = BoolOpt(o, "writable", true);
    Napi::Value sz = o.Get("size");
    if (!sz.IsUndefined()) opts.size = ToU64(env, sz, UINT64_MAX, "device size");
  }
  Device* raw = nullptr;
  Status s = Device::Open(path, opts, &raw);
  if (!s.ok()) {
    ThrowStatus(env, s);
    return env.Undefined();
  }
  std::shared_ptr<Device> dev(raw);
  uint32_t id = DeviceRegistry::Add(dev);
  GetEnvData(env)->devices.insert(id);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, id));
  o.Set("size", Napi::Number::New(env, static_cast<double>(dev->size())));
  o.Set("kind", Napi::String::New(env, dev->kind_name()));
  o.Set("mapSync", Napi::Boolean::New(env, dev->map_sync()));
  o.Set("align", Napi::Number::New(env, static_cast<double>(dev->align())));
  o.Set("huge", Napi::Boolean::New(env, dev->huge()));
  return o;
}

std::shared_ptr<Device> OwnedDevice(Napi::Env env, uint32_t id, const char* what) {
  EnvData* d = GetEnvData(env);
  if (d->devices.count(id) == 0) {
    ThrowErrno(env, EPERM,
               std::string(what) + ": device " + std::to_string(id) + " belongs to another thread or is closed");
    return nullptr;
  }
  std::shared_ptr<Device> dev = DeviceRegistry::Find(id);
  if (!dev) ThrowErrno(env, ENOENT, std::string(what) + ": no such device");
  return dev;
}

// deviceView(id, offset, length) → Buffer aliasing the device mapping
Napi::Value DeviceView(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  std::shared_ptr<Device> dev = OwnedDevice(env, id, "device view");
  if (!dev) return env.Undefined();
  uint64_t off = U64Arg(info, 1), len = U64Arg(info, 2);
  if (dev->view() == nullptr || off > dev->size() || len > dev->size() - off) {
    ThrowErrno(env, EINVAL, "device view: range outside the mapped device");
    return env.Undefined();
  }
  Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, dev->view() + off, len);
  napi_ref ref;
  napi_create_reference(env, buf.ArrayBuffer(), 0, &ref);
  GetEnvData(env)->device_views[id].push_back(ref);
  return buf;
}

Napi::Value DevicePersist(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Device> dev = OwnedDevice(env, U32Arg(info, 0), "persist");
  if (!dev) return env.Undefined();
  Status s = dev->Persist(U64Arg(info, 1), U64Arg(info, 2));
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

// The process's background thread (docs/pool.md, "Clean free space"): the zeroing of
// free space ahead of need runs there, at nice 19, so that it takes only CPU time no
// other thread wants. On a machine whose CPUs are all busy (two clients faulting on
// two CPUs) it no longer takes its share of them from the faulting threads. Made on
// first use and never joined (it only waits when idle).
class BackgroundThread {
 public:
  static BackgroundThread& Get() {
    static BackgroundThread* t = new BackgroundThread();  // never destroyed: it outlives every job
    return *t;
  }
  // Runs fn there and waits for it (the caller is a libuv pool thread: the JS thread goes on).
  Status Run(const std::function<Status()>& fn) {
    std::mutex done_mu;
    std::condition_variable done_cv;
    bool done = false;
    Status out = Status::Ok();
    {
      std::lock_guard<std::mutex> g(mu_);
      jobs_.emplace_back([&] {
        Status s = fn();
        std::lock_guard<std::mutex> d(done_mu);
        out = s;
        done = true;
        done_cv.notify_one();
      });
    }
    cv_.notify_one();
    std::unique_lock<std::mutex> d(done_mu);
    done_cv.wait(d, [&] { return done; });
    return out;
  }

 private:
  BackgroundThread() {
    std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    pthread_setname_np(pthread_self(), "daxmap-zero");
    // Raising one's own nice value needs no privilege; if it fails the work still runs.
    (void)setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
};

// A device operation on a libuv pool thread, as a Promise: the calling thread goes on
// while it runs. The job holds the device, so a close meanwhile does not unmap it
// under the operation. Rejects with the Status' error.
class DeviceJob : public Napi::AsyncWorker {
 public:
  using Fn = std::function<Status(const Device&)>;
  DeviceJob(Napi::Env env, const char* name, std::shared_ptr<Device> dev, Fn fn)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        dev_(std::move(dev)),
        fn_(std::move(fn)) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }
  void Execute() override { status_ = fn_(*dev_); }
  void OnOK() override {
    if (status_.ok()) {
      deferred_.Resolve(Env().Undefined());
    } else {
      deferred_.Reject(StatusError(Env(), status_).Value());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Device> dev_;
  Fn fn_;
  Status status_ = Status::Ok();
};

Napi::Value QueueDeviceJob(Napi::Env env, const char* name, std::shared_ptr<Device> dev, DeviceJob::Fn fn) {
  auto* w = new DeviceJob(env, name, std::move(dev), std::move(fn));
  Napi::Promise p = w->Promise();
  w->Queue();  // deletes itself after OnOK
  return p;
}

// devicePersistAsync(id, off, len) → Promise<void>: Persist on a libuv pool thread, so
// the calling thread goes on while the disk works (the pool's group commit of its
// log on a disk-file pool: docs/pool.md, "Group commit").
Napi::Value DevicePersistAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Device> dev = OwnedDevice(env, U32Arg(info, 0), "persist");
  if (!dev) return env.Undefined();
  uint64_t off = U64Arg(info, 1), len = U64Arg(info, 2);
  return QueueDeviceJob(env, "daxmap.persist", std::move(dev),
                        [off, len](const Device& d) { return d.Persist(off, len); });
}

// A Float64Array read as [offset, length] pairs (byte ranges of the device); each
// must be an integer in [0, 2^53 - 1]. A typed array, so no value is fetched from JS
// one by one: the reserve's refill passes a range per run of blocks.
std::vector<std::pair<uint64_t, uint64_t>> RangesArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Env env = info.Env();
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    throw StatusError(env, Status::Errno(EINVAL, std::string(what) + " must be a Float64Array of offset, length pairs"),
                      ErrorKind::kTypeError);
  }
  Napi::Float64Array a = info[i].As<Napi::Float64Array>();
  if (a.ElementLength() % 2 != 0) {
    throw StatusError(env, Status::Errno(EINVAL, std::string(what) + " must hold offset, length pairs"),
                      ErrorKind::kRangeError);
  }
  constexpr double kMaxSafe = 9007199254740991.0;  // 2^53 - 1
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(a.ElementLength() / 2);
  for (size_t k = 0; k < a.ElementLength(); k += 2) {
    double off = a[k], len = a[k + 1];
    // NaN fails every comparison: test for the good case
    if (!(off >= 0 && off <= kMaxSafe && std::floor(off) == off && len >= 0 && len <= kMaxSafe &&
          std::floor(len) == len)) {
      throw StatusError(env, Status::Errno(EINVAL, std::string(what) + " must be integers in [0, 2^53 - 1]"),
                        ErrorKind::kRangeError);
    }
    out.emplace_back(static_cast<uint64_t>(off), static_cast<uint64_t>(len));
  }
  return out;
}

// deviceZeroPersistAsync(id, zero, persist, background?) → Promise<void>: on a libuv
// pool thread, ZeroResident over every range of `zero`, then Persist over every range
// of `persist` ([offset, length, offset, length, …]); the first failure rejects. The
// pool's reserve refill (docs/pool.md, "Reserve"): its zeroing, page allocation
// included, is then not done on the thread that runs the fault policy. With
// `background` true (the zeroer of free space) the work runs on the background
// thread, at nice 19, and the libuv thread only waits for it.
Napi::Value DeviceZeroPersistAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Device> dev = OwnedDevice(env, U32Arg(info, 0), "zero");
  if (!dev) return env.Undefined();
  auto zero = RangesArg(info, 1, "zero ranges");
  auto persist = RangesArg(info, 2, "persist ranges");
  bool background = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
  return QueueDeviceJob(env, "daxmap.zero", std::move(dev), [zero, persist, background](const Device& d) {
    auto work = [&]() {
      for (const auto& [off, len] : zero) {
        Status s = d.ZeroResident(off, len);
        if (!s.ok()) return s;
      }
      for (const auto& [off, len] : persist) {
        Status s = d.Persist(off, len);
        if (!s.ok()) return s;
      }
      return Status::Ok();
    };
    return background ? BackgroundThread::Get().Run(work) : work();
  });
}

Napi::Value DeviceZero(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Device> dev = OwnedDevice(env, U32Arg(info, 0), "zero");
  if (!dev) return env.Undefined();
  // A fourth argument `resident` (boolean): write zeros, leaving the pages resident.
  bool resident = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
  Status s =
      resident ? dev->ZeroResident(U64Arg(info, 1), U64Arg(info, 2)) : dev->Zero(U64Arg(info, 1), U64Arg(info, 2));
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

Napi::Value DeviceClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  EnvData* d = GetEnvData(env);
  if (d->devices.count(id) == 0) return env.Undefined();  // idempotent
  auto it = d->device_views.find(id);
  if (it != d->device_views.end()) {
    DetachAll(env, it->second);
    d->device_views.erase(it);
  }
  d->devices.erase(id);
  DeviceRegistry::Remove(id);
  return env.Undefined();
}

// deviceIdentify(id, length) → { dev, ino, rdev: bigint, charDevice, mode, uid, gid, head: Buffer }:
// fstat of the device's own descriptor and its first `length` bytes read through it.
Napi::Value DeviceIdentify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Device> dev = OwnedDevice(env, U32Arg(info, 0), "identify");
  if (!dev) return env.Undefined();
  uint64_t len = U64Arg(info, 1);
  if (len > (1u << 20)) {
    ThrowErrno(env, EINVAL, "identify: at most 1 MiB of the device");
    return env.Undefined();
  }
  Napi::Buffer<uint8_t> head = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(len));
  DeviceIdentity id;
  Status s = dev->Identify(&id, head.Data(), static_cast<size_t>(len));
  if (!s.ok()) {
    ThrowStatus(env, s);
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("dev", Napi::BigInt::New(env, id.dev));
  o.Set("ino", Napi::BigInt::New(env, id.ino));
  o.Set("rdev", Napi::BigInt::New(env, id.rdev));
  o.Set("charDevice", Napi::Boolean::New(env, id.char_device));
  o.Set("mode", Napi::Number::New(env, id.mode));
  o.Set("uid", Napi::Number::New(env, id.uid));
  o.Set("gid", Napi::Number::New(env, id.gid));
  o.Set("head", head);
  return o;
}

// Staged ranges (docs/native.md, "Staged ranges"): a memfd whose pages stand in for
// holes of a mapping until the policy copies what was stored into blocks.

// stageCreate(length) → fd: a memfd of `length` bytes (sparse), close-on-exec.
Napi::Value StageCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t len = U64Arg(info, 0, static_cast<uint64_t>(INT64_MAX));
  int fd = -1;
  int e = CreateStagingMemfd(len, &fd);
  if (e != 0) {
    ThrowErrno(env, e, "stage: a memfd of " + std::to_string(len) + " bytes");
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// stageCollect(fd, offset, length, max) → { offsets: Float64Array, data: Buffer, next }:
// the pages of [offset, offset+length) of the memfd `fd` that hold a byte that is not
// zero, at most `max` of them, in order: their offsets, and their bytes one after the
// other in `data`; `next` is where the next call goes on (offset+length once done).
// Only the runs SEEK_DATA finds are read (a memfd's hole was never touched); a read
// that comes short (a daxmapd client truncated its own memfd) counts the rest as zeros.
// One call per batch of the take-back (docs/fault-policy.md, "Staged ranges"): no read,
// no zero test, no object per page in JavaScript.
constexpr uint64_t kPage = 4096;

Napi::Value StageCollect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(U64Arg(info, 0, INT32_MAX));
  uint64_t off = U64Arg(info, 1, static_cast<uint64_t>(INT64_MAX));
  uint64_t len = U64Arg(info, 2, static_cast<uint64_t>(INT64_MAX) - off);
  uint64_t max = U64Arg(info, 3, 1u << 20);
  if (off % kPage != 0 || len % kPage != 0 || max == 0) {
    ThrowErrno(env, EINVAL, "stage: collect range not page-aligned, or max 0");
    return env.Undefined();
  }
  static const std::vector<uint8_t> zero_page(kPage, 0);
  constexpr size_t kChunk = 256 * 1024;
  std::vector<uint8_t> chunk(kChunk);
  std::vector<double> offs;
  std::vector<uint8_t> data;
  uint64_t pos = off, end = off + len;
  while (pos < end && offs.size() < max) {
    off_t d = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (d < 0 && errno != ENXIO) {
      ThrowErrno(env, errno, "stage: SEEK_DATA");
      return env.Undefined();
    }
    if (d < 0 || static_cast<uint64_t>(d) >= end) {  // ENXIO: no data past pos
      pos = end;
      break;
    }
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) {
      ThrowErrno(env, errno, "stage: SEEK_HOLE");
      return env.Undefined();
    }
    uint64_t a = static_cast<uint64_t>(d) & ~(kPage - 1);
    uint64_t stop = std::min<uint64_t>((static_cast<uint64_t>(h) + kPage - 1) & ~(kPage - 1), end);
    while (a < stop && offs.size() < max) {
      size_t n = static_cast<size_t>(std::min<uint64_t>({kChunk, stop - a, (max - offs.size()) * kPage}));
      ssize_t k = pread(fd, chunk.data(), n, static_cast<off_t>(a));
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) {
        ThrowErrno(env, errno, "stage: read");
        return env.Undefined();
      }
      if (k == 0) {  // the file ends here: zeros
        a = stop;
        break;
      }
      size_t whole = (static_cast<size_t>(k) + kPage - 1) & ~(kPage - 1);
      if (whole > static_cast<size_t>(k)) memset(chunk.data() + k, 0, whole - static_cast<size_t>(k));
      for (size_t p = 0; p < whole; p += kPage) {
        if (memcmp(chunk.data() + p, zero_page.data(), kPage) == 0) continue;
        offs.push_back(static_cast<double>(a + p));
        data.insert(data.end(), chunk.data() + p, chunk.data() + p + kPage);
      }
      a += whole;
    }
    pos = a;
  }
  Napi::Object o = Napi::Object::New(env);
  Napi::Float64Array fo = Napi::Float64Array::New(env, offs.size());
  for (size_t i = 0; i < offs.size(); i++) fo[i] = offs[i];
  o.Set("offsets", fo);
  o.Set("data", Napi::Buffer<uint8_t>::Copy(env, data.data(), data.size()));
  o.Set("next", Napi::Number::New(env, static_cast<double>(std::min(pos, end))));
  return o;
}

// stageClose(fd): closes a memfd from stageCreate (Node's fs would warn of a
// descriptor it did not open).
Napi::Value StageClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(U64Arg(info, 0, INT32_MAX));
  if (close(fd) != 0) ThrowErrno(env, errno, "stage: close");
  return env.Undefined();
}

// stagePunch(fd, offset, length): frees the pages of the range (they read as zeros).
Napi::Value StagePunch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(U64Arg(info, 0, INT32_MAX));
  uint64_t off = U64Arg(info, 1, static_cast<uint64_t>(INT64_MAX));
  uint64_t len = U64Arg(info, 2, static_cast<uint64_t>(INT64_MAX) - off);
  if (len > 0 &&
      fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off), static_cast<off_t>(len)) != 0)
    ThrowErrno(env, errno, "stage: punch");
  return env.Undefined();
}

// pidfdOpen(pid) → fd: a pidfd of the process (close-on-exec). daxmapd opens one per
// client when it connects: a descriptor taken through it later comes from that very
// process, never from another that reused its pid (ESRCH once it is gone).
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t pid = U64Arg(info, 0, INT32_MAX);
  long fd = syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "pidfd_open " + std::to_string(pid));
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(fd));
}

// stageAdopt(pidfd, fd, length) → fd: this process's descriptor of the client's staging
// memfd (Op.StagePrepare's result `fd`, in the process of `pidfd`), taken with
// pidfd_getfd (EPERM without the right to ptrace it). The file must be a memfd (or
// another shmem file: it answers F_GET_SEALS and lives on tmpfs, so reading it never
// blocks) of at least `length` bytes; else EINVAL and nothing is kept.
Napi::Value StageAdopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pidfd = static_cast<int>(U64Arg(info, 0, INT32_MAX));
  int theirs = static_cast<int>(U64Arg(info, 1, INT32_MAX));
  uint64_t len = U64Arg(info, 2, static_cast<uint64_t>(INT64_MAX));
  long fd = syscall(SYS_pidfd_getfd, pidfd, theirs, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "stage: pidfd_getfd");
    return env.Undefined();
  }
  int f = static_cast<int>(fd);
  if (CheckStagingMemfd(f, len) != 0) {
    close(f);
    ThrowErrno(env, EINVAL,
               "stage: the client's descriptor is not a staging memfd of " + std::to_string(len) + " bytes");
    return env.Undefined();
  }
  return Napi::Number::New(env, f);
}

}  // namespace

void InitDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceOpen", Napi::Function::New(env, DeviceOpen, "deviceOpen"));
  exports.Set("deviceView", Napi::Function::New(env, DeviceView, "deviceView"));
  exports.Set("devicePersist", Napi::Function::New(env, DevicePersist, "devicePersist"));
  exports.Set("devicePersistAsync", Napi::Function::New(env, DevicePersistAsync, "devicePersistAsync"));
  exports.Set("deviceZero", Napi::Function::New(env, DeviceZero, "deviceZero"));
  exports.Set("deviceZeroPersistAsync", Napi::Function::New(env, DeviceZeroPersistAsync, "deviceZeroPersistAsync"));
  exports.Set("deviceClose", Napi::Function::New(env, DeviceClose, "deviceClose"));
  exports.Set("deviceIdentify", Napi::Function::New(env, DeviceIdentify, "deviceIdentify"));
  exports.Set("stageCreate", Napi::Function::New(env, StageCreate, "stageCreate"));
  exports.Set("stageCollect", Napi::Function::New(env, StageCollect, "stageCollect"));
  exports.Set("stagePunch", Napi::Function::New(env, StagePunch, "stagePunch"));
  exports.Set("stageClose", Napi::Function::New(env, StageClose, "stageClose"));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("stageAdopt", Napi::Function::New(env, StageAdopt, "stageAdopt"));
}

}  // namespace daxmap
