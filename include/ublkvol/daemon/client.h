// A small synchronous client for the ublk-volumed control socket
// (protocol.h, docs/control-protocol.md). Used by the `ublk-volume` CLI and
// the daemon's tests.
//
//   auto client = Client::connect("/run/ublk-volumed/control.sock");
//   if (!client.ok()) { print(client.error().message()); return 1; }
//   auto response = client->call("volume.show", {{"name", "vol0"}});
//   if (!response.ok())      -> transport failure (daemon gone, bad reply)
//   else if (!response->ok)  -> the daemon refused: response->code, ->message
//   else                     -> response->result
//
// Transport errors are ublkvol::Error values whose message is complete and
// meant for the user, e.g.
//   "cannot connect to /run/ublk-volumed/control.sock: No such file or
//    directory (is ublk-volumed running?)".
// One Client is one connection; calls on it are sequential (not thread-safe).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/daemon/protocol.h"

namespace ublkvol::daemon {

class Client {
 public:
  // Connects to the daemon's socket. Errors name the path and a likely
  // cause (daemon not running, not root / not in the ublk-volume group).
  // The connect itself gives up after `timeout` (a daemon that is stopped
  // with a full listen backlog never accepts): ETIMEDOUT.
  static Result<Client> connect(const std::string& socket_path = kDefaultSocketPath,
                                std::chrono::milliseconds timeout = kDefaultTimeout);

  static constexpr std::chrono::milliseconds kDefaultTimeout{60'000};

  Client(Client&&) noexcept = default;
  Client& operator=(Client&&) noexcept = default;

  // How long a call waits while the daemon sends nothing (default 60 s;
  // zero = forever): the clock restarts with every byte received, so a large
  // response that keeps arriving is never cut off. Long operations
  // (rebuilds) are asynchronous on the daemon side, so this much silence
  // means the daemon is stuck or stopped: ETIMEDOUT, "ublk-volumed at PATH
  // did not answer within N s".
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

  // Sends one request with a fresh numeric id and waits for its response.
  Result<Response> call(std::string_view method, Json params = Json::object());

  // Like call(), but a refusal becomes an Error too (error_for(): the code's
  // kind and errno, message = the daemon's message), for callers that only
  // want the result.
  Result<Json> call_result(std::string_view method, Json params = Json::object());

  // Low level, for tests and tools: write raw bytes / read one line
  // (without its '\n'; error EMSGSIZE beyond max_bytes, ECONNRESET on EOF).
  // Responses have no size limit (a list of thousands of volumes is several
  // MiB): call() reads with kUnlimited.
  static constexpr size_t kUnlimited = static_cast<size_t>(-1);
  Status send_raw(std::string_view bytes);
  Result<std::string> read_line(size_t max_bytes = kUnlimited);

  [[nodiscard]] const std::string& socket_path() const { return path_; }

 private:
  Client(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

  UniqueFd fd_;
  std::string path_;
  std::string buffer_;  // bytes received after the last line returned
  uint64_t next_id_ = 1;
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
};

}  // namespace ublkvol::daemon
