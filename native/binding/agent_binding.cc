// JS surface of the fault agent: userfaultfd probe, channels (a thread-safe
// function that tells a JS handler "events are waiting"), taking events, executing
// answers, statistics.
#include <signal.h>
#include <unistd.h>

#include <cstring>

#include "agent.h"
#include "binding/common.h"

namespace daxmap {

namespace {

// A channel whose handler is a JS function in some environment (usually a worker
// thread). The reader calls Notify(); the JS function then drains with channelTake.
class JsChannel : public Channel {
 public:
  explicit JsChannel(uint32_t id) : Channel(id) {}
  Napi::ThreadSafeFunction tsfn;
  void Close() { MarkClosed(); }

 protected:
  bool Notify() override { return tsfn.NonBlockingCall() == napi_ok; }
};

using ChannelCtx = std::shared_ptr<JsChannel>;

Napi::Value UffdProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  UffdInfo ui;
  Status s = Agent::Probe(&ui);
  if (!s.ok()) {
    ThrowStatus(env, s);
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("features", Napi::BigInt::New(env, ui.features));
  o.Set("ioctls", Napi::BigInt::New(env, ui.ioctls));
  o.Set("via", Napi::String::New(env, ui.via));
  return o;
}

Napi::Value ChannelOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  if (!info[0].IsFunction()) {
    ThrowErrno(env, EINVAL, "open channel: handler must be a function");
    return env.Undefined();
  }
  auto ch = std::make_shared<JsChannel>(agent->NextChannelId());
  auto* ctx = new ChannelCtx(ch);
  ch->tsfn = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "daxmap.faults", 0, 1, ctx,
                                           [](Napi::Env, ChannelCtx* c) {
                                             // The handler's environment is going away (or the channel was closed):
                                             // nothing will answer its faults any more, so they get SIGBUS.
                                             (*c)->Close();
                                             Agent::Instance().OrphanChannel((*c)->id());
                                             delete c;
                                           });
  agent->AddChannel(ch);
  GetEnvData(env)->channels.insert(ch->id());
  return Napi::Number::New(env, ch->id());
}

// The channel `id` if this environment opened it; nullptr if it is closed (a
// notification may still arrive after close: nothing to take); a thrown EPERM if
// it is alive but another environment's (or a socket channel), whose events only
// its own handler may take or give up.
std::shared_ptr<Channel> OwnedChannel(Napi::Env env, Agent* agent, uint32_t id, const char* what) {
  std::shared_ptr<Channel> ch = agent->FindChannel(id);
  if (ch && GetEnvData(env)->channels.count(id) == 0) {
    ThrowErrno(env, EPERM, std::string(what) + ": channel " + std::to_string(id) + " belongs to another thread");
    return nullptr;
  }
  return ch;
}

// channelTake(id, buffer) → number of 32-byte events written into buffer
Napi::Value ChannelTake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  std::shared_ptr<Channel> ch = OwnedChannel(env, agent, id, "take events");
  if (env.IsExceptionPending()) return env.Undefined();
  if (!ch || !info[1].IsTypedArray()) return Napi::Number::New(env, 0);
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  uint8_t* data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  size_t max = ta.ByteLength() / sizeof(FaultEvent);
  if (max != 0 && reinterpret_cast<uintptr_t>(data) % alignof(FaultEvent) != 0) {
    // Events are stored as structs: a misaligned store would be undefined behaviour.
    throw StatusError(env,
                      Status::Errno(EINVAL, "take events: the buffer must be " + std::to_string(alignof(FaultEvent)) +
                                                "-byte aligned"),
                      ErrorKind::kRangeError);
  }
  size_t n = ch->Take(reinterpret_cast<FaultEvent*>(data), max);
  return Napi::Number::New(env, static_cast<double>(n));
}

// channelAbandon(id, events, count) → events poisoned (those still unanswered)
Napi::Value ChannelAbandon(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  uint64_t count = U64Arg(info, 2);
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  std::shared_ptr<Channel> ch = OwnedChannel(env, agent, id, "abandon events");
  if (env.IsExceptionPending()) return env.Undefined();
  if (!ch || !info[1].IsTypedArray()) return Napi::Number::New(env, 0);
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  const uint8_t* data = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  size_t n = std::min<size_t>(count, ta.ByteLength() / sizeof(FaultEvent));
  std::vector<FaultEvent> evs(n);
  if (n) memcpy(evs.data(), data, n * sizeof(FaultEvent));
  std::vector<FaultEvent> live = ch->Abandon(evs.data(), n);
  agent->PoisonEvents(live);
  return Napi::Number::New(env, static_cast<double>(live.size()));
}

Napi::Value ChannelClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  EnvData* d = GetEnvData(env);
  if (d->channels.erase(id) == 0) return env.Undefined();  // idempotent
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  std::shared_ptr<Channel> ch = agent->FindChannel(id);
  if (ch) {
    auto* js = static_cast<JsChannel*>(ch.get());
    js->Close();  // no Notify (no call into the TSFN) after this
    js->tsfn.Release();
  }
  agent->OrphanChannel(id);
  return env.Undefined();
}

// channelRef(id, ref): whether the channel keeps its environment's event loop alive.
Napi::Value ChannelRef(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  if (GetEnvData(env)->channels.count(id) == 0) return env.Undefined();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  std::shared_ptr<Channel> ch = agent->FindChannel(id);
  if (!ch) return env.Undefined();
  auto* js = static_cast<JsChannel*>(ch.get());
  if (info[1].ToBoolean().Value())
    js->tsfn.Ref(env);
  else
    js->tsfn.Unref(env);
  return env.Undefined();
}

// execute(answers: Uint8Array, results: Int32Array) → answers parsed
Napi::Value Execute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  // results must really be an Int32Array: its elements are then 4-byte aligned.
  if (!info[0].IsTypedArray() || !info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw StatusError(env, Status::Errno(EINVAL, "execute: expected (Uint8Array, Int32Array)"), ErrorKind::kTypeError);
  }
  Napi::TypedArray in = info[0].As<Napi::TypedArray>();
  Napi::TypedArray out = info[1].As<Napi::TypedArray>();
  const uint8_t* buf = static_cast<const uint8_t*>(in.ArrayBuffer().Data()) + in.ByteOffset();
  int32_t* res = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(out.ArrayBuffer().Data()) + out.ByteOffset());
  long n = agent->Execute(buf, in.ByteLength(), res, out.ByteLength() / sizeof(int32_t));
  if (n < 0) {
    ThrowErrno(env, static_cast<int>(-n), "execute: malformed answer frame");
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value AgentStatsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  AgentStats& s = agent->stats();
  Napi::Object o = Napi::Object::New(env);
  auto set = [&](const char* k, const std::atomic<uint64_t>& v) {
    o.Set(k, Napi::Number::New(env, static_cast<double>(v.load())));
  };
  set("events", s.events);
  set("batches", s.batches);
  set("merged", s.merged);
  set("direct", s.direct);
  set("reserved", s.reserved);
  set("reservedWp", s.reserved_wp);
  set("reservedZero", s.reserved_zero);
  set("reservedRaced", s.reserved_raced);
  set("upgrades", s.upgrades);
  set("runPages", s.run_pages);
  set("lowWater", s.low_water);
  set("delivered", s.delivered);
  set("poisoned", s.poisoned);
  set("timeouts", s.timeouts);
  set("deferred", s.deferred);
  set("answers", s.answers);
  set("answerErrors", s.answer_errors);
  set("remaps", s.remaps);
  set("stray", s.stray);
  set("wakes", s.wakes);
  set("starts", s.starts);
  o.Set("faultTimeoutMs", Napi::Number::New(env, static_cast<double>(agent->fault_timeout_ms())));
  o.Set("via", Napi::String::New(env, agent->uffd().info().via));
  return o;
}

// agentConfigure({ faultTimeoutMs })
Napi::Value AgentConfigure(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  if (info[0].IsObject()) {
    Napi::Value t = info[0].As<Napi::Object>().Get("faultTimeoutMs");
    // Bounded so that the conversion to nanoseconds cannot wrap.
    if (!t.IsUndefined()) agent->set_fault_timeout_ms(ToU64(env, t, UINT64_MAX / 1000000u, "faultTimeoutMs"));
  }
  return env.Undefined();
}

// A SIGBUS from a daxmap answer (beyond EOF, an unsatisfiable fault) kills the
// process like the kernel's own would; with the reporter on, the address is printed
// to stderr first. Async-signal-safe: formats by hand and uses write(2).
void SigbusReporter(int sig, siginfo_t* si, void*) {
  char msg[64] = "daxmap: SIGBUS at 0x";
  size_t n = strlen(msg);
  uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
  char hex[17];
  int h = 0;
  do {
    hex[h++] = "0123456789abcdef"[a & 15];
    a >>= 4;
  } while (a != 0 && h < 16);
  while (h > 0) msg[n++] = hex[--h];
  msg[n++] = '\n';
  (void)!write(2, msg, n);
  // Back to the default action: returning re-executes the access, which raises
  // SIGBUS again and ends the process with it.
  signal(sig, SIG_DFL);
}

Napi::Value SigbusReport(const Napi::CallbackInfo& info) {
  struct sigaction sa = {};
  if (info[0].ToBoolean().Value()) {
    sa.sa_sigaction = SigbusReporter;
    sa.sa_flags = SA_SIGINFO;
  } else {
    sa.sa_handler = SIG_DFL;
  }
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, nullptr);
  return info.Env().Undefined();
}

Napi::Value MonotonicNow(const Napi::CallbackInfo& info) { return Napi::BigInt::New(info.Env(), MonotonicNs()); }

}  // namespace

void InitAgent(Napi::Env env, Napi::Object exports) {
  exports.Set("uffdProbe", Napi::Function::New(env, UffdProbe, "uffdProbe"));
  exports.Set("channelOpen", Napi::Function::New(env, ChannelOpen, "channelOpen"));
  exports.Set("channelTake", Napi::Function::New(env, ChannelTake, "channelTake"));
  exports.Set("channelAbandon", Napi::Function::New(env, ChannelAbandon, "channelAbandon"));
  exports.Set("channelClose", Napi::Function::New(env, ChannelClose, "channelClose"));
  exports.Set("channelRef", Napi::Function::New(env, ChannelRef, "channelRef"));
  exports.Set("execute", Napi::Function::New(env, Execute, "execute"));
  exports.Set("agentStats", Napi::Function::New(env, AgentStatsJs, "agentStats"));
  exports.Set("agentConfigure", Napi::Function::New(env, AgentConfigure, "agentConfigure"));
  exports.Set("sigbusReport", Napi::Function::New(env, SigbusReport, "sigbusReport"));
  exports.Set("monotonicNow", Napi::Function::New(env, MonotonicNow, "monotonicNow"));
}

}  // namespace daxmap
