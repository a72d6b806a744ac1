// Zero copy (docs/zero-copy.md): request memory this process cannot touch.
//
// With UBLK_F_AUTO_BUF_REG the kernel registers a ublk request's own pages as
// fixed buffer `tag` of the queue's io_uring. They are never mapped here: only
// READ_FIXED / WRITE_FIXED SQEs on that ring can reach them. To pass such a
// request through the engine and DBS unchanged (they split it into pieces by
// pointer arithmetic and never read the bytes), the queue reserves an address
// window - PROT_NONE, no memory behind it - of `tags * stride` bytes and names
// tag t's request by `base + t * stride`. A FileDevice that gets a read or
// write whose buffer lies in a window of the calling thread issues it on the
// window's ring with buf_index = tag and the offset inside the request.
//
// Windows are per thread by nature (a fixed buffer exists only in the ring
// that registered it, and that ring is used by one thread), so the table is
// the calling thread's own: FixedBufferWindows::current(). Nothing is shared
// between threads; a device on another thread never sees the window, and a
// buffer of a window it cannot resolve is refused (-EXDEV), never read.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

// liburing's ring; only pointers to it are kept here.
struct io_uring;

namespace ublkvol::dbs {

// A request a device issued on someone else's ring: the ring's owner hands
// the CQE back through here. CQEs of guests carry kRingGuestBit in user_data,
// the rest of which is the RingGuest's address (user-space addresses never
// have bit 63 set).
struct RingGuest {
  void (*on_cqe)(RingGuest& guest, int32_t result) = nullptr;
  void* owner = nullptr;
};
inline constexpr uint64_t kRingGuestBit = uint64_t{1} << 63U;

inline uint64_t ring_guest_user_data(RingGuest& guest) {
  return reinterpret_cast<uintptr_t>(&guest) | kRingGuestBit;
}
inline bool is_ring_guest(uint64_t user_data) { return (user_data & kRingGuestBit) != 0; }
// Hands a guest CQE back to the device that issued it.
inline void complete_ring_guest(uint64_t user_data, int32_t result) {
  // The CQE's user_data is io_uring's one word per request: it carries the
  // address (ring_guest_user_data), so back to a pointer it goes.
  // NOLINTNEXTLINE(performance-no-int-to-ptr)
  auto* guest = reinterpret_cast<RingGuest*>(static_cast<uintptr_t>(user_data & ~kRingGuestBit));
  guest->on_cqe(*guest, result);
}

struct FixedBufferWindow {
  // [base, base + slots * stride): slot i is fixed buffer `first_index + i`.
  std::byte* base = nullptr;
  uint64_t stride = 0;
  uint32_t slots = 0;
  uint16_t first_index = 0;
  // The ring that holds the fixed buffers; only its owning thread uses it.
  io_uring* ring = nullptr;
  // What READ_FIXED/WRITE_FIXED take as `addr` for byte 0 of slot i: 0 for
  // kernel-registered request pages (the driver's bvec buffers start at 0),
  // the user address for buffers registered from user memory (tests).
  uint64_t (*addr_of_slot)(const FixedBufferWindow& window, uint32_t slot) = nullptr;
  void* context = nullptr;

  [[nodiscard]] bool contains(const std::byte* p, uint64_t length) const {
    return p >= base && p < base + uint64_t{slots} * stride &&
           length <= stride - static_cast<uint64_t>(p - base) % stride;
  }
};

// Where one piece of a windowed buffer is: which fixed buffer and which
// `addr` a fixed-buffer SQE takes for it.
struct FixedBufferPiece {
  io_uring* ring = nullptr;
  uint16_t index = 0;
  uint64_t addr = 0;
};

class FixedBufferWindows {
 public:
  static constexpr size_t kMaxWindows = 64;

  // The calling thread's table.
  static FixedBufferWindows& current();

  // Adds a window (false when the table is full). Its ring must belong to
  // this thread.
  bool add(const FixedBufferWindow& window);
  void remove(const std::byte* base);

  // Non-null when [p, p + length) lies inside one slot of a window.
  [[nodiscard]] const FixedBufferWindow* find(const std::byte* p, uint64_t length) const {
    for (size_t i = 0; i < count_; ++i) {
      if (windows_[i].contains(p, length)) {
        return &windows_[i];
      }
    }
    return nullptr;
  }
  // The piece [p, p + length) of a window's slot, as a fixed-buffer address.
  static FixedBufferPiece piece(const FixedBufferWindow& window, const std::byte* p);

  [[nodiscard]] size_t size() const { return count_; }

 private:
  std::array<FixedBufferWindow, kMaxWindows> windows_{};
  size_t count_ = 0;
};

}  // namespace ublkvol::dbs
