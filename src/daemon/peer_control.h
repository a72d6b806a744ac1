// The peer control channel of a volume's NBD export (nbd/peer_control.h,
// docs/nbd.md "Snapshots of a remote replica"): started with every TCP
// export that has a PSK file, on the export's port + 1, with the same key.
// A client that holds the export's key may call snapshot.create,
// snapshot.delete and snapshot.list on the exported volume - nothing else,
// no other volume. Allowed requests go to the daemon's own control socket
// (the same handlers as the CLI's; several peers' connections are served
// at once, up to the export's connection limit), so the channel adds
// transport and authentication only.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "ublkvol/daemon/protocol.h"
#include "ublkvol/daemon/state_file.h"
#include "ublkvol/nbd/peer_control.h"

namespace ublkvol::daemon {

struct PeerControl {
  std::unique_ptr<nbd::PeerControlListener> listener;
  // Why it is not running (the export runs without it), or "".
  std::string error;
  // Requests refused by the channel's rule (method or volume).
  std::shared_ptr<std::atomic<uint64_t>> denied = std::make_shared<std::atomic<uint64_t>>(0);
};

// Whether `record` (an export) gets a peer control channel: TCP with a PSK.
bool wants_peer_control(const ExportRecord& record);
// Starts the channel of `volume`'s export `record` (which listens on
// `export_address`, the bound address), forwarding to `control_socket`.
Result<std::unique_ptr<PeerControl>> start_peer_control(const std::string& volume,
                                                        const ExportRecord& record,
                                                        const std::string& export_address,
                                                        const std::string& control_socket);
// The answer line (no '\n') of the channel of `volume` to `line`: a refusal
// (permission_denied) unless the method is snapshot.create/delete/list and
// params.volume is `volume`; else the daemon's own answer.
std::string answer_peer_request(std::string_view line, const std::string& volume,
                                const std::string& control_socket, std::atomic<uint64_t>& denied);
// The export object's "control": null (no channel for this export), or
// {address, error, accepted, tls_failures, requests, refused, denied}.
Json peer_control_json(const PeerControl* control);

}  // namespace ublkvol::daemon
