// ReactorExecutor: the StoreExecutor (store_executor.h) that serves stores
// on a reactor (include/ublkvol/reactor/reactor.h) - the one loop
// implementation behind StoreThread too (a StoreThread is a reactor of its
// own with one ReactorExecutor on it). Several executors, of different
// stores, may share one reactor; each store is served by exactly one
// executor, so it is still owned by one thread (shared-nothing).
//
// On the reactor it is a Poller: each poll() hands the requests waiting in
// its channels to their stores, kicks and polls the stores that have
// requests in flight, and wakes each queue whose completion ring was empty
// before this batch (one eventfd write per channel per pass). Queue threads
// push requests and then call ring_doorbell() = Reactor::wake(): a syscall
// only if the reactor announced it sleeps. The stores' completion eventfds
// wake the reactor through small per-store pollers (wait_fd() only).
//
// Control work (attach, channels, the engine's call()s) runs on the reactor
// as its tasks. Everything but the constructor's caller runs there.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/store_executor.h"
#include "ublkvol/reactor/reactor.h"

namespace ublkvol::engine {

class ReactorExecutor final : public StoreExecutor {
 public:
  // Registers a new executor as a poller of `reactor` (which must outlive it).
  static Result<std::unique_ptr<ReactorExecutor>> create(reactor::Reactor& reactor,
                                                         std::string name);
  // Leaves the reactor (stores and channels must be detached by then).
  ~ReactorExecutor() override;
  ReactorExecutor(const ReactorExecutor&) = delete;
  ReactorExecutor& operator=(const ReactorExecutor&) = delete;

  [[nodiscard]] std::string_view name() const override;
  [[nodiscard]] reactor::Reactor& reactor() const;

  // Runs `fn` on the reactor. ESHUTDOWN once the reactor stopped or this
  // executor was killed.
  Status call(const std::function<Status()>& fn) override;

  // Stores it serves (control path; `store` must outlive its attachment).
  Status attach(ReplicaStore& store);
  Status detach(ReplicaStore& store);

  Status add_channel(detail::StoreChannel& channel) override;
  Status remove_channel(detail::StoreChannel& channel) override;
  void ring_doorbell() override;

  // Fault injection: this executor stops serving at once, completing
  // nothing in flight, as if its thread had crashed; the reactor and the
  // other executors on it run on. exited() turns true after its last access
  // to any request.
  void kill_for_testing();
  // Stopped reactor or killed executor.
  [[nodiscard]] bool exited() const override;
  [[nodiscard]] reactor::Reactor* home_reactor() const override { return &reactor(); }

  struct Impl;

 private:
  explicit ReactorExecutor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::engine
