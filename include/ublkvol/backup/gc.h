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
#include <string_view>

#include "ublkvol/backup/repository.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup {

struct GcResult {
  uint64_t chunks_live = 0;
  uint64_t chunks_removed = 0;
};

// Takes the exclusive lock itself.
Result<GcResult> collect_garbage(Repository& repo);

// Removes the backup (complete or partial; ENOENT if neither exists), then
// collects garbage.
Result<GcResult> delete_backup(Repository& repo, std::string_view backup);

}  // namespace ublkvol::backup
