// Sizes on the command line: "10G", "512M", "1.5T", "4096".
//
// The CLI speaks binary units only (K = 1024, ..., P = 1024^5); "KiB" and
// "KB" both mean 1024 bytes, because block devices are sized in powers of
// two and an operator typing "10G" means 10 GiB. The daemon takes bytes, so
// every size is parsed and checked here, and a bad one is refused before any
// request is sent, with a message that names the argument it came from.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"

namespace ublkvol::cli {

struct SizeRules {
  // The value must be a multiple of this many bytes (1 = any byte count).
  uint64_t alignment = 4096;
  bool allow_zero = false;
};

// Parses `text` as a size in bytes. `argument` names where it came from
// ("--size", "SIZE") and starts every error message:
//   "--size '10Q': unknown unit 'Q' (use K, M, G, T or P, optionally with iB or B)"
// Refused: empty text, signs, spaces, more than one '.', unknown units,
// fractions that are not a whole number of bytes, values above 2^64-1,
// zero (unless allowed) and values that are not a multiple of the alignment.
Result<uint64_t> parse_size(std::string_view text, std::string_view argument, SizeRules rules = {});

// Human form of a byte count in binary units with one decimal:
// 512 -> "512B", 4096 -> "4.0K", 10 GiB -> "10.0G", 1.5 TiB -> "1.5T".
std::string format_size(uint64_t bytes);

}  // namespace ublkvol::cli
