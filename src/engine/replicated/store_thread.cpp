// StoreThread (store_thread.h): a reactor of its own (src/reactor) with one
// ReactorExecutor on it (reactor_executor.cpp) - the one loop
// implementation, not a second copy of it.
#include "ublkvol/engine/store_thread.h"

#include <atomic>

#include "ublkvol/engine/reactor_executor.h"
#include "ublkvol/reactor/reactor.h"

namespace ublkvol::engine {

struct StoreThread::Impl {
  StoreThreadOptions options;
  std::unique_ptr<reactor::Reactor> own;  // null on a shared reactor
  reactor::Reactor* reactor = nullptr;    // own.get() or options.reactor
  std::unique_ptr<ReactorExecutor> executor;
  // Shared reactor: stop() destroyed the executor (it left the reactor).
  std::atomic<bool> left{false};

  [[nodiscard]] bool exited() const {
    return left || (own != nullptr ? own->exited() : executor->exited());
  }
  [[nodiscard]] Error not_running() const {
    return Error(ESHUTDOWN, "store thread " + options.name + " is not running");
  }
};

StoreThread::StoreThread(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StoreThread::~StoreThread() {
  stop();
  if (impl_) {
    impl_->executor.reset();
    impl_->own.reset();
  }
}

Result<std::unique_ptr<StoreThread>> StoreThread::start(const StoreThreadOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.reactor != nullptr) {
    impl->reactor = options.reactor;
    auto executor = ReactorExecutor::create(*options.reactor, options.name);
    if (!executor.ok()) {
      return executor.error();
    }
    impl->executor = std::move(*executor);
    return std::unique_ptr<StoreThread>(new StoreThread(std::move(impl)));
  }
  reactor::ReactorOptions ro;
  ro.name = options.name;
  ro.spin_before_sleep = options.spin_before_sleep;
  // Stores without a completion fd (fault wrappers holding delayed
  // requests) are polled this often while they hold requests.
  ro.busy_poll_interval = options.idle_poll_interval;
  auto reactor = reactor::Reactor::start(ro);
  if (!reactor.ok()) {
    return reactor.error().with_context("store thread " + options.name);
  }
  impl->own = std::move(*reactor);
  impl->reactor = impl->own.get();
  auto executor = ReactorExecutor::create(*impl->reactor, options.name);
  if (!executor.ok()) {
    return executor.error();
  }
  impl->executor = std::move(*executor);
  return std::unique_ptr<StoreThread>(new StoreThread(std::move(impl)));
}

std::string_view StoreThread::name() const { return impl_->options.name; }

Status StoreThread::call(const std::function<Status()>& fn) {
  if (impl_->exited()) {
    return impl_->not_running();
  }
  Status st = impl_->executor->call(fn);
  if (!st.ok() && st.error().errno_value() == ESHUTDOWN && impl_->exited()) {
    return Error(ESHUTDOWN, "store thread " + impl_->options.name + " stopped");
  }
  return st;
}

Status StoreThread::attach(ReplicaStore& store) {
  return impl_->left ? Status(impl_->not_running()) : impl_->executor->attach(store);
}

Status StoreThread::detach(ReplicaStore& store) {
  // After stop() on a shared reactor nothing polls the store any more.
  return impl_->left ? ok_status() : impl_->executor->detach(store);
}

Status StoreThread::add_channel(detail::StoreChannel& channel) {
  return impl_->left ? Status(impl_->not_running()) : impl_->executor->add_channel(channel);
}

Status StoreThread::remove_channel(detail::StoreChannel& channel) {
  return impl_->left ? ok_status() : impl_->executor->remove_channel(channel);
}

void StoreThread::ring_doorbell() { impl_->reactor->wake(); }

void StoreThread::stop() {
  if (!impl_) {
    return;
  }
  if (impl_->own) {
    impl_->own->stop();
  } else if (!impl_->left) {
    // Leaves the shared reactor (synchronous: the reactor polls none of its
    // pollers after this); the reactor runs on for its other work.
    impl_->executor.reset();
    impl_->left = true;
  }
}

void StoreThread::kill_for_testing() {
  if (impl_->own) {
    impl_->own->kill_for_testing();
  } else if (!impl_->left) {
    impl_->executor->kill_for_testing();
  }
}

bool StoreThread::exited() const { return impl_->exited(); }

reactor::Reactor* StoreThread::home_reactor() const { return impl_->reactor; }

}  // namespace ublkvol::engine
