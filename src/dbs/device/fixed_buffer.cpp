// FixedBufferWindows (include/ublkvol/dbs/fixed_buffer.h).
#include "ublkvol/dbs/fixed_buffer.h"

namespace ublkvol::dbs {

FixedBufferWindows& FixedBufferWindows::current() {
  // Per thread by design (the header says why): each thread only ever sees
  // the windows of the rings it owns.
  thread_local FixedBufferWindows windows;
  return windows;
}

bool FixedBufferWindows::add(const FixedBufferWindow& window) {
  if (count_ == kMaxWindows) {
    return false;
  }
  windows_[count_++] = window;
  return true;
}

void FixedBufferWindows::remove(const std::byte* base) {
  for (size_t i = 0; i < count_; ++i) {
    if (windows_[i].base == base) {
      windows_[i] = windows_[count_ - 1];
      windows_[--count_] = FixedBufferWindow{};
      return;
    }
  }
}

FixedBufferPiece FixedBufferWindows::piece(const FixedBufferWindow& window, const std::byte* p) {
  const auto from_base = static_cast<uint64_t>(p - window.base);
  const auto slot = static_cast<uint32_t>(from_base / window.stride);
  FixedBufferPiece piece;
  piece.ring = window.ring;
  piece.index = static_cast<uint16_t>(window.first_index + slot);
  piece.addr = window.addr_of_slot(window, slot) + from_base % window.stride;
  return piece;
}

}  // namespace ublkvol::dbs
