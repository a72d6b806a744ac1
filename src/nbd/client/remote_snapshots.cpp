// RemoteSnapshotStore (remote_snapshots.h, docs/nbd.md "Snapshots of a
// remote replica").
#include "remote_snapshots.h"

#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <utility>

#include "ublkvol/daemon/protocol.h"

namespace ublkvol::nbd {

// NOLINTNEXTLINE(bugprone-exception-escape): false positive in nlohmann::json's noexcept move ctor
struct RemoteSnapshotStore::Answer {
  bool ok = false;
  daemon::Json result;
  daemon::ErrorCode code = daemon::ErrorCode::kInternal;
  std::string message;
};

RemoteSnapshotStore::RemoteSnapshotStore(engine::RawReplicaStore& raw, std::string uri,
                                         std::chrono::milliseconds timeout,
                                         std::shared_ptr<SnapshotLedger> ledger)
    : raw_(raw), uri_(std::move(uri)), timeout_(timeout), ledger_(std::move(ledger)) {}

Result<RemoteSnapshotStore::Answer> RemoteSnapshotStore::call(const std::string& method,
                                                              const std::string& snapshot) const {
  UBLKVOL_ASSIGN_OR_RETURN(const PeerControlTarget target, peer_control_target(uri_));
  const std::string what = "remote replica " + target.address() + " (export " + target.export_name +
                           "): " + method + (snapshot.empty() ? "" : " " + snapshot);
  daemon::Json params = {{"volume", target.export_name}};
  if (!snapshot.empty()) {
    params["name"] = snapshot;
  }
  std::string line = daemon::to_line(daemon::make_request(1, method, std::move(params)));
  line.pop_back();  // '\n'
  auto reply = peer_control_exchange(target, line, timeout_);
  if (!reply.ok()) {
    return reply.error().with_context(what);
  }
  auto response = daemon::parse_response(*reply);
  if (!response.ok()) {
    return response.error().with_context(what);
  }
  Answer a;
  a.ok = response->ok;
  a.result = std::move(response->result);
  a.code = response->code;
  a.message = what + ": the peer refused: " + response->message;
  return a;
}

Status RemoteSnapshotStore::flush() {
  // Everything the replica acknowledged is on the peer's volume before its
  // snapshot is taken; FLUSH makes it durable there too.
  struct Done {
    bool done = false;
    int result = 0;
  } done;
  engine::ReplicaIo io;
  io.op = engine::ReplicaOp::kFlush;
  io.user_data = &done;
  io.on_complete = [](engine::ReplicaIo& request, int result) {
    auto* d = static_cast<Done*>(request.user_data);
    d->done = true;
    d->result = result;
  };
  raw_.submit(io);
  raw_.kick();
  while (!done.done) {
    // The device fails the flush after its command timeout at the latest.
    raw_.poll(true);
  }
  if (done.result < 0) {
    return Error(-done.result, "remote replica " + uri_ + ": NBD FLUSH before the snapshot failed");
  }
  return ok_status();
}

Status RemoteSnapshotStore::delete_on_peer(const std::string& snapshot) {
  auto answer = call("snapshot.delete", snapshot);
  if (!answer.ok()) {
    ledger_->owe(snapshot);
    return answer.error().with_context("recorded, retried at the next snapshot call or reconnect");
  }
  if (!answer->ok && answer->code != daemon::ErrorCode::kNotFound) {
    ledger_->owe(snapshot);
    return daemon::error_for(answer->code, answer->message +
                                               " (recorded, retried at the next snapshot call "
                                               "or reconnect)");
  }
  ledger_->settled(snapshot);
  std::erase(last_list_, snapshot);
  return ok_status();
}

Status RemoteSnapshotStore::settle() {
  Status first = ok_status();
  for (const std::string& snapshot : ledger_->owed()) {
    Status st = delete_on_peer(snapshot);
    if (st.ok()) {
      spdlog::info("remote replica {}: owed delete of snapshot '{}' done", uri_, snapshot);
    } else if (first.ok()) {
      first = st;
    }
  }
  return first;
}

Status RemoteSnapshotStore::create_snapshot(std::string_view snapshot) {
  const std::string name(snapshot);
  if (ledger_->owes(name)) {
    // A leftover of the same name (an earlier create whose answer was lost,
    // or a failed roll back) goes first.
    UBLKVOL_TRY(delete_on_peer(name));
  }
  (void)settle();  // others: best effort, they stay recorded
  UBLKVOL_TRY(flush());
  auto answer = call("snapshot.create", name);
  if (!answer.ok()) {
    // The request may have reached the peer and its answer been lost: the
    // snapshot may exist there. Owed, so it is never left behind unrecorded.
    ledger_->owe(name);
    return answer.error();
  }
  if (!answer->ok) {
    return daemon::error_for(answer->code, answer->message);  // the peer made nothing
  }
  last_list_.push_back(name);
  return ok_status();
}

Status RemoteSnapshotStore::delete_snapshot(std::string_view snapshot) {
  return delete_on_peer(std::string(snapshot));
}

std::vector<std::string> RemoteSnapshotStore::list_snapshots() const {
  auto answer = call("snapshot.list", "");
  if (answer.ok() && answer->ok && answer->result.contains("snapshots") &&
      answer->result["snapshots"].is_array()) {
    last_list_.clear();
    for (const auto& s : answer->result["snapshots"]) {
      if (s.is_object() && s.contains("name") && s["name"].is_string()) {
        last_list_.push_back(s["name"].get<std::string>());
      }
    }
  }
  std::vector<std::string> names;
  for (const auto& name : last_list_) {
    if (!ledger_->owes(name)) {
      names.push_back(name);
    }
  }
  return names;
}

Status RemoteSnapshotStore::revert_snapshot(std::string_view snapshot) {
  return Error(ENOTSUP, "remote replica " + uri_ + ": revert to snapshot " + std::string(snapshot) +
                            " is not supported with a remote replica (remove the remote replica, "
                            "revert, add it again)");
}

Status RemoteSnapshotStore::clone_snapshot(std::string_view snapshot, std::string_view clone,
                                           const engine::ReplicaMeta& /*clone_meta*/) {
  return Error(ENOTSUP, "remote replica " + uri_ + ": clone " + std::string(clone) +
                            " of snapshot " + std::string(snapshot) +
                            " is not supported with a remote replica");
}

Status RemoteSnapshotStore::delete_clone(std::string_view /*clone*/) {
  return ok_status();  // clone_snapshot never makes one
}

}  // namespace ublkvol::nbd
