// Binding helpers shared by every binding file.
#include "binding/common.h"

#include <climits>
#include <cmath>
#include <cstdio>
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
  // Channels and regions exist only in an environment that uses the agent.
  if (!agent_user) return;
  Agent& agent = Agent::Instance();
  for (uint32_t id : channels) agent.OrphanChannel(id);
  for (uint32_t id : regions) (void)agent.CloseRegion(id);
  // The last user stops the reader thread and joins it.
  agent.Release();
}

EnvData* GetEnvData(Napi::Env env) {
  EnvData* d = env.GetInstanceData<EnvData>();
  if (d == nullptr) {
    d = new EnvData();
    env.SetInstanceData<EnvData>(d);
  }
  return d;
}

Napi::Error StatusError(Napi::Env env, const Status& s, ErrorKind kind) {
  std::string code = s.code.empty() ? ErrnoName(s.err) : s.code;
  std::string msg = code + ": " + s.what;
  if (s.code.empty() && s.err != 0) msg += ": " + std::string(strerror(s.err));
  Napi::Error e = kind == ErrorKind::kTypeError    ? Napi::TypeError::New(env, msg)
                  : kind == ErrorKind::kRangeError ? Napi::RangeError::New(env, msg)
                                                   : Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -s.err));
  return e;
}

void ThrowStatus(Napi::Env env, const Status& s) { StatusError(env, s).ThrowAsJavaScriptException(); }

void ThrowErrno(Napi::Env env, int err, const std::string& what) { ThrowStatus(env, Status::Errno(err, what)); }

Agent* GetAgent(Napi::Env env) {
  EnvData* d = GetEnvData(env);
  if (!d->agent_user) {
    Status st = Agent::Instance().Acquire();
    if (!st.ok()) {
      ThrowStatus(env, st);
      return nullptr;
    }
    d->agent_user = true;
  }
  return &Agent::Instance();
}

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1, Number.MAX_SAFE_INTEGER

const char* TypeName(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "a boolean";
    case napi_number: return "a number";
    case napi_string: return "a string";
    case napi_symbol: return "a symbol";
    case napi_object: return "an object";
    case napi_function: return "a function";
    case napi_external: return "an external";
    case napi_bigint: return "a bigint";
  }
  return "an unknown value";
}

[[noreturn]] void BadValue(Napi::Env env, int err, ErrorKind kind, const std::string& what) {
  throw StatusError(env, Status::Errno(err, what), kind);
}

// Checks a JS value as an integer in [0, max] without ever casting a double that
// does not fit (NaN, infinities, fractions, negatives, beyond 2^53 - 1).
uint64_t CheckedInteger(Napi::Env env, Napi::Value v, uint64_t max, const std::string& what, int err) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless || u > max) {
      BadValue(env, err, ErrorKind::kRangeError,
               what + " must be an integer in [0, " + std::to_string(max) + "], got a bigint out of range");
    }
    return u;
  }
  if (!v.IsNumber()) {
    BadValue(env, err, ErrorKind::kTypeError, what + " must be a number, got " + TypeName(v));
  }
  double d = v.As<Napi::Number>().DoubleValue();
  double limit = max >= static_cast<uint64_t>(kMaxSafeInteger) ? kMaxSafeInteger : static_cast<double>(max);
  // NaN fails every comparison, so test for the good case.
  if (!(d >= 0 && d <= limit && std::floor(d) == d)) {
    char got[40];
    snprintf(got, sizeof got, "%.17g", d);
    BadValue(env, err, ErrorKind::kRangeError,
             what + " must be an integer in [0, " + std::to_string(static_cast<uint64_t>(limit)) + "], got " + got);
  }
  return static_cast<uint64_t>(d);
}

std::string ArgName(size_t i) { return "argument " + std::to_string(i + 1); }

}  // namespace

uint64_t ToU64(Napi::Env env, Napi::Value v, uint64_t max, const std::string& what) {
  return CheckedInteger(env, v, max, what, EINVAL);
}

uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i, uint64_t max) {
  return CheckedInteger(info.Env(), info[i], max, ArgName(i), EINVAL);
}

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<uint32_t>(CheckedInteger(info.Env(), info[i], UINT32_MAX, ArgName(i), EINVAL));
}

int FdArg(const Napi::CallbackInfo& info, size_t i) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) {  // a descriptor is a number, never a bigint
    BadValue(info.Env(), EBADF, ErrorKind::kTypeError,
             ArgName(i) + " (a file descriptor) must be a number, got " + TypeName(v));
  }
  return static_cast<int>(CheckedInteger(info.Env(), v, INT_MAX, ArgName(i) + " (a file descriptor)", EBADF));
}

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
