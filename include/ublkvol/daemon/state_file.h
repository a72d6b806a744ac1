// DaemonState: what ublk-volumed must remember across restarts, kept in
// <state_dir>/state.json:
//
//   {"format": "ublk-volumed-state", "version": 1,
//    "stores":  [{"name": "a", "path": "/dev/nvme0n1", "uuid": "..."}],
//    "volumes": [{"name": "v", "size_bytes": 1073741824, "stores": ["a", "b"],
//                 "min_replicas": 1,
//                 "exposed": {"dev_id": 0, "queues": 2, "queue_depth": 128}}]}
//
// Version 2 (written only when a volume has remote replicas; version 1
// files load unchanged) adds to a volume
//   "remote_replicas": [{"uri": "nbds://a@hostB:10809/v", "tls_psk": "/etc/psk",
//                        "insecure_plain": false}]
// and, in a remote replica while its peer owes snapshot deletes,
//   "owed_snapshot_deletes": ["s1"]
// (a daemon that predates it refuses the file rather than forget them).
//
// Everything else (data, snapshots, replica generations, dirty bitmaps) lives
// in the stores themselves; this file only says which stores to open, which
// volumes have replicas where, and which were exposed (so a restart
// re-attaches to their /dev/ublkbN).
//
// Crash safety: save_state() writes state.json.tmp, fsyncs it, renames it
// over state.json and fsyncs the directory. A crash at any point leaves
// either the old or the new file under the real name; a leftover .tmp is
// ignored by load_state() and replaced by the next save. A state.json that is
// present but unreadable is an error (never silently treated as empty: that
// would forget every volume).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"

namespace ublkvol::daemon {

inline constexpr const char* kStateFileName = "state.json";

struct StoreRecord {
  std::string name;
  std::string path;
  std::string uuid;  // the DBS superblock uuid (older files: a random id, replaced at start)
  bool operator==(const StoreRecord&) const = default;
};

struct ExposeRecord {
  uint32_t dev_id = 0;
  unsigned queues = 1;
  unsigned queue_depth = 128;
  bool operator==(const ExposeRecord&) const = default;
};

// An NBD export of the volume (volume.export; src/daemon/exports.cpp): re-made
// at start. TLS files are paths the daemon reads at each start.
struct ExportRecord {
  std::string listen;  // "HOST:PORT", "[IPV6]:PORT" or "unix:/path"
  std::string tls_psk;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
  bool insecure_plain = false;
  unsigned max_connections = 16;
  bool operator==(const ExportRecord&) const = default;
};

// A replica on another host: an NBD export holding the RawReplicaStore
// layout (docs/nbd.md), kept by the daemon's remote slots
// (src/daemon/remote_replicas.h). Only file paths are kept, never a key.
struct RemoteReplicaRecord {
  std::string uri;              // nbd://, nbds://, nbd+unix://, nbds+unix:// (libnbd's rules)
  std::string tls_psk;          // PSK file (username:hexkey lines) for an nbds URI, or ""
  bool insecure_plain = false;  // the operator asked for plain nbd:// over TCP
  // Snapshots the peer still has to delete (nbd::SnapshotLedger: a roll
  // back or delete that could not reach it); retried after a restart.
  // Written as "owed_snapshot_deletes" only when there is one.
  std::vector<std::string> owed_snapshot_deletes;
  bool operator==(const RemoteReplicaRecord&) const = default;
};

struct VolumeRecord {
  std::string name;
  uint64_t size_bytes = 0;
  // Stores holding a replica, in the engine's replica order.
  std::vector<std::string> stores;
  unsigned min_replicas = 1;
  std::optional<ExposeRecord> exposed;
  // Written as "export" only when set (files without it are older or unexported).
  std::optional<ExportRecord> exported;
  // Written as "remote_replicas" only when set; a file with any is version 2
  // (an older daemon refuses it rather than drop the remote replicas).
  // They follow `stores` in the engine's replica order.
  std::vector<RemoteReplicaRecord> remotes;
  bool operator==(const VolumeRecord&) const = default;
};

struct DaemonState {
  std::vector<StoreRecord> stores;
  std::vector<VolumeRecord> volumes;
  bool operator==(const DaemonState&) const = default;
};

std::string state_to_json(const DaemonState& state);
// The "export" object of a volume record (export_record.cpp).
nlohmann::json export_record_to_json(const ExportRecord& record);
Result<ExportRecord> export_record_from_json(const nlohmann::json& object, const std::string& what);
// One entry of a volume's "remote_replicas" (remote_record.cpp).
nlohmann::json remote_record_to_json(const RemoteReplicaRecord& record);
Result<RemoteReplicaRecord> remote_record_from_json(const nlohmann::json& object,
                                                    const std::string& what);
// `origin` names the document in messages.
Result<DaemonState> state_from_json(const std::string& text, const std::string& origin);

// Reads <dir>/state.json; a missing file is an empty state.
Result<DaemonState> load_state(const std::string& dir);

// The steps of save_state(), for crash tests: a hook returning false stops
// the save right there, as if the process died (the files stay as they are).
enum class SaveStep {
  kTmpHalfWritten,  // half of the new content is in state.json.tmp
  kTmpWritten,      // all of it, not yet fsynced
  kTmpSynced,       // fsynced, not yet renamed
  kRenamed,         // renamed over state.json, directory not yet fsynced
};
using SaveHook = std::function<bool(SaveStep)>;

// Writes the state crash-safely (see above). With a hook that stops it, the
// result is an Error (ECANCELED) naming the step.
Status save_state(const std::string& dir, const DaemonState& state, const SaveHook& hook = {});

}  // namespace ublkvol::daemon
