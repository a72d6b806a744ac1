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
  uint64_t chunks_done = 0;     // including the skipped ones
  uint64_t chunks_skipped = 0;  // below resume_offset: restored before an interruption
  uint64_t bytes_written = 0;   // by this run
};

struct RestoreOptions {
  uint64_t rate_bytes_per_sec = 0;  // 0 = unthrottled
  std::function<void(const RestoreProgress&)> on_progress;
  std::stop_token stop;
  // Resume: the chunks below this volume offset are durable in the target
  // volume already (a checkpoint said so) and are not read again. Chunks
  // above it may have been written too: writing them again writes the same
  // bytes, so a restore may repeat any part of itself.
  uint64_t resume_offset = 0;
  // Called after every `checkpoint_chunks` chunks, and after the last one,
  // with the offset below which every chunk has been written: the caller
  // makes those writes durable (a store commit) and then records the offset
  // as its next resume_offset. An error stops the restore.
  uint32_t checkpoint_chunks = 16;
  std::function<Status(uint64_t next_offset)> checkpoint;
};

// Stops at the first chunk that fails its checks, with an error naming the
// backup and the volume offset; what was written before is the caller's to
// remove (restore_to_new_volume deletes the volume).
Result<Manifest> run_restore(Repository& repo, std::string_view backup, VolumeWriter& writer,
                             const RestoreOptions& options);

}  // namespace ublkvol::backup
