// The addon's entry: registers the exports of each binding file, nothing more.
#include <napi.h>

#include "binding/common.h"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  daxmap::InitAgent(env, exports);
  daxmap::InitRegion(env, exports);
  daxmap::InitDevice(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(daxmap, Init)
