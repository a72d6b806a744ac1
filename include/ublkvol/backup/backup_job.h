// run_backup: one backup of a snapshot into a repository - full, or
// incremental from a parent backup - throttled, stoppable, resumable.
//
// What is read comes from the caller as ranges computed from the store's
// layer maps (dbs::Store::snapshot_mapped_ranges / changed_ranges): a full
// backup reads the chunks holding mapped blocks, an incremental one only the
// chunks holding a block changed since the parent's snapshot; every other
// chunk's entry is taken over from the parent's manifest without reading
// anything. A chunk that is read is read whole (its mapped blocks), so each
// manifest stays self-contained (docs/backup-format.md).
//
// Crash safety: chunks are put before the partial manifest that names them
// (every `checkpoint_chunks` chunks read), the complete manifest last, then
// the partial is removed. Run again with the same name after a crash or a
// stop: it resumes after the partial's next_offset.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/backup/format.h"
#include "ublkvol/backup/repository.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup {

using ByteRanges = std::vector<std::pair<uint64_t, uint64_t>>;  // (offset, length), sorted

class SnapshotReader {
 public:
  virtual ~SnapshotReader() = default;
  // Reads [offset, offset + buffer.size()) of the snapshot into `buffer`
  // (4 KiB aligned, a multiple of 4 KiB long).
  virtual Status read(uint64_t offset, std::span<std::byte> buffer) = 0;
};

struct BackupSource {
  std::string volume;
  std::string snapshot;
  std::string store_uuid;
  uint64_t snapshot_id = 0;
  uint64_t size_bytes = 0;
  ByteRanges mapped;                  // every range holding data in the snapshot
  std::optional<ByteRanges> changed;  // incremental: changed since the parent's snapshot
};

struct BackupProgress {
  uint64_t chunks_total = 0;  // chunks to read (with changed/mapped blocks)
  uint64_t chunks_done = 0;
  uint64_t bytes_read = 0;
  uint64_t chunks_written = 0;  // new chunk objects put
  uint64_t chunks_reused = 0;   // read, but an identical chunk was stored already
};

struct BackupOptions {
  std::string name;
  std::string parent;               // "" = full backup; else needs BackupSource::changed
  uint64_t rate_bytes_per_sec = 0;  // 0 = unthrottled
  uint32_t checkpoint_chunks = 64;  // a partial manifest every this many chunks read
  uint64_t create_time = 0;         // 0 = now
  // Threads hashing and compressing chunks (0 = one per CPU, at most 16);
  // the output is the same for any count (docs/backup-format.md, "Workers").
  unsigned workers = 0;
  std::function<void(const BackupProgress&)> on_progress;
  std::stop_token stop;  // stop requested: a partial manifest is written, ECANCELED
};

// The complete manifest. Refuses (EEXIST) a name whose backup exists.
Result<Manifest> run_backup(Repository& repo, SnapshotReader& reader, const BackupSource& source,
                            const BackupOptions& options);

}  // namespace ublkvol::backup
