// Verify / repair decisions (docs/engine.md "Verify, repair and scrub"):
// compares the replicas' copies of one chunk block by block and decides,
// per differing block, which replicas are wrong - by strict majority only.
// Pure functions; ReplicatedVolume::verify reads the copies (ordered
// against writes) and rewrites the wrong replicas.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ublkvol/engine/replicated_volume.h"

namespace ublkvol::engine::detail {

struct BlockVerdict {
  uint64_t offset = 0;
  uint64_t length = 0;
  // Replicas whose copy differs from the majority's (decided), or every
  // replica compared (undecided: no copy is held by more than half).
  uint32_t bad_mask = 0;
  bool decided = false;
};

inline constexpr uint64_t kVerifyBlock = 4096;

// Appends one verdict per run of adjacent differing blocks with the same
// outcome. `buffers[r]` holds replica r's copy of [offset, offset + length)
// for every r in `read_mask`; fewer than two replicas: nothing to compare.
void compare_chunk(const std::array<std::byte*, kMaxReplicas>& buffers, uint32_t read_mask,
                   uint64_t offset, uint64_t length, std::vector<BlockVerdict>& out);

}  // namespace ublkvol::engine::detail
