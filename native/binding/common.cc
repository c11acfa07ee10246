// Binding helpers shared by every binding file.
#include "binding/common.h"

#include <cstring>

#include "agent.h"
#include "socket_channel.h"

namespace daxmap {

EnvData::~EnvData() {
  // Environment teardown: no JS can touch these any more; release the native side.
  // Socket channels first: each stops its I/O thread (which may be executing an
  // answer on one of the regions below) and orphans itself.
  for (auto& [id, ch] : socket_channels) ch->Close();
  socket_channels.clear();
  for (uint32_t id : devices) DeviceRegistry::Remove(id);
  if (channels.empty() && regions.empty()) return;
  Status st;
  Agent* agent = Agent::Get(&st);
  if (agent == nullptr) return;
  for (uint32_t id : channels) agent->OrphanChannel(id);
  for (uint32_t id : regions) (void)agent->CloseRegion(id);
}

EnvData* GetEnvData(Napi::Env env) {
  EnvData* d = env.GetInstanceData<EnvData>();
  if (d == nullptr) {
    d = new EnvData();
    env.SetInstanceData<EnvData>(d);
  }
  return d;
}

void ThrowStatus(Napi::Env env, const Status& s) {
  std::string code = s.code.empty() ? ErrnoName(s.err) : s.code;
  std::string msg = code + ": " + s.what;
  if (s.code.empty() && s.err != 0) msg += ": " + std::string(strerror(s.err));
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -s.err));
  e.ThrowAsJavaScriptException();
}

void ThrowErrno(Napi::Env env, int err, const std::string& what) { ThrowStatus(env, Status::Errno(err, what)); }

Agent* GetAgent(Napi::Env env) {
  Status st;
  Agent* a = Agent::Get(&st);
  if (a == nullptr) ThrowStatus(env, st);
  return a;
}

uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i) return 0;
  if (info[i].IsBigInt()) {
    bool lossless;
    return info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  }
  double v = info[i].ToNumber().DoubleValue();
  return v < 0 ? 0 : static_cast<uint64_t>(v);
}

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i) { return static_cast<uint32_t>(U64Arg(info, i)); }

void DetachAll(Napi::Env env, std::vector<napi_ref>& refs) {
  for (napi_ref ref : refs) {
    napi_value v = nullptr;
    if (napi_get_reference_value(env, ref, &v) == napi_ok && v != nullptr) {
      bool detached = false;
      napi_is_detached_arraybuffer(env, v, &detached);
      if (!detached) napi_detach_arraybuffer(env, v);
    }
    napi_delete_reference(env, ref);
  }
  refs.clear();
}

}  // namespace daxmap
