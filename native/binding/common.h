// Shared binding helpers: per-environment state, argument conversion, and turning
// a Status into a JS Error with an errno `code`. The TS layer validates arguments
// before calling in; the conversions here still refuse anything that is not what
// they convert to, so no NaN, infinity, fraction, negative or oversized number ever
// reaches an integer cast (that would be undefined behaviour).
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
  std::unordered_map<uint32_t, std::vector<napi_ref>> device_views;  // weak refs
  std::unordered_set<uint32_t> devices;
  std::unordered_set<uint32_t> channels;
  std::unordered_map<uint32_t, std::shared_ptr<SocketChannel>> socket_channels;  // closed at teardown
  std::unordered_map<uint32_t, std::shared_ptr<void>> socket_notifiers;          // their death callbacks
  bool agent_user = false;  // holds a user reference on the agent (taken by GetAgent)
  ~EnvData();
};

EnvData* GetEnvData(Napi::Env env);

// The JS Error for a Status: message "<CODE>: <what>[: strerror]", with `code`
// and `errno` (negative) properties.
enum class ErrorKind { kError, kTypeError, kRangeError };
Napi::Error StatusError(Napi::Env env, const Status& s, ErrorKind kind = ErrorKind::kError);

// Throws (as a pending JS exception) an Error for the Status. Callers return
// right after.
void ThrowStatus(Napi::Env env, const Status& s);
void ThrowErrno(Napi::Env env, int err, const std::string& what);

// The agent, running, with this environment counted as one of its users until its
// teardown; or a thrown error (EUFFD, …) and nullptr — and then the next call
// tries to start it again.
Agent* GetAgent(Napi::Env env);

// Integer arguments: a JS number that is a non-negative safe integer (at most
// 2^53 - 1), or a BigInt in [0, 2^64), no larger than `max`. Anything else —
// missing, not a number, NaN, ±Infinity, a fraction, negative, too large — throws
// (a C++ Napi::Error, which node-addon-api turns into the JS exception) a
// TypeError (wrong type) or RangeError (bad number) with code EINVAL. `what`
// names the value in the message.
uint64_t ToU64(Napi::Env env, Napi::Value v, uint64_t max, const std::string& what);
uint64_t U64Arg(const Napi::CallbackInfo& info, size_t i, uint64_t max = UINT64_MAX);
uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i);
// A file descriptor argument: a number in [0, INT_MAX]; otherwise EBADF (as a
// TypeError or RangeError), as for a descriptor that is not open.
int FdArg(const Napi::CallbackInfo& info, size_t i);

// Detach and drop the weak refs' ArrayBuffers that are still alive.
void DetachAll(Napi::Env env, std::vector<napi_ref>& refs);

void InitRegion(Napi::Env env, Napi::Object exports);
void InitDevice(Napi::Env env, Napi::Object exports);
void InitNet(Napi::Env env, Napi::Object exports);
void InitAgent(Napi::Env env, Napi::Object exports);
void InitSocket(Napi::Env env, Napi::Object exports);
void InitLayout(Napi::Env env, Napi::Object exports);

}  // namespace daxmap
