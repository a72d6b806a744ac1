// ReactorExecutor (include/ublkvol/engine/reactor_executor.h): stores and
// their channels served as a Poller of a reactor.
#include "ublkvol/engine/reactor_executor.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "store_channel.h"
#include "wake_fd.h"

namespace ublkvol::engine {

namespace {

// Sleeps the reactor on one store's completion eventfd while that store has
// requests in flight. The work itself is done by the executor's poll().
class StoreWaiter final : public reactor::Poller {
 public:
  StoreWaiter(ReplicaStore& store, const std::atomic<bool>& dead) : store_(&store), dead_(&dead) {}
  unsigned poll() override { return 0; }
  [[nodiscard]] int wait_fd() const override {
    if (dead_->load(std::memory_order_relaxed) || store_->in_flight() == 0) {
      return -1;
    }
    return store_->completion_fd();
  }
  [[nodiscard]] ReplicaStore* store() const { return store_; }

 private:
  ReplicaStore* store_;
  const std::atomic<bool>* dead_;
};

}  // namespace

struct ReactorExecutor::Impl final : public reactor::Poller {
  reactor::Reactor* reactor = nullptr;
  std::string name;
  std::atomic<bool> killed{false};
  // Set by the reactor's thread after its last access to a request (kill).
  std::atomic<bool> dead{false};

  // Owned by the reactor's thread.
  std::vector<detail::StoreChannel*> channels;
  std::vector<std::unique_ptr<StoreWaiter>> stores;
  bool waiting_without_fd = false;
  bool any_in_flight = false;  // a store had requests in flight at the last poll

  static void on_complete(ReplicaIo& io, int result) {
    io.result = result;
    auto* channel = static_cast<detail::StoreChannel*>(io.user_data);
    bool was_empty = false;
    bool ok = channel->completions.push(&io, was_empty);
    // Rings hold every request a queue can have in flight, so this cannot fail.
    (void)ok;
    if (was_empty) {
      channel->notify = true;
    }
  }

  unsigned poll() override {
    if (killed.load(std::memory_order_seq_cst)) {
      dead.store(true, std::memory_order_release);
      return 0;
    }
    unsigned work = 0;
    for (detail::StoreChannel* ch : channels) {
      while (ReplicaIo* io = ch->requests.pop()) {
        ReplicaStore* store = ch->stores[io->replica];
        io->on_complete = &Impl::on_complete;
        io->user_data = ch;
        store->submit(*io);
        ++work;
      }
    }
    waiting_without_fd = false;
    any_in_flight = false;
    for (auto& waiter : stores) {
      ReplicaStore* store = waiter->store();
      if (store->in_flight() > 0) {
        any_in_flight = true;
        store->kick();
        work += store->poll(false);
        // Requests the completions submitted (e.g. data writes released
        // by a bitmap commit) must reach the device before we sleep.
        store->kick();
        if (store->in_flight() > 0 && store->completion_fd() < 0) {
          waiting_without_fd = true;
        }
      }
    }
    // One wake-up per queue whose completion ring was empty before this
    // pass (the queue drains until empty, so a non-empty ring already has
    // one pending).
    for (detail::StoreChannel* ch : channels) {
      if (ch->notify) {
        ch->notify = false;
        detail::signal_fd(ch->queue_wake_fd);
        reactor::Reactor::count_message_sent();
      }
    }
    return work;
  }

  [[nodiscard]] int wait_fd() const override { return -1; }
  // A store with requests in flight and no fd to announce their completion
  // (a fault-injecting wrapper holding delayed requests) must be polled.
  [[nodiscard]] bool busy() const override {
    return waiting_without_fd && !dead.load(std::memory_order_relaxed);
  }
  // Requests at a device: adaptive polling waits for their completions.
  [[nodiscard]] bool waiting() const override {
    return any_in_flight && !dead.load(std::memory_order_relaxed);
  }
};

ReactorExecutor::ReactorExecutor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ReactorExecutor>> ReactorExecutor::create(reactor::Reactor& reactor,
                                                                 std::string name) {
  auto impl = std::make_unique<Impl>();
  impl->reactor = &reactor;
  impl->name = std::move(name);
  Status st = reactor.add(*impl);
  if (!st.ok()) {
    return st.error().with_context("store executor " + impl->name);
  }
  return std::unique_ptr<ReactorExecutor>(new ReactorExecutor(std::move(impl)));
}

ReactorExecutor::~ReactorExecutor() {
  // Straight through the reactor, killed or not: after this nothing on the
  // reactor points at the executor or its stores. Fails harmlessly
  // (ESHUTDOWN) when the reactor already stopped: it polls nothing then.
  Impl* impl = impl_.get();
  (void)impl->reactor->call([impl]() -> Status {
    for (auto& waiter : impl->stores) {
      (void)impl->reactor->remove(*waiter);
    }
    return impl->reactor->remove(*impl);
  });
}

std::string_view ReactorExecutor::name() const { return impl_->name; }

reactor::Reactor& ReactorExecutor::reactor() const { return *impl_->reactor; }

Status ReactorExecutor::call(const std::function<Status()>& fn) {
  if (impl_->killed.load(std::memory_order_acquire)) {
    return Error(ESHUTDOWN, "store executor " + impl_->name + " is not running");
  }
  return impl_->reactor->call(fn);
}

Status ReactorExecutor::attach(ReplicaStore& store) {
  Impl* impl = impl_.get();
  return call([impl, &store]() -> Status {
    // Asked once up front: some devices (FileDevice) set up their completion
    // eventfd on the first call, and completions of requests submitted
    // before that would not signal it.
    (void)store.completion_fd();
    auto waiter = std::make_unique<StoreWaiter>(store, impl->dead);
    Status st = impl->reactor->add(*waiter);
    if (!st.ok()) {
      return st;
    }
    impl->stores.push_back(std::move(waiter));
    return ok_status();
  });
}

Status ReactorExecutor::detach(ReplicaStore& store) {
  Impl* impl = impl_.get();
  // Not call(): a killed executor still lets go of its stores.
  return impl->reactor->call([impl, &store]() -> Status {
    auto& v = impl->stores;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if ((*it)->store() == &store) {
        (void)impl->reactor->remove(**it);
        v.erase(it);
        break;
      }
    }
    return ok_status();
  });
}

Status ReactorExecutor::add_channel(detail::StoreChannel& channel) {
  Impl* impl = impl_.get();
  return call([impl, &channel]() -> Status {
    impl->channels.push_back(&channel);
    return ok_status();
  });
}

Status ReactorExecutor::remove_channel(detail::StoreChannel& channel) {
  Impl* impl = impl_.get();
  return call([impl, &channel]() -> Status {
    auto& v = impl->channels;
    v.erase(std::remove(v.begin(), v.end(), &channel), v.end());
    return ok_status();
  });
}

void ReactorExecutor::ring_doorbell() { impl_->reactor->wake(); }

void ReactorExecutor::kill_for_testing() {
  impl_->killed.store(true, std::memory_order_seq_cst);
  // The reactor's next poll of this executor (the re-check before a sleep
  // at the latest) sees the flag.
  impl_->reactor->wake();
}

bool ReactorExecutor::exited() const {
  return impl_->dead.load(std::memory_order_acquire) || impl_->reactor->exited();
}

}  // namespace ublkvol::engine
