// Range arithmetic for thin rebuilds (thin_rebuild.h).
#include "thin_rebuild.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>

namespace ublkvol::engine::detail {

namespace {

void append_merged(Ranges& out, uint64_t begin, uint64_t end) {
  if (begin >= end) {
    return;
  }
  if (!out.empty() && out.back().first + out.back().second >= begin) {
    uint64_t e = std::max(out.back().first + out.back().second, end);
    out.back().second = e - out.back().first;
  } else {
    out.emplace_back(begin, end - begin);
  }
}

}  // namespace

Ranges range_union(const Ranges& a, const Ranges& b) {
  Ranges all;
  all.reserve(a.size() + b.size());
  all.insert(all.end(), a.begin(), a.end());
  all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  Ranges out;
  for (auto [off, len] : all) {
    append_merged(out, off, off + len);
  }
  return out;
}

Ranges align_and_clip(const Ranges& ranges, uint64_t align, uint64_t from, uint64_t to) {
  Ranges out;
  for (auto [off, len] : ranges) {
    uint64_t b = off / align * align;
    uint64_t e = (off + len + align - 1) / align * align;
    append_merged(out, std::max(b, from), std::min(e, to));
  }
  return out;
}

uint64_t range_bytes(const Ranges& ranges) {
  uint64_t n = 0;
  for (auto [off, len] : ranges) {
    n += len;
  }
  return n;
}

uint64_t units_to_allocate(const Ranges& wanted, const Ranges& held, uint64_t unit) {
  std::unordered_set<uint64_t> have;
  for (auto [off, len] : held) {
    for (uint64_t u = off / unit; u * unit < off + len; ++u) {
      have.insert(u);
    }
  }
  uint64_t n = 0;
  uint64_t last = UINT64_MAX;
  for (auto [off, len] : wanted) {
    for (uint64_t u = off / unit; u * unit < off + len; ++u) {
      if (u != last && !have.contains(u)) {
        ++n;
      }
      last = u;
    }
  }
  return n;
}

bool all_zero(const std::byte* data, size_t length) {
  static constexpr std::byte kZeros[4096]{};
  for (size_t at = 0; at < length; at += sizeof(kZeros)) {
    size_t n = std::min(sizeof(kZeros), length - at);
    if (std::memcmp(data + at, kZeros, n) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace ublkvol::engine::detail
