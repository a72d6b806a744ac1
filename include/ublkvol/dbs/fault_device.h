// FaultDevice: a BlockDevice wrapper that injects failures, delays and hangs
// into the requests it passes to an inner device. Drives the engine's fault
// tests (a replica returning I/O errors, a replica missing its deadline, a
// disk that dies).
//
// Rules are checked in the order they were added when a request is
// submitted; the first rule that FIRES decides the request's fate:
//   kFail   complete with -error at the next poll(), never reaching the
//           inner device;
//   kDelay  pass the request to the inner device, but hold its completion
//           back until `delay` has elapsed since submission (checked in
//           poll(); nothing sleeps unless the owner calls poll(wait=true)
//           with nothing else to wait for);
//   kHang   hold the request, never reaching the inner device, until
//           release_hung() (passes them on), fail_hung() (completes them with
//           an error, like an aborted command) or revive().
// A rule FIRES for a request when: its op is in `ops`, its byte range
// overlaps [offset, offset + length) (flushes have no range and always
// overlap), at least `after` earlier requests matched the rule, fewer than
// `max_hits` requests have been hit, and a seeded coin with `probability`
// says yes.
//
// fail_all(error) makes the device dead: every new request fails with
// -error, and requests already in the inner device complete with -error too
// (their data may or may not have been written - as with a real disk that
// died mid-write). revive() brings it back and passes hung requests on.
//
// Rules, fail_all/revive and the counters are used from the owning thread
// (like every BlockDevice method). completion_fd() is -1: delayed
// completions are only noticed by poll(), so the owner must poll.
#pragma once

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/dbs/block_device.h"

namespace ublkvol::dbs {

enum class FaultAction : uint8_t { kFail, kDelay, kHang };

// Bit for `op` in FaultRule::ops.
constexpr uint32_t op_bit(IoOp op) { return 1u << static_cast<unsigned>(op); }
inline constexpr uint32_t kAllOps = 0x1F;
inline constexpr uint32_t kDataWriteOps =
    op_bit(IoOp::kWrite) | op_bit(IoOp::kDiscard) | op_bit(IoOp::kWriteZeroes);

struct FaultRule {
  FaultAction action = FaultAction::kFail;
  uint32_t ops = kAllOps;
  uint64_t offset = 0;
  uint64_t length = std::numeric_limits<uint64_t>::max();
  uint64_t after = 0;  // let this many matching requests through first
  uint64_t max_hits = std::numeric_limits<uint64_t>::max();
  double probability = 1.0;
  int error = 5;                      // kFail: positive errno (EIO)
  std::chrono::nanoseconds delay{0};  // kDelay
};

class FaultDevice final : public BlockDevice {
 public:
  using RuleId = uint64_t;

  struct Counters {
    uint64_t passed = 0;  // reached the inner device without a fault
    uint64_t failed = 0;  // completed with an injected error (rules and dead device)
    uint64_t delayed = 0;
    uint64_t hung = 0;
  };

  // `seed` makes probabilistic rules reproducible.
  explicit FaultDevice(BlockDevice& inner, uint64_t seed = 1);
  ~FaultDevice() override;
  FaultDevice(const FaultDevice&) = delete;
  FaultDevice& operator=(const FaultDevice&) = delete;

  // BlockDevice
  [[nodiscard]] std::string_view name() const override { return name_; }
  [[nodiscard]] uint64_t size_bytes() const override { return inner_.size_bytes(); }
  [[nodiscard]] uint32_t block_size() const override { return inner_.block_size(); }
  void submit(IoRequest& request) override;
  void kick() override { inner_.kick(); }
  // With `wait`, blocks until a completion (inner or a delay expiring);
  // returns 0 at once if only hung requests are left.
  unsigned poll(bool wait) override;
  [[nodiscard]] unsigned in_flight() const override { return in_flight_; }

  RuleId add_rule(const FaultRule& rule);
  // Returns false if no such rule (already removed).
  bool remove_rule(RuleId id);
  void clear_rules() { rules_.clear(); }
  // How many requests rule `id` has hit (0 for unknown ids).
  [[nodiscard]] uint64_t rule_hits(RuleId id) const;

  void fail_all(int error = EIO);
  [[nodiscard]] bool dead() const { return dead_error_ != 0; }
  // Clears fail_all() and passes hung requests on to the inner device.
  void revive();
  void release_hung();
  void fail_hung(int error);
  [[nodiscard]] unsigned hung_count() const { return hung_count_; }

  [[nodiscard]] const Counters& counters() const { return counters_; }

 private:
  struct Slot;
  struct ActiveRule {
    RuleId id = 0;
    FaultRule rule;
    uint64_t seen = 0;
    uint64_t hits = 0;
  };
  static void on_inner_complete(IoRequest& inner, int result);
  const FaultRule* firing_rule(const IoRequest& request);
  void forward(IoRequest& request, std::chrono::steady_clock::time_point deadline);
  void complete_outer(IoRequest& request, int result);
  unsigned complete_local();
  unsigned complete_due(std::chrono::steady_clock::time_point now);

  BlockDevice& inner_;
  std::string name_;
  uint64_t random_state_;
  std::vector<ActiveRule> rules_;
  RuleId next_rule_id_ = 1;
  int dead_error_ = 0;

  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> free_slots_;
  std::vector<Slot*> delayed_;  // inner completed, deadline not yet reached
  // Outer requests held by the wrapper, linked through device_next.
  IoRequest* local_head_ = nullptr;  // completed here; result in device_result
  IoRequest* local_tail_ = nullptr;
  IoRequest* hung_head_ = nullptr;
  IoRequest* hung_tail_ = nullptr;
  unsigned hung_count_ = 0;
  unsigned in_flight_ = 0;
  uint64_t completions_ = 0;  // outer callbacks run, ever
  Counters counters_;
};

}  // namespace ublkvol::dbs
