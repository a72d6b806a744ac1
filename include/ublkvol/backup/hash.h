// ChunkHash: the content address of a backup chunk (SHA-256, OpenSSL's
// libcrypto). A cryptographic hash, not a checksum: two chunks with the same
// address are treated as the same chunk (deduplicated), so a collision must
// be infeasible, not just unlikely (docs/backup-format.md).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"

namespace ublkvol::backup {

struct ChunkHash {
  std::array<uint8_t, 32> bytes{};

  // 64 lower-case hex digits.
  [[nodiscard]] std::string hex() const;
  // Parses 64 hex digits (either case); EINVAL naming `text` otherwise.
  static Result<ChunkHash> parse_hex(std::string_view text);

  bool operator==(const ChunkHash&) const = default;
  // Any strict order (std::set of live chunks).
  bool operator<(const ChunkHash& other) const { return bytes < other.bytes; }
};

// SHA-256 over the concatenation of `parts`.
ChunkHash sha256(std::initializer_list<std::span<const std::byte>> parts);

}  // namespace ublkvol::backup
