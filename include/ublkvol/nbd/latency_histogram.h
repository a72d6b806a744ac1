// LatencyHistogram: fixed log2 buckets of request latency, for status
// output (p50 / p99 of a remote replica). Recording is one bit scan and one
// increment: no allocation, no lock (the owning thread records; readers on
// other threads take a snapshot through the owner, or accept a torn count).
#pragma once

#include <array>
#include <bit>
#include <cstdint>

namespace ublkvol::nbd {

class LatencyHistogram {
 public:
  // Bucket i holds latencies in [2^i, 2^(i+1)) microseconds (bucket 0 also
  // holds < 1 us); the last bucket is open-ended (>= ~1.2 hours).
  static constexpr unsigned kBuckets = 32;

  void record_ns(uint64_t nanoseconds) {
    const uint64_t micros = nanoseconds / 1000;
    unsigned bucket = micros == 0 ? 0 : static_cast<unsigned>(std::bit_width(micros)) - 1;
    if (bucket >= kBuckets) {
      bucket = kBuckets - 1;
    }
    ++counts_[bucket];
    ++total_;
  }

  [[nodiscard]] uint64_t count() const { return total_; }

  // Upper bound (in microseconds) of the bucket that holds the `permille`/1000
  // quantile, e.g. 500 for p50, 990 for p99; 0 when nothing was recorded.
  // Coarse by design (a factor of two), enough to tell 100 us from 10 ms.
  [[nodiscard]] uint64_t quantile_us(unsigned permille) const {
    if (total_ == 0) {
      return 0;
    }
    // The smallest rank r with r/total >= permille/1000 (ceiling division).
    const uint64_t rank = (total_ * permille + 999) / 1000;
    uint64_t seen = 0;
    for (unsigned i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank && seen > 0) {
        return uint64_t{1} << (i + 1);
      }
    }
    return uint64_t{1} << kBuckets;
  }

  void reset() {
    counts_ = {};
    total_ = 0;
  }

 private:
  std::array<uint64_t, kBuckets> counts_{};
  uint64_t total_ = 0;
};

}  // namespace ublkvol::nbd
