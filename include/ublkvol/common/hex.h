// Hex digits: the one parser of the project's hex text (backup chunk hashes,
// TLS PSK keys).
#pragma once

namespace ublkvol {

// The value of one hex digit (0-9, a-f, A-F), or -1 for any other character.
constexpr int hex_digit_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

}  // namespace ublkvol
