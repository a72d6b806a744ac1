#include "size.h"

#include <cctype>
#include <cstdio>
#include <limits>

namespace ublkvol::cli {
namespace {

// 128-bit intermediate values make overflow checks simple (GCC/Clang extension).
__extension__ using u128 = unsigned __int128;

Error size_error(std::string_view text, std::string_view argument, const std::string& problem) {
  return Error(EINVAL, std::string(argument) + " '" + std::string(text) + "': " + problem);
}

// Multiplier for a unit suffix, or 0 if the suffix is unknown. Accepted:
// "", "B", and K/M/G/T/P (any case) optionally followed by "iB", "ib" or "B".
uint64_t unit_multiplier(std::string_view unit) {
  if (unit.empty() || unit == "B" || unit == "b") {
    return 1;
  }
  const char letter = static_cast<char>(std::toupper(static_cast<unsigned char>(unit[0])));
  const std::string_view rest = unit.substr(1);
  if (!(rest.empty() || rest == "B" || rest == "b" || rest == "iB" || rest == "ib")) {
    return 0;
  }
  switch (letter) {
    case 'K':
      return uint64_t{1} << 10;
    case 'M':
      return uint64_t{1} << 20;
    case 'G':
      return uint64_t{1} << 30;
    case 'T':
      return uint64_t{1} << 40;
    case 'P':
      return uint64_t{1} << 50;
    default:
      return 0;
  }
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text, std::string_view argument, SizeRules rules) {
  if (text.empty()) {
    return size_error(text, argument, "empty size");
  }
  if (text.front() == '-') {
    return size_error(text, argument, "a size cannot be negative");
  }
  if (text.front() == '+') {
    return size_error(text, argument, "no sign allowed, write just the number");
  }

  // Digits, optionally one '.' and more digits; everything after is the unit.
  size_t pos = 0;
  u128 whole = 0;
  bool too_big = false;
  while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
    whole = whole * 10 + static_cast<unsigned>(text[pos] - '0');
    if (whole > std::numeric_limits<uint64_t>::max()) {
      too_big = true;
    }
    if (too_big) {
      whole = u128{std::numeric_limits<uint64_t>::max()} + 1;  // saturate
    }
    ++pos;
  }
  const size_t whole_digits = pos;
  u128 fraction = 0;
  u128 fraction_scale = 1;
  size_t fraction_digits = 0;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
      if (fraction_digits < 18) {  // more digits cannot change a byte count of a P-sized unit
        fraction = fraction * 10 + static_cast<unsigned>(text[pos] - '0');
        fraction_scale *= 10;
      } else if (text[pos] != '0') {
        return size_error(text, argument, "too many decimal places");
      }
      ++fraction_digits;
      ++pos;
    }
    if (fraction_digits == 0) {
      return size_error(text, argument, "a '.' must be followed by digits");
    }
  }
  if (whole_digits == 0 && fraction_digits == 0) {
    return size_error(text, argument,
                      "not a size (expected a number with an optional unit, e.g. 10G, 512M, 4096)");
  }
  const std::string_view unit = text.substr(pos);
  for (char c : unit) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      return size_error(text, argument, "no spaces allowed (write e.g. 10G)");
    }
  }
  const uint64_t multiplier = unit_multiplier(unit);
  if (multiplier == 0) {
    return size_error(text, argument,
                      "unknown unit '" + std::string(unit) +
                          "' (use K, M, G, T or P, optionally followed by iB or B)");
  }
  if (too_big) {
    return size_error(text, argument, "too large (the limit is 2^64-1 bytes)");
  }

  const u128 fraction_bytes_scaled = fraction * multiplier;  // fraction <= 10^18, fits
  if (fraction_bytes_scaled % fraction_scale != 0) {
    return size_error(text, argument, "not a whole number of bytes");
  }
  const u128 bytes = whole * multiplier + fraction_bytes_scaled / fraction_scale;
  if (bytes > std::numeric_limits<uint64_t>::max()) {
    return size_error(text, argument, "too large (the limit is 2^64-1 bytes)");
  }
  const auto value = static_cast<uint64_t>(bytes);
  if (value == 0 && !rules.allow_zero) {
    return size_error(text, argument, "must be greater than zero");
  }
  if (rules.alignment > 1 && value % rules.alignment != 0) {
    return size_error(text, argument,
                      "not a multiple of " + std::to_string(rules.alignment) + " bytes (" +
                          format_size(rules.alignment) + ")");
  }
  return value;
}

std::string format_size(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"K", "M", "G", "T", "P", "E"};
  if (bytes < 1024) {
    return std::to_string(bytes) + "B";
  }
  double value = static_cast<double>(bytes) / 1024.0;
  size_t unit = 0;
  // Switch unit once the rounded value would print as 1024.0.
  while (value >= 1023.95 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  char buffer[32];
  (void)std::snprintf(buffer, sizeof(buffer), "%.1f%s", value, kUnits[unit]);
  return buffer;
}

}  // namespace ublkvol::cli
