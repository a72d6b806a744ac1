// RebuildPacer: how a rebuild yields to user I/O (docs/engine.md "Rebuild
// pacing"). Pure arithmetic over the numbers the copy loop feeds it, so it is
// tested without clocks or threads (tests/engine/replicated/rebuild_yield_test).
//
// A copy step is one read of the source plus one write of each target; on a
// reactor it is executed between that reactor's user requests. A whole
// 1 MiB chunk held a reactor for hundreds of microseconds on tmpfs and
// foreground p99 rose 5x during a rebuild. So while user requests arrive the
// copy goes in short pieces and, after each, waits (step time) * (100 - p) / p:
// it takes at most p percent of the time. With no user I/O it copies whole
// chunks back to back, as fast as the stores go.
#pragma once

#include <algorithm>
#include <cstdint>

namespace ublkvol::engine::detail {

class RebuildPacer {
 public:
  RebuildPacer(uint64_t chunk_bytes, uint64_t busy_io_bytes, unsigned busy_percent,
               uint64_t user_requests)
      : chunk_(chunk_bytes),
        piece_(std::min(chunk_bytes, busy_io_bytes)),
        percent_(std::clamp(busy_percent, 1U, 100U)),
        seen_(user_requests) {}

  // Length of the next step at `offset` in a range that ends at `end`.
  [[nodiscard]] uint64_t next_length(uint64_t offset, uint64_t end) const {
    return std::min(busy_ ? piece_ : chunk_, end - offset);
  }

  // After a step that took `step_ns`; `user_requests` is the user queues'
  // submitted count now. Returns how long to wait before the next step
  // (0: go on). User I/O seen since the last call makes the next step a
  // piece; none makes it a whole chunk again.
  uint64_t after_step(uint64_t step_ns, uint64_t user_requests) {
    busy_ = user_requests != seen_;
    seen_ = user_requests;
    if (!busy_ || percent_ >= 100) {
      return 0;
    }
    return step_ns * (100 - percent_) / percent_;
  }

  [[nodiscard]] bool busy() const { return busy_; }

 private:
  uint64_t chunk_;
  uint64_t piece_;
  unsigned percent_;
  uint64_t seen_;
  bool busy_ = false;
};

}  // namespace ublkvol::engine::detail
