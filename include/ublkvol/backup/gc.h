// Deleting backups and collecting the chunks no backup needs.
//
// Crash safety: a backup is deleted by removing its manifest (and partial)
// first; its chunks are then garbage: collect_garbage, under the target's
// exclusive lock (no backup is being written), computes the live set from
// every manifest and partial that is left and removes only chunks outside it.
// A crash anywhere leaves at worst unreferenced chunks, which the next
// collection removes - never a chunk a remaining backup names. A manifest
// that cannot be read stops the collection before anything is removed.
#pragma once

#include <cstdint>
#include <functional>
#include <stop_token>
#include <string_view>

#include "ublkvol/backup/repository.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup {

struct GcResult {
  uint64_t chunks_live = 0;
  uint64_t chunks_removed = 0;
};

struct GcProgress {
  uint64_t chunks_total = 0;    // chunk objects on the target
  uint64_t chunks_checked = 0;  // of those, looked at (kept or removed)
  uint64_t chunks_removed = 0;
};

struct GcOptions {
  // At most this many chunk objects removed per second (0 = unthrottled):
  // object stores limit and bill requests.
  uint64_t rate_removals_per_sec = 0;
  std::function<void(const GcProgress&)> on_progress;
  // A stop leaves the rest of the garbage for the next collection (ECANCELED).
  std::stop_token stop;
  // delete_backup: a backup that is gone already is not an error - a delete
  // interrupted after its manifest was removed finishes its collection.
  bool missing_ok = false;
};

// Takes the exclusive lock itself.
Result<GcResult> collect_garbage(Repository& repo, const GcOptions& options = {});

// Removes the backup (complete or partial; ENOENT if neither exists, unless
// options.missing_ok), then collects garbage.
Result<GcResult> delete_backup(Repository& repo, std::string_view backup,
                               const GcOptions& options = {});

}  // namespace ublkvol::backup
