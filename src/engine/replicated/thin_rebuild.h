// Range arithmetic for thin rebuilds (docs/engine.md "Thin rebuild"): which
// parts of a volume a rebuild copies, and how much space that takes on the
// target store. Pure functions; the engine asks the stores for the inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace ublkvol::engine::detail {

// Sorted, non-overlapping [offset, offset + length) byte ranges.
using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

// Both inputs sorted; result sorted and merged (touching ranges joined).
Ranges range_union(const Ranges& a, const Ranges& b);
// Each range widened to `align` boundaries, clipped to [from, to), merged.
Ranges align_and_clip(const Ranges& ranges, uint64_t align, uint64_t from, uint64_t to);
uint64_t range_bytes(const Ranges& ranges);
// Allocation units of `unit` bytes that `wanted` touches and `held` does not:
// what writing `wanted` allocates on a store that already holds `held`.
uint64_t units_to_allocate(const Ranges& wanted, const Ranges& held, uint64_t unit);
// True if every byte is zero (a copy chunk that is unmapped on the source).
bool all_zero(const std::byte* data, size_t length);

}  // namespace ublkvol::engine::detail
