// Verify / repair decisions (verify_compare.h).
#include "verify_compare.h"

#include <bit>
#include <cstring>

namespace ublkvol::engine::detail {

void compare_chunk(const std::array<std::byte*, kMaxReplicas>& buffers, uint32_t read_mask,
                   uint64_t offset, uint64_t length, std::vector<BlockVerdict>& out) {
  const int n = std::popcount(read_mask);
  if (n < 2) {
    return;
  }
  for (uint64_t b = 0; b < length; b += kVerifyBlock) {
    // Group the copies by content (exact comparison, at most 4 copies).
    uint32_t best_group = 0;
    uint32_t seen = 0;
    for (unsigned r = 0; r < kMaxReplicas; ++r) {
      if ((read_mask & (1U << r)) == 0 || (seen & (1U << r)) != 0) {
        continue;
      }
      uint32_t group = 1U << r;
      for (unsigned o = r + 1; o < kMaxReplicas; ++o) {
        if ((read_mask & (1U << o)) != 0 &&
            std::memcmp(buffers[r] + b, buffers[o] + b, kVerifyBlock) == 0) {
          group |= 1U << o;
        }
      }
      seen |= group;
      if (std::popcount(group) > std::popcount(best_group)) {
        best_group = group;
      }
    }
    if (best_group == read_mask) {
      continue;  // all equal
    }
    BlockVerdict v;
    v.offset = offset + b;
    v.length = kVerifyBlock;
    v.decided = 2 * std::popcount(best_group) > n;
    v.bad_mask = v.decided ? read_mask & ~best_group : read_mask;
    if (!out.empty() && out.back().offset + out.back().length == v.offset &&
        out.back().decided == v.decided && out.back().bad_mask == v.bad_mask) {
      out.back().length += kVerifyBlock;
    } else {
      out.push_back(v);
    }
  }
}

}  // namespace ublkvol::engine::detail
