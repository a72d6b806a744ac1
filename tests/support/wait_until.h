// wait_until: the bounded wait of threaded tests - yields until `pred` holds
// or `bound` passed, and returns the predicate's last value. A wait on a
// condition, never a sleep standing in for one.
#pragma once

#include <chrono>
#include <thread>

namespace ublkvol::test_support {

template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds bound) {
  const auto end = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) {
      return pred();
    }
    std::this_thread::yield();
  }
  return true;
}

}  // namespace ublkvol::test_support
