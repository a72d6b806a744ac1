// RawReplicaStore: one replica kept directly on a BlockDevice (file, block
// device, memory device, fault-injecting wrapper).
//
// Layout (all 4 KiB blocks):
//   block 0, 1      two copies of the header (ReplicaMeta + geometry, CRC32C);
//                   updates alternate between them with an increasing
//                   sequence number, so a torn header write leaves the other
//                   copy valid;
//   block 2 ..      dirty-region bitmap (1 bit per region_bytes of data);
//   data_offset ..  the replica's data (1 MiB aligned), replica offset 0 maps
//                   to data_offset.
//
// Dirty marking (replica_store.h): a write/discard/write-zeroes whose regions
// are not yet marked waits while the bitmap block(s) are written with FUA.
// All requests that arrive while one bitmap write is in flight share the next
// one (group commit), so under load the cost is at most one metadata write
// per newly-dirtied region set, and nothing once the regions are marked.
// The bitmap is written straight from its in-memory copy (no copy); it may
// then carry bits of a later commit too, which only ever marks more.
//
// No snapshots (ENOTSUP): snapshots need DBS.
#pragma once

#include <cstdint>
#include <memory>

#include "ublkvol/common/result.h"
#include "ublkvol/dbs/block_device.h"
#include "ublkvol/engine/replica_store.h"

namespace ublkvol::engine {

struct RawReplicaFormatOptions {
  // Dirty-region size: a power of two >= 64 KiB.
  uint64_t region_bytes = 1U << 20U;
  // Replica size (0: everything after the metadata). Rounded down to 4 KiB.
  uint64_t size_bytes = 0;
  // Zero the data area (write-zeroes) so that fresh replicas agree. Only
  // skip it for devices known to read as zeros (a new sparse file).
  bool zero_data = true;
};

// Writes a fresh replica (meta().fresh, generation 0) on `device`.
// Synchronous; the caller owns the device and must be its only user.
Status format_raw_replica(dbs::BlockDevice& device, const RawReplicaFormatOptions& options = {});

class RawReplicaStore;

// Opens the replica on `device` (which must outlive the store). Errors name
// the device and the problem (bad magic, both header copies corrupt, ...).
Result<std::unique_ptr<RawReplicaStore>> open_raw_replica(dbs::BlockDevice& device);

class RawReplicaStore final : public ReplicaStore {
 public:
  ~RawReplicaStore() override;
  RawReplicaStore(const RawReplicaStore&) = delete;
  RawReplicaStore& operator=(const RawReplicaStore&) = delete;

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

  // Bitmap writes issued so far (for tests and benchmarks).
  [[nodiscard]] uint64_t bitmap_commits() const;
  [[nodiscard]] uint64_t data_offset() const;

  struct Impl;

 private:
  explicit RawReplicaStore(std::unique_ptr<Impl> impl);
  friend Result<std::unique_ptr<RawReplicaStore>> open_raw_replica(dbs::BlockDevice& device);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::engine
