// Test helper: the owner of one replica's store - a StoreThread of its own
// (the default), or a ReactorExecutor on one of a shared set of reactors.
// The engine tests that use Cluster / DbsFileCluster run in both shapes:
// ctest registers them again with UBLKVOL_TEST_STORE_REACTORS=1 (every store
// on one reactor) and =2 (stores spread over two), see
// tests/engine/replicated/CMakeLists.txt.
#pragma once

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "ublkvol/engine/reactor_executor.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/reactor/reactor.h"

namespace ublkvol::engine::testing {

// The fixture option: how many reactors the stores share (0: a thread each).
inline unsigned store_reactors_from_env() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read once by the test's main thread
  const char* v = std::getenv("UBLKVOL_TEST_STORE_REACTORS");
  return v != nullptr ? static_cast<unsigned>(std::strtoul(v, nullptr, 10)) : 0U;
}

// The reactors of a cluster, started on first use (unpinned: the tests share
// the machine). Null when the stores get a thread each.
inline std::unique_ptr<reactor::ReactorSet> start_store_reactors() {
  unsigned n = store_reactors_from_env();
  if (n == 0) {
    return nullptr;
  }
  reactor::ReactorSetOptions o;
  o.name_prefix = "test-reactor";
  o.count = n;
  o.pin = false;
  // As StoreThread: fault wrappers holding delayed requests polled every 200 us.
  o.busy_poll_interval = std::chrono::microseconds(200);
  auto set = reactor::ReactorSet::start(o);
  if (!set.ok()) {
    std::abort();
  }
  return std::move(*set);
}

class StoreOwner final : public StoreExecutor {
 public:
  // On `reactor`, or (nullptr) a StoreThread of its own.
  static std::unique_ptr<StoreOwner> start(const std::string& name, reactor::Reactor* on) {
    auto owner = std::unique_ptr<StoreOwner>(new StoreOwner());
    if (on == nullptr) {
      StoreThreadOptions to;
      to.name = name;
      auto thread = StoreThread::start(to);
      if (!thread.ok()) {
        std::abort();
      }
      owner->thread_ = std::move(*thread);
      owner->target_ = owner->thread_.get();
    } else {
      auto exec = ReactorExecutor::create(*on, name);
      if (!exec.ok()) {
        std::abort();
      }
      owner->executor_ = std::move(*exec);
      owner->target_ = owner->executor_.get();
    }
    return owner;
  }

  [[nodiscard]] std::string_view name() const override { return target_->name(); }
  Status call(const std::function<Status()>& fn) override { return target_->call(fn); }
  Status add_channel(detail::StoreChannel& channel) override {
    return target_->add_channel(channel);
  }
  Status remove_channel(detail::StoreChannel& channel) override {
    return target_->remove_channel(channel);
  }
  void ring_doorbell() override { target_->ring_doorbell(); }
  [[nodiscard]] bool exited() const override { return target_->exited(); }
  [[nodiscard]] reactor::Reactor* home_reactor() const override { return target_->home_reactor(); }

  Status attach(ReplicaStore& store) {
    return thread_ ? thread_->attach(store) : executor_->attach(store);
  }
  Status detach(ReplicaStore& store) {
    return thread_ ? thread_->detach(store) : executor_->detach(store);
  }
  // As if the owner crashed.
  void kill_for_testing() {
    if (thread_) {
      thread_->kill_for_testing();
    } else {
      executor_->kill_for_testing();
    }
  }
  // Serves nothing from now on (a thread joins; an executor on a reactor
  // stops as if killed, and returns once it no longer touches a request).
  void stop() {
    if (thread_) {
      thread_->stop();
      return;
    }
    executor_->kill_for_testing();
    // A round trip through the reactor: its poll of the executor ran since.
    (void)executor_->reactor().call([] { return ok_status(); });
    (void)executor_->reactor().call([] { return ok_status(); });
  }

 private:
  StoreOwner() = default;
  std::unique_ptr<StoreThread> thread_;
  std::unique_ptr<ReactorExecutor> executor_;
  StoreExecutor* target_ = nullptr;
};

}  // namespace ublkvol::engine::testing
