// StoreThread (store_thread.h): a reactor of its own (src/reactor) with one
// ReactorExecutor on it (reactor_executor.cpp) - the one loop
// implementation, not a second copy of it.
#include "ublkvol/engine/store_thread.h"

#include "ublkvol/engine/reactor_executor.h"
#include "ublkvol/reactor/reactor.h"

namespace ublkvol::engine {

struct StoreThread::Impl {
  StoreThreadOptions options;
  std::unique_ptr<reactor::Reactor> reactor;
  std::unique_ptr<ReactorExecutor> executor;
};

StoreThread::StoreThread(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StoreThread::~StoreThread() {
  stop();
  if (impl_) {
    impl_->executor.reset();
    impl_->reactor.reset();
  }
}

Result<std::unique_ptr<StoreThread>> StoreThread::start(const StoreThreadOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
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
  impl->reactor = std::move(*reactor);
  auto executor = ReactorExecutor::create(*impl->reactor, options.name);
  if (!executor.ok()) {
    return executor.error();
  }
  impl->executor = std::move(*executor);
  return std::unique_ptr<StoreThread>(new StoreThread(std::move(impl)));
}

std::string_view StoreThread::name() const { return impl_->options.name; }

Status StoreThread::call(const std::function<Status()>& fn) {
  if (impl_->reactor->exited()) {
    return Error(ESHUTDOWN, "store thread " + impl_->options.name + " is not running");
  }
  Status st = impl_->executor->call(fn);
  if (!st.ok() && st.error().errno_value() == ESHUTDOWN && impl_->reactor->exited()) {
    return Error(ESHUTDOWN, "store thread " + impl_->options.name + " stopped");
  }
  return st;
}

Status StoreThread::attach(ReplicaStore& store) { return impl_->executor->attach(store); }

Status StoreThread::detach(ReplicaStore& store) { return impl_->executor->detach(store); }

Status StoreThread::add_channel(detail::StoreChannel& channel) {
  return impl_->executor->add_channel(channel);
}

Status StoreThread::remove_channel(detail::StoreChannel& channel) {
  return impl_->executor->remove_channel(channel);
}

void StoreThread::ring_doorbell() { impl_->reactor->wake(); }

void StoreThread::stop() {
  if (impl_ && impl_->reactor) {
    impl_->reactor->stop();
  }
}

void StoreThread::kill_for_testing() { impl_->reactor->kill_for_testing(); }

bool StoreThread::exited() const { return impl_->reactor->exited(); }

reactor::Reactor* StoreThread::home_reactor() const { return impl_->reactor.get(); }

}  // namespace ublkvol::engine
