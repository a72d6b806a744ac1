// Store: read-only queries on the layer maps - which ranges of a volume or a
// snapshot hold data (the engine's thin rebuild, full backups), and which
// changed between two snapshots (incremental backups). Kept apart from the
// control and data paths.
#include <array>
#include <cerrno>
#include <map>

#include "ublkvol/dbs/store.h"

#include "store_impl.h"

namespace ublkvol::dbs {

using namespace detail;

namespace {

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

// The byte ranges of the union of the block bits of the layers from `top`
// down to (not including) `stop`, below `size_bytes`.
Ranges union_ranges(const Layer* top, const Layer* stop, uint64_t extent_blocks,
                    uint64_t size_bytes) {
  std::map<uint32_t, std::array<uint64_t, 4>> bits;
  for (const Layer* layer = top; layer != nullptr && layer != stop; layer = layer->parent) {
    layer->map.for_each([&](uint32_t logical, const ExtentEntry& entry) {
      auto& words = bits[logical];
      for (size_t w = 0; w < 4; ++w) {
        words[w] |= entry.bits[w];
      }
    });
  }
  Ranges ranges;
  for (const auto& [logical, words] : bits) {
    for (uint64_t b = 0; b < extent_blocks; ++b) {
      if (((words[b >> 6U] >> (b & 63U)) & 1U) == 0) {
        continue;
      }
      const uint64_t at = (uint64_t{logical} * extent_blocks + b) * format::kBlockSize;
      if (at >= size_bytes) {
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

}  // namespace

Result<Ranges> Store::mapped_ranges(VolumeId volume) const {
  auto found = impl_->find_volume(volume);
  if (!found.ok()) {
    return found.error();
  }
  const Volume& v = **found;
  // Union of the block bits of every layer a read of the head falls through.
  return union_ranges(v.head, nullptr, impl_->stats().extent_bytes / format::kBlockSize,
                      v.size_bytes);
}

Result<Ranges> Store::snapshot_mapped_ranges(SnapshotId snapshot) const {
  auto found = impl_->find_snapshot(snapshot);
  if (!found.ok()) {
    return found.error();
  }
  const Layer* layer = *found;
  return union_ranges(layer, nullptr, impl_->stats().extent_bytes / format::kBlockSize,
                      layer->size_bytes);
}

Result<Ranges> Store::changed_ranges(SnapshotId base, SnapshotId snapshot) const {
  auto top = impl_->find_snapshot(snapshot);
  if (!top.ok()) {
    return top.error();
  }
  auto bottom = impl_->find_snapshot(base);
  if (!bottom.ok()) {
    return bottom.error();
  }
  const Layer* stop = *bottom;
  const Layer* layer = *top;
  while (layer != nullptr && layer != stop) {
    layer = layer->parent;
  }
  if (layer == nullptr) {
    return Error(EINVAL, "snapshot " + std::to_string(base) + " is not under snapshot " +
                             std::to_string(snapshot) + " (not the same chain)");
  }
  return union_ranges(*top, stop, impl_->stats().extent_bytes / format::kBlockSize,
                      (*top)->size_bytes);
}

}  // namespace ublkvol::dbs
