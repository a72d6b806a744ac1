// ublkvol-serve's configuration: parsing of sizes, building the backend
// volume, and the checks that turn bad parameters into clear messages before
// anything touches the kernel. Kept apart from main() so host tests cover it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/ublk/device_options.h"
#include "ublkvol/ublk/recovery_record.h"

namespace ublkvol::reactor {
class ReactorSet;
}

namespace ublkvol::ublk {

// "4096", "64K", "512M", "1G", "2GiB", "1T" (binary units). Refuses empty,
// negative, fractional, unknown suffixes and overflow.
Result<uint64_t> parse_size(const std::string& text);

// The replicated backend's limits (the engine takes up to 4; the test server
// is meant for 1..3 DBS replicas, one per store file).
inline constexpr unsigned kMaxServeReplicas = 3;

struct ServeConfig {
  std::string backend = "memory";  // null | memory | replicated
  // Replicated: 0 = take the size from the existing replica files.
  uint64_t size_bytes = 0;
  uint32_t block_size = 4096;
  std::string backing_file;  // memory only
  // Replicated only: one DBS store file per replica (created and formatted
  // if missing or empty, unless recovering), the store size for new files
  // (0: derived from the volume size) and the volume's name in each store.
  std::vector<std::string> replica_files;
  uint64_t store_size_bytes = 0;
  std::string volume_name = "ublkvol";
  // Replicated only, not when recovering: take a DBS snapshot of this name
  // of the volume in every replica before serving (tests: reads then fall
  // through the snapshot's layer).
  std::string snapshot_name;
  // Replicated only: every write is sent with FUA (durable on completion;
  // slow). Off (default): write-back - a completed write survives a killed
  // server anyway (DBS journals new mappings before completing a write) and
  // is durable against power loss after the next FLUSH.
  bool write_through = false;
  // --queue-loop: kExternal runs every queue on one SingleThreadQueueHost
  // thread. device.queue_loop / queue_host are set once that host exists.
  QueueLoop queue_loop = QueueLoop::kThread;
  // --reactors: the set the queues (external) and, for replicated, the
  // replica stores run on (store i on for_store(i)); set once it runs.
  // nullptr: a thread per store.
  reactor::ReactorSet* reactors = nullptr;
  DeviceOptions device;
};

// Everything that can be checked without a kernel.
Status validate_serve_config(const ServeConfig& config);

// The backend volume `config` describes (null and memory; the replicated
// backend is opened by open_replicated_backend, replicated_backend.h).
Result<std::unique_ptr<engine::Volume>> make_backend(const ServeConfig& config);

// The backend part of a recovery record, and back.
RecoveryRecord make_recovery_record(const ServeConfig& config, uint32_t dev_id, unsigned queues,
                                    unsigned depth);
Result<ServeConfig> config_from_record(const RecoveryRecord& record, const ServeConfig& base);

}  // namespace ublkvol::ublk
