// The frame and wire layouts as the compiler sees them (native/frames.h,
// native/socket_channel.h): sizes, field offsets and constants, for the test that
// keeps lib/native/frames.ts and lib/native/wire.ts equal to them
// (test/native/layout-mirror.test.ts). Nothing else calls it.
#include <cstddef>

#include "binding/common.h"
#include "frames.h"
#include "socket_channel.h"

namespace daxmap {

namespace {

#define DAXMAP_FIELD(S, f)                                                  \
  do {                                                                      \
    Napi::Array a = Napi::Array::New(env, 2);                               \
    a.Set(0u, Napi::Number::New(env, static_cast<double>(offsetof(S, f)))); \
    a.Set(1u, Napi::Number::New(env, static_cast<double>(sizeof(S::f))));   \
    fields.Set(#f, a);                                                      \
  } while (0)

Napi::Object Struct(Napi::Env env, size_t size, Napi::Object fields) {
  Napi::Object s = Napi::Object::New(env);
  s.Set("size", Napi::Number::New(env, static_cast<double>(size)));
  s.Set("fields", fields);
  return s;
}

// frameLayout() → { structs: { Name: { size, fields: { name: [offset, size] } } }, constants: { kName: value } }
Napi::Value FrameLayout(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object structs = Napi::Object::New(env);
  {
    Napi::Object fields = Napi::Object::New(env);
    DAXMAP_FIELD(FaultEvent, region);
    DAXMAP_FIELD(FaultEvent, flags);
    DAXMAP_FIELD(FaultEvent, count);
    DAXMAP_FIELD(FaultEvent, offset);
    DAXMAP_FIELD(FaultEvent, tid);
    DAXMAP_FIELD(FaultEvent, seq);
    DAXMAP_FIELD(FaultEvent, time_ns);
    structs.Set("FaultEvent", Struct(env, sizeof(FaultEvent), fields));
  }
  {
    Napi::Object fields = Napi::Object::New(env);
    DAXMAP_FIELD(Answer, op);
    DAXMAP_FIELD(Answer, flags);
    DAXMAP_FIELD(Answer, flags2);
    DAXMAP_FIELD(Answer, region);
    DAXMAP_FIELD(Answer, offset);
    DAXMAP_FIELD(Answer, length);
    DAXMAP_FIELD(Answer, device);
    DAXMAP_FIELD(Answer, payload);
    DAXMAP_FIELD(Answer, dev_offset);
    DAXMAP_FIELD(Answer, tag);
    structs.Set("Answer", Struct(env, sizeof(Answer), fields));
  }
  {
    Napi::Object fields = Napi::Object::New(env);
    DAXMAP_FIELD(wire::Header, type);
    DAXMAP_FIELD(wire::Header, flags);
    DAXMAP_FIELD(wire::Header, length);
    structs.Set("Header", Struct(env, sizeof(wire::Header), fields));
  }
  {
    Napi::Object fields = Napi::Object::New(env);
    DAXMAP_FIELD(wire::Hello, magic);
    DAXMAP_FIELD(wire::Hello, version);
    DAXMAP_FIELD(wire::Hello, pid);
    DAXMAP_FIELD(wire::Hello, reserved);
    DAXMAP_FIELD(wire::Hello, session);
    structs.Set("Hello", Struct(env, sizeof(wire::Hello), fields));
  }
  {
    Napi::Object fields = Napi::Object::New(env);
    DAXMAP_FIELD(wire::Result, tag);
    DAXMAP_FIELD(wire::Result, result);
    DAXMAP_FIELD(wire::Result, zero);
    structs.Set("Result", Struct(env, sizeof(wire::Result), fields));
  }

  Napi::Object c = Napi::Object::New(env);
  auto set = [&](const char* name, double v) { c.Set(name, Napi::Number::New(env, v)); };
  set("kFrameVersion", kFrameVersion);
  set("kEvWrite", kEvWrite);
  set("kEvWp", kEvWp);
  set("kEvKernel", kEvKernel);
  set("kEvNote", kEvNote);
  set("kEvLow", kEvLow);
  set("kEvRun", kEvRun);
  set("kOpInstall", kOpInstall);
  set("kOpZero", kOpZero);
  set("kOpCopy", kOpCopy);
  set("kOpPoison", kOpPoison);
  set("kOpRevoke", kOpRevoke);
  set("kOpWake", kOpWake);
  set("kOpUnprotect", kOpUnprotect);
  set("kOpSetDirect", kOpSetDirect);
  set("kOpClearDirect", kOpClearDirect);
  set("kOpSetReserve", kOpSetReserve);
  set("kOpClearReserve", kOpClearReserve);
  set("kOpTopUpReserve", kOpTopUpReserve);
  set("kOpAddReserveRanges", kOpAddReserveRanges);
  set("kOpReserveWindows", kOpReserveWindows);
  set("kOpStage", kOpStage);
  set("kOpStagePrepare", kOpStagePrepare);
  set("kStageOwnFd", kStageOwnFd);
  set("kAnsWritable", kAnsWritable);
  set("kAnsPrivate", kAnsPrivate);
  set("kAnsPopulate", kAnsPopulate);
  set("kAnsWp", kAnsWp);
  set("kAnsNoWake", kAnsNoWake);
  set("kAnsFromDevice", kAnsFromDevice);
  set("kAnsAdopt", kAnsAdopt);
  set("kAnsWindow", kAnsWindow);
  set("kAns2PopulateRead", kAns2PopulateRead);
  set("kResultRaced", kResultRaced);
  set("kMsgEvents", wire::kMsgEvents);
  set("kMsgAnswers", wire::kMsgAnswers);
  set("kMsgResults", wire::kMsgResults);
  set("kMsgHello", wire::kMsgHello);
  set("kMsgBye", wire::kMsgBye);
  set("kMagic", wire::kMagic);
  set("kVersion", wire::kVersion);
  set("kMaxBody", wire::kMaxBody);

  Napi::Object out = Napi::Object::New(env);
  out.Set("structs", structs);
  out.Set("constants", c);
  return out;
}

#undef DAXMAP_FIELD

}  // namespace

void InitLayout(Napi::Env env, Napi::Object exports) {
  exports.Set("frameLayout", Napi::Function::New(env, FrameLayout, "frameLayout"));
}

}  // namespace daxmap
