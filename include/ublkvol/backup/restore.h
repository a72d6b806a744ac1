// run_restore: writes a backup's data into a volume, checking every chunk
// (CRCs and its SHA-256 name) before any byte of it is written. Holes are
// not written: the target volume must read zeros there (a new volume).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <stop_token>
#include <string_view>

#include "ublkvol/backup/format.h"
#include "ublkvol/backup/repository.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup {

class VolumeWriter {
 public:
  virtual ~VolumeWriter() = default;
  // Writes `data` (4 KiB aligned, a multiple of 4 KiB long) at `offset`.
  virtual Status write(uint64_t offset, std::span<const std::byte> data) = 0;
};

struct RestoreProgress {
  uint64_t chunks_total = 0;
  uint64_t chunks_done = 0;
  uint64_t bytes_written = 0;
};

struct RestoreOptions {
  uint64_t rate_bytes_per_sec = 0;  // 0 = unthrottled
  std::function<void(const RestoreProgress&)> on_progress;
  std::stop_token stop;
};

// Stops at the first chunk that fails its checks, with an error naming the
// backup and the volume offset; what was written before is the caller's to
// remove (restore_to_new_volume deletes the volume).
Result<Manifest> run_restore(Repository& repo, std::string_view backup, VolumeWriter& writer,
                             const RestoreOptions& options);

}  // namespace ublkvol::backup
