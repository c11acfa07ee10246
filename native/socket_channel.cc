// The socket channel: events out to the daemon, answers in, results back, all on a
// per-channel I/O thread. The agent's reader only signals an eventfd, so a peer that
// stops reading can never block the reader (which must stay free to read the REMAP
// events that revokes wait for).
#include "socket_channel.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <system_error>

namespace daxmap {

namespace {
// Above this many bytes of unwritten output the I/O thread stops taking events and
// stops reading answers (whose results would only add to it) until the peer reads.
constexpr size_t kHighWater = 1u << 20;
constexpr size_t kReadChunk = 64u << 10;
constexpr size_t kMaxReadPerRound = 1u << 20;  // then flush output before reading more
constexpr size_t kMaxEventsPerMessage = 4096;
constexpr uint64_t kByeWaitNs = 100ull * 1000000ull;

std::string Reason(const char* code, const std::string& text) { return std::string(code) + ": " + text; }

std::string ErrnoReason(int e, const char* what) {
  return std::string(ErrnoName(e)) + ": " + what + ": " + strerror(e);
}

std::string TypeName(uint16_t t) {
  switch (t) {
    case wire::kMsgEvents: return "EVENTS";
    case wire::kMsgAnswers: return "ANSWERS";
    case wire::kMsgResults: return "RESULTS";
    case wire::kMsgHello: return "HELLO";
    case wire::kMsgBye: return "BYE";
    default: return "type " + std::to_string(t);
  }
}
}  // namespace

SocketChannel::SocketChannel(uint32_t id, Agent* agent, int sock, int efd, uint64_t session, ClosedFn on_closed)
    : Channel(id), agent_(agent), sock_(sock), efd_(efd), session_(session), on_closed_(std::move(on_closed)) {}

Status SocketChannel::Open(Agent* agent, int fd, uint64_t session, ClosedFn on_closed,
                           std::shared_ptr<SocketChannel>* out) {
  int type = 0;
  socklen_t tl = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0) {
    return Status::Errno(errno, "open socket channel: fd " + std::to_string(fd) + " is not a socket");
  }
  if (type != SOCK_STREAM) return Status::Errno(EPROTOTYPE, "open socket channel: not a SOCK_STREAM socket");
  struct sockaddr_storage peer;
  socklen_t pl = sizeof peer;
  if (getpeername(fd, reinterpret_cast<struct sockaddr*>(&peer), &pl) != 0) {
    return Status::Errno(errno, "open socket channel: socket is not connected");
  }
  // A duplicate: the caller keeps its descriptor. All I/O uses MSG_DONTWAIT rather
  // than O_NONBLOCK, which would also change the caller's descriptor.
  int sock = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (sock < 0) return Status::Errno(errno, "open socket channel: dup");
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    int e = errno;
    close(sock);
    return Status::Errno(e, "open socket channel: eventfd");
  }
  std::shared_ptr<SocketChannel> ch(
      new SocketChannel(agent->NextChannelId(), agent, sock, efd, session, std::move(on_closed)));
  wire::Hello hello = {wire::kMagic, wire::kVersion, static_cast<uint32_t>(getpid()), 0, session};
  ch->Append(wire::kMsgHello, &hello, sizeof hello);
  agent->AddChannel(ch);
  try {
    ch->io_ = std::thread([c = ch.get()] { c->Loop(); });
  } catch (const std::system_error&) {
    ch->MarkClosed();
    ch->state_.store(kClosed);
    agent->OrphanChannel(ch->id());
    return Status::Errno(EAGAIN, "open socket channel: start the I/O thread");
  }
  *out = std::move(ch);
  return Status::Ok();
}

SocketChannel::~SocketChannel() {
  if (io_.joinable()) {
    if (io_.get_id() == std::this_thread::get_id()) {
      io_.detach();  // cannot happen while the owner holds a reference until Close()
    } else {
      Close();
    }
  }
  if (sock_ >= 0) close(sock_);
  if (efd_ >= 0) close(efd_);
}

void SocketChannel::Close() {
  std::lock_guard<std::mutex> g(join_mu_);
  if (!io_.joinable() || io_.get_id() == std::this_thread::get_id()) return;
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  (void)!write(efd_, &one, sizeof one);
  io_.join();
}

std::string SocketChannel::reason() const {
  std::lock_guard<std::mutex> g(reason_mu_);
  return reason_;
}

bool SocketChannel::Notify() {
  uint64_t one = 1;
  (void)!write(efd_, &one, sizeof one);  // EAGAIN only at a counter of 2^64-2: still readable
  return true;
}

void SocketChannel::Append(uint16_t type, const void* body, size_t len) {
  wire::Header h = {type, 0, static_cast<uint32_t>(len)};
  const uint8_t* hp = reinterpret_cast<const uint8_t*>(&h);
  out_.insert(out_.end(), hp, hp + sizeof h);
  if (len != 0) {
    const uint8_t* bp = static_cast<const uint8_t*>(body);
    out_.insert(out_.end(), bp, bp + len);
  }
  stats_.pending_out.store(out_.size() - out_pos_);
}

void SocketChannel::Loop() {
  pthread_setname_np(pthread_self(), "daxmap-socket");
  std::string why;
  bool bye = false;
  for (;;) {
    if (stop_.load(std::memory_order_acquire)) {
      why = Reason("ECLOSED", "the channel was closed by its owner");
      bye = true;
      break;
    }
    if (state() == kOpen) TakeEvents();
    if (!FlushOut(&why)) break;
    size_t pending = out_.size() - out_pos_;
    bool want_in = pending < kHighWater;
    struct pollfd p[2] = {
        {sock_, static_cast<short>((want_in ? POLLIN : 0) | (pending != 0 ? POLLOUT : 0)), 0},
        {efd_, POLLIN, 0},
    };
    int pr = poll(p, 2, -1);
    if (pr < 0) {
      if (errno == EINTR) continue;
      why = ErrnoReason(errno, "poll the daemon socket");
      break;
    }
    if (p[1].revents & POLLIN) {
      uint64_t v;
      (void)!read(efd_, &v, sizeof v);
    }
    // With input off and output pending, a dead peer shows up as a failed send.
    if (want_in && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (!ReadIn(&why)) break;
    }
  }
  Finish(why, bye);
}

void SocketChannel::TakeEvents(bool all) {
  take_.resize(kMaxEventsPerMessage);
  while (all || out_.size() - out_pos_ < kHighWater) {
    // Take() returns fewer than asked only when the queue is empty; once it is, the
    // next enqueued event notifies again.
    size_t n = Take(take_.data(), kMaxEventsPerMessage);
    if (n == 0) return;
    Append(wire::kMsgEvents, take_.data(), n * sizeof(FaultEvent));
    stats_.events_sent += n;
    stats_.event_messages++;
    if (n < kMaxEventsPerMessage) return;
  }
}

bool SocketChannel::FlushOut(std::string* why) {
  while (out_pos_ < out_.size()) {
    ssize_t n = send(sock_, out_.data() + out_pos_, out_.size() - out_pos_, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      out_pos_ += static_cast<size_t>(n);
      stats_.bytes_out += static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    *why = ErrnoReason(n < 0 ? errno : EPIPE, "write to the daemon");
    return false;
  }
  if (out_pos_ == out_.size()) {
    out_.clear();
    out_pos_ = 0;
    if (out_.capacity() > 4 * kHighWater) out_.shrink_to_fit();
  } else if (out_pos_ >= kHighWater) {
    out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(out_pos_));
    out_pos_ = 0;
  }
  stats_.pending_out.store(out_.size() - out_pos_);
  return true;
}

bool SocketChannel::ReadIn(std::string* why) {
  size_t total = 0;
  for (;;) {
    if (in_.size() - in_len_ < kReadChunk) in_.resize(in_len_ + kReadChunk);
    ssize_t n = recv(sock_, in_.data() + in_len_, in_.size() - in_len_, MSG_DONTWAIT);
    if (n > 0) {
      in_len_ += static_cast<size_t>(n);
      stats_.bytes_in += static_cast<uint64_t>(n);
      total += static_cast<size_t>(n);
      if (!Parse(why)) return false;
      // Let results and events go out before reading more (and stop reading while
      // the peer is not reading what we send).
      if (total >= kMaxReadPerRound || out_.size() - out_pos_ >= kHighWater || stop_.load()) return true;
      continue;
    }
    if (n == 0) {
      *why = in_len_ != 0 ? Reason("EPROTO", "the daemon closed the connection in the middle of a message")
                          : Reason("ECONNRESET", "the daemon closed the connection");
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (in_len_ == 0 && in_.capacity() > 4 * kReadChunk + kMaxReadPerRound) {
        std::vector<uint8_t>().swap(in_);  // a large message went through: give the memory back
      }
      return true;
    }
    *why = ErrnoReason(errno, "read from the daemon");
    return false;
  }
}

bool SocketChannel::Parse(std::string* why) {
  size_t pos = 0;
  bool ok = true;
  while (in_len_ - pos >= sizeof(wire::Header)) {
    wire::Header h;
    memcpy(&h, in_.data() + pos, sizeof h);
    // Everything the header alone can refuse is refused before waiting for the body.
    bool hello_seen = state() != kHandshake;
    if (h.flags != 0) {
      *why = Reason("EPROTO", TypeName(h.type) + " message with flags " + std::to_string(h.flags) +
                                  " (none are defined in version 1)");
      ok = false;
    } else if (h.length > wire::kMaxBody) {
      *why = Reason("EMSGSIZE", TypeName(h.type) + " message of " + std::to_string(h.length) +
                                    " bytes exceeds the limit of " + std::to_string(wire::kMaxBody));
      ok = false;
    } else if (h.type == wire::kMsgEvents || h.type == wire::kMsgResults) {
      *why = Reason("EPROTO", TypeName(h.type) + " messages go from the client to the daemon only");
      ok = false;
    } else if (h.type != wire::kMsgHello && h.type != wire::kMsgAnswers && h.type != wire::kMsgBye) {
      *why = Reason("EPROTO", "unknown message type " + std::to_string(h.type));
      ok = false;
    } else if (!hello_seen && h.type != wire::kMsgHello) {
      *why = Reason("EPROTO", "expected HELLO first, got " + TypeName(h.type));
      ok = false;
    } else if (hello_seen && h.type == wire::kMsgHello) {
      *why = Reason("EPROTO", "a second HELLO");
      ok = false;
    } else if (h.type == wire::kMsgHello && h.length != sizeof(wire::Hello)) {
      *why = Reason("EPROTO", "HELLO body of " + std::to_string(h.length) + " bytes (expected 24)");
      ok = false;
    } else if (h.type == wire::kMsgBye && h.length != 0) {
      *why = Reason("EPROTO", "BYE with a body");
      ok = false;
    } else if (h.type == wire::kMsgAnswers && h.length % 8 != 0) {
      *why = Reason("EPROTO", "ANSWERS body of " + std::to_string(h.length) + " bytes (not a multiple of 8)");
      ok = false;
    }
    if (!ok) break;
    size_t need = sizeof h + h.length;
    if (in_len_ - pos < need) {
      if (in_.size() < pos + need) in_.resize(pos + need);  // room for the whole message
      break;
    }
    if (!OnMessage(h, in_.data() + pos + sizeof h, why)) {
      ok = false;
      break;
    }
    pos += need;
    if (stop_.load(std::memory_order_acquire)) break;
  }
  if (ok && pos != 0) {
    memmove(in_.data(), in_.data() + pos, in_len_ - pos);
    in_len_ -= pos;
  }
  return ok;
}

bool SocketChannel::OnMessage(const wire::Header& h, const uint8_t* body, std::string* why) {
  switch (h.type) {
    case wire::kMsgHello: {
      wire::Hello hello;
      memcpy(&hello, body, sizeof hello);
      if (hello.magic != wire::kMagic) {
        char hex[16];
        snprintf(hex, sizeof hex, "%08x", hello.magic);
        *why = Reason("EPROTO", std::string("bad HELLO magic 0x") + hex);
        return false;
      }
      if (hello.version != wire::kVersion) {
        *why = Reason("EPROTO", "the daemon speaks protocol version " + std::to_string(hello.version) +
                                    ", this client speaks " + std::to_string(wire::kVersion));
        return false;
      }
      if (hello.session != session_) {
        *why = Reason("EPROTO", "the daemon's HELLO names session " + std::to_string(hello.session) +
                                    ", not this channel's " + std::to_string(session_));
        return false;
      }
      peer_pid_.store(hello.pid);
      state_.store(kOpen, std::memory_order_release);
      return true;
    }
    case wire::kMsgAnswers: return OnAnswers(body, h.length, why);
    case wire::kMsgBye: *why = Reason("ECONNRESET", "the daemon said BYE"); return false;
    default:
      *why = Reason("EPROTO", "unexpected message");  // refused by Parse already
      return false;
  }
}

bool SocketChannel::OnAnswers(const uint8_t* body, size_t len, std::string* why) {
  // Check the whole framing first, so a malformed message executes nothing.
  tags_.clear();
  size_t pos = 0;
  while (pos < len) {
    if (len - pos < sizeof(Answer)) {
      *why = Reason("EPROTO", "ANSWERS body ends inside answer frame " + std::to_string(tags_.size()));
      return false;
    }
    Answer a;
    memcpy(&a, body + pos, sizeof a);
    pos += sizeof a;
    size_t padded = (static_cast<size_t>(a.payload) + 7) & ~size_t{7};
    if (padded > len - pos) {
      *why = Reason("EPROTO", "the payload of answer " + std::to_string(tags_.size()) + " runs past its message");
      return false;
    }
    pos += padded;
    tags_.push_back(a.tag);
  }
  results_.assign(tags_.size(), 0);
  long n = agent_->Execute(body, len, results_.data(), results_.size());
  if (n < 0 || static_cast<size_t>(n) != tags_.size()) {
    *why = Reason("EPROTO", "malformed ANSWERS");
    return false;
  }
  stats_.answers += tags_.size();
  stats_.answer_messages++;
  // Everything queued by now goes out before these results, whatever the high water:
  // a ClearReserve's result then follows every note of that reserve on the socket,
  // so the daemon has read them all once it has the result (docs/wire.md).
  TakeEvents(true);
  // One RESULTS message per ANSWERS message, results in answer order.
  wire::Header h = {wire::kMsgResults, 0, static_cast<uint32_t>(tags_.size() * sizeof(wire::Result))};
  const uint8_t* hp = reinterpret_cast<const uint8_t*>(&h);
  out_.insert(out_.end(), hp, hp + sizeof h);
  size_t at = out_.size();
  out_.resize(at + tags_.size() * sizeof(wire::Result));
  for (size_t i = 0; i < tags_.size(); i++) {
    wire::Result r = {tags_[i], results_[i], 0};
    memcpy(out_.data() + at + i * sizeof r, &r, sizeof r);
  }
  stats_.pending_out.store(out_.size() - out_pos_);
  return true;
}

void SocketChannel::Finish(const std::string& reason, bool bye) {
  if (bye) {
    // Best effort, bounded: a peer that does not read does not hold up the close.
    Append(wire::kMsgBye, nullptr, 0);
    uint64_t deadline = MonotonicNs() + kByeWaitNs;
    std::string ignored;
    while (FlushOut(&ignored) && out_pos_ < out_.size()) {
      uint64_t now = MonotonicNs();
      if (now >= deadline) break;
      struct pollfd p = {sock_, POLLOUT, 0};
      poll(&p, 1, static_cast<int>((deadline - now) / 1000000ull) + 1);
    }
  }
  {
    std::lock_guard<std::mutex> g(reason_mu_);
    reason_ = reason;
  }
  state_.store(kClosed, std::memory_order_release);
  // No Notify() after this; then every live event, and every later fault of the
  // channel's regions, is answered with SIGBUS (EFAULT in a system call).
  MarkClosed();
  agent_->OrphanChannel(id());
  // Shut the connection, not just our descriptor: the peer sees EOF even if the
  // caller still holds its own copy.
  shutdown(sock_, SHUT_RDWR);
  close(sock_);
  sock_ = -1;
  stats_.pending_out.store(0);
  ClosedFn fn = std::move(on_closed_);
  on_closed_ = nullptr;
  if (fn) fn(reason);
}

Status UnixConnect(const std::string& path, int* fd) {
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path || path.find('\0') != std::string::npos) {
    return Status::Errno(EINVAL, "connect '" + path + "': not a usable UNIX socket path (at most 107 bytes)");
  }
  memcpy(addr.sun_path, path.data(), path.size());
  // Non-blocking: a full listen backlog makes connect(2) of a blocking AF_UNIX
  // socket wait (on the JS thread that called us). Non-blocking, it fails with
  // EAGAIN at once instead, and the caller retries on a timer (SocketFaultChannel.
  // connectAsync). AF_UNIX connects never return EINPROGRESS.
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return Status::Errno(errno, "connect '" + path + "': socket");
  int r;
  do {
    r = connect(s, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr);
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    int e = errno;
    close(s);
    if (e == EAGAIN) return Status::Errno(EAGAIN, "connect '" + path + "': the listen backlog is full (try again)");
    return Status::Errno(e, "connect '" + path + "'");
  }
  // Back to a blocking descriptor, as the channel was always given one (its own
  // I/O uses MSG_DONTWAIT and poll).
  int fl = fcntl(s, F_GETFL);
  if (fl < 0 || fcntl(s, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    int e = errno;
    close(s);
    return Status::Errno(e, "connect '" + path + "': fcntl");
  }
  *fd = s;
  return Status::Ok();
}

}  // namespace daxmap
