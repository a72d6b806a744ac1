// Reactor and ReactorSet (include/ublkvol/reactor/reactor.h): the loop runs
// its pollers, sleeps without losing a wake-up (stress, run under TSan),
// runs control calls where it lives, stops with pollers attached, and pins
// its thread where it is told to.
#include "ublkvol/reactor/reactor.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <gtest/gtest.h>
#include <thread>
#include <vector>

#include "ublkvol/common/unique_fd.h"

#include "support/wait_until.h"

namespace ublkvol::reactor {
namespace {

using namespace std::chrono_literals;

// Waits of this file are bounded by 10s unless a call says otherwise.
template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds bound = 10s) {
  return ublkvol::test_support::wait_until(pred, bound);
}

// Work published in shared memory: producers add to `posted` (seq_cst) and
// then call Reactor::wake(); poll() consumes it. No fd.
class CounterPoller final : public Poller {
 public:
  unsigned poll() override {
    polls.fetch_add(1, std::memory_order_relaxed);
    if (Reactor::current() == nullptr) {
      wrong_thread = true;
    }
    uint64_t p = posted.load(std::memory_order_seq_cst);
    uint64_t c = consumed.load(std::memory_order_relaxed);
    if (p == c) {
      if (linger_on_miss) {
        // Widens the window between "found nothing" and the loop's next
        // step (~1 us), where a post races with the reactor going to sleep.
        for (int i = 0; i < 200; ++i) {
          linger_sink.fetch_add(1, std::memory_order_relaxed);
        }
      }
      return 0;
    }
    consumed.store(p, std::memory_order_release);
    return static_cast<unsigned>(p - c);
  }
  [[nodiscard]] int wait_fd() const override { return -1; }

  std::atomic<uint64_t> posted{0};
  std::atomic<uint64_t> consumed{0};
  std::atomic<uint64_t> polls{0};
  std::atomic<bool> wrong_thread{false};
  bool linger_on_miss = false;
  std::atomic<uint64_t> linger_sink{0};
};

// Work announced through its own eventfd (poller.h's first wake-up way).
class FdPoller : public Poller {
 public:
  FdPoller() : fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  unsigned poll() override {
    uint64_t p = posted.load(std::memory_order_acquire);
    uint64_t c = consumed.load(std::memory_order_relaxed);
    if (p == c) {
      return 0;
    }
    consumed.store(p, std::memory_order_release);
    return 1;
  }
  [[nodiscard]] int wait_fd() const override { return fd.get(); }
  void post() {
    posted.fetch_add(1, std::memory_order_release);
    uint64_t one = 1;
    ASSERT_EQ(::write(fd.get(), &one, sizeof(one)), 8);
  }

  UniqueFd fd;
  std::atomic<uint64_t> posted{0};
  std::atomic<uint64_t> consumed{0};
};

// Busy for `remaining` polls, with no fd to announce the end.
class BusyPoller final : public Poller {
 public:
  unsigned poll() override {
    if (remaining.load() > 0) {
      remaining.fetch_sub(1);
    }
    return 0;
  }
  [[nodiscard]] int wait_fd() const override { return -1; }
  [[nodiscard]] bool busy() const override { return remaining.load() > 0; }
  std::atomic<int> remaining{0};
};

TEST(Reactor, LoopRunsItsPollersAndSleepsWhenIdle) {
  auto r = Reactor::start({.name = "r-test"});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  CounterPoller counter;
  FdPoller fd_poller;
  ASSERT_TRUE((*r)->add(counter).ok());
  ASSERT_TRUE((*r)->add(fd_poller).ok());
  for (int i = 0; i < 100; ++i) {
    counter.posted.fetch_add(1, std::memory_order_seq_cst);
    (*r)->wake();
    fd_poller.post();
    ASSERT_TRUE(wait_until([&] {
      return counter.consumed.load() == counter.posted.load() &&
             fd_poller.consumed.load() == fd_poller.posted.load();
    })) << "round "
        << i;
  }
  EXPECT_FALSE(counter.wrong_thread.load());
  // It went to sleep in between (it does not spin by default).
  EXPECT_TRUE(wait_until([&] { return (*r)->sleeps() > 0; }));
  (*r)->stop();  // before the pollers go
}

TEST(Reactor, BusyPollerIsPolledUntilDoneWithoutAWakeUp) {
  for (auto interval : {0us, 50us}) {
    auto r = Reactor::start({.name = "r-busy", .busy_poll_interval = interval});
    ASSERT_TRUE(r.ok());
    BusyPoller busy;
    busy.remaining = 200;
    ASSERT_TRUE((*r)->add(busy).ok());
    EXPECT_TRUE(wait_until([&] { return busy.remaining.load() == 0; }))
        << "interval " << interval.count() << " us: " << busy.remaining.load() << " polls left";
    (*r)->stop();
  }
}

// No wake-up is lost: a producer on another CPU posts one item at a time
// and spins until it is consumed, so its next post lands while the reactor
// is between its last poll and its sleep - the window a lost wake-up needs.
// Every item finds the reactor asleep or about to sleep; a lost wake-up
// leaves it asleep for good and the bounded wait fails. (With the loop's
// re-check poll after announcing sleep removed, it failed 5 runs of 5, at
// the first or second item. Labelled tsan too.)
TEST(Reactor, NoLostWakeUpUnderCrossThreadPosts) {
  auto cpus = affinity_cpus();
  ASSERT_TRUE(cpus.ok());
  // Reactor and producer on different CPUs when there are two.
  const int reactor_cpu = cpus->front();
  const int producer_cpu = cpus->size() > 1 ? (*cpus)[1] : -1;
  constexpr int kRuns = 6;
  constexpr int kRounds = 3000;
  for (int run = 0; run < kRuns; ++run) {
    CounterPoller c;
    c.linger_on_miss = true;
    auto r = Reactor::start({.name = "r-stress", .cpu = reactor_cpu});
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE((*r)->add(c).ok());
    int lost = -1;
    std::thread producer([&] {
      if (producer_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(static_cast<size_t>(producer_cpu), &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
      }
      for (int i = 0; i < kRounds; ++i) {
        c.posted.fetch_add(1, std::memory_order_seq_cst);
        (*r)->wake();
        for (int spin = 0; spin < 2000 && c.consumed.load() != c.posted.load(); ++spin) {
        }
        if (!wait_until([&] { return c.consumed.load() == c.posted.load(); }, 5s)) {
          lost = i;
          return;
        }
      }
    });
    producer.join();
    EXPECT_EQ(lost, -1) << "run " << run << ": item " << lost
                        << " was never consumed: lost wake-up";
    EXPECT_GT((*r)->sleeps(), 0U);
    (*r)->stop();  // before the poller goes
    if (lost != -1) {
      break;
    }
  }
}

// Several producers at once, each waking the reactor (no lost item, no
// crash; TSan checks the races).
TEST(Reactor, ManyProducersAllServed) {
  auto r = Reactor::start({.name = "r-many"});
  ASSERT_TRUE(r.ok());
  constexpr int kProducers = 3;
  std::vector<std::unique_ptr<CounterPoller>> pollers;
  for (int p = 0; p < kProducers; ++p) {
    pollers.push_back(std::make_unique<CounterPoller>());
    ASSERT_TRUE((*r)->add(*pollers.back()).ok());
  }
  std::vector<std::thread> threads;
  threads.reserve(kProducers);
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      CounterPoller& c = *pollers[static_cast<size_t>(p)];
      for (int i = 0; i < 1000; ++i) {
        c.posted.fetch_add(1, std::memory_order_seq_cst);
        (*r)->wake();
        if (i % 10 == 0) {
          EXPECT_TRUE(wait_until([&] { return c.consumed.load() == c.posted.load(); }));
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (auto& c : pollers) {
    EXPECT_TRUE(wait_until([&] { return c->consumed.load() == c->posted.load(); }));
  }
  (*r)->stop();
}

TEST(Reactor, CallRunsOnTheReactorAndReturnsItsResult) {
  auto r = Reactor::start({.name = "r-call"});
  ASSERT_TRUE(r.ok());
  Reactor* self = r->get();
  EXPECT_EQ(Reactor::current(), nullptr);
  EXPECT_FALSE(self->is_current());
  std::thread::id where;
  Status st = self->call([&]() -> Status {
    where = std::this_thread::get_id();
    if (!self->is_current() || Reactor::current() != self) {
      return Error(EINVAL, "not on the reactor");
    }
    // A nested call on the reactor runs inline (no deadlock).
    return self->call([]() -> Status { return Error(EEXIST, "inner"); });
  });
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errno_value(), EEXIST);
  EXPECT_NE(where, std::this_thread::get_id());
  // post(): fire and forget, runs on the reactor.
  std::atomic<bool> ran{false};
  ASSERT_TRUE(self->post([&] { ran = self->is_current(); }).ok());
  EXPECT_TRUE(wait_until([&] { return ran.load(); }));
  // Calls from several threads at once.
  std::atomic<int> sum{0};
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        Status s = self->call([&]() -> Status {
          sum.fetch_add(1, std::memory_order_relaxed);
          return ok_status();
        });
        EXPECT_TRUE(s.ok());
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(sum.load(), 800);
}

TEST(Reactor, StopWithPollersAttachedEndsPollingAndRefusesCalls) {
  auto r = Reactor::start({.name = "r-stop"});
  ASSERT_TRUE(r.ok());
  CounterPoller a;
  CounterPoller b;
  BusyPoller busy;
  busy.remaining = 1 << 30;  // keeps the loop polling until stopped
  ASSERT_TRUE((*r)->add(a).ok());
  ASSERT_TRUE((*r)->add(b).ok());
  ASSERT_TRUE((*r)->add(busy).ok());
  ASSERT_TRUE(wait_until([&] { return a.polls.load() > 10; }));
  (*r)->stop();
  EXPECT_TRUE((*r)->exited());
  uint64_t polls = a.polls.load();
  a.posted.fetch_add(1);
  (*r)->wake();
  Status st = (*r)->call([] { return ok_status(); });
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errno_value(), ESHUTDOWN);
  EXPECT_FALSE((*r)->post([] {}).ok());
  EXPECT_EQ(a.polls.load(), polls);
  (*r)->stop();  // idempotent
}

TEST(Reactor, RemovedPollerIsNotPolledAgain) {
  auto r = Reactor::start({.name = "r-remove"});
  ASSERT_TRUE(r.ok());
  CounterPoller a;
  ASSERT_TRUE((*r)->add(a).ok());
  a.posted = 1;
  (*r)->wake();
  ASSERT_TRUE(wait_until([&] { return a.consumed.load() == 1; }));
  ASSERT_TRUE((*r)->remove(a).ok());
  uint64_t polls = a.polls.load();
  a.posted = 2;
  (*r)->wake();
  // A round trip through the loop: had `a` still been attached, this call's
  // loop iteration would have polled it.
  ASSERT_TRUE((*r)->call([] { return ok_status(); }).ok());
  ASSERT_TRUE((*r)->call([] { return ok_status(); }).ok());
  EXPECT_EQ(a.polls.load(), polls);
  EXPECT_EQ(a.consumed.load(), 1U);
  (*r)->stop();
}

TEST(Reactor, KillEndsTheLoopWithoutRunningTasks) {
  auto r = Reactor::start({.name = "r-kill"});
  ASSERT_TRUE(r.ok());
  CounterPoller a;
  ASSERT_TRUE((*r)->add(a).ok());
  (*r)->kill_for_testing();
  EXPECT_TRUE(wait_until([&] { return (*r)->exited(); }));
  EXPECT_FALSE((*r)->call([] { return ok_status(); }).ok());
  (*r)->stop();
}

TEST(Reactor, PinnedThreadRunsOnItsCpu) {
  auto cpus = affinity_cpus();
  ASSERT_TRUE(cpus.ok()) << cpus.error().to_string();
  ASSERT_FALSE(cpus->empty());
  int cpu = cpus->back();
  auto r = Reactor::start({.name = "r-pin", .cpu = cpu});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ((*r)->cpu(), cpu);
  int seen = -1;
  ASSERT_TRUE((*r)->call([&] {
                    seen = sched_getcpu();
                    return ok_status();
                  })
                  .ok());
  EXPECT_EQ(seen, cpu);
  // A CPU outside the mask is refused with a message naming it.
  auto bad = Reactor::start({.name = "r-badcpu", .cpu = 100000});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("100000"), std::string::npos) << bad.error().message();
}

// Busy until `deadline`, with no fd: the loop never sleeps meanwhile.
class BusyUntilPoller final : public Poller {
 public:
  unsigned poll() override { return 0; }
  [[nodiscard]] int wait_fd() const override { return -1; }
  [[nodiscard]] bool busy() const override {
    return std::chrono::steady_clock::now() < deadline.load();
  }
  std::atomic<std::chrono::steady_clock::time_point> deadline{};
};

// counters(): busy time is time awake (an idle reactor's share stays small, a
// busy poller's time counts whole), and messages_sent counts wake-ups sent
// from a reactor to another thread - not its own, not a non-reactor thread's.
TEST(Reactor, CountersShowBusyTimeAndMessagesSentToOtherThreads) {
  auto a = Reactor::start({.name = "r-a"});
  auto b = Reactor::start({.name = "r-b"});
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(wait_until([&] { return (*a)->sleeps() > 0; }));

  // Idle for >= 100 ms of its uptime: busy grows by far less.
  const ReactorCounters idle0 = (*a)->counters();
  ASSERT_TRUE(wait_until([&] { return (*a)->counters().uptime - idle0.uptime >= 100ms; }));
  const ReactorCounters idle1 = (*a)->counters();
  EXPECT_LT((idle1.busy - idle0.busy) * 2, idle1.uptime - idle0.uptime)
      << "busy " << (idle1.busy - idle0.busy).count() << " ns of "
      << (idle1.uptime - idle0.uptime).count() << " ns idle";

  // A poller busy for 60 ms: all of it is busy time.
  BusyUntilPoller busy;
  busy.deadline = std::chrono::steady_clock::now() + 60ms;
  const ReactorCounters busy0 = (*a)->counters();
  ASSERT_TRUE((*a)->add(busy).ok());
  ASSERT_TRUE(wait_until([&] { return !busy.busy(); }));
  // Its loop notices the deadline and sleeps again.
  ASSERT_TRUE(wait_until([&] { return (*a)->asleep(); }));
  EXPECT_GE((*a)->counters().busy - busy0.busy, 50ms);
  ASSERT_TRUE((*a)->remove(busy).ok());

  // Messages: 5 wake-ups of b and 2 counted signals from a; 3 of a itself
  // (not a message); 4 of b from this thread (not a reactor: not counted).
  ASSERT_TRUE((*a)->call([&]() -> Status {
                    for (int i = 0; i < 5; ++i) {
                      (*b)->wake();
                    }
                    for (int i = 0; i < 3; ++i) {
                      (*a)->wake();
                    }
                    Reactor::count_message_sent();
                    Reactor::count_message_sent();
                    return ok_status();
                  })
                  .ok());
  for (int i = 0; i < 4; ++i) {
    (*b)->wake();
  }
  Reactor::count_message_sent();
  EXPECT_EQ((*a)->counters().messages_sent, 7U);
  EXPECT_EQ((*b)->counters().messages_sent, 0U);
  (*a)->stop();
  (*b)->stop();
}

// An FdPoller with a completion in flight while `waits`.
class WaitingPoller final : public FdPoller {
 public:
  [[nodiscard]] bool waiting() const override { return waits.load(); }
  std::atomic<bool> waits{true};
};

// Adaptive polling (ReactorOptions::poll_in_flight): after work, a reactor
// whose poller waits for a completion keeps polling instead of sleeping;
// without a completion in flight, or with polling off, it sleeps; and the
// CPU share cap makes it sleep even while a completion is in flight. (The
// polling time, 60 s, outlasts every bounded wait here: a sleep can only come
// from the rule under test.)
TEST(Reactor, AdaptivePollingWaitsForCompletionsWithinItsShare) {
  struct Case {
    const char* what;
    std::chrono::microseconds poll;
    unsigned max_percent;
    bool waits;
    bool expect_sleep;
  };
  for (const Case c :
       {Case{"polling, completion in flight", 60s, 100, true, false},
        Case{"polling, nothing in flight", 60s, 100, false, true},
        Case{"polling off", 0us, 100, true, true}, Case{"share of 5% spent", 60s, 5, true, true}}) {
    auto r = Reactor::start(
        {.name = "r-poll", .poll_in_flight = c.poll, .poll_max_percent = c.max_percent});
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    WaitingPoller poller;
    poller.waits = c.waits;
    ASSERT_TRUE((*r)->add(poller).ok());
    poller.post();  // work: the reactor polls it, then polls on or sleeps
    ASSERT_TRUE(wait_until([&] { return poller.consumed.load() == 1; })) << c.what;
    if (c.expect_sleep) {
      EXPECT_TRUE(wait_until([&] { return (*r)->asleep(); })) << c.what;
    } else {
      // 200 ms of uptime after the work it has not slept once.
      const uint64_t sleeps = (*r)->sleeps();
      const ReactorCounters start = (*r)->counters();
      ASSERT_TRUE(wait_until([&] { return (*r)->counters().uptime - start.uptime >= 200ms; }));
      EXPECT_EQ((*r)->sleeps(), sleeps) << c.what;
      EXPECT_FALSE((*r)->asleep()) << c.what;
    }
    (*r)->stop();
  }
}

TEST(ReactorSet, DefaultsToOneReactorPerCpuInTheMaskEachPinned) {
  auto cpus = affinity_cpus();
  ASSERT_TRUE(cpus.ok());
  auto set = ReactorSet::start({.name_prefix = "rs"});
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  ASSERT_EQ((*set)->size(), cpus->size());
  for (size_t i = 0; i < (*set)->size(); ++i) {
    Reactor& r = (*set)->at(i);
    EXPECT_EQ(r.cpu(), (*cpus)[i]);
    int seen = -1;
    ASSERT_TRUE(r.call([&] {
                   seen = sched_getcpu();
                   return ok_status();
                 }).ok());
    EXPECT_EQ(seen, (*cpus)[i]);
  }
  // Queues and stores spread modulo N.
  size_t n = (*set)->size();
  EXPECT_EQ(&(*set)->for_queue(0), &(*set)->at(0));
  EXPECT_EQ(&(*set)->for_queue(static_cast<unsigned>(n)), &(*set)->at(0));
  EXPECT_EQ(&(*set)->for_store(static_cast<unsigned>(n + 1)), &(*set)->at(1 % n));
  (*set)->stop();
  EXPECT_TRUE((*set)->at(0).exited());
}

TEST(ReactorSet, ExplicitCountUnpinned) {
  auto set = ReactorSet::start({.name_prefix = "rs", .count = 3, .pin = false});
  ASSERT_TRUE(set.ok());
  ASSERT_EQ((*set)->size(), 3U);
  EXPECT_EQ((*set)->at(2).cpu(), -1);
  EXPECT_EQ((*set)->at(2).name(), "rs2");
}

}  // namespace
}  // namespace ublkvol::reactor
