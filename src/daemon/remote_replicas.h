// Remote replicas in the daemon (issue 16): a volume's replica on an NBD
// export - another host's `ublk-volume volume export`, nbdkit, qemu-nbd -
// holding the RawReplicaStore layout (docs/nbd.md). A ReplicaSlot with
// `remote` set is one; its `store` stays nullptr.
//
// Life of a remote slot:
//   - created (volume.create, replica.add/replace): the URI is checked,
//     the export formatted for the volume's size and dirty-region size,
//     then opened (RemoteReplica) and bound into the engine;
//   - once the engine runs, a RemoteReplicaKeeper owns the RemoteReplica:
//     a replica the engine dropped (deadline, reset, server error) is
//     reconnected with backoff and resynced from dirty regions, or rebuilt
//     in full when its generation does not allow that (the engine decides;
//     an older generation is never trusted as in sync);
//   - daemon start: reopened from state.json; one that cannot be reached
//     then waits in VolumeEntry::pending_remotes and joins (full rebuild)
//     once it answers;
//   - closed: keeper stopped before the engine closes, replica destroyed
//     after.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/daemon/state_file.h"
#include "ublkvol/nbd/remote_replica.h"

namespace ublkvol::daemon {

class Registry;
struct VolumeEntry;

struct RemoteSlot {
  RemoteReplicaRecord record;
  // Before the engine opened: the connected replica, handed to the keeper.
  std::unique_ptr<nbd::RemoteReplica> opened;
  // While the engine runs.
  std::unique_ptr<nbd::RemoteReplicaKeeper> keeper;

  // The binding for the engine (opened or the keeper's current replica is
  // not reachable from here: only `opened`).
  [[nodiscard]] engine::ReplicaBinding binding() const;
  // Stops the keeper's thread (before the engine closes); idempotent.
  void stop();
  // Closes the replica (keeper, thread, connections); the record stays, so
  // a closed volume still has (and the state file keeps) the replica, and
  // takes the owed snapshot deletes along.
  void release();
  // The snapshot deletes its peer owes now: the live ledger's while the
  // replica is open, else the record's.
  [[nodiscard]] std::vector<std::string> owed_snapshot_deletes() const;
};

// A remote replica that could not be reached when the daemon started: not
// in the engine; kept in state.json and shown with its error. A thread
// tries to connect with backoff (1 s doubling to 30 s); once it did, the
// daemon's periodic check (join_pending_remotes) adds the replica to the
// engine - a full rebuild, as the engine's add_replica() does: without the
// replica at open, the engine has no generation of it to resync from.
class PendingRemote {
 public:
  PendingRemote(RemoteReplicaRecord record, std::string volume, std::string error);
  ~PendingRemote();  // stops the thread
  PendingRemote(const PendingRemote&) = delete;
  PendingRemote& operator=(const PendingRemote&) = delete;

  const RemoteReplicaRecord record;
  [[nodiscard]] std::string error() const;
  [[nodiscard]] uint64_t attempts() const;
  // Whether it connected (take() would give the replica).
  [[nodiscard]] bool connected() const;
  // The connected replica (then the thread has ended), or nullptr.
  std::unique_ptr<nbd::RemoteReplica> take();

 private:
  void run();

  const std::string volume_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::string error_;
  uint64_t attempts_ = 0;
  std::unique_ptr<nbd::RemoteReplica> opened_;
  std::thread thread_;
};
// Adds the remote replicas that connected since (the event loop, each store check).
void join_pending_remotes(Registry& r);
// Saves the state file when a remote replica's owed snapshot deletes
// changed since the last save (after snapshot calls, each store check), so
// a restart still retries them; logs what changed.
void save_owed_snapshot_deletes(Registry& r);

// The URI libnbd opens: the record's URI with tls-psk-file=PATH added.
std::string libnbd_uri(const RemoteReplicaRecord& record);
// Refusals of a new remote replica's URI and credentials, each naming the
// URI: not an NBD URI, plain nbd:// over TCP without insecure_plain, a PSK
// file with a non-TLS scheme or a relative path, both a PSK file and a
// tls-psk-file in the URI. `may_name_paths`: the peer may make the daemon
// read local files (PSK, certificates) or dial Unix sockets.
Status check_remote_record(const RemoteReplicaRecord& record, bool may_name_paths);
// Reads a remote replica's request fields: `key` (the URI), "tls_psk" and
// "insecure_plain"; nullopt if `key` is absent and not `required` (then the
// other two must be absent too). The caller checks them after Params::finish
// (an unknown field is refused first): check_remote_params().
Result<std::optional<RemoteReplicaRecord>> parse_remote_params(Params& p, const std::string& key,
                                                               bool required);
// check_remote_record() with the peer's right to name local paths.
Status check_remote_params(const RemoteReplicaRecord& record, const Params& p);
// EEXIST if a volume of `r` already has a replica (or a pending one) on `uri`.
Status check_uri_unused(const Registry& r, const std::string& uri);
// The device and thread options the daemon opens remote replicas with.
nbd::RemoteReplicaOptions remote_options(const std::string& volume);
// Formats the export for a new replica of `volume` (`size` bytes, dirty
// regions of `region_bytes`) and opens it. Refusals name the URI and say
// what is wrong: unreachable, too small, TLS failed.
Result<std::unique_ptr<nbd::RemoteReplica>> create_remote_replica(const RemoteReplicaRecord& record,
                                                                  const std::string& volume,
                                                                  uint64_t size,
                                                                  uint64_t region_bytes);
// Opens the existing replica on the export (daemon start, reconnects). Its
// snapshot ledger starts with the record's owed deletes (retried at once).
Result<std::unique_ptr<nbd::RemoteReplica>> open_remote_replica(const RemoteReplicaRecord& record,
                                                                const std::string& volume);
// Starts the keeper of `slot` (engine index `index`) once the engine runs.
void start_keeper(RemoteSlot& slot, engine::ReplicatedVolume& engine, unsigned index);

// replica.fail of a remote replica: its keeper stops reconnecting it (an
// operator's fail stands, as for a local replica); true if replica `index`
// of `v` is remote and was not held yet (undo with resume_remote_replica
// if the engine refuses the fail). Called before the engine fails it.
bool hold_remote_replica(VolumeEntry& v, unsigned index);
// replica.rebuild of a remote replica the operator failed: its keeper
// reconnects it now (a dirty-region resync when its generation allows,
// else a full rebuild); false if it is not one (the engine rebuilds).
bool resume_remote_replica(VolumeEntry& v, unsigned index);

// replica.add with a URI (methods_remote_replica.cpp).
Result<Json> add_remote_replica(Registry& r, const std::string& volume,
                                const RemoteReplicaRecord& record);

// The "remote" object of a replica in volume.show (docs/control-protocol.md):
// uri, tls, link state, connections, latency, reconnects, last error.
// `state` is the engine's state of the replica.
Json remote_json(RemoteSlot& slot, engine::ReplicaState state);
// One entry per remote replica of `v` (in the engine or pending): what
// stats (and so Prometheus) and daemon.status list: volume, index (null
// while pending), uri, state, connections, latency, reconnects, last error.
Json remote_replicas_json(VolumeEntry& v);
// volume.show's "pending_remotes": [{uri, tls_psk, error}].
Json pending_remotes_json(const VolumeEntry& v);
// The remote state the operator sees: in_sync, resyncing, out, connecting.
const char* remote_state_name(engine::ReplicaState state, unsigned live_connections);

}  // namespace ublkvol::daemon
