// How the CLI talks to ublk-volumed: one request, one response.
//
// The real implementation (socket_client.cpp) wraps the daemon's client
// library (include/ublkvol/daemon/client.h) over the Unix control socket;
// tests substitute a fake that returns canned responses, so every command's
// output and exit status can be checked without a daemon.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"
#include "ublkvol/daemon/protocol.h"

namespace ublkvol::cli {

using Json = daemon::Json;

class ControlClient {
 public:
  virtual ~ControlClient() = default;

  // Sends `method` with `params` and waits for the answer. An Error means the
  // daemon could not be reached or the connection broke (exit status 3); a
  // refusal by the daemon comes back as a Response with ok == false.
  virtual Result<daemon::Response> call(std::string_view method, const Json& params) = 0;

  // How long call() waits while the daemon sends nothing (0 = forever); a
  // silence that long is an Error with ETIMEDOUT (exit status 7).
  virtual void set_timeout(std::chrono::milliseconds /*timeout*/) {}
};

// Connects to the daemon's socket. Called only by commands that need the
// daemon, so `ublk-volume version` and `completion` work without one.
using ClientFactory =
    std::function<Result<std::unique_ptr<ControlClient>>(const std::string& socket_path)>;

// The real factory: the daemon's client library over `socket_path`.
Result<std::unique_ptr<ControlClient>> connect_to_daemon(const std::string& socket_path);

}  // namespace ublkvol::cli
