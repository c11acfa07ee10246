// What Node does not expose of UNIX sockets: peer credentials of a connected one
// (SO_PEERCRED), which the daemon checks before serving a client; and one datagram
// to a datagram socket, which is how daxmapd tells systemd it is ready (sd_notify).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "binding/common.h"

namespace daxmap {

namespace {

// peerCred(fd) → { pid, uid, gid }
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  struct ucred cred = {};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    ThrowErrno(env, errno, "read the peer credentials of socket " + std::to_string(fd));
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cred.pid));
  o.Set("uid", Napi::Number::New(env, cred.uid));
  o.Set("gid", Napi::Number::New(env, cred.gid));
  return o;
}

// unixDatagramSend(path, data): one datagram to the socket at `path`; a leading '@'
// names the abstract namespace (as $NOTIFY_SOCKET does).
Napi::Value UnixDatagramSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsTypedArray()) {
    Napi::TypeError::New(env, "EINVAL: unixDatagramSend(path: string, data: Uint8Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Uint8Array data = info[1].As<Napi::Uint8Array>();
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    ThrowErrno(env, EINVAL, "use '" + path + "' as a UNIX socket address");
    return env.Undefined();
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  socklen_t len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size());
  if (path[0] == '@')
    addr.sun_path[0] = '\0';  // abstract: no trailing NUL counted
  else
    len += 1;
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowErrno(env, errno, "create a UNIX datagram socket");
    return env.Undefined();
  }
  ssize_t n = sendto(fd, data.Data(), data.ByteLength(), MSG_NOSIGNAL, reinterpret_cast<struct sockaddr*>(&addr), len);
  int err = errno;
  close(fd);
  if (n < 0) {
    ThrowErrno(env, err, "send a datagram to '" + path + "'");
    return env.Undefined();
  }
  return env.Undefined();
}

}  // namespace

void InitNet(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("unixDatagramSend", Napi::Function::New(env, UnixDatagramSend, "unixDatagramSend"));
}

}  // namespace daxmap
