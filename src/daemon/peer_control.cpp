// The peer control channel of an export (peer_control.h).
#include "peer_control.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <string_view>

#include "ublkvol/daemon/client.h"

namespace ublkvol::daemon {
namespace {

constexpr std::array<std::string_view, 3> kAllowed = {"snapshot.create", "snapshot.delete",
                                                      "snapshot.list"};
// The daemon's own socket answers at once; a snapshot drains the volume's
// writes first, which takes well under this.
constexpr std::chrono::milliseconds kForwardTimeout{30'000};

std::string line_of(const Json& response) {
  std::string line = to_line(response);
  if (!line.empty() && line.back() == '\n') {
    line.pop_back();
  }
  return line;
}

}  // namespace

bool wants_peer_control(const ExportRecord& record) {
  return !record.tls_psk.empty() && record.listen.rfind("unix:", 0) != 0;
}

std::string answer_peer_request(std::string_view line, const std::string& volume,
                                const std::string& control_socket, std::atomic<uint64_t>& denied) {
  ParsedRequest parsed = parse_request(line);
  if (!parsed.request) {
    return line_of(make_error_response(parsed.id, parsed.code, parsed.error->message()));
  }
  const Request& request = *parsed.request;
  const bool allowed =
      std::find(kAllowed.begin(), kAllowed.end(), request.method) != kAllowed.end();
  const auto target = request.params.find("volume");
  const bool same_volume =
      target != request.params.end() && target->is_string() && target->get<std::string>() == volume;
  if (!allowed || !same_volume) {
    ++denied;
    const std::string why = !allowed ? "method '" + request.method + "' is not allowed"
                                     : "params.volume must be the exported volume '" + volume + "'";
    spdlog::warn("peer control of volume '{}': refused: {}", volume, why);
    return line_of(make_error_response(
        request.id, ErrorCode::kPermissionDenied,
        "peer control channel of the export of volume '" + volume + "': " + why +
            " (only snapshot.create, snapshot.delete and snapshot.list on that volume)"));
  }
  auto client = Client::connect(control_socket, kForwardTimeout);
  if (!client.ok()) {
    return line_of(make_error_response(request.id, client.error()));
  }
  client->set_timeout(kForwardTimeout);
  auto response = client->call(request.method, request.params);
  if (!response.ok()) {
    return line_of(make_error_response(request.id, response.error()));
  }
  if (response->ok) {
    return line_of(make_ok_response(request.id, std::move(response->result)));
  }
  return line_of(make_error_response(request.id, response->code, response->message));
}

Result<std::unique_ptr<PeerControl>> start_peer_control(const std::string& volume,
                                                        const ExportRecord& record,
                                                        const std::string& export_address,
                                                        const std::string& control_socket) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string listen,
                           nbd::peer_control_listen_address(export_address));
  auto control = std::make_unique<PeerControl>();
  nbd::PeerControlListenerOptions options;
  options.listen = listen;
  options.psk_file = record.tls_psk;
  options.max_connections = record.max_connections;  // the export's own limit
  auto denied = control->denied;
  UBLKVOL_ASSIGN_OR_RETURN(
      control->listener,
      nbd::PeerControlListener::start(
          options, [volume, control_socket, denied](std::string_view line, const std::string&) {
            return answer_peer_request(line, volume, control_socket, *denied);
          }));
  return control;
}

Json peer_control_json(const PeerControl* control) {
  if (control == nullptr) {
    return nullptr;
  }
  if (!control->listener) {
    return {{"address", nullptr}, {"error", control->error}};
  }
  const nbd::PeerControlStats s = control->listener->stats();
  return {{"address", control->listener->address()},
          {"error", ""},
          {"accepted", s.accepted},
          {"tls_failures", s.tls_failures},
          {"requests", s.requests},
          {"refused", s.refused},
          {"denied", control->denied->load()}};
}

}  // namespace ublkvol::daemon
