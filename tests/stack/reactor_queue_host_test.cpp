// ReactorQueueHost (include/ublkvol/stack/reactor_queue_host.h) against the
// QueueHost contract (include/ublkvol/ublk/queue_host.h): queue q's work
// runs on reactor q mod N, always the same one; added pollers are polled
// there and woken by their wait_fd; a poller removed from inside its own
// poll() is dropped only after that poll returned; kept resources outlive
// the reactor threads.
#include "ublkvol/stack/reactor_queue_host.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <gtest/gtest.h>
#include <memory>
#include <thread>

#include "ublkvol/common/unique_fd.h"

#include "support/wait_until.h"

namespace ublkvol::stack {
namespace {

using namespace std::chrono_literals;

// Waits of this file are bounded by 10s unless a call says otherwise.
template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds bound = 10s) {
  return ublkvol::test_support::wait_until(pred, bound);
}

std::unique_ptr<reactor::ReactorSet> start_set(unsigned count) {
  reactor::ReactorSetOptions options;
  options.count = count;
  options.pin = false;  // the test machine may have fewer CPUs than reactors
  auto set = reactor::ReactorSet::start(options);
  EXPECT_TRUE(set.ok()) << set.error().to_string();
  return set.ok() ? std::move(*set) : nullptr;
}

// Runs `fn` on queue ref's thread through the host and waits for it.
void run_and_wait(ublk::QueueHost& host, const ublk::QueueRef& ref, std::function<void()> fn) {
  std::promise<void> done;
  auto f = done.get_future();
  ASSERT_TRUE(host.run_on(ref,
                          [&] {
                            fn();
                            done.set_value();
                          })
                  .ok());
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
}

// A poller with an eventfd: each write is one unit of work. It can remove
// itself from inside poll(), and records whether it was destroyed while a
// poll() was running or polled on a thread that is not its reactor.
class FdPoller final : public reactor::Poller {
 public:
  FdPoller(ublk::QueueHost& host, ublk::QueueRef ref, reactor::Reactor& home, std::atomic<int>& bad)
      : host_(host), ref_(ref), home_(home), bad_(bad), fd_(::eventfd(0, EFD_NONBLOCK)) {}
  ~FdPoller() override {
    if (in_poll_) {
      bad_.fetch_add(1);
    }
  }

  unsigned poll() override {
    in_poll_ = true;
    if (!home_.is_current()) {
      bad_.fetch_add(1);
    }
    polls.fetch_add(1);
    unsigned work = 0;
    const uint64_t p = posted.load(std::memory_order_seq_cst);
    if (p != seen_) {
      work = static_cast<unsigned>(p - seen_);
      seen_ = p;
      handled.store(p);
      if (remove_after.load() != 0 && p >= remove_after.load()) {
        host_.remove_poller(ref_, *this);
      }
    }
    in_poll_ = false;
    return work;
  }
  [[nodiscard]] int wait_fd() const override { return fd_.get(); }

  // Publishes one unit of work, then makes the fd readable (poller.h).
  void post_work() {
    posted.fetch_add(1, std::memory_order_seq_cst);
    const uint64_t one = 1;
    ASSERT_EQ(::write(fd_.get(), &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
  }

  std::atomic<uint64_t> posted{0};
  std::atomic<uint64_t> handled{0};
  std::atomic<uint64_t> polls{0};
  std::atomic<uint64_t> remove_after{0};

 private:
  ublk::QueueHost& host_;
  ublk::QueueRef ref_;
  reactor::Reactor& home_;
  std::atomic<int>& bad_;
  UniqueFd fd_;
  uint64_t seen_ = 0;
  bool in_poll_ = false;
};

TEST(ReactorQueueHost, RunsEachQueueOnReactorQueueModN) {
  auto set = start_set(2);
  ASSERT_NE(set, nullptr);
  ReactorQueueHost host(*set);
  for (uint16_t q = 0; q < 5; ++q) {
    for (uint32_t dev : {0U, 7U}) {
      reactor::Reactor* ran_on = nullptr;
      run_and_wait(host, {dev, q}, [&] { ran_on = reactor::Reactor::current(); });
      EXPECT_EQ(ran_on, &set->for_queue(q)) << "device " << dev << " queue " << q;
    }
  }
}

// The device's owner may choose the reactor (DeviceOptions::queue_places):
// every call for that queue then goes there, the poller included.
TEST(ReactorQueueHost, RunsAQueueWithAPlaceOnThatReactor) {
  auto set = start_set(2);
  ASSERT_NE(set, nullptr);
  ReactorQueueHost host(*set);
  std::atomic<int> bad{0};
  for (uint16_t q = 0; q < 4; ++q) {
    const ublk::QueueRef ref{5, q, 1};
    reactor::Reactor* ran_on = nullptr;
    run_and_wait(host, ref, [&] { ran_on = reactor::Reactor::current(); });
    EXPECT_EQ(ran_on, &set->at(1)) << "queue " << q;
  }
  // Place 2 of a 2-reactor set: reactor 0 (mod N).
  const ublk::QueueRef wrapped{5, 1, 2};
  reactor::Reactor* ran_on = nullptr;
  run_and_wait(host, wrapped, [&] { ran_on = reactor::Reactor::current(); });
  EXPECT_EQ(ran_on, &set->at(0));
  // A poller of a placed queue is polled there (FdPoller counts any poll()
  // off its home reactor as bad).
  const ublk::QueueRef ref{5, 0, 1};
  auto poller = std::make_shared<FdPoller>(host, ref, set->at(1), bad);
  run_and_wait(host, ref, [&] { host.add_poller(ref, poller); });
  poller->post_work();
  ASSERT_TRUE(wait_until([&] { return poller->handled.load() >= 1; }));
  run_and_wait(host, ref, [&] { host.remove_poller(ref, *poller); });
  EXPECT_EQ(bad.load(), 0);
}

TEST(ReactorQueueHost, PollsAddedPollerOnItsReactorAndWakesOnItsFd) {
  auto set = start_set(2);
  ASSERT_NE(set, nullptr);
  std::atomic<int> bad{0};
  const ublk::QueueRef ref{3, 1};
  std::weak_ptr<FdPoller> weak;
  {
    ReactorQueueHost host(*set);
    auto poller = std::make_shared<FdPoller>(host, ref, set->for_queue(1), bad);
    weak = poller;
    run_and_wait(host, ref, [&] { host.add_poller(ref, poller); });
    for (int i = 0; i < 1000; ++i) {
      poller->post_work();
      const uint64_t want = poller->posted.load();
      ASSERT_TRUE(wait_until([&] { return poller->handled.load() >= want; }))
          << "work " << i << " was not picked up (lost wake-up?)";
    }
    // The reactor sleeps between units (no busy loop): it slept at least
    // once per few units.
    EXPECT_GT(set->for_queue(1).sleeps(), 0U);
    poller.reset();
    EXPECT_FALSE(weak.expired()) << "the host must hold an added poller";
  }
  EXPECT_TRUE(weak.expired()) << "the host must drop its pollers when destroyed";
  EXPECT_EQ(bad.load(), 0);
}

TEST(ReactorQueueHost, RemovalFromInsidePollDropsThePollerAfterThePoll) {
  auto set = start_set(2);
  ASSERT_NE(set, nullptr);
  std::atomic<int> bad{0};
  const ublk::QueueRef ref{0, 0};
  ReactorQueueHost host(*set);
  auto poller = std::make_shared<FdPoller>(host, ref, set->for_queue(0), bad);
  std::weak_ptr<FdPoller> weak = poller;
  run_and_wait(host, ref, [&] { host.add_poller(ref, poller); });
  FdPoller* raw = poller.get();
  raw->remove_after.store(1);
  poller.reset();  // the host's reference is the only one now
  raw->post_work();
  // Removed by its own poll(), then released in a later loop iteration.
  ASSERT_TRUE(wait_until([&] { return weak.expired(); })) << "removed poller never released";
  EXPECT_EQ(bad.load(), 0) << "destroyed during its own poll() or polled off its reactor";
  // The reactor still runs other queues' work.
  int ran = 0;
  run_and_wait(host, ref, [&] { ran = 1; });
  EXPECT_EQ(ran, 1);
}

// Resources kept until exit: destroyed only after every reactor's thread
// ended (queue_host.h, the Linux 6.12 rule).
struct Kept {
  Kept(reactor::ReactorSet& s, std::atomic<int>& early, std::atomic<int>& gone)
      : set(&s), destroyed_early(&early), destroyed(&gone) {}
  Kept(const Kept&) = delete;
  Kept& operator=(const Kept&) = delete;
  reactor::ReactorSet* set;
  std::atomic<int>* destroyed_early;
  std::atomic<int>* destroyed;
  ~Kept() {
    for (size_t i = 0; i < set->size(); ++i) {
      if (!set->at(i).exited()) {
        destroyed_early->fetch_add(1);
      }
    }
    destroyed->fetch_add(1);
  }
};

TEST(ReactorQueueHost, KeepsResourcesUntilTheReactorsExited) {
  auto set = start_set(2);
  ASSERT_NE(set, nullptr);
  std::atomic<int> early{0};
  std::atomic<int> destroyed{0};
  {
    ReactorQueueHost host(*set);
    for (uint16_t q = 0; q < 2; ++q) {
      const ublk::QueueRef ref{1, q};
      run_and_wait(host, ref, [&] {
        host.keep_until_exit(ref, std::make_shared<Kept>(*set, early, destroyed));
      });
    }
    int ran = 0;
    run_and_wait(host, {1, 0}, [&] { ran = 1; });
    EXPECT_EQ(ran, 1);
    EXPECT_EQ(destroyed.load(), 0);
  }
  EXPECT_EQ(destroyed.load(), 2);
  EXPECT_EQ(early.load(), 0);
  EXPECT_TRUE(set->at(0).exited());
  EXPECT_TRUE(set->at(1).exited());
}

TEST(ReactorQueueHost, RunOnAfterTheSetStoppedIsRefusedNamingTheQueue) {
  auto set = start_set(1);
  ASSERT_NE(set, nullptr);
  ReactorQueueHost host(*set);
  set->stop();
  Status st = host.run_on({4, 2}, [] {});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errno_value(), ESHUTDOWN);
  EXPECT_NE(st.error().message().find("ublk device 4 queue 2"), std::string::npos)
      << st.error().message();
}

}  // namespace
}  // namespace ublkvol::stack
