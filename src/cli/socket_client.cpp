// The real ControlClient: the daemon's synchronous client over the socket.
#include <memory>

#include "ublkvol/daemon/client.h"

#include "control_client.h"

namespace ublkvol::cli {
namespace {

class SocketClient final : public ControlClient {
 public:
  explicit SocketClient(daemon::Client client) : client_(std::move(client)) {}

  Result<daemon::Response> call(std::string_view method, const Json& params) override {
    return client_.call(method, params);
  }

  // Every method returns promptly (rebuilds run in the background and are
  // polled), so a long silence means the daemon is stuck (--timeout).
  void set_timeout(std::chrono::milliseconds timeout) override { client_.set_timeout(timeout); }

 private:
  daemon::Client client_;
};

}  // namespace

Result<std::unique_ptr<ControlClient>> connect_to_daemon(const std::string& socket_path) {
  UBLKVOL_ASSIGN_OR_RETURN(auto client, daemon::Client::connect(socket_path));
  return std::unique_ptr<ControlClient>(std::make_unique<SocketClient>(std::move(client)));
}

}  // namespace ublkvol::cli
