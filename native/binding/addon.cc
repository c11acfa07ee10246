// The addon's entry: registers the exports of each binding file, nothing more.
#include <dlfcn.h>
#include <napi.h>

#include "binding/common.h"

namespace {
// Node unloads an addon when the last environment that loaded it exits. The fault
// agent's reader thread and the device table are process-wide and outlive any one
// environment, so the library must never be unmapped under them: pin it.
void PinLibrary() {
  static bool pinned = false;
  if (pinned) return;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&PinLibrary), &info) != 0 && info.dli_fname != nullptr) {
    // RTLD_NOLOAD: no second copy, just another reference; RTLD_NODELETE: never unloaded.
    if (dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) != nullptr) pinned = true;
  }
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  PinLibrary();
  daxmap::InitAgent(env, exports);
  daxmap::InitRegion(env, exports);
  daxmap::InitDevice(env, exports);
  daxmap::InitNet(env, exports);
  daxmap::InitSocket(env, exports);
  daxmap::InitLayout(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(daxmap, Init)
