// RemoteReplica: a replica of a volume on another host - the RawReplicaStore
// layout (generation + dirty-region bitmap in-band, raw_replica_store.h) on
// an NBD export (NbdDevice, client_device.h), owned by a StoreThread (its
// own thread, or a reactor's) like a local store. To the engine it is just
// one more ReplicaBinding: deadlines, write-set removal, dirty-region
// resync and generation checks are the engine's, exactly as for local
// replicas (docs/nbd.md).
//
// RemoteReplicaKeeper: brings a failed remote replica back. A background
// thread checks the volume's replica state; while it is failed (or stale),
// it reconnects with exponential backoff (initial, doubling, capped) and
// hands the fresh store to the engine with replace_replica(), which resyncs
// the dirty regions when the generation on the export allows and rebuilds
// in full otherwise - an older generation is never trusted as in sync.
//
// Stale writes: a server that stalled (stopped, hung disk) still holds the
// commands of the dropped connection and executes them when it resumes.
// Cutting that connection does not stop it (the commands are in its socket
// buffer or already running), and a write landing after the resync copied
// its region would leave the replica silently different. So while the old
// connection is alive with commands in flight, or cut but not yet closed
// by the server (the device drains it: the server closes it once it has
// read our EOF after the last complete command), the keeper does not
// reconnect: it waits, for at most `stalled_wait`; after that (a host
// that vanished leaves an idle TCP connection that never dies by itself)
// it abandons the connection and goes on, noting it in last_error(). NBD
// has no per-connection fencing; docs/nbd.md.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/nbd/client_device.h"

namespace ublkvol::nbd {

// Snapshot deletes a remote replica owes its peer (docs/nbd.md "Snapshots
// of a remote replica"): a delete or roll back that could not reach the
// peer, a create whose answer was lost. Shared by every RemoteReplica the
// keeper opens on the same export, so a reconnect retries them. The
// daemon persists owed() in its state file (docs/nbd.md) and seeds a new
// ledger with it after a restart, so the deletes are still retried.
class SnapshotLedger {
 public:
  SnapshotLedger() = default;
  explicit SnapshotLedger(const std::vector<std::string>& owed) : owed_(owed.begin(), owed.end()) {}
  void owe(const std::string& snapshot) {
    const std::lock_guard lock(mutex_);
    owed_.insert(snapshot);
  }
  void settled(const std::string& snapshot) {
    const std::lock_guard lock(mutex_);
    owed_.erase(snapshot);
  }
  [[nodiscard]] bool owes(const std::string& snapshot) const {
    const std::lock_guard lock(mutex_);
    return owed_.contains(snapshot);
  }
  [[nodiscard]] std::vector<std::string> owed() const {
    const std::lock_guard lock(mutex_);
    return {owed_.begin(), owed_.end()};
  }

 private:
  mutable std::mutex mutex_;
  std::set<std::string> owed_;
};

struct RemoteReplicaOptions {
  NbdDeviceOptions device;
  engine::StoreThreadOptions thread;
  // The I/O deadline of the volume the replica joins
  // (ReplicatedVolumeOptions::io_deadline). Unless device.command_timeout_ms
  // is set, the device cuts its connections when a command is older than
  // half of it - before the engine gives up on the request and hands its
  // buffer back (client_device.h). 0: no cut.
  std::chrono::milliseconds io_deadline{8000};
  // Snapshots: the deadline of one call on the peer's control channel
  // (connect, TLS, the peer's snapshot, the answer).
  std::chrono::milliseconds control_timeout{10000};
  // Created by open() when null; the keeper passes its replica's on.
  std::shared_ptr<SnapshotLedger> ledger;
};

// Formats a fresh replica on the export at `uri` (synchronous).
Status format_remote_replica(const std::string& uri, const engine::RawReplicaFormatOptions& format,
                             const NbdDeviceOptions& device = {});

class RemoteReplica {
 public:
  // Connects, opens the replica written by format_remote_replica() and
  // starts its owner. Errors name the URI.
  static Result<std::unique_ptr<RemoteReplica>> open(const std::string& uri,
                                                     const RemoteReplicaOptions& options = {});
  // Detaches and stops the owner, then closes the store and the device.
  // The volume must no longer use it (removed, replaced or closed).
  ~RemoteReplica();
  RemoteReplica(const RemoteReplica&) = delete;
  RemoteReplica& operator=(const RemoteReplica&) = delete;

  [[nodiscard]] engine::ReplicaBinding binding();
  [[nodiscard]] const std::string& uri() const { return uri_; }
  [[nodiscard]] engine::RawReplicaStore& store() { return *store_; }
  [[nodiscard]] const std::shared_ptr<SnapshotLedger>& ledger() const { return ledger_; }

  struct Stats {
    std::string uri;
    unsigned connections = 0;
    unsigned live_connections = 0;
    uint64_t requests = 0;  // completed
    uint64_t failed = 0;
    uint64_t latency_p50_us = 0;  // bucket upper bounds (latency_histogram.h)
    uint64_t latency_p99_us = 0;
    std::string last_error;
    // Snapshot deletes owed to the peer (SnapshotLedger).
    std::vector<std::string> owed_snapshot_deletes;
  };
  // Read on the owning thread.
  Result<Stats> stats();
  // Cuts the connections and stops draining them (on the owning thread):
  // commands in flight fail at the next poll, new ones at once. The server
  // may still execute what it had received (see the keeper's comment).
  Status disconnect();
  // Commands at the server, live connections, and cut connections the
  // server has not closed yet (read now: what arrived on them is drained
  // first); on the owning thread.
  struct Pending {
    unsigned in_flight = 0;
    unsigned live_connections = 0;
    unsigned draining = 0;
  };
  Result<Pending> pending();

 private:
  RemoteReplica() = default;

  std::string uri_;
  std::unique_ptr<NbdDevice> device_;
  std::unique_ptr<engine::RawReplicaStore> store_;
  // What the engine binds: store_ plus snapshots on the peer.
  std::unique_ptr<engine::ReplicaStore> front_;
  std::shared_ptr<SnapshotLedger> ledger_;
  std::unique_ptr<engine::StoreThread> thread_;
};

struct ReconnectBackoff {
  std::chrono::milliseconds initial{100};
  std::chrono::milliseconds max{30000};
  // How long to wait for a stalled server to answer the dropped
  // connection's commands before cutting it (see above).
  std::chrono::milliseconds stalled_wait{60000};
};

class RemoteReplicaKeeper {
 public:
  // Watches replica `index` of `volume`, currently `replica` (the keeper
  // owns it from now on). Both must outlive the keeper... except `replica`,
  // which the keeper replaces and destroys as it reconnects.
  RemoteReplicaKeeper(engine::ReplicatedVolume& volume, unsigned index,
                      std::unique_ptr<RemoteReplica> replica, RemoteReplicaOptions options,
                      ReconnectBackoff backoff = {});
  // Stops the background thread; the current replica stays alive until the
  // keeper is destroyed (close or remove the replica from the volume first).
  ~RemoteReplicaKeeper();
  RemoteReplicaKeeper(const RemoteReplicaKeeper&) = delete;
  RemoteReplicaKeeper& operator=(const RemoteReplicaKeeper&) = delete;

  // Successful reconnects (replace_replica calls) and attempts so far.
  [[nodiscard]] uint64_t reconnects() const;
  [[nodiscard]] uint64_t attempts() const;
  // The current backoff delay.
  [[nodiscard]] std::chrono::milliseconds delay() const;
  [[nodiscard]] std::string last_error() const;
  // Stats of the current replica.
  Result<RemoteReplica::Stats> stats();
  // The owed snapshot deletes, shared by every replica the keeper opens.
  [[nodiscard]] const std::shared_ptr<SnapshotLedger>& ledger() const { return options_.ledger; }
  // Stops the background thread (idempotent); call before closing the volume.
  void stop();
  // The operator failed the replica (replica.fail): it stays out - no
  // reconnect, no replace - until resume(), as a failed local replica stays
  // out until it is rebuilt. Set before failing it in the engine.
  void hold();
  // Reconnects the held replica at once (then as after any failure: a
  // dirty-region resync when its generation allows it).
  void resume();
  [[nodiscard]] bool held() const;

 private:
  void run();
  // One attempt; true if the replica was replaced.
  bool try_reconnect();

  engine::ReplicatedVolume& volume_;
  unsigned index_;
  RemoteReplicaOptions options_;
  ReconnectBackoff backoff_;
  std::string uri_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  bool held_ = false;
  // Taken around the held check and replace_replica(), and by hold(): once
  // hold() returned, no replace can follow.
  std::mutex replace_mutex_;
  bool kicked_ = false;  // resume(): check now, not after the delay
  std::unique_ptr<RemoteReplica> replica_;
  std::chrono::milliseconds delay_;
  uint64_t reconnects_ = 0;
  uint64_t attempts_ = 0;
  std::string last_error_;
  // When the keeper first found the old connection stalled (0: not now).
  std::chrono::steady_clock::time_point stalled_since_{};
  std::thread thread_;
};

}  // namespace ublkvol::nbd
