// JS surface of trapped regions: create, export as a Buffer, bind to a channel,
// direct tables, close (detaching every Buffer this environment handed out).
#include "agent.h"
#include "binding/common.h"

namespace daxmap {

namespace {

// Every binding that acts on a region by id checks that this environment created
// it: another thread's region (or one closed here) gets EPERM, never the action.
// (Answers executed by a fault handler act on other threads' regions by design;
// they go through execute(), not these.)
bool OwnedHere(Napi::Env env, uint32_t id, const char* what = "region") {
  EnvData* d = GetEnvData(env);
  if (d->regions.count(id) != 0) return true;
  ThrowErrno(env, EPERM,
             std::string(what) + ": region " + std::to_string(id) + " belongs to another thread or is closed");
  return false;
}

Napi::Value RegionCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  std::shared_ptr<Region> r;
  Status s = agent->CreateRegion(U64Arg(info, 0), &r);
  if (!s.ok()) {
    ThrowStatus(env, s);
    return env.Undefined();
  }
  GetEnvData(env)->regions.insert(r->id());
  // regionCreate(length, readOnly): a read-only region, as a PROT_READ mapping.
  if (info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value()) {
    int e = r->MakeReadOnly();
    if (e != 0) {
      GetEnvData(env)->regions.erase(r->id());
      (void)agent->CloseRegion(r->id(), false);
      ThrowErrno(env, e, "create region: make it read-only");
      return env.Undefined();
    }
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, r->id()));
  o.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(r->base())));
  o.Set("length", Napi::Number::New(env, static_cast<double>(r->length())));
  return o;
}

// regionBuffer(id): a Buffer over the whole region. regionArrayBuffer(id, offset,
// length): an external ArrayBuffer over [offset, +length) of it. On Node 20 an external
// ArrayBuffer is made as a Buffer, so either stops at buffer.constants.MAX_LENGTH
// (4 GiB; ERR_BUFFER_TOO_LARGE). The memory belongs to the region, not to V8: no
// finalizer frees it. Closing the region detaches every ArrayBuffer handed out here,
// so a stale view throws or reads nothing instead of touching it.
Napi::Value ExportRegion(const Napi::CallbackInfo& info, bool window) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  uint64_t off = window ? U64Arg(info, 1) : 0;
  uint64_t len = window ? U64Arg(info, 2) : 0;
  if (!OwnedHere(env, id)) return env.Undefined();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  std::shared_ptr<Region> r = agent->FindRegion(id);
  if (!r) {
    ThrowErrno(env, ENOENT, "region buffer: no such region");
    return env.Undefined();
  }
  if (!window) len = r->length();
  if (off > r->length() || len > r->length() - off || len == 0) {
    ThrowErrno(env, EINVAL, "region array buffer: the range is empty or passes the region");
    return env.Undefined();
  }
  uint8_t* data = reinterpret_cast<uint8_t*>(r->base() + off);
  Napi::ArrayBuffer ab;
  Napi::Value out;
  if (window) {
    ab = Napi::ArrayBuffer::New(env, data, len);
    out = ab;
  } else {
    Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, data, len);
    ab = buf.ArrayBuffer();
    out = buf;
  }
  napi_ref ref;
  napi_create_reference(env, ab, 0, &ref);
  GetEnvData(env)->region_buffers[id].push_back(ref);
  return out;
}

Napi::Value RegionBuffer(const Napi::CallbackInfo& info) { return ExportRegion(info, false); }
Napi::Value RegionArrayBuffer(const Napi::CallbackInfo& info) { return ExportRegion(info, true); }

Napi::Value RegionClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  EnvData* d = GetEnvData(env);
  if (!OwnedHere(env, id)) return env.Undefined();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  // Detach first: from here on no JS in this environment can reach the memory.
  auto it = d->region_buffers.find(id);
  if (it != d->region_buffers.end()) {
    DetachAll(env, it->second);
    d->region_buffers.erase(it);
  }
  d->regions.erase(id);
  // regionClose(id, releaseNow): releaseNow skips the graveyard (see Agent::CloseRegion).
  bool release_now = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  Status s = agent->CloseRegion(id, !release_now);
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

// regionBind(id, channel): the channel may be another environment's (a region of
// the main thread is answered by the pool's worker); the region must be ours.
Napi::Value RegionBind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0), channel = U32Arg(info, 1);
  if (!OwnedHere(env, id, "bind region")) return env.Undefined();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  Status s = agent->BindRegion(id, channel);
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

// regionSetDirect(id, offset, length, deviceId, devOffset, flags, window)
Napi::Value RegionSetDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  DirectRange d;
  d.offset = U64Arg(info, 1);
  d.length = U64Arg(info, 2);
  uint32_t device = U32Arg(info, 3);
  d.dev_offset = U64Arg(info, 4);
  d.flags = static_cast<uint8_t>(U64Arg(info, 5, UINT8_MAX));
  d.window = U64Arg(info, 6);
  if (!OwnedHere(env, id, "set direct range")) return env.Undefined();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  d.device = DeviceRegistry::Find(device);
  if (!d.device) {
    ThrowErrno(env, ENODEV, "set direct range: no such device");
    return env.Undefined();
  }
  Status s = agent->SetDirect(id, d);
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

Napi::Value RegionClearDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  uint64_t off = U64Arg(info, 1), len = U64Arg(info, 2);
  if (!OwnedHere(env, id, "clear direct range")) return env.Undefined();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  Status s = agent->ClearDirect(id, off, len);
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

}  // namespace

void InitRegion(Napi::Env env, Napi::Object exports) {
  exports.Set("regionCreate", Napi::Function::New(env, RegionCreate, "regionCreate"));
  exports.Set("regionBuffer", Napi::Function::New(env, RegionBuffer, "regionBuffer"));
  exports.Set("regionArrayBuffer", Napi::Function::New(env, RegionArrayBuffer, "regionArrayBuffer"));
  exports.Set("regionClose", Napi::Function::New(env, RegionClose, "regionClose"));
  exports.Set("regionBind", Napi::Function::New(env, RegionBind, "regionBind"));
  exports.Set("regionSetDirect", Napi::Function::New(env, RegionSetDirect, "regionSetDirect"));
  exports.Set("regionClearDirect", Napi::Function::New(env, RegionClearDirect, "regionClearDirect"));
}

}  // namespace daxmap
