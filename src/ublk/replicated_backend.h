// ReplicatedBackend: ublkvol-serve's "replicated" backend. One volume kept on
// 1..3 replicas, each a DBS volume inside its own store file:
//
//   replica file (FileDevice, O_DIRECT, io_uring)
//     -> CountingDevice        counts what reaches the file (device flushes)
//     -> dbs::Store            thin volumes, metadata commits at FLUSH
//     -> DbsReplicaStore       the replica = the DBS volume `volume_name`
//     -> CountingReplicaStore  counts what the engine sends to the replica
//     -> StoreThread           one per replica file, owns all of the above
//   ReplicatedVolume on top (the engine; queue threads run its controller).
//
// Files that do not exist yet (or are empty) are created, formatted and given
// a fresh replica volume - never when recovering: a restarted server must find
// every replica it had, so a missing file is an error then. A file that exists
// but is not a store is refused with DBS's reason and left untouched.
//
// After a crash (SIGKILL) the next open() recovers each store's last commit
// and the engine resyncs the regions the replicas' dirty bitmaps name, so the
// volume is consistent before ublk re-attaches. The counters are per-replica,
// single-writer (the store thread) relaxed atomics read by the stats writer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/volume.h"

#include "serve_config.h"

namespace ublkvol::ublk {

// What reached one replica, for the stats file and the e2e tests.
struct ReplicaCounters {
  // Requests the engine handed to the replica (ReplicaStore::submit).
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> fua_writes{0};
  std::atomic<uint64_t> flushes{0};
  std::atomic<uint64_t> discards{0};
  std::atomic<uint64_t> write_zeroes{0};
  // Requests DBS sent to the store file (metadata included).
  std::atomic<uint64_t> device_writes{0};
  std::atomic<uint64_t> device_flushes{0};
  std::atomic<uint64_t> device_discards{0};
};

struct ReplicaReport {
  std::string file;
  engine::ReplicaState state = engine::ReplicaState::kStale;
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t fua_writes = 0;
  uint64_t flushes = 0;
  uint64_t discards = 0;
  uint64_t write_zeroes = 0;
  uint64_t device_writes = 0;
  uint64_t device_flushes = 0;
  uint64_t device_discards = 0;
  // DBS journal commits since the store was opened.
  uint64_t store_commits = 0;
};

class ReplicatedBackend final : public engine::Volume {
 public:
  // Opens (or, unless `recovering`, creates) every replica of `config` and
  // the engine on top. config.size_bytes 0 takes the size from the existing
  // replicas; otherwise existing replicas must have exactly that size.
  static Result<std::unique_ptr<ReplicatedBackend>> open(const ServeConfig& config,
                                                         bool recovering);

  // Closes (as close()) if that has not happened yet.
  ~ReplicatedBackend() override;
  ReplicatedBackend(const ReplicatedBackend&) = delete;
  ReplicatedBackend& operator=(const ReplicatedBackend&) = delete;

  [[nodiscard]] const engine::VolumeInfo& info() const override;
  Result<std::unique_ptr<engine::VolumeQueue>> open_queue(unsigned index) override;

  [[nodiscard]] engine::VolumeStatus status() const;
  // Per replica, in --replica-file order. Control path (asks store threads
  // for the DBS commit counts).
  [[nodiscard]] std::vector<ReplicaReport> replica_reports() const;

  // Clean shutdown, after every queue is closed: the engine checkpoints
  // (flush, clear dirty bitmaps), each store commits, threads stop.
  Status close();

  struct Impl;

 private:
  explicit ReplicatedBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::ublk
