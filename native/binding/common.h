// Shared binding helpers: per-environment state, argument conversion, and turning
// a Status into a JS Error with an errno `code`. The TS layer validates arguments
// before calling in, so conversions here only guard against misuse.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "status.h"

namespace daxmap {

class Agent;
class SocketChannel;

// What one JS environment (main thread or a worker) owns. Regions, device views
// and channels belong to the environment that made them: only it can detach the
// ArrayBuffers it handed out. Destroyed at environment teardown, which closes
// whatever is left.
struct EnvData {
  std::unordered_map<uint32_t, std::vector<napi_ref>> region_buffers;  // weak refs
  std::unordered_set<uint32_t> regions;
  std::unordered_map<uint32_t, std::vector<napi_ref>> device_views;    // weak refs
  std::unordered_set<uint32_t> devices;
  std::unordered_set<uint32_t> channels;
  std::unordered_map<uint32_t, std::shared_ptr<SocketChannel>> socket_channels;  // closed at teardown
  std::unordered_map<uint32_t, std::shared_ptr<void>> socket_notifiers;          // their death callbacks
  ~EnvData();
};

EnvData* GetEnvData(Napi::Env env);

// Throws (as a pending JS exception) an Error for the Status. Callers return
// right after.
void ThrowStatus(Napi::Env env, const Status& s);
void ThrowErrno(Napi::Env env, int err, const std::string& what);

// The agent, or a thrown EUFFD error and nullptr.
Agent* GetAgent(Napi::Env env);

// Integer arguments arrive as JS numbers (safe integers, checked in TS).
uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i);
uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i);

// Detach and drop the weak refs' ArrayBuffers that are still alive.
void DetachAll(Napi::Env env, std::vector<napi_ref>& refs);

void InitRegion(Napi::Env env, Napi::Object exports);
void InitDevice(Napi::Env env, Napi::Object exports);
void InitNet(Napi::Env env, Napi::Object exports);
void InitAgent(Napi::Env env, Napi::Object exports);
void InitSocket(Napi::Env env, Napi::Object exports);
void InitLayout(Napi::Env env, Napi::Object exports);

}  // namespace daxmap
