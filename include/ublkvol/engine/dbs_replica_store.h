// DbsReplicaStore: one replica kept as a volume inside a Direct Block Store
// (include/ublkvol/dbs/store.h). Several DbsReplicaStores (replicas of
// different volumes) may share one dbs::Store; all of them and the Store
// belong to the same StoreThread.
//
// Mapping onto DBS:
//   data requests    StoreIo (lives in ReplicaIo::store_scratch), FUA and
//                    FLUSH with DBS semantics (flush = data flush + metadata
//                    commit + device flush)
//   dirty bitmap     the volume's DBS dirty bitmap. A write to a region whose
//                    bit is not yet committed waits while the bit is set and a
//                    FLUSH StoreIo commits it (group commit: one flush in
//                    flight at a time; requests arriving meanwhile share the
//                    next). DBS overwrites blocks the volume already holds in
//                    place without a commit, so without this an overwrite
//                    could land before its region is marked.
//   ReplicaMeta      a 4 KiB companion volume "<volume>.engine-meta" holding
//                    the encoded ReplicaMeta (written + committed); the
//                    current generation is also set on the volume itself
//                    (Store::set_generation) for tools.
//   snapshots        DBS snapshots of the volume, by name.
#pragma once

#include <memory>
#include <string>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/replica_store.h"

namespace ublkvol::engine {

class DbsReplicaStore;

// Creates the volume `name` (and its metadata volume) in `store` as a fresh
// replica of `size_bytes`. Synchronous; call on the store's owning thread.
Status create_dbs_replica(dbs::Store& store, const std::string& name, uint64_t size_bytes);

// Opens the replica `name` in `store` (which must outlive it).
Result<std::unique_ptr<DbsReplicaStore>> open_dbs_replica(dbs::Store& store,
                                                          const std::string& name);

class DbsReplicaStore final : public ReplicaStore {
 public:
  ~DbsReplicaStore() override;
  DbsReplicaStore(const DbsReplicaStore&) = delete;
  DbsReplicaStore& operator=(const DbsReplicaStore&) = delete;

  [[nodiscard]] std::string_view name() const override;
  [[nodiscard]] uint64_t size_bytes() const override;
  void submit(ReplicaIo& io) override;
  void kick() override;
  unsigned poll(bool wait) override;
  [[nodiscard]] unsigned in_flight() const override;
  [[nodiscard]] int completion_fd() const override;
  [[nodiscard]] const ReplicaMeta& meta() const override;
  Status write_meta(const ReplicaMeta& meta) override;
  [[nodiscard]] uint64_t region_bytes() const override;
  [[nodiscard]] std::vector<uint8_t> dirty_regions() const override;
  Status clear_dirty() override;
  Status create_snapshot(std::string_view snapshot) override;
  Status delete_snapshot(std::string_view snapshot) override;
  Status revert_snapshot(std::string_view snapshot) override;
  // A DBS clone of the snapshot named `clone`, plus its metadata volume.
  Status clone_snapshot(std::string_view snapshot, std::string_view clone,
                        const ReplicaMeta& clone_meta) override;
  [[nodiscard]] std::vector<std::string> list_snapshots() const override;
  Status delete_clone(std::string_view clone) override;
  Status mark_all_dirty() override;
  // The blocks mapped in the volume's head or the snapshots under it
  // (dbs::Store::mapped_ranges); free space = the store's free extents.
  [[nodiscard]] Result<std::vector<std::pair<uint64_t, uint64_t>>> mapped_ranges() const override;
  [[nodiscard]] Result<Space> space() const override;

  struct Impl;

 private:
  explicit DbsReplicaStore(std::unique_ptr<Impl> impl);
  friend Result<std::unique_ptr<DbsReplicaStore>> open_dbs_replica(dbs::Store& store,
                                                                   const std::string& name);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::engine
