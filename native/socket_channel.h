// A fault channel whose handler is at the other end of a UNIX stream socket (the
// daemon, in daemon mode). Mechanism only: the wire protocol of docs/wire.md and a
// per-channel I/O thread that forwards events, executes answers, returns results.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent.h"
#include "status.h"

namespace daxmap {

// The wire format (docs/wire.md; mirrored by lib/native/wire.ts). Little-endian.
namespace wire {
enum MsgType : uint16_t {
  kMsgEvents = 1,   // client → daemon: N × FaultEvent (32 bytes)
  kMsgAnswers = 2,  // daemon → client: Answer frames (48 bytes) each + payload padded to 8
  kMsgResults = 3,  // client → daemon: N × Result (16 bytes), one per answer, in order
  kMsgHello = 4,    // first message each way: Hello (24 bytes)
  kMsgBye = 5,      // empty: the sender is going away
};
struct Header {
  uint16_t type;
  uint16_t flags;   // reserved: 0 (a non-zero value is refused in version 1)
  uint32_t length;  // body bytes that follow
};
struct Hello {
  uint32_t magic;     // kMagic
  uint32_t version;   // kVersion
  uint32_t pid;       // the sender's process id
  uint32_t reserved;  // 0
  uint64_t session;   // token from the client's control connection; the daemon echoes it
};
struct Result {
  uint64_t tag;    // the answer's tag
  int32_t result;  // 0, -errno, or kResultRaced
  uint32_t zero;
};
static_assert(sizeof(Header) == 8, "wire header is 8 bytes");
static_assert(sizeof(Hello) == 24, "HELLO body is 24 bytes");
static_assert(sizeof(Result) == 16, "a result is 16 bytes");
constexpr uint32_t kMagic = 0x504d5844;  // the bytes "DXMP" in stream order
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxBody = 16u << 20;
}  // namespace wire

struct SocketChannelStats {
  std::atomic<uint64_t> events_sent{0};      // FaultEvents written
  std::atomic<uint64_t> event_messages{0};   // EVENTS messages written
  std::atomic<uint64_t> answers{0};          // answers executed
  std::atomic<uint64_t> answer_messages{0};  // ANSWERS messages read (= RESULTS written)
  std::atomic<uint64_t> bytes_in{0};
  std::atomic<uint64_t> bytes_out{0};
  std::atomic<uint64_t> pending_out{0};  // bytes queued in user space, not yet written
};

class SocketChannel : public Channel {
 public:
  enum State : int { kHandshake = 0, kOpen = 1, kClosed = 2 };
  // Called once, on the I/O thread, when the channel stops for any reason.
  using ClosedFn = std::function<void(const std::string& reason)>;

  // `fd`: a connected SOCK_STREAM socket; it is duplicated (the caller keeps and
  // closes its own). Sends HELLO, registers the channel with the agent and starts
  // the I/O thread.
  static Status Open(Agent* agent, int fd, uint64_t session, ClosedFn on_closed, std::shared_ptr<SocketChannel>* out);
  ~SocketChannel() override;

  // Sends BYE if the socket takes it, stops the I/O thread (joins it) and orphans
  // the channel. Idempotent. Never call it on the I/O thread (the closed callback).
  void Close();

  State state() const { return static_cast<State>(state_.load(std::memory_order_acquire)); }
  // Why it stopped: "<CODE>: <text>"; empty while running.
  std::string reason() const;
  uint32_t peer_pid() const { return peer_pid_.load(); }
  uint64_t session() const { return session_; }
  const SocketChannelStats& stats() const { return stats_; }

 protected:
  // Reader thread: only signals the eventfd, never touches the socket.
  bool Notify() override;

 private:
  SocketChannel(uint32_t id, Agent* agent, int sock, int efd, uint64_t session, ClosedFn on_closed);
  void Loop();
  // Queued events (and notes) into EVENTS messages, up to the high water unless `all`.
  void TakeEvents(bool all = false);
  bool FlushOut(std::string* why);
  bool ReadIn(std::string* why);
  bool Parse(std::string* why);
  bool OnMessage(const wire::Header& h, const uint8_t* body, std::string* why);
  bool OnAnswers(const uint8_t* body, size_t len, std::string* why);
  void Append(uint16_t type, const void* body, size_t len);
  void Finish(const std::string& reason, bool bye);

  Agent* agent_;
  int sock_;
  int efd_;
  uint64_t session_;
  ClosedFn on_closed_;
  std::thread io_;
  std::mutex join_mu_;
  std::atomic<bool> stop_{false};
  std::atomic<int> state_{kHandshake};
  std::atomic<uint32_t> peer_pid_{0};
  mutable std::mutex reason_mu_;
  std::string reason_;
  SocketChannelStats stats_;

  // I/O thread only (and Open, before the thread starts).
  std::vector<uint8_t> out_;
  size_t out_pos_ = 0;
  std::vector<uint8_t> in_;
  size_t in_len_ = 0;
  std::vector<FaultEvent> take_;
  std::vector<int32_t> results_;
  std::vector<uint64_t> tags_;
};

// Connects a SOCK_STREAM socket to a UNIX socket path (close-on-exec). For the
// client side of daemon mode; the caller owns and closes the fd. Never waits: a
// full listen backlog is EAGAIN (retry later).
Status UnixConnect(const std::string& path, int* fd);

}  // namespace daxmap
