// JS surface of trapped regions: create, export as a Buffer, bind to a channel,
// direct tables, close (detaching every Buffer this environment handed out).
#include "agent.h"
#include "binding/common.h"

namespace daxmap {

namespace {

bool OwnedHere(Napi::Env env, uint32_t id) {
  EnvData* d = GetEnvData(env);
  if (d->regions.count(id) != 0) return true;
  ThrowErrno(env, EPERM, "region " + std::to_string(id) + " belongs to another thread or is closed");
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
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, r->id()));
  o.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(r->base())));
  o.Set("length", Napi::Number::New(env, static_cast<double>(r->length())));
  return o;
}

Napi::Value RegionBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  if (!OwnedHere(env, id)) return env.Undefined();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  std::shared_ptr<Region> r = agent->FindRegion(id);
  if (!r) {
    ThrowErrno(env, ENOENT, "region buffer: no such region");
    return env.Undefined();
  }
  // The memory belongs to the region, not to V8: no finalizer frees it. Closing the
  // region detaches this ArrayBuffer so a stale view throws instead of touching it.
  Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, reinterpret_cast<uint8_t*>(r->base()), r->length());
  napi_ref ref;
  napi_create_reference(env, buf.ArrayBuffer(), 0, &ref);
  GetEnvData(env)->region_buffers[id].push_back(ref);
  return buf;
}

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

Napi::Value RegionBind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  Status s = agent->BindRegion(U32Arg(info, 0), U32Arg(info, 1));
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

// regionSetDirect(id, offset, length, deviceId, devOffset, flags, window)
Napi::Value RegionSetDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  DirectRange d;
  d.offset = U64Arg(info, 1);
  d.length = U64Arg(info, 2);
  d.device = DeviceRegistry::Find(U32Arg(info, 3));
  if (!d.device) {
    ThrowErrno(env, ENODEV, "set direct range: no such device");
    return env.Undefined();
  }
  d.dev_offset = U64Arg(info, 4);
  d.flags = static_cast<uint8_t>(U32Arg(info, 5));
  d.window = U64Arg(info, 6);
  Status s = agent->SetDirect(U32Arg(info, 0), d);
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

Napi::Value RegionClearDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  Status s = agent->ClearDirect(U32Arg(info, 0), U64Arg(info, 1), U64Arg(info, 2));
  if (!s.ok()) ThrowStatus(env, s);
  return env.Undefined();
}

}  // namespace

void InitRegion(Napi::Env env, Napi::Object exports) {
  exports.Set("regionCreate", Napi::Function::New(env, RegionCreate, "regionCreate"));
  exports.Set("regionBuffer", Napi::Function::New(env, RegionBuffer, "regionBuffer"));
  exports.Set("regionClose", Napi::Function::New(env, RegionClose, "regionClose"));
  exports.Set("regionBind", Napi::Function::New(env, RegionBind, "regionBind"));
  exports.Set("regionSetDirect", Napi::Function::New(env, RegionSetDirect, "regionSetDirect"));
  exports.Set("regionClearDirect", Napi::Function::New(env, RegionClearDirect, "regionClearDirect"));
}

}  // namespace daxmap
