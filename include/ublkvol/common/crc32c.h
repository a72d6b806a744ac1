// CRC32C (Castagnoli), the checksum of every on-disk metadata structure.
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace ublkvol {

// Extends `crc` (0 to start) over `data`. crc32c("123456789") == 0xE3069283.
uint32_t crc32c_extend(uint32_t crc, std::span<const std::byte> data);

inline uint32_t crc32c(std::span<const std::byte> data) { return crc32c_extend(0, data); }

inline uint32_t crc32c(const void* data, size_t size) {
  return crc32c_extend(0, {static_cast<const std::byte*>(data), size});
}

}  // namespace ublkvol
