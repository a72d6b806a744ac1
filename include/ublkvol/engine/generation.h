// Generation ids: how the engine decides which replicas are newest after a
// crash and what a returning replica must copy (DRBD-style generation UUIDs).
//
// Every replica persists the id of the generation its data is consistent
// with plus the ids before it (ReplicaMeta::generation / history). Whenever
// the set of in-sync replicas shrinks, the survivors move to a new random id
// BEFORE acknowledging anything the lost replica missed. Hence:
//   - equal ids: same data (up to regions marked in the dirty bitmaps, which
//     may hold writes in flight at a crash);
//   - A's id in B's history: B is newer, A missed what B's bitmap marks since
//     then - if B's bitmap reaches back that far (bitmap_base);
//   - neither in the other's history: they diverged (a split) or are
//     unrelated; nothing automatic may pick one.
// Comparing only what is present cannot see a newer replica that is missing
// at open, so each replica also records the ids of the replicas in sync at
// its generation (ReplicaMeta::in_sync) and open() refuses while one of them
// is missing (check_in_sync; docs/engine.md "In-sync sets").
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/replica_store.h"

namespace ublkvol::engine {

enum class GenerationOrder { kEqual, kNewer, kOlder, kUnrelated };

// How `a` relates to `b` (kNewer: a is newer than b). Both must have a
// non-zero generation.
GenerationOrder compare_generations(const ReplicaMeta& a, const ReplicaMeta& b);

// True if `newer`'s dirty bitmap marks every write since generation
// `since`, i.e. a replica that was in sync at `since` needs only the marked
// regions copied from `newer`.
bool bitmap_covers(const ReplicaMeta& newer, uint64_t since);

enum class ReplicaPlan : uint8_t {
  kUpToDate,       // among the newest
  kResync,         // older, copy the dirty regions only
  kResumeRebuild,  // an interrupted rebuild: dirty regions below the
                   // watermark, everything from it on
  kFullRebuild,    // copy everything
};

const char* to_string(ReplicaPlan plan);

struct GenerationChoice {
  // All replicas fresh (never used): a new volume.
  bool all_fresh = false;
  // Index of the replica the others are copied from (one of the newest).
  unsigned source = 0;
  uint64_t generation = 0;
  std::vector<ReplicaPlan> plans;
};

// Decides from the persisted metadata alone. Errors (with a message that
// names the replicas): a split between two replicas, replicas of different
// volumes, no replica with consistent data.
Result<GenerationChoice> choose_generation(const std::vector<ReplicaMeta>& metas,
                                           const std::vector<std::string>& names);

using InSyncSet = std::array<uint64_t, kInSyncSetSize>;

// The set holding `ids` (non-zero, distinct, at most kInSyncSetSize of them).
InSyncSet make_in_sync_set(const std::vector<uint64_t>& ids);

// Moves `m` to the new generation `g` (the old one goes to the history) with
// `members` as the replicas in sync at g.
void advance_generation(ReplicaMeta& m, uint64_t g, const InSyncSet& members);

struct InSyncCheck {
  // No replica at the generation recorded its set (written by an older
  // version): nothing can be checked.
  bool unknown = true;
  // The union of the sets recorded at the generation.
  std::vector<uint64_t> members;
  // Members that none of the given replicas is.
  std::vector<uint64_t> missing;
};

// Which replicas recorded in sync at `generation` (by the given replicas that
// are at it) are not among the given ones.
InSyncCheck check_in_sync(const std::vector<ReplicaMeta>& metas, uint64_t generation);

// A replica id or generation for messages (16 hex digits).
std::string id_string(uint64_t id);

}  // namespace ublkvol::engine
