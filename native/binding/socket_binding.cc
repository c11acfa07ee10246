// JS surface of socket channels: open a channel over a connected socket, or connect
// to a UNIX socket path and open one (its handler is the daemon at the other end), learn that it
// died, close it. The channel belongs to the environment that opened it.
#include <unistd.h>

#include "agent.h"
#include "binding/common.h"
#include "socket_channel.h"

namespace daxmap {

namespace {

// The JS callback told once that the channel stopped. The I/O thread may report
// while the environment is being torn down, when the thread-safe function can be
// finalized (and freed) at any moment: `alive` (under mu) says whether it may
// still be called, and the finalizer clears it.
struct ClosedNotifier;
void CallClosed(Napi::Env env, Napi::Function cb, ClosedNotifier*, std::string* reason);
using ClosedTsfn = Napi::TypedThreadSafeFunction<ClosedNotifier, std::string, CallClosed>;

struct ClosedNotifier {
  std::mutex mu;
  bool alive = true;
  ClosedTsfn tsfn;

  void Report(const std::string& reason) {
    std::lock_guard<std::mutex> g(mu);
    if (!alive) return;
    auto* r = new std::string(reason);
    if (tsfn.NonBlockingCall(r) != napi_ok) delete r;
    tsfn.Release();
    alive = false;
  }
};

void CallClosed(Napi::Env env, Napi::Function cb, ClosedNotifier*, std::string* reason) {
  if (env != nullptr && cb != nullptr) cb.Call({Napi::String::New(env, *reason)});
  delete reason;
}

std::shared_ptr<SocketChannel> Lookup(Napi::Env env, uint32_t id) {
  EnvData* d = GetEnvData(env);
  auto it = d->socket_channels.find(id);
  return it == d->socket_channels.end() ? nullptr : it->second;
}

// Opens a channel over `fd` (duplicated) with an optional death callback, owned by
// this environment. Throws and returns 0 on failure.
uint32_t OpenChannel(Napi::Env env, Agent* agent, int fd, uint64_t session, Napi::Value cb) {
  std::shared_ptr<ClosedNotifier> notifier;
  SocketChannel::ClosedFn on_closed;
  if (cb.IsFunction()) {
    notifier = std::make_shared<ClosedNotifier>();
    auto* hold = new std::shared_ptr<ClosedNotifier>(notifier);
    notifier->tsfn = ClosedTsfn::New(env, cb.As<Napi::Function>(), "daxmap.socketClosed", 0, 1, notifier.get(),
                                     [hold](Napi::Env, void*, ClosedNotifier* n) {
                                       {
                                         std::lock_guard<std::mutex> g(n->mu);
                                         n->alive = false;
                                       }
                                       delete hold;
                                     });
    on_closed = [notifier](const std::string& reason) { notifier->Report(reason); };
  }
  std::shared_ptr<SocketChannel> ch;
  Status s = SocketChannel::Open(agent, fd, session, std::move(on_closed), &ch);
  if (!s.ok()) {
    if (notifier) {
      std::lock_guard<std::mutex> g(notifier->mu);
      notifier->tsfn.Release();
      notifier->alive = false;
    }
    ThrowStatus(env, s);
    return 0;
  }
  EnvData* d = GetEnvData(env);
  d->socket_channels[ch->id()] = ch;
  if (notifier) d->socket_notifiers[ch->id()] = notifier;
  return ch->id();
}

// channelOpenSocket(fd, session: bigint, onClosed?: (reason) => void) → channel id.
// The caller keeps (and closes) its fd.
Napi::Value ChannelOpenSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  int fd = FdArg(info, 0);
  uint64_t session = U64Arg(info, 1);
  uint32_t id = OpenChannel(env, agent, fd, session, info[2]);
  return id == 0 ? env.Undefined() : Napi::Number::New(env, id);
}

// channelConnectSocket(path, session: bigint, onClosed?) → channel id: connects to
// the daemon's UNIX socket and opens a channel over that connection.
Napi::Value ChannelConnectSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent* agent = GetAgent(env);
  if (agent == nullptr) return env.Undefined();
  if (!info[0].IsString()) {
    ThrowErrno(env, EINVAL, "connect: path must be a string");
    return env.Undefined();
  }
  uint64_t session = U64Arg(info, 1);  // before connecting: a bad argument throws
  int fd = -1;
  Status s = UnixConnect(info[0].As<Napi::String>().Utf8Value(), &fd);
  if (!s.ok()) {
    ThrowStatus(env, s);
    return env.Undefined();
  }
  uint32_t id = OpenChannel(env, agent, fd, session, info[2]);
  close(fd);  // the channel holds its own duplicate
  return id == 0 ? env.Undefined() : Napi::Number::New(env, id);
}

// channelCloseSocket(id): BYE if possible, stop, orphan. Idempotent.
Napi::Value ChannelCloseSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = U32Arg(info, 0);
  EnvData* d = GetEnvData(env);
  auto it = d->socket_channels.find(id);
  if (it == d->socket_channels.end()) return env.Undefined();
  std::shared_ptr<SocketChannel> ch = std::move(it->second);
  d->socket_channels.erase(it);
  d->socket_notifiers.erase(id);
  ch->Close();
  return env.Undefined();
}

// channelRefSocket(id, ref): whether the death callback keeps the event loop alive.
Napi::Value ChannelRefSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnvData* d = GetEnvData(env);
  auto it = d->socket_notifiers.find(U32Arg(info, 0));
  if (it == d->socket_notifiers.end()) return env.Undefined();
  std::shared_ptr<ClosedNotifier> n = std::static_pointer_cast<ClosedNotifier>(it->second);
  std::lock_guard<std::mutex> g(n->mu);
  if (!n->alive) return env.Undefined();
  if (info[1].ToBoolean().Value())
    n->tsfn.Ref(env);
  else
    n->tsfn.Unref(env);
  return env.Undefined();
}

// channelSocketInfo(id) → state, reason, peer pid, counters; undefined if unknown here
Napi::Value ChannelSocketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<SocketChannel> ch = Lookup(env, U32Arg(info, 0));
  if (!ch) return env.Undefined();
  static const char* const kStates[] = {"handshake", "open", "closed"};
  const SocketChannelStats& s = ch->stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("state", Napi::String::New(env, kStates[ch->state()]));
  o.Set("reason", Napi::String::New(env, ch->reason()));
  o.Set("peerPid", Napi::Number::New(env, ch->peer_pid()));
  o.Set("session", Napi::BigInt::New(env, ch->session()));
  o.Set("live", Napi::Number::New(env, static_cast<double>(ch->live())));
  auto set = [&](const char* k, const std::atomic<uint64_t>& v) {
    o.Set(k, Napi::Number::New(env, static_cast<double>(v.load())));
  };
  set("eventsSent", s.events_sent);
  set("eventMessages", s.event_messages);
  set("answers", s.answers);
  set("answerMessages", s.answer_messages);
  set("bytesIn", s.bytes_in);
  set("bytesOut", s.bytes_out);
  set("pendingOut", s.pending_out);
  return o;
}

}  // namespace

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("channelOpenSocket", Napi::Function::New(env, ChannelOpenSocket, "channelOpenSocket"));
  exports.Set("channelConnectSocket", Napi::Function::New(env, ChannelConnectSocket, "channelConnectSocket"));
  exports.Set("channelCloseSocket", Napi::Function::New(env, ChannelCloseSocket, "channelCloseSocket"));
  exports.Set("channelRefSocket", Napi::Function::New(env, ChannelRefSocket, "channelRefSocket"));
  exports.Set("channelSocketInfo", Napi::Function::New(env, ChannelSocketInfo, "channelSocketInfo"));
}

}  // namespace daxmap
