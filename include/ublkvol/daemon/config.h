// DaemonConfig: ublk-volumed's configuration file (JSON), its defaults and
// validation. docs/daemon.md lists every key.
//
//   {"state_dir": "/var/lib/ublk-volumed", "queues": 2, "io_deadline_ms": 8000}
//
// A missing default file (kDefaultConfigPath) means all defaults (the daemon
// runs without a config file, and logs so); a missing file that was named
// explicitly (--config) is an error. A present file must be a JSON object
// whose keys are all known, each once, and of the right type: anything else
// is refused with an error naming the key, so a typo never silently falls
// back to a default.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"

namespace ublkvol::daemon {

inline constexpr const char* kDefaultConfigPath = "/etc/ublk-volumed/config.json";

struct DaemonConfig {
  // Where state.json lives (created if missing, mode 0700).
  std::string state_dir = "/var/lib/ublk-volumed";
  // The control socket (its directory is created if missing, mode 0755).
  std::string control_socket = "/run/ublk-volumed/control.sock";
  // Group that may use the socket besides root; ignored if it does not exist.
  std::string socket_group = "ublk-volume";
  // Reactors (docs/architecture.md "Reactors"): N = the stores (store i on
  // reactor i mod N) and the exposed devices' queues (on the reactors of the
  // volume's replicas) all run on N pinned reactors; 0 (the default) = one
  // reactor per CPU of the daemon's affinity mask; unset (config `null`) =
  // the older model, a thread per store and per ublk queue.
  std::optional<unsigned> reactors = 0;
  // Adaptive polling of the reactors (ReactorOptions::poll_in_flight): keep
  // polling up to this many microseconds for completions in flight instead
  // of sleeping. Unset (the default): 50 with at least 4 CPUs in the
  // daemon's affinity mask, else 0 (off). At most reactor_poll_max_percent
  // of each reactor's time goes to it.
  std::optional<unsigned> reactor_poll_us;
  unsigned reactor_poll_max_percent = 50;
  // Defaults for volume.expose (per request overridable). 0 (only with
  // reactors, the default there) = one queue per reactor; without reactors
  // the default is 1.
  unsigned queues = 0;
  unsigned queue_depth = 128;
  // A replica request older than this fails the replica.
  uint64_t io_deadline_ms = 8000;
  // Rebuild/resync throttle in MiB/s (0 = unthrottled).
  uint64_t rebuild_mb_per_s = 0;
  // Share of the time (percent) a rebuild takes while user I/O runs; it
  // copies at full speed when the volume is idle (docs/engine.md "Rebuild
  // pacing"). 100 = never yield.
  unsigned rebuild_busy_percent = 20;
  // Scheduled scrub of every volume (docs/operations.md "Verify and scrub"): a
  // background verify every scrub_interval_s seconds (0 = off, the default),
  // throttled to scrub_mb_per_s MiB/s (0 = unthrottled), rewriting
  // mismatches from the majority if scrub_repair.
  uint64_t scrub_interval_s = 0;
  uint64_t scrub_mb_per_s = 64;
  bool scrub_repair = false;
  // Default min_replicas of new volumes (capped at their replica count).
  unsigned min_replicas = 1;
  // Expose devices with ublk user recovery, so a restarted daemon re-attaches
  // while applications only see a pause.
  bool recoverable_devices = true;
  // Optional ublk features (ublk::optional_features(): "UPDATE_SIZE",
  // "QUIESCE") the daemon must not use even when the kernel offers them.
  std::vector<std::string> ublk_features_off;
  // Send every write to the replicas with FUA (each completes after a flushed
  // DBS commit and a device flush). Off (default): a completed write already
  // survives a daemon crash (SIGKILL) without it, because the stores journal
  // new block mappings before a write completes (dbs::OpenOptions::
  // journal_mappings); only a power cut loses writes not yet FLUSHed, as on a
  // disk with a volatile cache. On: also power-cut safe without FLUSHes, for
  // applications that never flush, at ~40% of sequential write throughput
  // (docs/daemon.md "Write-back and write-through").
  bool write_through = false;
  // Zero copy (docs/zero-copy.md): create devices with UBLK_F_AUTO_BUF_REG |
  // UBLK_F_USER_COPY when the kernel has both (Linux >= 6.16) and the queues
  // run on reactors; each request is then served on its own pages whenever
  // all of the volume's replicas are DBS stores on the queue's reactor, by
  // copy otherwise. Threads mode (no `reactors`) and older kernels: copy mode.
  bool zero_copy = true;
  // How each store makes the data of a newly mapped block durable before the
  // journal record that maps it (dbs::OpenOptions::mapping_data_order):
  // "flush" (default) - one device flush per group commit; "fua" - every
  // such data write FUA. "fua" can be cheaper on a raw device with a
  // volatile cache and native FUA; on a file or a device without a volatile
  // cache "flush" costs nothing. docs/dbs.md "Power-cut ordering".
  std::string store_data_order = "flush";
  // dbs::FileDeviceOptions::submit_batch of every store device: the store
  // thread enters the kernel once this many requests are prepared (0 = only
  // when it polls). 4 suits virtio/NVMe disks (docs/performance.md).
  unsigned store_submit_batch = 4;
  // spdlog level: trace, debug, info, warn, error, critical, off.
  std::string log_level = "info";
  // Directories in which clients other than root (and the daemon's own uid)
  // may name store paths (store.add); absolute, no '..'. Empty (default):
  // only root may add stores by path. docs/operations.md "Privileges".
  std::vector<std::string> store_dirs;
  // Control socket limits (control_server.h, docs/operations.md "Limits").
  unsigned max_connections = 256;
  unsigned root_reserved_connections = 8;
  unsigned max_connections_per_uid = 32;
  uint64_t request_timeout_ms = 10'000;
  uint64_t idle_timeout_ms = 300'000;
};

// Parses a config document. `origin` names it in messages ("config.json").
Result<DaemonConfig> parse_config(std::string_view text, const std::string& origin);
// Loads `path`. A missing file gives the defaults unless `must_exist`
// (then it is an error naming the path: an explicitly given --config).
Result<DaemonConfig> load_config(const std::string& path, bool must_exist = false);
// Checks ranges (queues 1..60, queue_depth 1..4096, io_deadline_ms 100..3600000,
// min_replicas 1..4, store_submit_batch 0..256, absolute paths, socket path
// length, log level, store_data_order flush|fua, store_dirs absolute without
// '..', max_connections 1..65536, root_reserved_connections <
// max_connections, max_connections_per_uid >= 1, request_timeout_ms and
// idle_timeout_ms 100..86400000).
Status validate_config(const DaemonConfig& config);

// The reactors' adaptive polling time for a daemon with `cpus` CPUs in its
// affinity mask: config.reactor_poll_us, or when unset 50 us with >= 4 CPUs
// and 0 (off) with fewer.
std::chrono::microseconds reactor_poll_in_flight(const DaemonConfig& config, size_t cpus);

}  // namespace ublkvol::daemon
