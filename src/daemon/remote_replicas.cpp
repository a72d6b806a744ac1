// Remote replicas in the daemon (remote_replicas.h, docs/nbd.md).
#include "remote_replicas.h"

#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <string_view>

#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/nbd/client_device.h"

#include "registry.h"
#include "store_paths.h"

namespace ublkvol::daemon {
namespace {

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

bool has_query(const std::string& uri, std::string_view key) {
  const size_t q = uri.find('?');
  if (q == std::string::npos) {
    return false;
  }
  const std::string query = "&" + uri.substr(q + 1);
  return query.find("&" + std::string(key) + "=") != std::string::npos;
}

// What the operator should check, after libnbd's own words.
Error unreachable(const RemoteReplicaRecord& record, const Error& e, const std::string& what) {
  std::string hint;
  switch (e.errno_value()) {
    case ECONNREFUSED:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
      hint = " (is the export running and reachable from here?)";
      break;
    default:
      if (record.uri.rfind("nbds", 0) == 0) {
        hint = " (for TLS: does the PSK file hold the key of the user in the URI?)";
      }
  }
  return Error(e.errno_value(), what + ": remote replica " + record.uri +
                                    " cannot be reached: " + e.message() + hint);
}

}  // namespace

engine::ReplicaBinding RemoteSlot::binding() const {
  return opened ? opened->binding() : engine::ReplicaBinding{};
}

// Stops a thread: not const in spirit, whatever the pointer allows.
void RemoteSlot::stop() {  // NOLINT(readability-make-member-function-const)
  if (keeper) {
    keeper->stop();
  }
}

std::vector<std::string> RemoteSlot::owed_snapshot_deletes() const {
  if (keeper) {
    return keeper->ledger()->owed();
  }
  if (opened) {
    return opened->ledger()->owed();
  }
  return record.owed_snapshot_deletes;
}

void RemoteSlot::release() {
  record.owed_snapshot_deletes = owed_snapshot_deletes();  // the next open retries them
  stop();
  keeper.reset();
  opened.reset();
}

std::string libnbd_uri(const RemoteReplicaRecord& record) {
  if (record.tls_psk.empty()) {
    return record.uri;
  }
  return record.uri + (record.uri.find('?') == std::string::npos ? "?" : "&") +
         "tls-psk-file=" + record.tls_psk;
}

Status check_remote_record(const RemoteReplicaRecord& record, bool may_name_paths) {
  const std::string& uri = record.uri;
  if (!nbd::is_nbd_uri(uri)) {
    return Error(EINVAL, "'" + uri +
                             "' is not an NBD URI: give nbds://[USER@]HOST[:PORT]/EXPORT (TLS), "
                             "nbd+unix:///EXPORT?socket=PATH, or nbd://HOST[:PORT]/EXPORT with "
                             "insecure_plain");
  }
  for (const char c : uri) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Error(EINVAL, "remote replica URI holds a control character");
    }
  }
  const bool tls = starts_with(uri, "nbds://") || starts_with(uri, "nbds+unix://");
  const bool unix_socket = starts_with(uri, "nbd+unix://") || starts_with(uri, "nbds+unix://");
  if (!tls && !unix_socket && !record.insecure_plain) {
    return Error(EINVAL, "remote replica " + uri +
                             " is plain nbd:// over TCP: its data would cross the network "
                             "unencrypted and unauthenticated. Use nbds:// with a PSK file, or "
                             "ask for plain text explicitly (insecure_plain)");
  }
  if (tls && record.insecure_plain) {
    return Error(EINVAL, "remote replica " + uri +
                             ": insecure_plain and an nbds:// URI (TLS) "
                             "exclude each other");
  }
  if (!record.tls_psk.empty()) {
    if (!tls) {
      return Error(EINVAL, "remote replica " + uri +
                               ": a PSK file is for TLS; use an nbds:// (or nbds+unix://) URI");
    }
    if (record.tls_psk.front() != '/') {
      return Error(EINVAL, "remote replica " + uri + ": the PSK file '" + record.tls_psk +
                               "' must be an absolute path");
    }
    // It goes into the URI's query as it is (libnbd decodes %XX).
    if (record.tls_psk.find_first_of("%&#? ") != std::string::npos) {
      return Error(EINVAL, "remote replica " + uri + ": the PSK file path '" + record.tls_psk +
                               "' holds one of '%&#? ' (not allowed in a URI query)");
    }
    if (has_query(uri, "tls-psk-file")) {
      return Error(EINVAL, "remote replica " + uri +
                               " names a tls-psk-file already; give the PSK file once");
    }
  }
  const bool local_files = !record.tls_psk.empty() || has_query(uri, "tls-psk-file") ||
                           has_query(uri, "tls-certificates") || unix_socket;
  if (local_files && !may_name_paths) {
    // The daemon reads the files (and dials the socket) with its own rights.
    return Error(EPERM, "remote replica " + uri +
                            ": only root may name local files or sockets for the daemon to use "
                            "(PSK file, certificates, Unix socket)");
  }
  return ok_status();
}

Result<std::optional<RemoteReplicaRecord>> parse_remote_params(Params& p, const std::string& key,
                                                               bool required) {
  std::optional<std::string> uri;
  if (required) {
    UBLKVOL_ASSIGN_OR_RETURN(uri, p.string(key));
  } else {
    UBLKVOL_ASSIGN_OR_RETURN(uri, p.optional_string(key));
  }
  UBLKVOL_ASSIGN_OR_RETURN(const auto psk, p.optional_string("tls_psk"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto plain, p.optional_bool("insecure_plain"));
  if (!uri) {
    if (psk || plain) {
      return Error(
          EINVAL,
          "fields 'tls_psk' and 'insecure_plain' are for a remote replica: give '" + key + "' too");
    }
    return std::optional<RemoteReplicaRecord>();
  }
  RemoteReplicaRecord record;
  record.uri = *uri;
  record.tls_psk = psk.value_or("");
  record.insecure_plain = plain.value_or(false);
  return std::optional<RemoteReplicaRecord>(std::move(record));
}

Status check_remote_params(const RemoteReplicaRecord& record, const Params& p) {
  return check_remote_record(record, may_name_any_path(p.peer()));
}

nbd::RemoteReplicaOptions remote_options(const std::string& volume) {
  nbd::RemoteReplicaOptions options;
  options.thread.name = "nbd-" + volume.substr(0, 11);
  // A control call waits for connect + handshake: bounded, so a partitioned
  // host cannot hold the daemon's control loop for long.
  options.device.connect_timeout_ms = 5000;
  return options;
}

Result<std::unique_ptr<nbd::RemoteReplica>> create_remote_replica(const RemoteReplicaRecord& record,
                                                                  const std::string& volume,
                                                                  uint64_t size,
                                                                  uint64_t region_bytes) {
  const std::string what = "volume '" + volume + "'";
  const nbd::RemoteReplicaOptions options = remote_options(volume);
  auto device = nbd::NbdDevice::open(libnbd_uri(record), options.device);
  if (!device.ok()) {
    return unreachable(record, device.error(), what);
  }
  engine::RawReplicaFormatOptions format;
  format.region_bytes = region_bytes;
  format.size_bytes = size;
  Status formatted = engine::format_raw_replica(**device, format);
  if (!formatted.ok()) {
    if (formatted.error().errno_value() == ENOSPC) {
      // The replica needs its metadata (headers, dirty bitmap: about 1 MiB) too.
      return Error(EINVAL, what + ": the export of remote replica " + record.uri + " (" +
                               std::to_string((*device)->size_bytes()) +
                               " bytes) is too small for a replica of " + std::to_string(size) +
                               " bytes plus its metadata: " + formatted.error().message());
    }
    return formatted.error().with_context(what + ": formatting remote replica " + record.uri);
  }
  device->reset();  // RemoteReplica::open connects again, with its own device
  return open_remote_replica(record, volume);
}

Result<std::unique_ptr<nbd::RemoteReplica>> open_remote_replica(const RemoteReplicaRecord& record,
                                                                const std::string& volume) {
  nbd::RemoteReplicaOptions options = remote_options(volume);
  options.ledger = std::make_shared<nbd::SnapshotLedger>(record.owed_snapshot_deletes);
  auto replica = nbd::RemoteReplica::open(libnbd_uri(record), options);
  if (!replica.ok()) {
    return unreachable(record, replica.error(), "volume '" + volume + "'");
  }
  return replica;
}

void start_keeper(RemoteSlot& slot, engine::ReplicatedVolume& engine, unsigned index) {
  if (!slot.opened) {
    return;
  }
  // The keeper's own messages name the URI libnbd dialled.
  slot.keeper = std::make_unique<nbd::RemoteReplicaKeeper>(engine, index, std::move(slot.opened),
                                                           remote_options(engine.info().name));
}

const char* remote_state_name(engine::ReplicaState state, unsigned live_connections) {
  switch (state) {
    case engine::ReplicaState::kInSync:
      return "in_sync";
    case engine::ReplicaState::kRebuilding:
      return "resyncing";
    default:
      // Dropped: the keeper reconnects once no connection is left.
      return live_connections > 0 ? "out" : "connecting";
  }
}

Json remote_json(RemoteSlot& slot, engine::ReplicaState state) {
  Json out = {{"uri", slot.record.uri},
              {"tls", !slot.record.tls_psk.empty()            ? "psk"
                      : slot.record.uri.rfind("nbds", 0) == 0 ? "x509"
                      : slot.record.insecure_plain            ? "insecure_plain"
                                                              : "none"},
              {"tls_psk", slot.record.tls_psk},
              {"state", remote_state_name(state, 0)},
              {"connections", 0},
              {"live_connections", 0},
              {"requests", 0},
              {"failed_requests", 0},
              {"latency_p50_us", 0},
              {"latency_p99_us", 0},
              {"reconnects", 0},
              {"attempts", 0},
              {"retry_delay_ms", 0},
              {"last_error", ""},
              {"owed_snapshot_deletes", slot.owed_snapshot_deletes()},
              {"operator_failed", false}};
  if (!slot.keeper) {
    return out;
  }
  auto stats = slot.keeper->stats();
  std::string last_error = slot.keeper->last_error();
  if (stats.ok()) {
    out["state"] = remote_state_name(state, stats->live_connections);
    out["connections"] = stats->connections;
    out["live_connections"] = stats->live_connections;
    out["requests"] = stats->requests;
    out["failed_requests"] = stats->failed;
    out["latency_p50_us"] = stats->latency_p50_us;
    out["latency_p99_us"] = stats->latency_p99_us;
    out["owed_snapshot_deletes"] = stats->owed_snapshot_deletes;
    if (last_error.empty()) {
      last_error = stats->last_error;
    }
  } else if (last_error.empty()) {
    last_error = stats.error().message();
  }
  if (slot.keeper->held()) {
    out["state"] = "failed";  // by the operator: not reconnected until replica.rebuild
  }
  out["operator_failed"] = slot.keeper->held();
  out["reconnects"] = slot.keeper->reconnects();
  out["attempts"] = slot.keeper->attempts();
  out["retry_delay_ms"] = slot.keeper->delay().count();
  out["last_error"] = last_error;
  return out;
}

}  // namespace ublkvol::daemon

namespace ublkvol::daemon {

Status check_uri_unused(const Registry& r, const std::string& uri) {
  for (const auto& v : r.volumes) {
    bool used = std::any_of(v->pending_remotes.begin(), v->pending_remotes.end(),
                            [&](const auto& p) { return p->record.uri == uri; });
    for (const auto& slot : v->slots) {
      used = used || (slot.remote && slot.remote->record.uri == uri);
    }
    if (used) {
      return Error(EEXIST,
                   "remote replica " + uri + " is already a replica of volume '" + v->name + "'");
    }
  }
  return ok_status();
}

bool hold_remote_replica(VolumeEntry& v, unsigned index) {
  RemoteSlot* slot = v.slots[index].remote.get();
  if (slot == nullptr || !slot->keeper || slot->keeper->held()) {
    return false;
  }
  slot->keeper->hold();
  return true;
}

bool resume_remote_replica(VolumeEntry& v, unsigned index) {
  RemoteSlot* slot = v.slots[index].remote.get();
  if (slot == nullptr || !slot->keeper || !slot->keeper->held()) {
    return false;
  }
  slot->keeper->resume();
  spdlog::info("volume '{}': remote replica {} ({}) back in service: reconnecting, then resync",
               v.name, index, slot->record.uri);
  return true;
}

Json remote_replicas_json(VolumeEntry& v) {
  Json list = Json::array();
  if (v.engine) {
    const engine::VolumeStatus status = v.engine->status();
    for (size_t i = 0; i < v.slots.size() && i < status.replicas.size(); ++i) {
      if (v.slots[i].remote && status.replicas[i].state != engine::ReplicaState::kRemoved) {
        Json entry = remote_json(*v.slots[i].remote, status.replicas[i].state);
        entry["volume"] = v.name;
        entry["index"] = i;
        list.push_back(std::move(entry));
      }
    }
  }
  for (const auto& p : v.pending_remotes) {
    RemoteSlot unreached;
    unreached.record = p->record;
    Json entry = remote_json(unreached, engine::ReplicaState::kFailed);
    entry["volume"] = v.name;
    entry["index"] = nullptr;
    entry["attempts"] = p->attempts();
    entry["last_error"] = p->error();
    list.push_back(std::move(entry));
  }
  return list;
}

Json pending_remotes_json(const VolumeEntry& v) {
  Json list = Json::array();
  for (const auto& p : v.pending_remotes) {
    list.push_back({{"uri", p->record.uri},
                    {"tls_psk", p->record.tls_psk},
                    {"attempts", p->attempts()},
                    {"error", p->error()}});
  }
  return list;
}

void Registry::load_remotes(VolumeEntry& v, const std::vector<RemoteReplicaRecord>& remotes,
                            size_t& next) {
  for (const auto& remote : remotes) {
    auto replica = next < v.slots.size()
                       ? open_remote_replica(remote, v.name)
                       : Result<std::unique_ptr<nbd::RemoteReplica>>(
                             Error(EINVAL, "volume '" + v.name + "' has more than " +
                                               std::to_string(v.slots.size()) + " replicas"));
    if (!replica.ok()) {
      spdlog::error("{}; the volume opens without it", replica.error().message());
      v.pending_remotes.push_back(
          std::make_unique<PendingRemote>(remote, v.name, replica.error().message()));
      continue;
    }
    auto slot = std::make_unique<RemoteSlot>();
    slot->record = remote;
    slot->opened = std::move(*replica);
    v.slots[next++].remote = std::move(slot);
    spdlog::info("volume '{}': remote replica {} connected", v.name, remote.uri);
  }
}

}  // namespace ublkvol::daemon

namespace ublkvol::daemon {

PendingRemote::PendingRemote(RemoteReplicaRecord record_, std::string volume, std::string error)
    : record(std::move(record_)), volume_(std::move(volume)), error_(std::move(error)) {
  thread_ = std::thread([this] { run(); });
}

PendingRemote::~PendingRemote() {
  {
    const std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

std::string PendingRemote::error() const {
  const std::lock_guard lock(mutex_);
  return error_;
}

uint64_t PendingRemote::attempts() const {
  const std::lock_guard lock(mutex_);
  return attempts_;
}

bool PendingRemote::connected() const {
  const std::lock_guard lock(mutex_);
  return opened_ != nullptr;
}

std::unique_ptr<nbd::RemoteReplica> PendingRemote::take() {
  const std::lock_guard lock(mutex_);
  return std::move(opened_);
}

void PendingRemote::run() {
  std::chrono::milliseconds delay(1000);
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    // The backoff: a timed wait on the stop condition.
    if (wake_.wait_for(lock, delay, [this] { return stopping_; })) {
      break;
    }
    ++attempts_;
    lock.unlock();
    auto replica = open_remote_replica(record, volume_);
    lock.lock();
    if (replica.ok()) {
      opened_ = std::move(*replica);
      error_ = "connected; joining the volume (full rebuild)";
      return;
    }
    error_ = replica.error().message();
    delay = std::min(delay * 2, std::chrono::milliseconds(30000));
  }
}

void join_pending_remotes(Registry& r) {
  for (auto& v : r.volumes) {
    if (!v->engine) {
      continue;
    }
    for (size_t i = 0; i < v->pending_remotes.size();) {
      PendingRemote& p = *v->pending_remotes[i];
      auto replica = p.take();
      if (!replica) {
        ++i;
        continue;
      }
      auto slot = std::make_unique<RemoteSlot>();
      slot->record = p.record;
      slot->opened = std::move(replica);
      auto index = v->engine->add_replica(slot->binding());
      if (!index.ok()) {
        // Try again from the start (a new connection, the same backoff).
        const std::string why = index.error().message();
        spdlog::error("volume '{}': remote replica {} answered but cannot join: {}", v->name,
                      p.record.uri, why);
        v->pending_remotes[i] = std::make_unique<PendingRemote>(p.record, v->name, why);
        ++i;
        continue;
      }
      start_keeper(*slot, *v->engine, *index);
      v->slots[*index].remote = std::move(slot);
      spdlog::info("volume '{}': remote replica {} is back as replica {} (full rebuild)", v->name,
                   v->slots[*index].remote->record.uri, *index);
      v->pending_remotes.erase(v->pending_remotes.begin() + static_cast<ptrdiff_t>(i));
      (void)r.save();  // same content; logs a failure itself
    }
  }
}

void save_owed_snapshot_deletes(Registry& r) {
  bool changed = false;
  for (auto& v : r.volumes) {
    for (auto& slot : v->slots) {
      if (!slot.remote) {
        continue;
      }
      std::vector<std::string> owed = slot.remote->owed_snapshot_deletes();
      std::vector<std::string>& saved = slot.remote->record.owed_snapshot_deletes;
      if (owed == saved) {
        continue;
      }
      if (owed.empty()) {
        spdlog::info("volume '{}': remote replica {} owes no snapshot delete any more", v->name,
                     slot.remote->record.uri);
      } else {
        std::string names;
        for (const auto& name : owed) {
          names += (names.empty() ? "" : ", ") + name;
        }
        spdlog::warn(
            "volume '{}': remote replica {} owes the delete of snapshot(s) [{}] (its peer could "
            "not be reached; kept in the state file, retried at every snapshot call and "
            "reconnect)",
            v->name, slot.remote->record.uri, names);
      }
      saved = std::move(owed);
      changed = true;
    }
  }
  if (changed) {
    (void)r.save();  // logs a failure itself; the next change or check tries again
  }
}

}  // namespace ublkvol::daemon
