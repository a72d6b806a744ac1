// Store: read-only queries for the engine's thin rebuild (which ranges of a
// volume hold data). Kept apart from the control and data paths.
#include <array>
#include <cerrno>
#include <map>

#include "ublkvol/dbs/store.h"

#include "store_impl.h"

namespace ublkvol::dbs {

using namespace detail;

Result<std::vector<std::pair<uint64_t, uint64_t>>> Store::mapped_ranges(VolumeId volume) const {
  auto found = impl_->find_volume(volume);
  if (!found.ok()) {
    return found.error();
  }
  const Volume& v = **found;
  const uint64_t extent_bytes = impl_->stats().extent_bytes;
  const uint64_t extent_blocks = extent_bytes / format::kBlockSize;
  // Union of the block bits of every layer a read of the head falls through.
  std::map<uint32_t, std::array<uint64_t, 4>> bits;
  for (const Layer* layer = v.head; layer != nullptr; layer = layer->parent) {
    layer->map.for_each([&](uint32_t logical, const ExtentEntry& entry) {
      auto& words = bits[logical];
      for (size_t w = 0; w < 4; ++w) {
        words[w] |= entry.bits[w];
      }
    });
  }
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [logical, words] : bits) {
    for (uint64_t b = 0; b < extent_blocks; ++b) {
      if (((words[b >> 6U] >> (b & 63U)) & 1U) == 0) {
        continue;
      }
      const uint64_t at = (uint64_t{logical} * extent_blocks + b) * format::kBlockSize;
      if (at >= v.size_bytes) {
        break;
      }
      if (!ranges.empty() && ranges.back().first + ranges.back().second == at) {
        ranges.back().second += format::kBlockSize;
      } else {
        ranges.emplace_back(at, format::kBlockSize);
      }
    }
  }
  return ranges;
}

}  // namespace ublkvol::dbs
