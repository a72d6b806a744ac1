// RemoteSnapshotStore: the ReplicaStore a RemoteReplica gives the engine.
// Data, metadata and dirty regions go to its RawReplicaStore on the NBD
// export unchanged; snapshots go to the daemon that serves the export,
// through the export's peer control channel (nbd/peer_control.h): an NBD
// FLUSH of everything the replica wrote, then snapshot.create / delete /
// list on the exported volume, each call bounded by a deadline. Errors name
// the channel, the method and the snapshot (docs/nbd.md).
//
// The engine calls these on the replica's owning thread with the volume's
// writes drained, and makes a snapshot all-or-nothing by deleting it again
// where it was made when another replica fails. What cannot be settled at
// once is recorded in the SnapshotLedger (remote_replica.h) and never
// shown: a delete (or a roll back) that cannot reach the peer, and a create
// whose answer was lost (the peer may have made it). Every later snapshot
// call through this replica, and every (re)connect, first retries them.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/nbd/peer_control.h"
#include "ublkvol/nbd/remote_replica.h"

namespace ublkvol::nbd {

class RemoteSnapshotStore final : public engine::ReplicaStore {
 public:
  RemoteSnapshotStore(engine::RawReplicaStore& raw, std::string uri,
                      std::chrono::milliseconds timeout, std::shared_ptr<SnapshotLedger> ledger);

  [[nodiscard]] std::string_view name() const override { return raw_.name(); }
  [[nodiscard]] uint64_t size_bytes() const override { return raw_.size_bytes(); }
  void submit(engine::ReplicaIo& io) override { raw_.submit(io); }
  void kick() override { raw_.kick(); }
  unsigned poll(bool wait) override { return raw_.poll(wait); }
  [[nodiscard]] unsigned in_flight() const override { return raw_.in_flight(); }
  [[nodiscard]] int completion_fd() const override { return raw_.completion_fd(); }
  [[nodiscard]] const engine::ReplicaMeta& meta() const override { return raw_.meta(); }
  Status write_meta(const engine::ReplicaMeta& meta) override { return raw_.write_meta(meta); }
  [[nodiscard]] uint64_t region_bytes() const override { return raw_.region_bytes(); }
  [[nodiscard]] std::vector<uint8_t> dirty_regions() const override { return raw_.dirty_regions(); }
  Status clear_dirty() override { return raw_.clear_dirty(); }
  Status mark_all_dirty() override { return raw_.mark_all_dirty(); }

  Status create_snapshot(std::string_view snapshot) override;
  Status delete_snapshot(std::string_view snapshot) override;
  Status revert_snapshot(std::string_view snapshot) override;
  Status clone_snapshot(std::string_view snapshot, std::string_view clone,
                        const engine::ReplicaMeta& clone_meta) override;
  Status delete_clone(std::string_view clone) override;
  // The peer's list without what the ledger owes (the last list it gave
  // when it cannot be reached now).
  [[nodiscard]] std::vector<std::string> list_snapshots() const override;

  // Retries the ledger's deletes (on the owning thread); an error names
  // the first that still fails.
  Status settle();

 private:
  // The peer's answer (ok or a refusal), or a transport error.
  struct Answer;
  Result<Answer> call(const std::string& method, const std::string& snapshot) const;
  Status flush();
  // Deletes `snapshot` on the peer; absent counts as deleted.
  Status delete_on_peer(const std::string& snapshot);

  engine::RawReplicaStore& raw_;
  std::string uri_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<SnapshotLedger> ledger_;
  mutable std::vector<std::string> last_list_;
};

}  // namespace ublkvol::nbd
