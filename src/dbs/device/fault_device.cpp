#include "ublkvol/dbs/fault_device.h"

#include <algorithm>
#include <cerrno>
#include <thread>

#include "request_queue.h"

namespace ublkvol::dbs {

using Clock = std::chrono::steady_clock;

struct FaultDevice::Slot {
  IoRequest inner;
  IoRequest* outer = nullptr;
  FaultDevice* device = nullptr;
  Clock::time_point deadline{};  // completion held back until then
  int result = 0;
};

FaultDevice::FaultDevice(BlockDevice& inner, uint64_t seed)
    : inner_(inner),
      name_("fault(" + std::string(inner.name()) + ")"),
      random_state_(seed == 0 ? 0x9E3779B97F4A7C15ULL : seed) {}

FaultDevice::~FaultDevice() = default;

FaultDevice::RuleId FaultDevice::add_rule(const FaultRule& rule) {
  rules_.push_back({next_rule_id_, rule});
  return next_rule_id_++;
}

bool FaultDevice::remove_rule(RuleId id) {
  auto it = std::find_if(rules_.begin(), rules_.end(), [id](const auto& r) { return r.id == id; });
  if (it == rules_.end()) {
    return false;
  }
  rules_.erase(it);
  return true;
}

uint64_t FaultDevice::rule_hits(RuleId id) const {
  for (const auto& r : rules_) {
    if (r.id == id) {
      return r.hits;
    }
  }
  return 0;
}

const FaultRule* FaultDevice::firing_rule(const IoRequest& request) {
  for (ActiveRule& active : rules_) {
    const FaultRule& rule = active.rule;
    if ((rule.ops & op_bit(request.op)) == 0) {
      continue;
    }
    if (request.op != IoOp::kFlush) {
      uint64_t rule_end =
          rule.length > UINT64_MAX - rule.offset ? UINT64_MAX : rule.offset + rule.length;
      if (request.offset >= rule_end || request.offset + request.length <= rule.offset) {
        continue;
      }
    }
    if (active.seen++ < rule.after || active.hits >= rule.max_hits) {
      continue;
    }
    if (rule.probability < 1.0) {
      // xorshift64*; top 53 bits as a uniform double in [0, 1).
      random_state_ ^= random_state_ >> 12;
      random_state_ ^= random_state_ << 25;
      random_state_ ^= random_state_ >> 27;
      uint64_t bits = random_state_ * 0x2545F4914F6CDD1DULL;
      double coin = static_cast<double>(bits >> 11) * 0x1.0p-53;
      if (coin >= rule.probability) {
        continue;
      }
    }
    active.hits++;
    return &rule;
  }
  return nullptr;
}

void FaultDevice::submit(IoRequest& request) {
  ++in_flight_;
  if (dead_error_ != 0) {
    counters_.failed++;
    request.device_result = -dead_error_;
    detail::queue_push(local_head_, local_tail_, request);
    return;
  }
  const FaultRule* rule = firing_rule(request);
  if (rule == nullptr) {
    counters_.passed++;
    forward(request, Clock::time_point{});
    return;
  }
  switch (rule->action) {
    case FaultAction::kFail:
      counters_.failed++;
      request.device_result = -rule->error;
      detail::queue_push(local_head_, local_tail_, request);
      break;
    case FaultAction::kDelay:
      counters_.delayed++;
      forward(request, Clock::now() + rule->delay);
      break;
    case FaultAction::kHang:
      counters_.hung++;
      ++hung_count_;
      detail::queue_push(hung_head_, hung_tail_, request);
      break;
  }
}

void FaultDevice::forward(IoRequest& request, Clock::time_point deadline) {
  Slot* slot = detail::take_slot(slots_, free_slots_);
  slot->outer = &request;
  slot->device = this;
  slot->deadline = deadline;
  slot->inner = detail::forwarded_request(request, &FaultDevice::on_inner_complete, slot);
  inner_.submit(slot->inner);
}

void FaultDevice::complete_outer(IoRequest& request, int result) {
  --in_flight_;
  ++completions_;
  request.on_complete(request, result);
}

void FaultDevice::on_inner_complete(IoRequest& inner, int result) {
  auto* slot = static_cast<Slot*>(inner.user_data);
  FaultDevice& self = *slot->device;
  if (self.dead_error_ != 0) {
    result = -self.dead_error_;  // the disk died under this request
  }
  slot->result = result;
  if (slot->deadline != Clock::time_point{} && Clock::now() < slot->deadline) {
    self.delayed_.push_back(slot);
    return;
  }
  IoRequest& outer = *slot->outer;
  self.free_slots_.push_back(slot);
  self.complete_outer(outer, result);
}

unsigned FaultDevice::complete_local() {
  return detail::queue_drain(local_head_, local_tail_, [this](IoRequest& request) {
    complete_outer(request, request.device_result);
  });
}

unsigned FaultDevice::complete_due(Clock::time_point now) {
  unsigned completed = 0;
  for (size_t i = 0; i < delayed_.size();) {
    Slot* slot = delayed_[i];
    if (slot->deadline > now) {
      ++i;
      continue;
    }
    delayed_[i] = delayed_.back();
    delayed_.pop_back();
    IoRequest& outer = *slot->outer;
    int result = dead_error_ != 0 ? -dead_error_ : slot->result;
    free_slots_.push_back(slot);
    complete_outer(outer, result);
    ++completed;
  }
  return completed;
}

unsigned FaultDevice::poll(bool wait) {
  // Count outer callbacks, not the inner device's: a delayed request
  // completes inside but not (yet) here.
  const uint64_t before = completions_;
  auto completed = [&] { return completions_ - before; };
  complete_local();
  inner_.poll(false);
  complete_due(Clock::now());
  while (wait && completed() == 0 && (inner_.in_flight() > 0 || !delayed_.empty())) {
    if (delayed_.empty()) {
      inner_.poll(true);
    } else if (inner_.in_flight() == 0) {
      // Only held-back completions left: sleeping here is what the owner
      // asked for with wait=true.
      auto earliest = std::min_element(delayed_.begin(), delayed_.end(),
                                       [](Slot* a, Slot* b) { return a->deadline < b->deadline; });
      std::this_thread::sleep_until((*earliest)->deadline);
    } else {
      inner_.poll(false);
    }
    complete_due(Clock::now());
    complete_local();
  }
  return static_cast<unsigned>(completed());
}

void FaultDevice::fail_all(int error) { dead_error_ = error > 0 ? error : EIO; }

void FaultDevice::revive() {
  dead_error_ = 0;
  release_hung();
}

void FaultDevice::release_hung() {
  while (IoRequest* request = detail::queue_pop(hung_head_, hung_tail_)) {
    --hung_count_;
    if (dead_error_ != 0) {
      request->device_result = -dead_error_;
      detail::queue_push(local_head_, local_tail_, *request);
    } else {
      forward(*request, Clock::time_point{});
    }
  }
}

void FaultDevice::fail_hung(int error) {
  while (IoRequest* request = detail::queue_pop(hung_head_, hung_tail_)) {
    --hung_count_;
    counters_.failed++;
    request->device_result = -error;
    detail::queue_push(local_head_, local_tail_, *request);
  }
}

}  // namespace ublkvol::dbs
