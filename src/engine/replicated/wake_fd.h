// eventfd wake-ups shared by the queue threads, the store threads and the
// monitor (private): one counter increment to wake, one read to re-arm.
#pragma once

#include <unistd.h>

#include <cstdint>

namespace ublkvol::engine::detail {

// Wakes the eventfd's poller. EAGAIN (counter saturated) still leaves the
// fd readable: nothing lost.
inline void signal_fd(int fd) {
  uint64_t one = 1;
  ssize_t n = ::write(fd, &one, sizeof(one));
  (void)n;
}

// Resets the eventfd's counter (non-blocking fds: EAGAIN when already zero).
inline void drain_fd(int fd) {
  uint64_t v = 0;
  ssize_t n = ::read(fd, &v, sizeof(v));
  (void)n;
}

}  // namespace ublkvol::engine::detail
