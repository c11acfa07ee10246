// JS surface of devices: open (lock, map), views as Buffers, persist, close.
#include "binding/common.h"
#include "device.h"

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

// devicePersistAsync(id, off, len) → Promise<void>: Persist on a libuv pool thread, so
// the calling thread goes on while the disk works (the pool's group commit of its
// log on a disk-file pool: docs/pool.md, "Group commit"). The worker holds the device:
// a close meanwhile does not unmap it under the msync. Rejects with the Status' error.
class PersistWorker : public Napi::AsyncWorker {
 public:
  PersistWorker(Napi::Env env, std::shared_ptr<Device> dev, uint64_t off, uint64_t len)
      : Napi::AsyncWorker(env, "daxmap.persist"),
        deferred_(Napi::Promise::Deferred::New(env)),
        dev_(std::move(dev)),
        off_(off),
        len_(len) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }
  void Execute() override { status_ = dev_->Persist(off_, len_); }
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
  uint64_t off_;
  uint64_t len_;
  Status status_ = Status::Ok();
};

Napi::Value DevicePersistAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Device> dev = OwnedDevice(env, U32Arg(info, 0), "persist");
  if (!dev) return env.Undefined();
  uint64_t off = U64Arg(info, 1), len = U64Arg(info, 2);
  auto* w = new PersistWorker(env, std::move(dev), off, len);
  Napi::Promise p = w->Promise();
  w->Queue();  // deletes itself after OnOK
  return p;
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

}  // namespace

void InitDevice(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceOpen", Napi::Function::New(env, DeviceOpen, "deviceOpen"));
  exports.Set("deviceView", Napi::Function::New(env, DeviceView, "deviceView"));
  exports.Set("devicePersist", Napi::Function::New(env, DevicePersist, "devicePersist"));
  exports.Set("devicePersistAsync", Napi::Function::New(env, DevicePersistAsync, "devicePersistAsync"));
  exports.Set("deviceZero", Napi::Function::New(env, DeviceZero, "deviceZero"));
  exports.Set("deviceClose", Napi::Function::New(env, DeviceClose, "deviceClose"));
  exports.Set("deviceIdentify", Napi::Function::New(env, DeviceIdentify, "deviceIdentify"));
}

}  // namespace daxmap
